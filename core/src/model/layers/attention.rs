//! Scaled dot-product attention with an additive mask, and the mask itself.
//!
//! Shapes: queries `[batch, heads, q_len, head_dim]`, keys and values
//! `[batch, kv_heads, kv_len, head_dim]` (grouped-query attention when
//! `kv_heads < heads`), mask `[batch, 1, q_len, kv_len]`, output like the queries.
//! Scores and softmax run in f32.
//!
//! ```
//! # use candle_core::{Device, Tensor};
//! # use stagecraft_core::model::layers::{attention_mask, MASK_VALUE};
//! // One row of 3 tokens, the last one padding; causal.
//! let pad = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu)?;
//! let m = attention_mask(Some(&pad), 1, 3, 3, true, &Device::Cpu)?.expect("a mask");
//! let rows = m.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
//! assert_eq!(rows[1], vec![0.0, 0.0, MASK_VALUE]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use super::softmax::softmax;
use crate::device::Precision;
use candle_core::{DType, Device, Result, Tensor};

/// The score added at masked positions: `f32::MIN`, as transformers uses
/// `torch.finfo(float32).min`. Adding a score to it never overflows to `-inf`, so a
/// row with every key masked softmaxes to a uniform row, never to NaN.
pub const MASK_VALUE: f32 = f32::MIN;

/// The value [`extend_mask`] gives the positions it adds (virtual tokens, prefix
/// keys): keys every query may see, whichever example it belongs to.
pub const SHARED: f32 = -1.0;

/// The additive mask `[batch, 1, q_len, kv_len]` (0 where attending is allowed,
/// [`MASK_VALUE`] elsewhere), or `None` when nothing is masked.
///
/// `padding` is `[batch, kv_len]`: 0 on padding, [`SHARED`] on positions every query
/// sees, else the number of the example the token belongs to (1 throughout, or 1, 2,
/// ... in a packed row, where a token sees only its own example's tokens). With
/// `causal`, query `i` sits at key position `kv_len - q_len + i` and sees keys up to
/// it: extra leading keys (a prefix) are visible to every query.
pub fn attention_mask(
    padding: Option<&Tensor>,
    batch: usize,
    q_len: usize,
    kv_len: usize,
    causal: bool,
    device: &Device,
) -> Result<Option<Tensor>> {
    if padding.is_none() && (!causal || q_len == 1) {
        return Ok(None);
    }
    if kv_len < q_len {
        candle_core::bail!("attention over {kv_len} keys for {q_len} queries")
    }
    let pad = match padding {
        Some(p) => {
            let (b, t) = p.dims2()?;
            if b != batch || t != kv_len {
                candle_core::bail!("attention mask is [{b}, {t}], expected [{batch}, {kv_len}]")
            }
            p.to_dtype(DType::F32)?.to_vec2::<f32>()?
        }
        None => vec![vec![1.0; kv_len]; batch],
    };
    let offset = kv_len - q_len;
    let mut out = Vec::with_capacity(batch * q_len * kv_len);
    for row in &pad {
        for i in 0..q_len {
            let own = row[offset + i];
            for (j, &key) in row.iter().enumerate() {
                let visible = key != 0.0 && (!causal || j <= offset + i) && same_example(own, key);
                out.push(if visible { 0.0 } else { MASK_VALUE });
            }
        }
    }
    Ok(Some(Tensor::from_vec(out, (batch, 1, q_len, kv_len), device)?))
}

/// Whether a query of example `query` may see a key of example `key`: always for
/// shared keys, and for queries that are padding or shared themselves.
fn same_example(query: f32, key: f32) -> bool {
    query <= 0.0 || key < 0.0 || key == query
}

/// The padding mask for `len` positions: `mask` (`[batch, seq]`, 0 on padding) with
/// `len - seq` [`SHARED`] positions in front, for virtual tokens or prefix keys that
/// are always attended to. `None` stays `None`.
pub fn extend_mask(mask: Option<&Tensor>, batch: usize, len: usize) -> Result<Option<Tensor>> {
    let Some(m) = mask else { return Ok(None) };
    let (b, seq) = m.dims2()?;
    if b != batch || seq > len {
        candle_core::bail!("attention mask is [{b}, {seq}] for a batch of {batch} with {len} positions")
    }
    let m = m.to_dtype(DType::F32)?;
    if seq == len {
        return Ok(Some(m));
    }
    let shared = Tensor::full(SHARED, (batch, len - seq), m.device())?;
    Ok(Some(Tensor::cat(&[&shared, &m], 1)?))
}

/// Repeats each of the `kv_heads` heads `n_rep` times in place:
/// `[b, kv_heads, t, d] → [b, kv_heads · n_rep, t, d]` (head `h` uses kv head `h / n_rep`).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return x.contiguous();
    }
    let (b, kvh, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kvh, n_rep, t, d))?.reshape((b, kvh * n_rep, t, d))
}

/// `softmax(q·kᵀ · scale + mask) · v`, with keys and values repeated to the number of
/// query heads; the two products in `precision`, the softmax in f32.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    precision: Precision,
) -> Result<Tensor> {
    let (_, heads, _, _) = q.dims4()?;
    let (_, kv_heads, kv_len, _) = k.dims4()?;
    if v.dim(2)? != kv_len {
        candle_core::bail!("attention has {kv_len} keys but {} values", v.dim(2)?)
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("{heads} query heads cannot share {kv_heads} kv heads")
    }
    let k = repeat_kv(k, heads / kv_heads)?;
    let v = repeat_kv(v, heads / kv_heads)?;
    let dtype = q.dtype();
    let scores = precision.matmul(&q.contiguous()?, &k.t()?)?.to_dtype(DType::F32)?.affine(scale, 0.0)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = softmax(&scores, 3)?;
    match precision {
        Precision::Fp32 => probs.to_dtype(dtype)?.matmul(&v),
        Precision::Bf16 => precision.matmul(&probs, &v)?.to_dtype(dtype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keys_are_visible_to_every_query() -> Result<()> {
        let m = attention_mask(None, 1, 2, 4, true, &Device::Cpu)?
            .ok_or_else(|| candle_core::Error::Msg("no mask".into()))?;
        let rows = m.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        assert_eq!(rows[0], vec![0.0, 0.0, 0.0, MASK_VALUE]);
        assert_eq!(rows[1], vec![0.0, 0.0, 0.0, 0.0]);
        Ok(())
    }

    #[test]
    fn repeat_kv_repeats_each_head_in_place() -> Result<()> {
        let x = Tensor::new(&[1f32, 2.0], &Device::Cpu)?.reshape((1, 2, 1, 1))?;
        let y = repeat_kv(&x, 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0]);
        Ok(())
    }
}
