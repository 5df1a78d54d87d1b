//! RMSNorm and LayerNorm over the last dimension, computed in f32.
//!
//! Shapes: `x` is `[.., dim]`, `weight` and `bias` are `[dim]`; the result has `x`'s
//! shape and dtype.
//!
//! ```
//! # use candle_core::{Device, Tensor};
//! # use stagecraft_core::model::layers::rms_norm;
//! let x = Tensor::new(&[[3f32, 4.0]], &Device::Cpu)?;
//! let w = Tensor::new(&[1f32, 1.0], &Device::Cpu)?;
//! let y = rms_norm(&x, &w, 0.0)?; // x / sqrt(mean(x²)) = x / sqrt(12.5)
//! assert!((y.to_vec2::<f32>()?[0][1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Result, Tensor, D};

/// Llama's RMSNorm: `weight * (x * rsqrt(mean(x², -1) + eps))`.
///
/// As in transformers, the normalization runs in f32 and is cast back to `x`'s dtype
/// before the weight multiplies it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let y = xf.broadcast_mul(&inv)?.to_dtype(dtype)?;
    y.broadcast_mul(weight)
}

/// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias`, with the biased variance.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = y.to_dtype(dtype)?.broadcast_mul(weight)?;
    y.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_has_zero_mean_unit_variance() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0]], &Device::Cpu)?;
        let w = Tensor::ones(4, DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros(4, DType::F32, &Device::Cpu)?;
        let y = layer_norm(&x, &w, &b, 0.0)?;
        let mean = y.mean_all()?.to_scalar::<f32>()?;
        let var = y.sqr()?.mean_all()?.to_scalar::<f32>()?;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{mean} {var}");
        Ok(())
    }

    #[test]
    fn norms_pass_gradients_to_input_and_weight() -> Result<()> {
        let x = candle_core::Var::new(&[[1f32, -2.0, 0.5]], &Device::Cpu)?;
        let w = candle_core::Var::new(&[0.5f32, 1.5, -1.0], &Device::Cpu)?;
        let b = candle_core::Var::new(&[0.1f32, 0.2, 0.3], &Device::Cpu)?;
        let probe = Tensor::new(&[[0.3f32, -0.7, 1.1]], &Device::Cpu)?;
        let y = (rms_norm(&x, &w, 1e-6)? + layer_norm(&x, &w, &b, 1e-5)?)?;
        let g = (y * probe)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let gv = g.get(v.as_tensor()).map(|t| t.abs()?.sum_all()?.to_scalar::<f32>());
            assert!(matches!(gv, Some(Ok(s)) if s > 0.0));
        }
        Ok(())
    }
}
