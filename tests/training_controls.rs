//! Gradient accumulation and global-norm clipping in the trainer.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::Registry;
use stagecraft_core::train::{Batch, Trainer};
use support::{scratch, state};

const CFG: MlpLmConfig = MlpLmConfig { vocab: 32, hidden: 16, intermediate: 24, layers: 2 };

fn trainer(clip: Option<f64>) -> Trainer {
    let reg = Registry::with_builtins(scratch("controls")).expect("built-ins");
    let st = state();
    let model = MlpLm::new(CFG, 11, &Device::Cpu).expect("model");
    let adapters = Adapters::none(model.sites().len());
    let stage = reg.new_stage("causal_lm", "{}", &st).expect("stage");
    let opt = reg.new_optimizer("sgd", r#"{"lr": 1.0, "momentum": 0.0}"#, &st).expect("sgd");
    let mut t = Trainer::new(st, Box::new(model), adapters, stage, opt).expect("trainer");
    t.grad_clip = clip;
    t
}

fn weights(t: &Trainer) -> Vec<Tensor> {
    t.params.iter().map(|p| p.var.as_tensor().copy().expect("copy")).collect()
}

fn max_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).expect("sub").abs().expect("abs").flatten_all().expect("f").max(0).expect("m").to_scalar::<f32>().expect("s")).fold(0.0, f32::max)
}

fn rows(r: &[[u32; 6]]) -> Batch {
    let flat: Vec<u32> = r.iter().flatten().copied().collect();
    Batch::tokens(Tensor::from_vec(flat, (r.len(), 6), &Device::Cpu).expect("ids"))
}

#[test]
fn two_accumulated_micro_batches_equal_one_batch_of_both() {
    let (a, b) = ([1u32, 4, 9, 2, 7, 3], [5u32, 5, 1, 30, 2, 8]);
    let mut whole = trainer(None);
    let out_whole = whole.train_step(&rows(&[a, b]), 0.1).expect("step");
    let mut accum = trainer(None);
    let out_accum = accum.train_step_accum(&[rows(&[a]), rows(&[b])], 0.1).expect("step");
    assert!((out_whole.loss - out_accum.loss).abs() < 1e-6);
    assert!((out_whole.grad_norm - out_accum.grad_norm).abs() < 1e-5);
    let d = max_diff(&weights(&whole), &weights(&accum));
    assert!(d < 1e-6, "weights differ by {d}");
}

#[test]
fn clipping_bounds_the_update_to_the_global_norm() {
    let batch = rows(&[[1, 4, 9, 2, 7, 3], [5, 5, 1, 30, 2, 8]]);
    let mut t = trainer(Some(1e-3));
    let before = weights(&t);
    // SGD, lr 1, no momentum: the update is the (clipped) gradient itself.
    let out = t.train_step(&batch, 1.0).expect("step");
    assert!(out.grad_norm > 1e-3, "test needs a gradient larger than the clip");
    let norm: f64 = weights(&t).iter().zip(&before).map(|(a, b)| (a - b).expect("sub").sqr().expect("sq").sum_all().expect("s").to_scalar::<f32>().expect("s") as f64).sum::<f64>().sqrt();
    assert!((norm - 1e-3).abs() < 1e-5, "update norm {norm}");
}
