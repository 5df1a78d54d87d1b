//! RMSNorm and LayerNorm over the last dimension, computed in f32.
//!
//! Shapes: `x` is `[.., dim]`, `weight` and `bias` are `[dim]`; the result has `x`'s
//! shape and dtype. With `x̂` the normalized row and `r = 1/√(var + eps)`:
//! - RMSNorm (Llama): `x̂ = x·r`, `r = 1/√(mean(x²) + eps)`, `y = x̂·w`; backward
//!   `dx = r·(g·w - x̂·mean(g·w·x̂))`, `dw = Σ g·x̂`.
//! - LayerNorm: `x̂ = (x - mean)·r` (biased variance), `y = x̂·w + b`; backward
//!   `dx = r·(g·w - mean(g·w) - x̂·mean(g·w·x̂))`, `dw = Σ g·x̂`, `db = Σ g`.
//!
//! The fused ops keep only their inputs: backward recomputes each row's statistics.
//!
//! ```
//! # use candle_core::{Device, Tensor};
//! # use stagecraft_core::kernels::norm::rms_norm;
//! let x = Tensor::new(&[[3f32, 4.0]], &Device::Cpu)?;
//! let w = Tensor::new(&[1f32, 1.0], &Device::Cpu)?;
//! let y = rms_norm(&x, &w, 0.0)?; // x / sqrt(mean(x²)) = x / sqrt(12.5)
//! assert!((y.to_vec2::<f32>()?[0][1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
//! # Ok::<(), candle_core::Error>(())
//! ```

use super::{applies, profile, read, rows_per_task, slice, tensor, REDUCE_ROWS};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Llama's RMSNorm: `weight * (x * rsqrt(mean(x², -1) + eps))`.
///
/// As in transformers, the normalization runs in f32 and is cast back to `x`'s dtype
/// before the weight multiplies it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if applies(x) && applies(weight) && x.rank() > 0 {
        let dim = check_dim(x, weight)?;
        return x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { dim, eps: eps as f32 });
    }
    rms_norm_composed(x, weight, eps)
}

/// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias`, with the biased variance.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if applies(x) && applies(weight) && applies(bias) && x.rank() > 0 {
        let dim = check_dim(x, weight)?;
        check_dim(x, bias)?;
        let op = LayerNorm { dim, eps: eps as f32 };
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    layer_norm_composed(x, weight, bias, eps)
}

/// [`rms_norm`] from candle primitives (the reference; CUDA and bf16).
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let y = xf.broadcast_mul(&inv)?.to_dtype(dtype)?;
    y.broadcast_mul(weight)
}

/// [`layer_norm`] from candle primitives (the reference; CUDA and bf16).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = y.to_dtype(dtype)?.broadcast_mul(weight)?;
    y.broadcast_add(bias)
}

fn check_dim(x: &Tensor, param: &Tensor) -> Result<usize> {
    let dim = x.dim(D::Minus1)?;
    if param.dims() != [dim] {
        bail!("norm over {dim} features got a parameter of shape {:?}", param.dims())
    }
    Ok(dim)
}

/// `1/√(mean(x²) + eps)` of one row.
fn rms_inv(row: &[f32], eps: f32) -> f32 {
    let mean = row.iter().map(|v| v * v).sum::<f32>() * (1.0 / row.len() as f32);
    1.0 / (mean + eps).sqrt()
}

/// Mean and `1/√(var + eps)` of one row.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let scale = 1.0 / row.len() as f32;
    let mean = row.iter().sum::<f32>() * scale;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() * scale;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The element-wise sum of per-task partial vectors of length `len`, added in task
/// order: the same rounding on every run and every machine.
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for p in partials {
        total.iter_mut().zip(&p).for_each(|(t, p)| *t += p);
    }
    total
}

struct RmsNorm {
    dim: usize,
    eps: f32,
}

/// RMSNorm of the rows of `x` (each `w.len()` long), on slices: [`rms_norm`]'s forward,
/// for ops that normalize inside them.
pub(super) fn rms_forward(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    let chunk = rows_per_task(x.len() / d) * d;
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
        for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
            let inv = rms_inv(x, eps);
            y.iter_mut().zip(x).zip(w).for_each(|((y, x), w)| *y = (x * inv) * w);
        }
    });
    y
}

/// What [`rms_backward`] computes.
#[derive(Debug, Clone, Copy)]
pub(super) struct RmsGrads<'a> {
    /// The input's gradient.
    pub dx: bool,
    /// The weight's gradient.
    pub dw: bool,
    /// A gradient added onto the input's in the same pass (a residual stream's).
    pub plus: Option<&'a [f32]>,
}

/// The gradients of [`rms_forward`] from the output's gradient `g`: `(dx, dw)`, each
/// empty where `want` does not ask for it; `dx` has `want.plus` added.
pub(super) fn rms_backward(x: &[f32], w: &[f32], g: &[f32], eps: f32, want: RmsGrads<'_>) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0f32; if want.dx { x.len() } else { 0 }];
    let chunk = REDUCE_ROWS * d;
    let task = |i: usize, (x, g): (&[f32], &[f32]), mut dx: Option<&mut [f32]>| {
        let mut dw = vec![0f32; if want.dw { d } else { 0 }];
        for (r, (x, g)) in x.chunks(d).zip(g.chunks(d)).enumerate() {
            let inv = rms_inv(x, eps);
            if want.dw {
                dw.iter_mut().zip(x).zip(g).for_each(|((dw, x), g)| *dw += g * (x * inv));
            }
            if let Some(dx) = dx.as_deref_mut() {
                let dot = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * (x * inv)).sum::<f32>();
                let c = dot / d as f32;
                let dx = &mut dx[r * d..(r + 1) * d];
                for (((dx, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                    *dx = inv * (g * w - (x * inv) * c);
                }
                if let Some(plus) = want.plus {
                    let plus = &plus[i * chunk + r * d..][..d];
                    dx.iter_mut().zip(plus).for_each(|(dx, p)| *dx += p);
                }
            }
        }
        dw
    };
    let pairs = x.par_chunks(chunk).zip(g.par_chunks(chunk)).enumerate();
    let dw = if want.dx {
        pairs.zip(dx.par_chunks_mut(chunk)).map(|((i, p), dx)| task(i, p, Some(dx))).collect::<Vec<_>>()
    } else {
        pairs.map(|(i, p)| task(i, p, None)).collect()
    };
    (dx, sum_in_order(dw, d))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        profile::time("rms_norm.forward", || {
            let y = rms_forward(slice(x, xl)?, slice(w, wl)?, self.eps);
            Ok((CpuStorage::F32(y), xl.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        profile::time("rms_norm.backward", || {
            let want = RmsGrads { dx: x.track_op(), dw: w.track_op(), plus: None };
            let (dx, dw) = read(x, |x| read(w, |w| read(g, |g| Ok(rms_backward(x, w, g, self.eps, want)))))?;
            let dx = if want.dx { Some(tensor(dx, x.dims())?) } else { None };
            let dw = if want.dw { Some(tensor(dw, &[self.dim])?) } else { None };
            Ok((dx, dw))
        })
    }
}

struct LayerNorm {
    dim: usize,
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        profile::time("layer_norm.forward", || {
            let (x, w, b, d) = (slice(x, xl)?, slice(w, wl)?, slice(b, bl)?, self.dim);
            let mut y = vec![0f32; x.len()];
            let chunk = rows_per_task(x.len() / d) * d;
            y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                    let (mean, inv) = moments(x, self.eps);
                    for (((y, x), w), b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        *y = ((x - mean) * inv) * w + b;
                    }
                }
            });
            Ok((CpuStorage::F32(y), xl.shape().clone()))
        })
    }

    #[allow(clippy::type_complexity)] // the trait's signature
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::time("layer_norm.backward", || {
            let (want_dx, want_dw, want_db) = (x.track_op(), w.track_op(), b.track_op());
            let d = self.dim;
            let (dx, dwb) = read(x, |x| {
                read(w, |w| {
                    read(g, |g| {
                        let mut dx = vec![0f32; if want_dx { x.len() } else { 0 }];
                        let chunk = REDUCE_ROWS * d;
                        // Per task: `[dw | db]`.
                        let task = |(x, g): (&[f32], &[f32]), mut dx: Option<&mut [f32]>| {
                            let mut dwb = vec![0f32; 2 * d];
                            for (r, (x, g)) in x.chunks(d).zip(g.chunks(d)).enumerate() {
                                let (mean, inv) = moments(x, self.eps);
                                let (dw, db) = dwb.split_at_mut(d);
                                for (((dw, db), x), g) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(g) {
                                    *dw += g * ((x - mean) * inv);
                                    *db += g;
                                }
                                if let Some(dx) = dx.as_deref_mut() {
                                    let (mut sum_gw, mut sum_gwx) = (0f32, 0f32);
                                    for ((x, g), w) in x.iter().zip(g).zip(w) {
                                        sum_gw += g * w;
                                        sum_gwx += g * w * ((x - mean) * inv);
                                    }
                                    let (c1, c2) = (sum_gw / d as f32, sum_gwx / d as f32);
                                    let dx = &mut dx[r * d..(r + 1) * d];
                                    for (((dx, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                                        *dx = inv * (g * w - c1 - ((x - mean) * inv) * c2);
                                    }
                                }
                            }
                            dwb
                        };
                        let pairs = x.par_chunks(chunk).zip(g.par_chunks(chunk));
                        let dwb = if want_dx {
                            pairs.zip(dx.par_chunks_mut(chunk)).map(|(p, dx)| task(p, Some(dx))).collect::<Vec<_>>()
                        } else {
                            pairs.map(|p| task(p, None)).collect()
                        };
                        Ok((dx, sum_in_order(dwb, 2 * d)))
                    })
                })
            })?;
            let dx = if want_dx { Some(tensor(dx, x.dims())?) } else { None };
            let dw = if want_dw { Some(tensor(dwb[..d].to_vec(), &[d])?) } else { None };
            let db = if want_db { Some(tensor(dwb[d..].to_vec(), &[d])?) } else { None };
            Ok((dx, dw, db))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use candle_core::{Device, Var};

    /// Fused and composed norms agree on values and on every gradient.
    #[test]
    fn fused_norms_match_the_composed_ones_and_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0.5f32, 2.0, (3, 7, 48), &dev)?;
        let w = Var::randn(1f32, 0.3, 48, &dev)?;
        let b = Var::randn(0f32, 0.3, 48, &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 7, 48), &dev)?;
        type Norm = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;
        let cases: [(&str, Norm, Norm); 2] = [
            ("rms", |x, w, _| rms_norm(x, w, 1e-5), |x, w, _| rms_norm_composed(x, w, 1e-5)),
            ("layer", |x, w, b| layer_norm(x, w, b, 1e-5), |x, w, b| layer_norm_composed(x, w, b, 1e-5)),
        ];
        for (name, fused, composed) in cases {
            let (yf, yc) = (fused(&x, &w, &b)?, composed(&x, &w, &b)?);
            assert!(rel_err(&yf, &yc)? <= 1e-6, "{name} forward");
            let gf = (yf * &probe)?.sum_all()?.backward()?;
            let gc = (yc * &probe)?.sum_all()?.backward()?;
            let vars: &[&Var] = if name == "rms" { &[&x, &w] } else { &[&x, &w, &b] };
            for (i, v) in vars.iter().enumerate() {
                let e = rel_err(gf.get(v).expect("fused grad"), gc.get(v).expect("composed grad"))?;
                assert!(e <= 1e-5, "{name} gradient {i}: relative error {e}");
            }
        }
        Ok(())
    }

    #[test]
    fn only_needed_gradients_are_computed() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (4, 8), &dev)?;
        let w = Tensor::ones(8, DType::F32, &dev)?;
        let grads = rms_norm(&x, &w, 1e-6)?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some() && grads.get(&w).is_none());
        Ok(())
    }

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
}
