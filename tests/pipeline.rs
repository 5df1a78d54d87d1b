//! The multi-stage runner: handoff policies change exactly what they should, a bad
//! plugin name fails before training, and the run directory holds its records.

mod support;

use candle_core::Device;
use stagecraft_core::checkpoint;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::pipeline::Pipeline;
use stagecraft_core::plugin::Registry;
use std::collections::BTreeMap;
use std::path::Path;
use support::scratch;

fn config(handoff: &str, third_adapters: &str) -> String {
    format!(
        r#"
[run]
name = "t"
seed = 3

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=8&digits=1&seed=1" }}
optimizer = {{ lr = 3e-3 }}
max_steps = 3
batch_size = 8
seq_len = 24

[[stages]]
name = "adapt_add"
objective = "completion"
data = {{ train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=8&digits=1&seed=2" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 2, alpha = 4, init = "gaussian" }}]
max_steps = 3
batch_size = 8
seq_len = 12

[[stages]]
name = "adapt_sub"
objective = "completion"
data = {{ train = "synthetic:sub?n=64&digits=1", eval = "synthetic:sub?n=8&digits=1&seed=3", replay = {{ from = "adapt_add", ratio = 0.25 }} }}
optimizer = {{ lr = 1e-2 }}
handoff = {{ adapters = "{handoff}" }}
{third_adapters}
max_steps = 3
batch_size = 8
seq_len = 12
"#
    )
}

fn run(name: &str, text: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    let cfg = PipelineConfig::from_str(text, "t.toml", &[]).expect("valid config");
    let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    let (p, _) = Pipeline::new(cfg, reg, &dir.join("run"), true).expect("pipeline");
    let summary = p.run().expect("run");
    assert_eq!(summary.stages.len(), 3);
    dir.join("run")
}

fn tensors(run: &Path, stage: &str) -> BTreeMap<String, Vec<f32>> {
    let c = checkpoint::load(&run.join("checkpoints").join(stage), &Device::Cpu).expect("checkpoint");
    c.tensors.into_iter().filter(|(k, _)| !k.starts_with("optimizer.")).map(|(k, t)| (k, t.flatten_all().expect("f").to_vec1::<f32>().expect("v"))).collect()
}

fn adapters(t: &BTreeMap<String, Vec<f32>>) -> Vec<&String> {
    t.keys().filter(|k| k.starts_with("adapter.")).collect()
}

#[test]
fn a_bad_plugin_fails_before_training() {
    let dir = scratch("pipe-bad");
    for (text, want) in [
        (config("merge", "").replace(r#"plugin = "lora""#, r#"plugin = "loraa""#), "no method plugin named `loraa`"),
        (config("merge", "").replace("targets = [\"q_proj\", \"v_proj\"]", "targets = [\"q_proj\"], rank = 4"), "unknown field `rank`"),
        (config("merge", "").replace("optimizer = { lr = 3e-3 }", "optimizer = { name = \"adamz\", lr = 3e-3 }"), "no optimizer plugin named `adamz`"),
        (config("merge", "").replace("synthetic:add?n=64", "synthetic:addd?n=64"), "addd"),
        (config("merge", "").replace("synthetic:add?n=64&digits=1", "nowhere/missing.jsonl"), "data source `nowhere/missing.jsonl`: no such file"),
    ] {
        let cfg = PipelineConfig::from_str(&text, "t.toml", &[]).expect("parses");
        let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
        let err = Pipeline::new(cfg, reg, &dir.join("run"), true).err().expect("must fail").to_string();
        assert!(err.contains(want) && !err.contains('\n'), "{err}");
        assert!(!dir.join("run/metrics.jsonl").exists(), "nothing trained");
    }
}

fn one_stage(lr: f64, extra: &str) -> String {
    one_stage_of(lr, 1, extra)
}

fn one_stage_of(lr: f64, steps: u64, extra: &str) -> String {
    format!(
        r#"
[run]
seed = 5
[model]
arch = "llama"
hidden_size = 16
num_layers = 2
num_heads = 2
[[stages]]
name = "ft"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=32&digits=1" }}
optimizer = {{ name = "sgd", lr = {lr}, momentum = 0.0 }}
max_steps = {steps}
batch_size = 8
seq_len = 16
{extra}
"#
    )
}

fn stage_weights(name: &str, text: &str) -> BTreeMap<String, Vec<f32>> {
    let dir = scratch(name);
    let cfg = PipelineConfig::from_str(text, "t.toml", &[]).expect("valid config");
    let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    let (p, _) = Pipeline::new(cfg, reg, &dir.join("run"), true).expect("pipeline");
    p.run().expect("run");
    tensors(&dir.join("run"), "ft")
}

#[test]
fn layerwise_lr_decay_scales_each_layers_update() {
    // One SGD step from the same start: W = W0 - lr·m·g, with m the layer's multiplier.
    let a = stage_weights("llrd-a", &one_stage(0.1, ""));
    let c = stage_weights("llrd-c", &one_stage(0.2, ""));
    let b = stage_weights("llrd-b", &one_stage(0.1, "train = { layer_lr_decay = 0.5 }"));
    let ratio = |name: &str| -> f64 {
        let (wa, wb, wc) = (&a[name], &b[name], &c[name]);
        // W0 = 2·W_A − W_C; the ratio of updates is (W_B − W0) / (W_A − W0).
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..wa.len() {
            let w0 = 2.0 * wa[i] as f64 - wc[i] as f64;
            num += (wb[i] as f64 - w0) * (wa[i] as f64 - w0);
            den += (wa[i] as f64 - w0).powi(2);
        }
        num / den
    };
    for (name, want) in [
        ("model.lm_head.weight", 1.0),
        ("model.model.layers.1.mlp.up_proj.weight", 1.0),
        ("model.model.layers.0.mlp.up_proj.weight", 0.5),
        ("model.model.embed_tokens.weight", 0.25),
    ] {
        let got = ratio(name);
        assert!((got - want).abs() < 1e-2, "{name}: update ratio {got}, expected {want}");
    }
}

#[test]
fn unfreezing_starts_training_at_the_step_after_the_given_one() {
    // `at_step = 2`: the layer is frozen for steps 1 and 2 and trains from step 3.
    let unfreeze = r#"train = { freeze = ["model.layers.0"], unfreeze = [{ at_step = 2, modules = ["model.layers.0"] }] }"#;
    let frozen = r#"train = { freeze = ["model.layers.0"] }"#;
    let run = |name: &str, extra: &str, steps: u64| stage_weights(name, &one_stage_of(0.1, steps, extra));
    let l0 = "model.model.layers.0.mlp.up_proj.weight";
    // Never trained = its initial value (every run starts from the same seeded init).
    let init = run("unfreeze-init", frozen, 2);
    assert_eq!(run("unfreeze-at-2-of-2", unfreeze, 2)[l0], init[l0], "still frozen at step 2");
    assert_ne!(run("unfreeze-at-2-of-3", unfreeze, 3)[l0], init[l0], "trains at step 3");
    // Unfrozen from the start is never frozen.
    let early = run("unfreeze-0", &unfreeze.replace("at_step = 2", "at_step = 0"), 4);
    assert_eq!(early[l0], run("unfreeze-none", "train = { freeze = [] }", 4)[l0]);
}

#[test]
fn an_injected_nan_restores_the_last_good_state_and_continues() {
    let text = one_stage(0.05, "").replace("objective = \"causal_lm\"", "objective = { name = \"nan_loss\", nan_at = [14] }").replace("max_steps = 1", "max_steps = 30");
    let dir = scratch("nan");
    let cfg = PipelineConfig::from_str(&text, "t.toml", &[]).expect("valid");
    let mut reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    reg.load_file(&support::compat().faulty).expect("faulty plugins");
    let (p, _) = Pipeline::new(cfg, reg, &dir.join("run"), true).expect("pipeline");
    let summary = p.run().expect("recovers and finishes");
    assert_eq!(summary.stages[0].1, 30);
    let rows = stagecraft_core::report::MetricsLog::read(&dir.join("run/metrics.jsonl")).expect("metrics");
    let nan_rows = rows.iter().filter(|r| r.loss.is_some_and(f64::is_nan)).count();
    assert_eq!(nan_rows, 1, "the NaN step is logged once");
    let events = stagecraft_core::report::EventLog::read(&dir.join("run/events.jsonl")).expect("events");
    assert!(events.iter().any(|e| e.kind == "anomaly" && e.step == 14 && e.message.contains("restored step 10")), "{events:?}");
    // Restored to step 10 (the last good state) and retrained from there at half the LR.
    let lrs: Vec<f64> = rows.iter().filter(|r| r.step == 12 && r.loss.is_some_and(f64::is_finite)).filter_map(|r| r.lr).collect();
    assert_eq!(lrs.len(), 2, "step 12 ran twice: {lrs:?}");
    assert!((lrs[1] - lrs[0] * 0.5).abs() < 1e-12);
}

#[test]
fn a_loss_spike_is_rolled_back_unless_within_the_margin() {
    let text = |margin: f64| {
        one_stage(0.05, &format!("anomaly = {{ spike_margin = {margin} }}"))
            .replace("objective = \"causal_lm\"", "objective = { name = \"nan_loss\", spike_at = [14] }")
            .replace("max_steps = 1", "max_steps = 20")
    };
    for (margin, recovered) in [(0.5, true), (1000.0, false)] {
        let dir = scratch(&format!("spike-{margin}"));
        let cfg = PipelineConfig::from_str(&text(margin), "t.toml", &[]).expect("valid");
        let mut reg = Registry::with_builtins(dir.join("reports")).expect("registry");
        reg.load_file(&support::compat().faulty).expect("faulty plugins");
        let (p, _) = Pipeline::new(cfg, reg, &dir.join("run"), true).expect("pipeline");
        assert_eq!(p.run().expect("finishes").stages[0].1, 20);
        let rows = stagecraft_core::report::MetricsLog::read(&dir.join("run/metrics.jsonl")).expect("metrics");
        let at_14: Vec<f64> = rows.iter().filter(|r| r.step == 14 && r.set.is_none()).filter_map(|r| r.loss).collect();
        let at_12 = rows.iter().filter(|r| r.step == 12 && r.set.is_none()).count();
        if recovered {
            assert_eq!(at_14.len(), 2, "the spike is logged, then step 14 runs again: {at_14:?}");
            assert!(at_14[0] > 10.0 * at_14[1], "{at_14:?}");
            assert_eq!(at_12, 2, "restored to step 10");
        } else {
            assert_eq!((at_14.len(), at_12), (1, 1), "a jump smaller than the margin is not a spike");
        }
    }
}

#[test]
fn a_target_matching_no_site_fails_before_training() {
    let text = config("merge", "").replace("targets = [\"q_proj\", \"v_proj\"]", "targets = [\"qq_proj\"]");
    let dir = scratch("pipe-target");
    let cfg = PipelineConfig::from_str(&text, "t.toml", &[]).expect("parses");
    let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    let (p, _) = Pipeline::new(cfg, reg, &dir.join("run"), true).expect("pipeline");
    let err = p.run().err().expect("must fail").to_string();
    assert!(err.contains("stage `adapt_add`") && err.contains("`qq_proj` matches no linear site"), "{err}");
    let rows = stagecraft_core::report::MetricsLog::read(&dir.join("run/metrics.jsonl")).expect("metrics");
    assert!(rows.is_empty(), "nothing trained");
}
