//! bf16 mixed precision on the CPU: the matrix products in bfloat16, everything else
//! f32. It must stay close to fp32 — the fixtures' outputs within 2% of the largest
//! reference value (the GPU check holds the CUDA path to the same bound) — and a model
//! must train as it does in fp32.

mod support;

use candle_core::{DType, Device, Tensor};
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::device::Precision;
use stagecraft_core::model::{load_model, Adapters};
use stagecraft_core::pipeline::Pipeline;
use stagecraft_core::plugin::Registry;
use stagecraft_core::report::{MetricsLog, Split};
use support::scratch;

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(support::root().join("tests/fixtures/llama-tiny/reference.safetensors"), &Device::Cpu).expect("reference")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().expect("abs").flatten_all().expect("flat").max(0).expect("max").to_scalar::<f32>().expect("s")
}

#[test]
fn bf16_logits_stay_within_two_percent_of_the_fp32_reference() {
    let r = reference();
    let model = load_model(&support::root().join("tests/fixtures/llama-tiny/base"), &Device::Cpu).expect("model");
    let ids = r["input_ids"].to_dtype(DType::U32).expect("u32");
    let mut adapters = Adapters::none(model.sites().len());
    let fp32 = model.forward(&ids, None, &adapters).expect("forward").logits.expect("logits");
    adapters.set_precision(Precision::Bf16);
    let bf16 = model.forward(&ids, None, &adapters).expect("forward").logits.expect("logits");
    assert_eq!(bf16.dtype(), DType::F32, "outputs stay f32");
    let d = max_abs(&(&bf16 - &r["logits"]).expect("sub"));
    let d32 = max_abs(&(&fp32 - &r["logits"]).expect("sub"));
    println!("bf16 vs reference: max abs diff {d:e} ({:.2}% of the largest logit); fp32: {d32:e}", 100.0 * d / max_abs(&r["logits"]));
    assert!(d <= 0.02 * max_abs(&r["logits"]), "bf16 differs by {d}");
    assert!(d > d32, "bf16 should round more than fp32");
}

fn final_eval_loss(precision: &str) -> (f64, f64) {
    let text = format!(
        r#"
[run]
name = "p"
seed = 8
precision = "{precision}"

[model]
arch = "llama"
hidden_size = 32
num_layers = 2
num_heads = 4

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=256&digits=1", eval = "synthetic:arith_text?n=32&digits=1&seed=1" }}
optimizer = {{ lr = 5e-3 }}
max_steps = 30
eval_every = 5
batch_size = 16
seq_len = 24

[[stages]]
name = "lora"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=256&digits=1", eval = "synthetic:arith_text?n=32&digits=1&seed=1" }}
optimizer = {{ lr = 1e-2 }}
adapters = [{{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4 }}]
max_steps = 5
batch_size = 16
seq_len = 24
"#
    );
    let dir = scratch(&format!("precision-{precision}"));
    let cfg = PipelineConfig::from_str(&text, "p.toml", &[]).expect("config");
    let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    let (p, _) = Pipeline::new(cfg, reg, &dir.join("run"), true).expect("pipeline");
    p.run().expect("run");
    let rows = MetricsLog::read(&dir.join("run/metrics.jsonl")).expect("metrics");
    let losses: Vec<f64> = rows.iter().filter(|r| r.split == Split::Eval && r.stage == "pretrain" && r.set.as_deref() == Some("pretrain")).filter_map(|r| r.metrics.get("loss").copied()).collect();
    (losses[0], losses[losses.len() - 1])
}

#[test]
fn a_model_trains_in_bf16_as_it_does_in_fp32() {
    let (first32, last32) = final_eval_loss("fp32");
    let (first16, last16) = final_eval_loss("bf16");
    println!("eval loss fp32 {first32:.4} -> {last32:.4}, bf16 {first16:.4} -> {last16:.4}");
    assert!(last16 < first16 - 0.5, "bf16 did not learn");
    assert!((last16 - last32).abs() < 0.1 * last32, "bf16 ends at {last16}, fp32 at {last32}");
}
