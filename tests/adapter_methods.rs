//! Every first-party adaptation method — LoRA (rsLoRA, per-site ranks), DoRA, IA3,
//! prompt tuning, prefix tuning, bottleneck adapters — through the same checks:
//! - gradients reach its own parameters and nothing else;
//! - a short pipeline stage lowers its eval loss;
//! - a stage killed at a mid-stage checkpoint resumes to the same bits;
//! - export → load gives the same outputs (PEFT directories for the methods PEFT has,
//!   a merged Hugging Face directory for those that merge).

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::adapter::{load_peft, merge_into_base};
use stagecraft_core::export::{export_merged, export_peft};
use stagecraft_core::model::{load_model, Adapters};
use stagecraft_core::pipeline::open_stage;
use stagecraft_core::plugin::Registry;
use stagecraft_core::report::Split;
use stagecraft_core::train::{forward_loss, Batch};
use std::path::{Path, PathBuf};
use support::{checkpoint_bits, max_abs_diff, scratch, state};

/// One method under test: a name and its adapter table.
struct Method {
    name: &'static str,
    adapter: &'static str,
    /// Whether PEFT has the method (so `export --format peft` writes it).
    peft: bool,
    /// Whether it folds into the weights.
    merges: bool,
}

const METHODS: [Method; 6] = [
    Method {
        name: "lora",
        adapter: r#"{ plugin = "lora", targets = ["role:attn_q", "role:attn_v", "down_proj"], r = 4, alpha = 8, use_rslora = true, rank_pattern = { "v_proj" = 2 } }"#,
        peft: true,
        merges: true,
    },
    Method {
        name: "dora",
        adapter: r#"{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8, use_dora = true, dropout = 0.1 }"#,
        peft: true,
        merges: true,
    },
    Method {
        name: "ia3",
        adapter: r#"{ plugin = "ia3", targets = ["k_proj", "v_proj", "down_proj"], feedforward = ["down_proj"] }"#,
        peft: true,
        merges: true,
    },
    Method {
        name: "prompt",
        adapter: r#"{ plugin = "prompt_tuning", num_virtual_tokens = 4, init = "sample_vocab" }"#,
        peft: true,
        merges: false,
    },
    Method {
        name: "prefix",
        adapter: r#"{ plugin = "prefix_tuning", num_virtual_tokens = 3, prefix_projection = true, encoder_hidden_size = 16 }"#,
        peft: true,
        merges: false,
    },
    Method {
        name: "bottleneck",
        adapter: r#"{ plugin = "bottleneck", variant = "houlsby", reduction_factor = 4 }"#,
        peft: false,
        merges: false,
    },
];

/// A tiny Llama pretrained for 10 steps, then one stage training `adapter` on
/// addition (evaluated every 5 steps).
fn pipeline(adapter: &str, steps: u64) -> String {
    format!(
        r#"
[run]
name = "m"
seed = 11

[model]
arch = "llama"
hidden_size = 32
num_layers = 2
num_heads = 4
num_kv_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=128&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }}
optimizer = {{ lr = 3e-3 }}
max_steps = 10
batch_size = 16
seq_len = 24

[[stages]]
name = "adapt"
objective = "completion"
data = {{ train = "synthetic:add?n=256&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2" }}
optimizer = {{ lr = 2e-2 }}
adapters = [{adapter}]
max_steps = {steps}
eval_every = 5
batch_size = 16
seq_len = 12
"#
    )
}

fn ids() -> Tensor {
    Tensor::new(&[[3u32, 17, 43, 61, 43, 50, 10, 0], [49, 43, 50, 61, 55, 10, 0, 0]], &Device::Cpu).expect("ids")
}

#[test]
fn gradients_reach_the_methods_own_parameters_and_nothing_else() {
    let base = support::root().join("tests/fixtures/llama-tiny/base");
    for m in &METHODS {
        let st = state();
        let model = load_model(&base, &Device::Cpu).expect("model");
        for (_, w) in model.weights() {
            w.set_trainable(false);
        }
        st.register_model(model.as_ref());
        let reg = Registry::with_builtins(scratch("grads")).expect("registry");
        let table: toml::Table = toml::from_str(&format!("a = {}", m.adapter)).expect("adapter toml");
        let mut cfg = table["a"].as_table().expect("table").clone();
        let plugin = cfg.remove("plugin").and_then(|p| p.as_str().map(str::to_string)).expect("plugin");
        let mut adapters = Adapters::none(model.sites().len());
        adapters
            .attach(
                reg.new_method(&plugin, &serde_json::to_string(&cfg).expect("json"), &st).expect("instance"),
                model.sites(),
            )
            .expect("attach");
        // Zero-initialised factors (LoRA's B, the bottleneck's up projection) would stop
        // the gradient of the others: start every parameter away from zero.
        for (i, p) in adapters.methods()[0].params().iter().enumerate() {
            let noise = Tensor::randn(0f32, 0.2, p.var.dims(), &Device::Cpu).expect("randn");
            p.var.set(&(noise + if i % 2 == 0 { 0.0 } else { 0.5 }).expect("shift")).expect("set");
        }
        let mut objective = reg.new_objective("causal_lm", "{}", &st).expect("objective");
        let loss = forward_loss(model.as_ref(), &adapters, &mut objective, &Batch::tokens(ids())).expect("loss").loss;
        let grads = stagecraft_core::kernels::backward(&loss).expect("backward");
        for p in adapters.methods()[0].params() {
            let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {}", m.name, p.name));
            let norm = g.sqr().expect("sqr").sum_all().expect("sum").to_scalar::<f32>().expect("scalar");
            assert!(norm > 0.0, "{}: zero gradient for {}", m.name, p.name);
        }
        for (name, w) in model.weights() {
            assert!(
                grads.get(w.var().as_tensor()).is_none(),
                "{}: the frozen base weight {name} got a gradient",
                m.name
            );
        }
    }
}

/// Each method's stage lowers its eval loss, resumes to the same bits from a
/// mid-stage checkpoint, and exports to directories that load back with the same
/// outputs.
#[test]
fn each_method_trains_resumes_exactly_and_exports() {
    for m in &METHODS {
        let run_dir = support::run_pipeline(&format!("method-{}", m.name), &pipeline(m.adapter, 10)).dir;
        let dir = run_dir.parent().expect("scratch directory").to_path_buf();

        let rows = support::metrics(&run_dir);
        let losses: Vec<f64> = rows
            .iter()
            .filter(|r| r.split == Split::Eval && r.stage == "adapt" && r.set.as_deref() == Some("adapt"))
            .filter_map(|r| r.metrics.get("loss").copied())
            .collect();
        assert!(
            losses.len() >= 2 && losses[losses.len() - 1] < losses[0],
            "{}: eval loss did not go down: {losses:?}",
            m.name
        );

        resumes_to_the_same_bits(m, &run_dir);
        exports_and_loads_back(m, &run_dir, &dir);
    }
}

/// Removes the stage-end checkpoint, resumes from the mid-stage one (step 5), and
/// compares the end with the uninterrupted run's, bit for bit.
fn resumes_to_the_same_bits(m: &Method, run_dir: &Path) {
    let uninterrupted = checkpoint_bits(run_dir, "adapt");
    std::fs::remove_dir_all(run_dir.join("checkpoints/adapt")).expect("remove the stage end");
    support::resume_pipeline(run_dir);
    let resumed = checkpoint_bits(run_dir, "adapt");
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        uninterrupted.keys().collect::<Vec<_>>(),
        "{}: different tensors after resume",
        m.name
    );
    for (k, v) in &uninterrupted {
        assert!(resumed[k] == *v, "{}: `{k}` differs after resume", m.name);
    }
}

fn exports_and_loads_back(m: &Method, run_dir: &Path, dir: &Path) {
    let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    let mut opened = open_stage(run_dir, Some("adapt"), &reg, &Device::Cpu).expect("open the stage");
    let ours = opened.model.forward(&ids(), None, &opened.adapters).expect("forward").logits.expect("logits");
    let base = opened
        .model
        .forward(&ids(), None, &Adapters::none(opened.model.sites().len()))
        .expect("forward")
        .logits
        .expect("logits");
    assert!(max_abs_diff(&ours, &base) > 1e-3, "{}: the trained adapter changes nothing", m.name);

    let peft_dir = dir.join("peft");
    match export_peft(&opened, run_dir, &peft_dir) {
        Ok(written) => {
            assert!(m.peft, "{}: exported as PEFT, but PEFT has no such method", m.name);
            assert!(written.iter().any(|d| d.ends_with("base")), "a model trained from scratch needs its base written");
            let st = state();
            let model = load_model(&peft_dir.join("base"), &Device::Cpu).expect("exported base loads");
            st.register_model(model.as_ref());
            st.set_training(false);
            let mut adapters = Adapters::none(model.sites().len());
            load_peft(&peft_dir, &reg, &st, model.as_ref(), &mut adapters).expect("exported adapter loads");
            let back = model.forward(&ids(), None, &adapters).expect("forward").logits.expect("logits");
            let d = max_abs_diff(&back, &ours);
            println!("{}: PEFT export round trip max abs diff {d:e}", m.name);
            assert!(d <= 1e-5, "{}: PEFT export round trip differs by {d}", m.name);
        }
        Err(e) => {
            assert!(!m.peft, "{}: PEFT export failed: {e}", m.name);
            assert!(e.to_string().contains("has no PEFT format"), "{e}");
        }
    }

    let merged_dir: PathBuf = dir.join("merged");
    match export_merged(&mut opened, run_dir, &merged_dir) {
        Ok(()) => {
            assert!(m.merges, "{}: merged, but the method cannot merge", m.name);
            let model = load_model(&merged_dir, &Device::Cpu).expect("merged directory loads");
            let back = model
                .forward(&ids(), None, &Adapters::none(model.sites().len()))
                .expect("forward")
                .logits
                .expect("logits");
            let d = max_abs_diff(&back, &ours);
            println!("{}: merged export round trip max abs diff {d:e}", m.name);
            assert!(d <= 1e-5, "{}: merged export differs by {d}", m.name);
        }
        Err(e) => {
            assert!(!m.merges, "{}: merged export failed: {e}", m.name);
            assert!(e.to_string().contains("export it with --format peft"), "{e}");
        }
    }
}

#[test]
fn merging_matches_the_unmerged_model_for_every_mergeable_method() {
    let base = support::root().join("tests/fixtures/llama-tiny/base");
    for m in METHODS.iter().filter(|m| m.merges) {
        let st = state();
        st.set_training(false);
        let model = load_model(&base, &Device::Cpu).expect("model");
        st.register_model(model.as_ref());
        let reg = Registry::with_builtins(scratch("merge-all")).expect("registry");
        let table: toml::Table = toml::from_str(&format!("a = {}", m.adapter)).expect("adapter toml");
        let mut cfg = table["a"].as_table().expect("table").clone();
        let plugin = cfg.remove("plugin").and_then(|p| p.as_str().map(str::to_string)).expect("plugin");
        let mut adapters = Adapters::none(model.sites().len());
        adapters
            .attach(
                reg.new_method(&plugin, &serde_json::to_string(&cfg).expect("json"), &st).expect("instance"),
                model.sites(),
            )
            .expect("attach");
        for p in adapters.methods()[0].params() {
            let noise = Tensor::randn(0f32, 0.3, p.var.dims(), &Device::Cpu).expect("randn");
            p.var.set(&(p.var.as_tensor() + noise).expect("add")).expect("set");
        }
        let unmerged = model.forward(&ids(), None, &adapters).expect("forward").logits.expect("logits");
        merge_into_base(model.as_ref(), &mut adapters).expect("merge");
        let merged = model.forward(&ids(), None, &adapters).expect("forward").logits.expect("logits");
        let d = max_abs_diff(&merged, &unmerged);
        println!("{}: merged vs unmerged max abs diff {d:e}", m.name);
        assert!(d <= 1e-4, "{}: merging changed the outputs by {d}", m.name);
    }
}
