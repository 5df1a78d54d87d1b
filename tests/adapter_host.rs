//! What the host owes adaptation methods, each a bug a plugin author once hit:
//! - prompt tuning's virtual tokens never reach an objective or an evaluation (causal
//!   LM, completion, classification, and later stages' evaluation of earlier sets);
//! - methods that read base weights (DoRA's magnitudes, prompt tuning started from the
//!   vocabulary) pass the checks a pipeline runs before training;
//! - two adapters of one plugin in one stage keep separate parameters and optimizer
//!   state;
//! - a `merge` handoff of a method that cannot merge fails at `--check`, naming the
//!   stage;
//! - roles name the same sites across architectures, and nothing else;
//! - plugins get the model's shape and exact integer tensors;
//! - LoRA adapters combine into one (cat exactly, SVD to a rank), also as a handoff.

mod support;

use candle_core::{DType, Device, Tensor};
use stagecraft_core::adapter::{combine_lora, Combine, LoraInput};

use stagecraft_core::config::PipelineConfig;
use stagecraft_core::model::{load_model, Adapters, Model};
use stagecraft_core::pipeline::Pipeline;
use stagecraft_core::plugin::{host_for, InstanceStore, Registry};
use stagecraft_sdk::TensorHandle;
use std::rc::Rc;
use support::{scratch, state};

fn header() -> &'static str {
    r#"
[run]
name = "h"
seed = 5

[model]
arch = "llama"
hidden_size = 32
num_layers = 2
num_heads = 4
num_kv_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }
optimizer = { lr = 3e-3 }
max_steps = 3
batch_size = 8
seq_len = 24
"#
}

fn parse(text: &str) -> PipelineConfig {
    PipelineConfig::from_str(text, "h.toml", &[]).expect("valid config")
}

fn run(name: &str, text: &str) -> std::path::PathBuf {
    support::run_pipeline(name, text).dir
}

fn plan_error(text: &str) -> String {
    let reg = Registry::with_builtins(scratch("plan")).expect("registry");
    let e = Pipeline::plan(&parse(text), &reg).expect_err("the plan is refused").to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn prompt_tuning_reaches_every_objective_and_later_evaluations_without_virtual_tokens() {
    let dir = scratch("prompt-objectives-data");
    let labels = dir.join("sentiment.jsonl");
    let rows: String = (0..32)
        .map(|i| format!("{{\"text\": \"{} {}\", \"label\": {}}}\n", if i % 2 == 0 { "good" } else { "bad" }, i, i % 2))
        .collect();
    std::fs::write(&labels, rows).expect("write data");
    let text = format!(
        r#"{}
[[stages]]
name = "prompt_lm"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=2" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{{ plugin = "prompt_tuning", num_virtual_tokens = 4, init = "text", init_text = "1+1=2" }}]
max_steps = 2
batch_size = 8
seq_len = 24

[[stages]]
name = "prompt_add"
objective = "completion"
data = {{ train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=16&digits=1&seed=3" }}
optimizer = {{ lr = 1e-2 }}
handoff = {{ adapters = "continue" }}
max_steps = 2
batch_size = 8
seq_len = 12

[[stages]]
name = "prompt_class"
objective = {{ name = "classification", num_classes = 2 }}
data = {{ train = "{}", eval = "{}" }}
optimizer = {{ lr = 1e-2 }}
handoff = {{ adapters = "stack" }}
adapters = [{{ plugin = "prompt_tuning", num_virtual_tokens = 2 }}]
max_steps = 2
batch_size = 8
seq_len = 12

[[stages]]
name = "after"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=4" }}
optimizer = {{ lr = 1e-3 }}
handoff = {{ adapters = "stack" }}
adapters = [{{ plugin = "lora", targets = ["q_proj"], r = 2 }}]
max_steps = 1
batch_size = 8
seq_len = 24
"#,
        header(),
        labels.display(),
        labels.display()
    );
    let run_dir = run("prompt-objectives", &text);
    // The last stage evaluated every earlier set through both prompts.
    let retention: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("retention.json")).expect("retention"))
            .expect("json");
    let last = retention.to_string();
    for set in ["pretrain", "prompt_lm", "prompt_add", "prompt_class", "after"] {
        assert!(last.contains(&format!("\"{set}\"")), "{set} missing from {last}");
    }
}

#[test]
fn methods_that_read_base_weights_pass_the_pre_training_checks() {
    let text = format!(
        r#"{}
[[stages]]
name = "dora"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{{ plugin = "lora", targets = ["q_proj"], r = 2, use_dora = true }}, {{ plugin = "prompt_tuning", num_virtual_tokens = 3, init = "sample_vocab" }}]
max_steps = 1
batch_size = 8
seq_len = 12
"#,
        header()
    );
    let reg = Registry::with_builtins(scratch("dora-plan")).expect("registry");
    let plan = Pipeline::plan(&parse(&text), &reg).expect("the checks pass");
    assert!(
        plan.contains("adapter lora on 2 sites: ")
            && plan.contains("adapter prompt_tuning on 1 site: model.input_embeds (input_embeds)"),
        "{plan}"
    );
    run("dora-run", &text);
}

fn two_loras(r1: usize, r2: usize) -> String {
    format!(
        r#"{}
[[stages]]
name = "two"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{{ plugin = "lora", targets = ["q_proj"], r = {r1}, init = "gaussian" }}, {{ plugin = "lora", targets = ["q_proj"], r = {r2}, init = "gaussian" }}]
max_steps = 3
batch_size = 8
seq_len = 24
"#,
        header()
    )
}

#[test]
fn two_adapters_of_one_plugin_keep_separate_parameters_and_optimizer_state() {
    // Different ranks: the second instance's AdamW state used to collide with the first's.
    let t = support::checkpoint_tensors(&run("two-ranks", &two_loras(8, 4)), "two");
    let a0 = &t["adapter.0.lora.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let a1 = &t["adapter.1.lora.model.layers.0.self_attn.q_proj.lora_A.weight"];
    assert_eq!((a0.dims(), a1.dims()), ([8, 32].as_slice(), [4, 32].as_slice()));
    // Equal ranks: two moments per parameter, one set per instance, and they differ.
    let t = support::checkpoint_tensors(&run("two-equal", &two_loras(4, 4)), "two");
    let moments: Vec<&String> = t
        .keys()
        .filter(|k| k.starts_with("optimizer.exp_avg.") && k.ends_with("layers.0.self_attn.q_proj.lora_B.weight"))
        .collect();
    assert_eq!(moments.len(), 2, "{moments:?}");
    let (m0, m1) = (&t[moments[0]], &t[moments[1]]);
    let diff = (m0 - m1).expect("sub").abs().expect("abs").sum_all().expect("sum").to_scalar::<f32>().expect("scalar");
    assert!(diff > 0.0, "both instances share one optimizer state");
}

#[test]
fn a_merge_handoff_of_a_method_that_cannot_merge_fails_at_check_naming_the_stages() {
    for (plugin, adapter) in [
        ("bottleneck", r#"{ plugin = "bottleneck" }"#),
        ("prefix_tuning", r#"{ plugin = "prefix_tuning", num_virtual_tokens = 2 }"#),
    ] {
        let text = format!(
            r#"{}
[[stages]]
name = "adapt"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{adapter}]
max_steps = 1
batch_size = 8
seq_len = 12

[[stages]]
name = "next"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
handoff = {{ adapters = "merge" }}
max_steps = 1
batch_size = 8
seq_len = 12
"#,
            header()
        );
        let e = plan_error(&text);
        assert!(
            e.contains("stage `next`")
                && e.contains(&format!("adapter `{plugin}` of stage `adapt`"))
                && e.contains("cannot be merged"),
            "{e}"
        );
    }
}

#[test]
fn roles_name_the_same_sites_across_architectures_and_nothing_else() {
    let reg = Registry::with_builtins(scratch("roles")).expect("registry");
    let attached = |model: &str, targets: &str| -> Vec<String> {
        let st = state();
        let m =
            load_model(&support::root().join("tests/fixtures").join(model).join("base"), &Device::Cpu).expect("model");
        st.register_model(m.as_ref());
        let mut a = Adapters::none(m.sites().len());
        a.attach(reg.new_method("lora", &format!(r#"{{"targets": {targets}}}"#), &st).expect("lora"), m.sites())
            .expect("attach");
        a.methods()[0].attachments().iter().map(|x| m.sites().infos()[x.site as usize].name.to_string()).collect()
    };
    assert_eq!(
        attached("bert-tiny", r#"["role:mlp_down"]"#),
        ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    );
    // A plain name is a suffix, as in PEFT: it also matches the attention's output.
    assert_eq!(attached("bert-tiny", r#"["output.dense"]"#).len(), 4);
    assert_eq!(
        attached("llama-tiny", r#"["role:mlp_down"]"#),
        ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    );
    assert_eq!(
        attached("bert-tiny", r#"["role:attn_q", "role:attn_v"]"#),
        attached("bert-tiny", r#"["query", "value"]"#)
    );
}

#[test]
fn plugins_get_the_models_shape_and_exact_integer_tensors() {
    let st = state();
    let model = load_model(&support::root().join("tests/fixtures/llama-tiny/base"), &Device::Cpu).expect("model");
    st.register_model(model.as_ref());
    let host = host_for(&st, &Rc::new(InstanceStore::default()), "probe");
    let spec = host.model_info().into_result().expect("model_info");
    assert_eq!(
        (spec.arch.as_str(), spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim),
        ("llama", 2, 4, 2, 16)
    );
    // 2^24 + 1 does not survive f32.
    let ids = [16_777_217i64, -100, 3];
    let h: TensorHandle =
        host.from_i64(ids.as_slice().into(), [3usize].as_slice().into()).into_result().expect("from_i64");
    let t = st.get(h).expect("tensor");
    assert_eq!((t.dtype(), t.to_vec1::<i64>().expect("v")), (DType::I64, ids.to_vec()));
    let role = host.site_role("model.layers.1.self_attn.o_proj".into()).into_result().expect("role");
    assert_eq!(role, stagecraft_sdk::SiteRole::ATTN_O);
}

fn forward(model: &dyn Model, adapters: &Adapters) -> Tensor {
    let ids = Tensor::new(&[[3u32, 9, 27, 81, 7, 21]], &Device::Cpu).expect("ids");
    model.forward(&ids, None, adapters).expect("forward").logits.expect("logits")
}

#[test]
fn lora_adapters_combine_exactly_by_cat_and_approximately_by_svd() {
    let reg = Registry::with_builtins(scratch("combine")).expect("registry");
    let st = state();
    st.set_training(false);
    let model = load_model(&support::root().join("tests/fixtures/llama-tiny/base"), &Device::Cpu).expect("model");
    st.register_model(model.as_ref());
    let configs = [
        serde_json::json!({"targets": ["q_proj", "v_proj"], "r": 4, "alpha": 8}),
        serde_json::json!({"targets": ["q_proj"], "r": 2, "alpha": 2, "use_rslora": true}),
    ];
    let mut stacked = Adapters::none(model.sites().len());
    for c in &configs {
        let k =
            stacked.attach(reg.new_method("lora", &c.to_string(), &st).expect("lora"), model.sites()).expect("attach");
        for p in stacked.methods()[k].params() {
            p.var.set(&Tensor::randn(0f32, 0.3, p.var.dims(), &Device::Cpu).expect("randn")).expect("set");
        }
    }
    let weights = [0.7, 0.3];
    let inputs: Vec<LoraInput> = stacked
        .methods()
        .iter()
        .zip(&configs)
        .zip(weights)
        .map(|((method, config), weight)| LoraInput { method, config, weight })
        .collect();
    let base = forward(model.as_ref(), &Adapters::none(model.sites().len()));
    // The weighted sum, as the reference: each adapter's delta scaled by its weight.
    let mut weighted = Adapters::none(model.sites().len());
    for (c, w) in configs.iter().zip(weights) {
        let mut c = c.clone();
        c["alpha"] = serde_json::json!(c["alpha"].as_f64().unwrap_or(0.0) * w);
        let k =
            weighted.attach(reg.new_method("lora", &c.to_string(), &st).expect("lora"), model.sites()).expect("attach");
        let source = &stacked.methods()[weighted.methods().len() - 1];
        for (p, q) in weighted.methods()[k].params().iter().zip(source.params()) {
            p.var.set(q.var.as_tensor()).expect("copy");
        }
    }
    let want = forward(model.as_ref(), &weighted);
    let diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .expect("sub")
            .abs()
            .expect("abs")
            .flatten_all()
            .expect("f")
            .max(0)
            .expect("m")
            .to_scalar::<f32>()
            .expect("s")
    };
    for (how, tol) in [(Combine::Cat, 1e-4), (Combine::Svd { rank: 6 }, 1e-4)] {
        let combined = combine_lora(&inputs, how, &reg, &st, model.as_ref()).expect("combine");
        let mut one = Adapters::none(model.sites().len());
        one.adopt(combined.method, model.sites()).expect("adopt");
        let d = diff(&forward(model.as_ref(), &one), &want);
        println!("{how:?}: max abs diff to the weighted sum {d:e}");
        assert!(d <= tol, "{how:?} differs from the weighted sum by {d}");
    }
    assert!(diff(&base, &want) > 1e-2, "the adapters change nothing");
    // Rank 1 keeps the strongest direction of each site's sum: in weight space it is
    // closer to the sum than nothing is, but not equal to it.
    let site = model.sites().index("model.layers.0.self_attn.q_proj").expect("site");
    let zero = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).expect("zeros");
    let delta = |how| {
        let c = combine_lora(&inputs, how, &reg, &st, model.as_ref()).expect("combine");
        c.method.merge(site, &zero).expect("delta weight")
    };
    let (full, one) = (delta(Combine::Cat), delta(Combine::Svd { rank: 1 }));
    let norm = |t: &Tensor| t.sqr().expect("sqr").sum_all().expect("sum").to_scalar::<f32>().expect("s").sqrt();
    let err = norm(&(&one - &full).expect("sub"));
    assert!(err > 1e-3 && err < norm(&full), "rank 1 error {err}, sum {}", norm(&full));
    // DoRA does not combine.
    let dora = serde_json::json!({"targets": ["q_proj"], "use_dora": true});
    let e = combine_lora(
        &[LoraInput { method: &stacked.methods()[0], config: &dora, weight: 1.0 }],
        Combine::Cat,
        &reg,
        &st,
        model.as_ref(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("DoRA"), "{e}");
}

#[test]
fn the_combine_handoff_replaces_the_adapters_by_one_that_trains() {
    let text = format!(
        r#"{}
[[stages]]
name = "a"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4 }}]
max_steps = 2
batch_size = 8
seq_len = 12

[[stages]]
name = "b"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
handoff = {{ adapters = "stack" }}
adapters = [{{ plugin = "lora", targets = ["q_proj"], r = 2 }}]
max_steps = 2
batch_size = 8
seq_len = 12

[[stages]]
name = "c"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1" }}
optimizer = {{ lr = 1e-2 }}
handoff = {{ adapters = "combine", combine = {{ method = "svd", rank = 3, weights = [1.0, 0.5] }} }}
max_steps = 2
batch_size = 8
seq_len = 12
"#,
        header()
    );
    let t = support::checkpoint_tensors(&run("combine-handoff", &text), "c");
    let adapters: Vec<&String> = t.keys().filter(|k| k.starts_with("adapter.")).collect();
    assert!(adapters.iter().all(|k| k.starts_with("adapter.0.lora.")), "one adapter after combining: {adapters:?}");
    assert_eq!(t["adapter.0.lora.model.layers.0.self_attn.q_proj.lora_A.weight"].dims(), [3, 32]);
    assert_eq!(t["adapter.0.lora.model.layers.1.self_attn.v_proj.lora_B.weight"].dims(), [16, 3]);
    // It trains: it has optimizer state.
    assert!(
        t.keys().any(|k| k.starts_with("optimizer.") && k.contains("lora_A")),
        "the combined adapter has no optimizer state"
    );
    // Combining a method that is not LoRA is refused before training.
    let bad = text.replace(
        r#"adapters = [{ plugin = "lora", targets = ["q_proj"], r = 2 }]"#,
        r#"adapters = [{ plugin = "ia3", targets = ["k_proj"] }]"#,
    );
    let e = plan_error(&bad);
    assert!(e.contains("stage `c`") && e.contains("combines plain LoRA adapters only") && e.contains("`ia3`"), "{e}");
}
