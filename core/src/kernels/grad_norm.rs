//! The global L2 norm of a set of gradients, as the trainer clips by it.
//!
//! Composed, each gradient is squared into a copy and summed: one full-size temporary
//! per parameter per step. Fused, each CPU f32 gradient is read once, in fixed-size
//! blocks whose partial sums are added in block order (the same rounding on every run
//! and every machine), accumulating in f64.

use super::{applies, profile, read};
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Elements per block of the parallel sum.
const BLOCK: usize = 1 << 14;

/// `√(Σ_g Σ_i g_i²)` over every tensor in `grads`.
pub fn global_norm<'a>(grads: impl IntoIterator<Item = &'a Tensor>) -> Result<f64> {
    profile::time("grad_norm", || {
        let mut total = 0f64;
        let mut composed: Option<Tensor> = None;
        for g in grads {
            if applies(g) {
                total += read(g, |x| {
                    let partial: Vec<f64> =
                        x.par_chunks(BLOCK).map(|b| b.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
                    Ok(partial.into_iter().sum::<f64>())
                })?;
            } else {
                // Other devices: one device-to-host read for all of them, at the end.
                let sq = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
                composed = Some(match composed {
                    Some(acc) => (acc + sq)?,
                    None => sq,
                });
            }
        }
        if let Some(c) = composed {
            total += c.to_scalar::<f32>()? as f64;
        }
        Ok(total.sqrt())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn is_the_norm_of_all_gradients_together() -> Result<()> {
        let a = Tensor::new(&[3f32, 0.0], &Device::Cpu)?;
        let b = Tensor::new(&[[0f32, 4.0], [12.0, 0.0]], &Device::Cpu)?;
        assert_eq!(global_norm([&a, &b])?, 13.0);
        let big = Tensor::ones(3 * BLOCK + 5, DType::F32, &Device::Cpu)?;
        assert_eq!(global_norm([&big])?, ((3 * BLOCK + 5) as f64).sqrt());
        Ok(())
    }
}
