//! A projection's output split into attention heads, with rotary position embeddings
//! fused in for queries and keys.
//!
//! A projection's output `[b, s, h·d]` becomes heads `[b, h, s, d]` in one pass and one
//! graph node (candle's composition reshapes, transposes, copies, narrows both halves,
//! negates, concatenates, and multiplies twice; in backward each of those nodes costs
//! a zeroed gradient buffer and an addition). In Hugging Face's `rotate_half`
//! convention, with tables `cos`, `sin` `[s, d]` whose halves repeat:
//! `y = x·cos + rotate_half(x)·sin`, `rotate_half(x) = [-x₂, x₁]`.
//! Backward is the inverse rotation, written back to `[b, s, h·d]`:
//! `dx₁ = dy₁·cos₁ + dy₂·sin₂`, `dx₂ = dy₂·cos₂ - dy₁·sin₁`. Values take the same
//! split without the rotation ([`split_heads`]).

use super::{applies, profile, read, rows_per_task, simd, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Rotates `x` `[b, s, heads·d]` with tables `cos`, `sin` `[s, d]`, returning heads
/// `[b, heads, s, d]`.
pub fn rope_heads(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, s, d) = head_dims(x, heads)?;
    if cos.dims() != [s, d] || sin.dims() != [s, d] || !d.is_multiple_of(2) {
        bail!("rope tables are {:?} and {:?}, applied to {:?} in {heads} heads", cos.dims(), sin.dims(), x.dims())
    }
    if applies(x) && applies(cos) && applies(sin) {
        let rotation = Some((cos.contiguous()?, sin.contiguous()?));
        return x.contiguous()?.apply_op1(Heads { heads, rotation });
    }
    rope_heads_composed(x, heads, cos, sin)
}

/// [`rope_heads`] from candle primitives (the reference; CUDA and bf16).
pub fn rope_heads_composed(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = split_heads_composed(x, heads)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// `x` `[b, s, heads·d]` as contiguous heads `[b, heads, s, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    head_dims(x, heads)?;
    if applies(x) {
        return x.contiguous()?.apply_op1(Heads { heads, rotation: None });
    }
    split_heads_composed(x, heads)
}

/// [`split_heads`] from candle primitives.
pub fn split_heads_composed(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, d) = head_dims(x, heads)?;
    x.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
}

/// `(b, s, d)` of `x` `[b, s, heads·d]`.
fn head_dims(x: &Tensor, heads: usize) -> Result<(usize, usize, usize)> {
    let (b, s, width) = x.dims3()?;
    if heads == 0 || !width.is_multiple_of(heads) {
        bail!("{width} features cannot be split into {heads} heads")
    }
    Ok((b, s, width / heads))
}

/// The split into heads, rotated by `(cos, sin)` when given.
struct Heads {
    heads: usize,
    rotation: Option<(Tensor, Tensor)>,
}

/// The data of the `cos` and `sin` tables `[s, d]`.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
}

impl<'a> Tables<'a> {
    /// The rows of position `si`, `d` wide.
    fn at(self, si: usize, d: usize) -> (&'a [f32], &'a [f32]) {
        (&self.cos[si * d..][..d], &self.sin[si * d..][..d])
    }
}

/// Runs `f` on the data of a rotation's tables (`cos`, `sin`), `None` without one.
pub(crate) fn with_tables<T>(
    rotation: Option<&(Tensor, Tensor)>,
    f: impl FnOnce(Option<Tables<'_>>) -> Result<T>,
) -> Result<T> {
    match rotation {
        Some((cos, sin)) => read(cos, |cos| read(sin, |sin| f(Some(Tables { cos, sin })))),
        None => f(None),
    }
}

/// `x` `[b, s, h·d]` as heads `[b, h, s, d]`, each row rotated by its position's rows
/// of the tables when given: the forward of [`rope_heads`] and [`split_heads`].
pub(crate) fn to_heads(x: &[f32], (b, s, h, d): (usize, usize, usize, usize), tables: Option<Tables<'_>>) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    // Output row `(bi, hi, si)` reads input row `(bi, si, hi)`.
    let chunk = rows_per_task(b * h * s) * d;
    y.par_chunks_mut(chunk).enumerate().for_each(|(task, rows)| {
        simd::vectorized(
            #[inline(always)]
            || {
                for (k, out) in rows.chunks_mut(d).enumerate() {
                    let row = task * (chunk / d) + k;
                    let (bi, hi, si) = (row / (h * s), row / s % h, row % s);
                    let src = &x[((bi * s + si) * h + hi) * d..][..d];
                    rotate::<true>(out, src, tables.map(|t| t.at(si, d)));
                }
            },
        )
    });
    y
}

/// The gradient of [`to_heads`]: heads `[b, h, s, d]` back to `[b, s, h·d]`, each row
/// rotated back.
pub(crate) fn from_heads(
    dy: &[f32],
    (b, s, h, d): (usize, usize, usize, usize),
    tables: Option<Tables<'_>>,
) -> Vec<f32> {
    let mut dx = vec![0f32; dy.len()];
    // Input row `(bi, si, hi)` gets output row `(bi, hi, si)` rotated back.
    let chunk = rows_per_task(b * s * h) * d;
    dx.par_chunks_mut(chunk).enumerate().for_each(|(task, rows)| {
        simd::vectorized(
            #[inline(always)]
            || {
                for (k, out) in rows.chunks_mut(d).enumerate() {
                    let row = task * (chunk / d) + k;
                    let (bi, si, hi) = (row / (s * h), row / h % s, row % h);
                    let src = &dy[((bi * h + hi) * s + si) * d..][..d];
                    rotate::<false>(out, src, tables.map(|t| t.at(si, d)));
                }
            },
        )
    });
    dx
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let label = if self.rotation.is_some() { "rope.forward" } else { "heads.forward" };
        profile::time(label, || {
            let x = slice(x, xl)?;
            let (b, s, width) = xl.shape().dims3()?;
            let (h, d) = (self.heads, width / self.heads);
            let y = with_tables(self.rotation.as_ref(), |tables| Ok(to_heads(x, (b, s, h, d), tables)))?;
            Ok((CpuStorage::F32(y), Shape::from((b, h, s, d))))
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let label = if self.rotation.is_some() { "rope.backward" } else { "heads.backward" };
        profile::time(label, || {
            let (b, s, width) = x.dims3()?;
            let (h, d) = (self.heads, width / self.heads);
            let dx = read(dy, |dy| with_tables(self.rotation.as_ref(), |t| Ok(from_heads(dy, (b, s, h, d), t))))?;
            Ok(Some(tensor(dx, x.dims())?))
        })
    }
}

/// `out = x·cos + rotate_half(x)·sin` (`FORWARD`), `sin` read at the position of the
/// element it multiplies, or the inverse rotation (`sin` read at the position of the
/// element it came from); a plain copy without the position's `(cos, sin)` rows.
/// Inlined into [`simd::vectorized`] callers, so that the loops vectorize to the CPU's
/// width.
#[inline(always)]
fn rotate<const FORWARD: bool>(out: &mut [f32], x: &[f32], tables: Option<(&[f32], &[f32])>) {
    let Some((cos, sin)) = tables else {
        out.copy_from_slice(x);
        return;
    };
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    let (cos1, cos2) = cos[..x.len()].split_at(half);
    let (sin1, sin2) = sin[..x.len()].split_at(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        if FORWARD {
            out1[i] = a * cos1[i] + (-b) * sin1[i];
            out2[i] = b * cos2[i] + a * sin2[i];
        } else {
            out1[i] = a * cos1[i] + b * sin2[i];
            out2[i] = b * cos2[i] - a * sin1[i];
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
        let x = Var::randn(0f32, 1.0, (b, s, h * d), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev)?;
        let (yf, yc) = (rope_heads(&x, h, cos, sin)?, rope_heads_composed(&x, h, cos, sin)?);
        assert!(rel_err(&yf, &yc)? <= 1e-6);
        let gf = (yf * &probe)?.sum_all()?.backward()?;
        let gc = (yc * &probe)?.sum_all()?.backward()?;
        let e = rel_err(gf.get(&x).expect("fused grad"), gc.get(&x).expect("composed grad"))?;
        assert!(e <= 1e-5, "relative error {e}");
        Ok(())
    }

    #[test]
    fn splits_values_into_heads_and_back() -> Result<()> {
        let dev = Device::Cpu;
        let (b, s, h, d) = (2, 5, 3, 4);
        let x = Var::randn(0f32, 1.0, (b, s, h * d), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev)?;
        let (yf, yc) = (split_heads(&x, h)?, split_heads_composed(&x, h)?);
        assert_eq!(rel_err(&yf, &yc)?, 0.0);
        let gf = (yf * &probe)?.sum_all()?.backward()?;
        let gc = (yc * &probe)?.sum_all()?.backward()?;
        assert_eq!(rel_err(gf.get(&x).expect("fused grad"), gc.get(&x).expect("composed grad"))?, 0.0);
        assert!(split_heads(&x, 5).is_err());
        Ok(())
    }
}
