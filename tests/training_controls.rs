//! Gradient accumulation and global-norm clipping in the trainer.
//!
//! Accumulation averages the micro-batches' losses, each micro-batch weighing the same
//! (the mean of their gradients), as dividing each micro-batch loss by `grad_accum`
//! does in PyTorch. With rows of equal length that is exactly one batch of all rows;
//! with padded rows it is the mean of the micro-batches' own token means.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::train::{Batch, Trainer};
use support::{bits, builtins, max_abs_diff, state};

const CFG: MlpLmConfig = MlpLmConfig { vocab: 32, hidden: 16, intermediate: 24, layers: 2 };

/// SGD without momentum, so a step moves each weight by exactly `-lr·g`.
fn trainer(clip: Option<f64>) -> Trainer {
    let reg = builtins();
    let st = state();
    let model = MlpLm::new(CFG, 11, &Device::Cpu).expect("model");
    let adapters = Adapters::none(model.sites().len());
    let stage = reg.new_objective("causal_lm", "{}", &st).expect("stage");
    let opt = reg.new_optimizer("sgd", r#"{"lr": 1.0, "momentum": 0.0}"#, &st).expect("sgd");
    let mut t = Trainer::new(st, Box::new(model), adapters, stage, opt).expect("trainer");
    t.set_grad_clip(clip);
    t
}

fn weights(t: &Trainer) -> Vec<Tensor> {
    t.params().iter().map(|p| p.var.as_tensor().copy().expect("copy")).collect()
}

fn largest_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter().zip(b).map(|(x, y)| max_abs_diff(x, y)).fold(0.0, f32::max)
}

/// Rows of six tokens, with how many of each are real (the rest is padding).
fn rows(r: &[([u32; 6], usize)]) -> Batch {
    let flat: Vec<u32> = r.iter().flat_map(|(ids, _)| *ids).collect();
    let mask: Vec<u32> = r.iter().flat_map(|&(_, real)| (0..6).map(move |i| u32::from(i < real))).collect();
    let mut b = Batch::tokens(Tensor::from_vec(flat, (r.len(), 6), &Device::Cpu).expect("ids"));
    b.attention_mask = Some(Tensor::from_vec(mask, (r.len(), 6), &Device::Cpu).expect("mask"));
    b
}

#[test]
fn two_accumulated_micro_batches_of_full_rows_equal_one_batch_of_both() {
    let (a, b) = (([1u32, 4, 9, 2, 7, 3], 6), ([5u32, 5, 1, 30, 2, 8], 6));
    let mut whole = trainer(None);
    let out_whole = whole.train_step(&rows(&[a, b]), 0.1).expect("step");
    let mut accum = trainer(None);
    let out_accum = accum.train_step_accum(&[rows(&[a]), rows(&[b])], 0.1).expect("step");
    assert!((out_whole.loss - out_accum.loss).abs() < 1e-6);
    assert!((out_whole.grad_norm - out_accum.grad_norm).abs() < 1e-6);
    let d = largest_diff(&weights(&whole), &weights(&accum));
    assert!(d < 1e-7, "weights differ by {d}");
}

#[test]
fn accumulating_padded_micro_batches_averages_their_gradients_and_ignores_padding() {
    // Two rows with 6 real tokens, then two with 3 and 4: the micro-batches' token
    // means weigh the same.
    let full = rows(&[([1, 4, 9, 2, 7, 3], 6), ([5, 5, 1, 30, 2, 8], 6)]);
    let padded = |pad: u32| rows(&[([3, 8, 2, pad, pad, pad], 3), ([7, 1, 1, 6, pad, pad], 4)]);
    let start = weights(&trainer(None));
    // Each micro-batch alone, at LR 1: the weights move by -g.
    let moved = |batch: &Batch| {
        let mut t = trainer(None);
        let out = t.train_step(batch, 1.0).expect("step");
        (weights(&t), out.loss)
    };
    let ((w_full, l_full), (w_padded, l_padded)) = (moved(&full), moved(&padded(0)));
    let mut accum = trainer(None);
    let out = accum.train_step_accum(&[full.clone(), padded(0)], 1.0).expect("step");
    assert!(
        (out.loss - (l_full + l_padded) / 2.0).abs() < 1e-6,
        "loss {} is not the mean of {l_full} and {l_padded}",
        out.loss
    );
    for (i, got) in weights(&accum).iter().enumerate() {
        // start - (g_full + g_padded)/2 = (w_full + w_padded)/2
        let want = ((&w_full[i] + &w_padded[i]).expect("add") / 2.0).expect("half");
        let d = max_abs_diff(got, &want);
        assert!(d < 1e-7, "parameter {i}: accumulated step differs from the mean of the micro-batch steps by {d}");
    }
    assert!(largest_diff(&weights(&accum), &start) > 1e-3, "the step moved nothing");
    // The padding tokens are masked out of the loss: any pad id gives the same step.
    let mut other = trainer(None);
    other.train_step_accum(&[full, padded(31)], 1.0).expect("step");
    for (a, b) in weights(&accum).iter().zip(weights(&other).iter()) {
        assert_eq!(bits(a), bits(b), "padding changed the step");
    }
}

#[test]
fn clipping_scales_the_gradient_to_the_global_norm() {
    let batch = rows(&[([1, 4, 9, 2, 7, 3], 6), ([5, 5, 1, 30, 2, 8], 5)]);
    let max = 1e-3;
    let mut clipped = trainer(Some(max));
    let out = clipped.train_step(&batch, 1.0).expect("step");
    assert!(out.grad_norm > 10.0 * max, "test needs a gradient larger than the clip: {}", out.grad_norm);
    // Clipping multiplies every gradient by max / (norm + 1e-6), as torch's
    // clip_grad_norm_ does: an unclipped step at that LR moves the weights the same.
    let mut scaled = trainer(None);
    let factor = max / (out.grad_norm + 1e-6);
    let unclipped = scaled.train_step(&batch, factor).expect("step");
    assert_eq!(unclipped.grad_norm, out.grad_norm, "the reported norm is the one before clipping");
    let d = largest_diff(&weights(&clipped), &weights(&scaled));
    assert!(d <= 1e-9, "clipped step differs from the gradient scaled to norm {max} by {d}");
    // And the update really has that norm (up to f32 rounding of the weights).
    let start = weights(&trainer(None));
    let norm: f64 = weights(&clipped)
        .iter()
        .zip(&start)
        .map(|(a, b)| {
            (a - b).and_then(|d| d.sqr()).and_then(|d| d.sum_all()).and_then(|s| s.to_scalar::<f32>()).expect("norm")
                as f64
        })
        .sum::<f64>()
        .sqrt();
    assert!((norm - max).abs() < 1e-3 * max, "update norm {norm}");
}

/// Each row's own loss: the mean token loss of a batch of that row alone.
fn row_loss(row: ([u32; 6], usize)) -> f64 {
    trainer(None).eval_batch(&rows(&[row])).expect("eval").0
}

#[test]
fn a_step_over_mixed_rows_reports_the_task_and_replay_losses_apart() {
    let (t1, t2) = (([1u32, 4, 9, 2, 7, 3], 6), ([3u32, 8, 2, 0, 0, 0], 3));
    let (r1, r2) = (([5u32, 5, 1, 30, 2, 8], 6), ([7u32, 1, 1, 6, 0, 0], 4));
    let mixed = |a, b| Batch { replay_from: Some(1), ..rows(&[a, b]) };
    let mut t = trainer(None);
    let out = t.train_step_accum(&[mixed(t1, r1), mixed(t2, r2)], 0.1).expect("step");
    let split = out.split.expect("a mixed step reports its split");
    let task = (row_loss(t1) + row_loss(t2)) / 2.0;
    let replay = (row_loss(r1) + row_loss(r2)) / 2.0;
    assert!((split.task - task).abs() < 1e-5, "task loss {} vs rows alone {task}", split.task);
    let got = split.replay.expect("replayed rows were drawn");
    assert!((got - replay).abs() < 1e-5, "replay loss {got} vs rows alone {replay}");
    // Far enough apart (against the 1e-5 above) that swapped parts would fail.
    assert!((split.task - got).abs() > 1e-4, "the two parts are told apart: {} vs {got}", split.task);

    let plain = trainer(None).train_step(&rows(&[t1, r1]), 0.1).expect("step");
    assert_eq!(plain.split, None, "no replay, no split");
}
