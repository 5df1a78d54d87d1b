//! Rotary position embeddings fused with the split into heads.
//!
//! A projection's output `[b, s, h, d]` becomes rotated heads `[b, h, s, d]` in one
//! pass (candle's composition transposes, copies, narrows both halves, negates,
//! concatenates, and multiplies twice). In Hugging Face's `rotate_half` convention,
//! with tables `cos`, `sin` `[s, d]` whose halves repeat:
//! `y = x·cos + rotate_half(x)·sin`, `rotate_half(x) = [-x₂, x₁]`.
//! Backward is the inverse rotation, written back to `[b, s, h, d]`:
//! `dx₁ = dy₁·cos₁ + dy₂·sin₂`, `dx₂ = dy₂·cos₂ - dy₁·sin₁`.

use super::{applies, profile, read, rows_per_task, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Rotates `x` `[b, s, h, d]` with tables `cos`, `sin` `[s, d]`, returning heads
/// `[b, h, s, d]`.
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, s, _, d) = x.dims4()?;
    if cos.dims() != [s, d] || sin.dims() != [s, d] || !d.is_multiple_of(2) {
        bail!("rope tables are {:?} and {:?}, applied to {:?}", cos.dims(), sin.dims(), x.dims())
    }
    if applies(x) && applies(cos) && applies(sin) {
        return x.contiguous()?.apply_op1(Rope { cos: cos.contiguous()?, sin: sin.contiguous()? });
    }
    rope_heads_composed(x, cos, sin)
}

/// [`rope_heads`] from candle primitives (the reference; CUDA and bf16).
pub fn rope_heads_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.transpose(1, 2)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        profile::time("rope.forward", || {
            let x = slice(x, xl)?;
            let (b, s, h, d) = xl.shape().dims4()?;
            let mut y = vec![0f32; x.len()];
            read(&self.cos, |cos| {
                read(&self.sin, |sin| {
                    // Output row `(bi, hi, si)` reads input row `(bi, si, hi)`.
                    let chunk = rows_per_task(b * h * s) * d;
                    y.par_chunks_mut(chunk).enumerate().for_each(|(task, rows)| {
                        for (k, out) in rows.chunks_mut(d).enumerate() {
                            let row = task * (chunk / d) + k;
                            let (bi, hi, si) = (row / (h * s), row / s % h, row % s);
                            let src = &x[((bi * s + si) * h + hi) * d..][..d];
                            rotate(out, src, &cos[si * d..][..d], &sin[si * d..][..d], 1.0);
                        }
                    });
                    Ok(())
                })
            })?;
            Ok((CpuStorage::F32(y), Shape::from((b, h, s, d))))
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        profile::time("rope.backward", || {
            let (b, s, h, d) = x.dims4()?;
            let mut dx = vec![0f32; x.elem_count()];
            read(dy, |dy| {
                read(&self.cos, |cos| {
                    read(&self.sin, |sin| {
                        // Input row `(bi, si, hi)` gets output row `(bi, hi, si)` rotated back.
                        let chunk = rows_per_task(b * s * h) * d;
                        dx.par_chunks_mut(chunk).enumerate().for_each(|(task, rows)| {
                            for (k, out) in rows.chunks_mut(d).enumerate() {
                                let row = task * (chunk / d) + k;
                                let (bi, si, hi) = (row / (s * h), row / h % s, row % h);
                                let src = &dy[((bi * h + hi) * s + si) * d..][..d];
                                rotate(out, src, &cos[si * d..][..d], &sin[si * d..][..d], -1.0);
                            }
                        });
                        Ok(())
                    })
                })
            })?;
            Ok(Some(tensor(dx, x.dims())?))
        })
    }
}

/// `out = x·cos + dir·rotate_half(x)·sin`, where `sin` is read at the position of the
/// element it multiplies (`dir = 1`) or of the element it came from (`dir = -1`, the
/// inverse rotation).
fn rotate(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], dir: f32) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        if dir > 0.0 {
            out[i] = a * cos[i] + (-b) * sin[i];
            out[i + half] = b * cos[i + half] + a * sin[i + half];
        } else {
            out[i] = a * cos[i] + b * sin[i + half];
            out[i + half] = b * cos[i + half] - a * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use crate::model::layers::Rope as Tables;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_the_composed_rotation_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (b, s, h, d) = (2, 6, 3, 8);
        let t = Tables::new(d, 10_000.0)?.tables(3, s, DType::F32, &dev)?;
        let (cos, sin) = t.cos_sin();
        let x = Var::randn(0f32, 1.0, (b, s, h, d), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev)?;
        let (yf, yc) = (rope_heads(&x, cos, sin)?, rope_heads_composed(&x, cos, sin)?);
        assert!(rel_err(&yf, &yc)? <= 1e-6);
        let gf = (yf * &probe)?.sum_all()?.backward()?;
        let gc = (yc * &probe)?.sum_all()?.backward()?;
        let e = rel_err(gf.get(&x).expect("fused grad"), gc.get(&x).expect("composed grad"))?;
        assert!(e <= 1e-5, "relative error {e}");
        Ok(())
    }
}
