//! Rotary position embeddings in Hugging Face's `rotate_half` convention.
//!
//! For a head of size `d`, frequency `i < d/2` is `theta^(-2i/d)`; position `p` rotates
//! the pair `(x[i], x[i + d/2])` (the two halves, not interleaved neighbours) by angle
//! `p · freq_i`:
//! `rope(x) = x · cos + rotate_half(x) · sin`, `rotate_half(x) = [-x₂, x₁]`.
//! The tables are recomputed for each forward's length, so there is no maximum.
//!
//! ```
//! # use candle_core::{DType, Device, Tensor};
//! # use stagecraft_core::model::layers::Rope;
//! let rope = Rope::new(4, 10_000.0)?;
//! let x = Tensor::ones((1, 1, 3, 4), DType::F32, &Device::Cpu)?; // [batch, heads, seq, d]
//! let y = rope.apply(&x, 0)?;
//! // Position 0 is the identity.
//! assert_eq!(y.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?, vec![1.0; 4]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Device, Result, Tensor};

/// Rotary embedding for one head size and base.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    inv_freq: Vec<f32>,
}

impl Rope {
    /// For heads of size `head_dim` (even) and base `theta` (`rope_theta`).
    pub fn new(head_dim: usize, theta: f64) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            candle_core::bail!("rope needs an even head_dim, got {head_dim}")
        }
        // transformers computes the frequencies in f32: 1 / theta^(2i/d).
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        Ok(Rope { head_dim, inv_freq })
    }

    /// The `cos` and `sin` tables for positions `start..start + seq`, computed once per
    /// forward and shared by every layer.
    pub fn tables(&self, start: usize, seq: usize, dtype: DType, dev: &Device) -> Result<RopeTables> {
        let mut cos = Vec::with_capacity(seq * self.head_dim);
        let mut sin = Vec::with_capacity(seq * self.head_dim);
        for p in start..start + seq {
            // The same angles fill both halves (transformers' `cat((freqs, freqs), -1)`).
            let angles: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let cos = Tensor::from_vec(cos, (seq, self.head_dim), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (seq, self.head_dim), dev)?.to_dtype(dtype)?;
        Ok(RopeTables { cos, sin })
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]` for positions `start..start + seq`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        self.tables(start, x.dim(2)?, x.dtype(), x.device())?.apply(x)
    }
}

/// `cos` and `sin` `[seq, head_dim]` for a run of positions.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    /// Rotates a projection's output `[batch, seq, heads·head_dim]` into `heads` heads
    /// `[batch, heads, seq, head_dim]` (fused on CPU, see [`crate::kernels::rope`]).
    pub fn heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        crate::kernels::rope::rope_heads(x, heads, &self.cos, &self.sin)
    }

    /// The `cos` and `sin` tables `[seq, head_dim]`.
    pub fn cos_sin(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]`: `x · cos + rotate_half(x) · sin`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, s, d) = x.dims4()?;
        self.heads(&x.transpose(1, 2)?.reshape((b, s, h * d))?, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rotates_halves_not_neighbours() -> Result<()> {
        // head_dim 2: one frequency (1.0); position 1 rotates (x0, x1) by 1 radian.
        let rope = Rope::new(2, 10_000.0)?;
        let x = Tensor::new(&[1f32, 0.0], &Device::Cpu)?.reshape((1, 1, 1, 2))?;
        let x = Tensor::cat(&[&x, &x], 2)?;
        let y = rope.apply(&x, 0)?.flatten_all()?.to_vec1::<f32>()?;
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [1.0, 0.0, c, s];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        Ok(())
    }
}
