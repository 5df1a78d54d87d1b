//! The shifted next-token cross-entropy that `causal_lm` and `completion` share.
//!
//! Shapes: `logits [b, s, v]` and `targets [b, s]` (i64, [`IGNORE`] where no loss).
//! Position `i` predicts token `i + 1`, so `logits[:, :-1]` meets `targets[:, 1:]`:
//! `n = b·(s-1)` rows. The loss is the mean over non-ignored rows (as PyTorch's
//! `cross_entropy(..., ignore_index=-100)`, and Hugging Face's causal-LM loss), computed
//! in f32 whatever the model's dtype. A batch with no target tokens has loss 0.
//!
//! ```
//! use stagecraft_stages::next_token::IGNORE;
//! assert_eq!(IGNORE, -100);
//! ```

use stagecraft_sdk::prelude::*;

/// The target value of positions without loss (prompt, padding), as Hugging Face.
pub const IGNORE: i64 = -100;

/// The next-token loss of one batch, and per-row counts for the metrics.
pub(crate) struct NextToken<'h> {
    /// Mean loss over target tokens, a scalar.
    pub loss: Tensor<'h>,
    /// Mean loss over each sequence's target tokens, `[b]`.
    pub per_example: Tensor<'h>,
    /// Per sequence: target tokens whose argmax prediction is right.
    pub correct: Vec<f32>,
    /// Per sequence: target tokens.
    pub tokens: Vec<f32>,
}

impl NextToken<'_> {
    /// The `token_accuracy` metric: correct predictions over target tokens.
    pub fn token_accuracy(&self) -> Metric {
        let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
        Metric::new("token_accuracy", sum(&self.correct), sum(&self.tokens))
    }
}

/// `max(x, 1)`: a count safe to divide by.
fn at_least_one<'h>(host: Host<'h>, x: &Tensor<'h>) -> Result<Tensor<'h>> {
    x.maximum(&host.scalar(1.0)?)
}

/// The loss of `logits` against `targets` shifted by one; `stage` names the caller in
/// errors, `smoothing` is the label smoothing ε.
pub(crate) fn next_token_loss<'h>(
    host: Host<'h>,
    stage: &str,
    logits: Tensor<'h>,
    targets: Tensor<'h>,
    smoothing: f64,
) -> Result<NextToken<'h>> {
    let (b, s, v) = match logits.shape()?.as_slice() {
        &[b, s, v] => (b, s, v),
        d => bail!("{stage}: model output `logits` has shape {d:?}, expected [batch, seq, vocab]"),
    };
    let target_shape = targets.shape()?;
    if target_shape != [b, s] {
        bail!("{stage}: targets have shape {target_shape:?}, but logits are {:?}", [b, s, v]);
    }
    if s < 2 {
        bail!("{stage}: sequences need at least 2 tokens for a next-token loss, got {s}");
    }
    let n = b * (s - 1);
    let logits = logits.narrow(1, 0, s - 1)?.reshape(&[n, v])?.to_dtype(DType::F32)?;
    let targets = targets.narrow(1, 1, s - 1)?.reshape(&[n])?;

    let valid = targets.compare(CmpOp::NE, &host.full(&[n], IGNORE as f64, DType::I64)?)?.to_dtype(DType::F32)?;
    let mut token_loss = logits.cross_entropy(&targets, IGNORE)?;
    if smoothing > 0.0 {
        // PyTorch's label smoothing: ε times the mean of -log p over the vocabulary,
        // on target rows only.
        let uniform = logits.log_softmax(1)?.mean(&[1], false)?.neg()?.mul(&valid)?;
        token_loss = token_loss.affine(1.0 - smoothing, 0.0)?.add(&uniform.affine(smoothing, 0.0)?)?;
    }
    let loss = token_loss.sum_all()?.div(&at_least_one(host, &valid.sum_all()?)?)?;

    let row_tokens = valid.reshape(&[b, s - 1])?.sum(&[1], false)?;
    let row_loss = token_loss.reshape(&[b, s - 1])?.sum(&[1], false)?;
    let per_example = row_loss.div(&at_least_one(host, &row_tokens)?)?;

    // Ignored rows hold -100, which no argmax equals: hits are on target rows only.
    let predicted = logits.argmax(1, false)?.to_dtype(DType::I64)?;
    let hits = predicted.compare(CmpOp::EQ, &targets)?.to_dtype(DType::F32)?;
    let correct = hits.reshape(&[b, s - 1])?.sum(&[1], false)?.to_vec_f32()?;
    Ok(NextToken { loss, per_example, correct, tokens: row_tokens.to_vec_f32()? })
}
