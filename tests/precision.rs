//! bf16 mixed precision on the CPU: the matrix products in bfloat16, everything else
//! f32. It must stay close to fp32 — the fixtures' outputs within 2% of the largest
//! reference value (the GPU check holds the CUDA path to the same bound) — and a model
//! must train as it does in fp32.

mod support;

use candle_core::{DType, Device};
use stagecraft_core::device::Precision;
use stagecraft_core::model::{load_model, Adapters};
use stagecraft_core::report::Split;
use support::{max_abs, max_abs_diff};

#[test]
fn bf16_logits_stay_within_two_percent_of_the_fp32_reference() {
    let r = support::reference("llama-tiny");
    let model = load_model(&support::fixture("llama-tiny", "base"), &Device::Cpu).expect("model");
    let ids = r["input_ids"].to_dtype(DType::U32).expect("u32");
    let mut adapters = Adapters::none(model.sites().len());
    let fp32 = model.forward(&ids, None, &adapters).expect("forward").logits.expect("logits");
    adapters.set_precision(Precision::Bf16);
    let bf16 = model.forward(&ids, None, &adapters).expect("forward").logits.expect("logits");
    assert_eq!(bf16.dtype(), DType::F32, "outputs stay f32");
    let d = max_abs_diff(&bf16, &r["logits"]);
    let d32 = max_abs_diff(&fp32, &r["logits"]);
    println!(
        "bf16 vs reference: max abs diff {d:e} ({:.2}% of the largest logit); fp32: {d32:e}",
        100.0 * d / max_abs(&r["logits"])
    );
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
    let run = support::run_pipeline(&format!("precision-{precision}"), &text);
    let rows = support::metrics(&run.dir);
    let losses: Vec<f64> = rows
        .iter()
        .filter(|r| r.split == Split::Eval && r.stage == "pretrain" && r.set.as_deref() == Some("pretrain"))
        .filter_map(|r| r.metrics.get("loss").copied())
        .collect();
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
