//! One vector per sequence for the classifier: `hidden [b, s, h]` (or the model's
//! `pooled [b, h]`) to `[b, h]`, per [`Pooling`].
//!
//! Positions come from `attention_mask [b, s]` (1 = real token) when the batch has
//! one; without it every position is real.
//!
//! ```
//! use stagecraft_stages::Pooling;
//! assert_ne!(Pooling::Last, Pooling::First);
//! ```

use crate::config::Pooling;
use stagecraft_sdk::prelude::*;

/// `[b, h]` from the model outputs. `causal` picks `auto`'s fallback when the model
/// gives no `pooled` output: the last real token for decoders, the first for encoders.
pub(crate) fn pool<'h>(
    host: Host<'h>,
    pooling: Pooling,
    causal: bool,
    outputs: &Named<'h>,
    batch: &Named<'h>,
) -> Result<Tensor<'h>> {
    let pooling = match (pooling, outputs.opt("pooled")) {
        (Pooling::Auto, Some(pooled)) => return Ok(pooled),
        (Pooling::Auto, None) if causal => Pooling::Last,
        (Pooling::Auto, None) => Pooling::First,
        (Pooling::Pooled, _) => return outputs.get("pooled"),
        (p, _) => p,
    };
    let hidden = outputs.get("hidden")?;
    let (b, s, h) = match hidden.shape()?.as_slice() {
        &[b, s, h] => (b, s, h),
        d => bail!("classification: model output `hidden` has shape {d:?}, expected [batch, seq, hidden]"),
    };
    if s == 0 {
        bail!("classification: model output `hidden` has an empty sequence, shape {:?}", [b, s, h]);
    }
    let mask = match batch.opt("attention_mask") {
        Some(m) if m.shape()? == [b, s] => Some(m.to_dtype(DType::F32)?),
        Some(m) => {
            bail!("classification: batch `attention_mask` has shape {:?}, but `hidden` is {:?}", m.shape()?, [b, s, h])
        }
        None => None,
    };
    match (pooling, mask) {
        (Pooling::First, _) => hidden.narrow(1, 0, 1)?.reshape(&[b, h]),
        (Pooling::Last, None) => hidden.narrow(1, s - 1, 1)?.reshape(&[b, h]),
        (Pooling::Last, Some(mask)) => last_real(host, hidden, &mask, [b, s, h]),
        (Pooling::Mean, None) => hidden.mean(&[1], false),
        (Pooling::Mean, Some(mask)) => masked_mean(host, hidden, &mask, [b, s]),
        (Pooling::Auto | Pooling::Pooled, _) => bail!("classification: pooling {pooling:?} was resolved above"),
    }
}

/// `hidden` at the last position where `mask` is 1, per row: the argmax of
/// `position · mask`, which is right for left and right padding alike (as Hugging
/// Face's sequence classifiers); a row without real tokens takes position 0.
fn last_real<'h>(host: Host<'h>, hidden: Tensor<'h>, mask: &Tensor<'h>, [b, s, h]: [usize; 3]) -> Result<Tensor<'h>> {
    let positions = host.arange(0, s as i64, DType::F32)?;
    let last = mask.mul(&positions)?.argmax(1, false)?.to_dtype(DType::F32)?;
    // Row r's position p is row r·s + p of hidden flattened to [b·s, h].
    let row_starts = host.arange(0, b as i64, DType::F32)?.affine(s as f64, 0.0)?;
    let rows = row_starts.add(&last)?.to_dtype(DType::U32)?;
    hidden.reshape(&[b * s, h])?.index_select(&rows, 0)
}

/// Mean of `hidden` over the positions where `mask` is 1 (zero for a row without any).
fn masked_mean<'h>(host: Host<'h>, hidden: Tensor<'h>, mask: &Tensor<'h>, [b, s]: [usize; 2]) -> Result<Tensor<'h>> {
    let weights = mask.to_dtype(hidden.dtype()?)?.reshape(&[b, s, 1])?;
    let total = hidden.mul(&weights)?.sum(&[1], false)?;
    let count = weights.sum(&[1], false)?.maximum(&host.full(&[], 1.0, hidden.dtype()?)?)?;
    total.div(&count)
}
