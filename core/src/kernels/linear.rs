//! `y = x·Wᵀ` with `x [.., in]` and `W [out, in]` (PyTorch's `F.linear` without bias).
//!
//! The leading dims of `x` fold into one matrix of `m` rows, so each product is one
//! GEMM (not a batch of them against a broadcast weight), split into blocks of output
//! columns (forward) or rows (backward) that run in parallel on one thread each; every
//! operand is read through its strides: no transpose is materialized.
//!
//! Backward: `dx = dy·W` when `x` needs a gradient, `dW = dyᵀ·x` when `W` does. A
//! frozen weight enters the graph detached, so it costs no weight-gradient product at
//! all (candle's own matmul computes both sides whatever they need).
//!
//! [`linear_onto`] adds the product onto a residual stream inside the GEMM
//! (`r + x·Wᵀ`): one graph node where a projection and a residual add took two, and in
//! backward candle spends a zeroed buffer and an addition on every node's gradient.
//! [`add_low_rank`] does the same for a low-rank update (LoRA's `y + s·(x·Aᵀ)·Bᵀ`):
//! two nodes where the composition took six.

use super::gemm::{self, View};
use super::weight_grads::WeightInput;
use super::{applies, profile, read, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x·Wᵀ` for `x [.., in]` and `w [out, in]`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let Some((&last, lead)) = x.dims().split_last() else { bail!("linear of a scalar") };
    if last != in_f {
        bail!("linear: input has {last} features, weight {:?} expects {in_f}", w.dims())
    }
    let m = lead.iter().product::<usize>();
    let out_dims: Vec<usize> = lead.iter().copied().chain([out_f]).collect();
    if applies(x) && applies(w) && m > 0 {
        let w = WeightInput::new(w, x.track_op());
        let op = Linear { m, in_f, out_f, out_dims, x_scale: 1.0, credit: w.credit };
        x.contiguous()?.apply_op2(&w.tensor.contiguous()?, op)
    } else {
        composed(x, w)
    }
}

/// `r + x·Wᵀ` for `x [.., in]`, `w [out, in]` and `r` of the product's shape: the
/// product accumulated onto a copy of `r` in the GEMM.
pub fn linear_onto(x: &Tensor, w: &Tensor, r: &Tensor) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let Some((&last, lead)) = x.dims().split_last() else { bail!("linear of a scalar") };
    let out_dims: Vec<usize> = lead.iter().copied().chain([out_f]).collect();
    if last != in_f || r.dims() != out_dims.as_slice() {
        bail!("linear onto a residual: input {:?}, weight {:?}, residual {:?}", x.dims(), w.dims(), r.dims())
    }
    let m = lead.iter().product::<usize>();
    if applies(x) && applies(w) && applies(r) && m > 0 {
        let w = WeightInput::new(w, x.track_op() || r.track_op());
        let op = Onto(Linear { m, in_f, out_f, out_dims, x_scale: 1.0, credit: w.credit });
        x.contiguous()?.apply_op3(&w.tensor.contiguous()?, &r.contiguous()?, op)
    } else {
        r + composed(x, w)?
    }
}

/// `y + scale·(x·Aᵀ)·Bᵀ` for `x [.., in]`, `a [r, in]`, `b [out, r]` and `y [.., out]`:
/// a low-rank update added onto a layer's output, as LoRA does.
///
/// Two graph nodes: the narrow product `t = x·Aᵀ` (`[.., r]`), and `y + (scale·t)·Bᵀ`
/// accumulated onto a copy of `y` in the GEMM. The composition (two products, the
/// scale, the sum) makes two more full-size `[.., out]` tensors in forward and, in
/// backward, a zeroed gradient buffer and an addition for each of its four nodes. The
/// scale multiplies the narrow operands only (`t` forward; `dt` and `dB`, both of
/// rank `r`, backward), so it costs no pass over `[.., out]`.
pub fn add_low_rank(y: &Tensor, x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let (out_f, r) = b.dims2()?;
    let (rank, in_f) = a.dims2()?;
    let Some((&last, lead)) = x.dims().split_last() else { bail!("low-rank update of a scalar") };
    let out_dims: Vec<usize> = lead.iter().copied().chain([out_f]).collect();
    if rank != r || last != in_f || y.dims() != out_dims.as_slice() {
        bail!(
            "low-rank update: input {:?}, A {:?}, B {:?} do not give the output's shape {:?}",
            x.dims(),
            a.dims(),
            b.dims(),
            y.dims()
        )
    }
    let t = linear(x, a)?;
    let m = lead.iter().product::<usize>();
    if applies(&t) && applies(b) && applies(y) && m > 0 {
        let b = WeightInput::new(b, t.track_op() || y.track_op());
        let op = Onto(Linear { m, in_f: r, out_f, out_dims, x_scale: scale as f32, credit: b.credit });
        t.apply_op3(&b.tensor.contiguous()?, &y.contiguous()?, op)
    } else {
        y + composed(&t, b)?.affine(scale, 0.0)?
    }
}

/// A low-rank update `scale·(x·Aᵀ)·Bᵀ` of a projection (LoRA's, declared through the
/// SDK's `low_rank`): `a` `[r, in]`, `b` `[out, r]`. The decoder blocks compute it
/// inside their products ([`super::decoder_block`]); elsewhere it is
/// [`add_low_rank`].
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `A`, `[r, in]`.
    pub a: Tensor,
    /// `B`, `[out, r]`.
    pub b: Tensor,
    /// The factor on the product.
    pub scale: f64,
}

impl LowRank {
    /// `y + scale·(x·Aᵀ)·Bᵀ` ([`add_low_rank`]).
    pub fn add_to(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        add_low_rank(y, x, &self.a, &self.b, self.scale)
    }

    /// The rank `r`, refused unless `A` is `[r, in_f]` and `B` `[out_f, r]`.
    pub fn rank(&self, in_f: usize, out_f: usize) -> Result<usize> {
        let (r, a_in) = self.a.dims2()?;
        if a_in != in_f || self.b.dims() != [out_f, r] {
            bail!(
                "low-rank update of a [{out_f}, {in_f}] weight has A {:?} and B {:?}, expected [r, {in_f}] and [{out_f}, r]",
                self.a.dims(),
                self.b.dims()
            )
        }
        Ok(r)
    }
}

/// The same product from candle's matmul (the reference for tests; CUDA and bf16).
pub fn composed(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let Some((_, lead)) = x.dims().split_last() else { bail!("linear of a scalar") };
    let out_dims: Vec<usize> = lead.iter().copied().chain([out_f]).collect();
    x.reshape((lead.iter().product::<usize>(), in_f))?.matmul(&w.t()?)?.reshape(out_dims)
}

struct Linear {
    m: usize,
    in_f: usize,
    out_f: usize,
    out_dims: Vec<usize>,
    /// The product is `(x_scale·x)·Wᵀ`. A scale other than 1 copies `x` scaled: meant
    /// for the narrow `x` of a low-rank update ([`add_low_rank`]).
    x_scale: f32,
    /// The variable the weight's gradient goes to when the op took it detached.
    credit: Option<Tensor>,
}

/// `dst = a·b` for `dst` `rows × n` row-major, split into blocks of rows that run in
/// parallel, each on one thread (`a_rows(r0, r1)` is the view of `a`'s rows `r0..r1`).
/// One product on all threads synchronizes after every panel; disjoint row blocks
/// never do. The sum over `k` stays inside one call, in the same order on every run;
/// the `gemm` crate may round a block of another height differently in the last bit,
/// so results are reproducible for a given number of threads.
fn product_by_rows<'a>(
    rows: usize,
    n: usize,
    k: usize,
    a_rows: impl Fn(usize, usize) -> View<'a> + Sync,
    b: View<'a>,
) -> Result<Vec<f32>> {
    gemm::unwritten_matrix(rows, n, |dst| {
        dst.rows(block_rows(rows, n, k)).into_par_iter().try_for_each(|blk| {
            let r = blk.row_range();
            blk.write(&[(a_rows(r.start, r.end), b)]).map(drop)
        })
    })
}

/// `Σ a·b` over `products` (`rows × n` row-major, the first product the widest),
/// added onto `onto` when given, split into blocks of whole columns, one per thread
/// ([`column_parts`]): for a right-hand side the `gemm` crate packs (a transposed
/// weight), each thread packs only its own columns of it ([`gemm::Columns`]).
fn product_by_columns(
    rows: usize,
    n: usize,
    products: &[(View<'_>, View<'_>)],
    onto: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let parts = column_parts(rows, n, products.first().map_or(0, |(a, _)| a.cols));
    let Some(onto) = onto else {
        return gemm::unwritten_matrix(rows, n, |dst| {
            dst.columns(parts).into_par_iter().try_for_each(|blk| {
                let c = blk.col_range();
                blk.write(&gemm::column_products(products, c)).map(drop)
            })
        });
    };
    let mut dst = onto.to_vec();
    let blocks = gemm::split_columns(&mut dst, rows, n, parts);
    blocks.into_par_iter().try_for_each(|mut cols| {
        gemm::column_products(products, cols.range()).into_iter().try_for_each(|(a, b)| cols.matmul(a, b, true))
    })?;
    Ok(dst)
}

/// Column blocks for a `rows × n` product over `k`: one per thread, but none under
/// ~1 MFLOP. A small product stays one call, which gives the same bits as candle's
/// matmul of the same operands (the `gemm` crate takes other paths for narrow blocks).
pub(crate) fn column_parts(rows: usize, n: usize, k: usize) -> usize {
    let min_cols = (1usize << 19).div_ceil(rows * k.max(1)).max(1);
    rayon::current_num_threads().min(n / min_cols).max(1)
}

/// Rows per parallel block of a `rows × n` product over `k`: blocks of at least
/// ~1 MFLOP, at most 2 per thread.
pub(crate) fn block_rows(rows: usize, n: usize, k: usize) -> usize {
    let min_rows = (1usize << 19).div_ceil(n * k.max(1)).max(1);
    rows.div_ceil(2 * rayon::current_num_threads()).max(min_rows)
}

/// `x·Wᵀ` (`m × out_f`) for `x` `m × in_f` and `w` `[out_f, in_f]`, added onto `onto`
/// when given: [`linear`]'s forward on slices.
pub(super) fn project(
    x: &[f32],
    w: &[f32],
    (m, in_f, out_f): (usize, usize, usize),
    onto: Option<&[f32]>,
) -> Result<Vec<f32>> {
    project_plus(x, w, (m, in_f, out_f), &[], onto)
}

/// [`project`] plus the products `extra` (each `m × out_f`), summed in the same GEMM
/// calls: a low-rank update's `u·Bᵀ` (`u` `m × r`, `B` `[out_f, r]`).
pub(super) fn project_plus(
    x: &[f32],
    w: &[f32],
    (m, in_f, out_f): (usize, usize, usize),
    extra: &[(View<'_>, View<'_>)],
    onto: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let mut products = vec![(View::rows(x, m, in_f, in_f), View::rows(w, out_f, in_f, in_f).t())];
    products.extend_from_slice(extra);
    product_by_columns(m, out_f, &products, onto)
}

/// One term `dy·W` of an input gradient: `dy` `m × out`, `w` `[out, in]`.
pub(super) struct GradTerm<'a> {
    pub dy: &'a [f32],
    pub w: &'a [f32],
    pub out: usize,
}

/// `Σ dy·W` over `terms` (`m × in_f`), summed in one buffer by the GEMM: the input
/// gradient of several products of the same input.
pub(super) fn input_grad(m: usize, in_f: usize, terms: &[GradTerm<'_>]) -> Result<Vec<f32>> {
    let k = terms.iter().map(|t| t.out).sum::<usize>();
    gemm::unwritten_matrix(m, in_f, |dx| {
        dx.rows(block_rows(m, in_f, k)).into_par_iter().try_for_each(|blk| {
            let (r0, r1) = (blk.row_range().start, blk.row_range().end);
            let products: Vec<_> = terms
                .iter()
                .map(|t| {
                    (
                        View::rows(&t.dy[r0 * t.out..r1 * t.out], r1 - r0, t.out, t.out),
                        View::rows(t.w, t.out, in_f, in_f),
                    )
                })
                .collect();
            blk.write(&products).map(drop)
        })
    })
}

/// The weight gradient `dW = dyᵀ·x` (`[out, in]`) for `dy [m, out]` and `x [m, in]`:
/// rows of `dW` (columns of `dy`) against all of `x`.
pub(crate) fn weight_grad(dy: &[f32], x: &[f32], m: usize, in_f: usize, out_f: usize) -> Result<Vec<f32>> {
    let dy_cols = |c0: usize, c1: usize| View::rows(&dy[c0..], m, c1 - c0, out_f).t();
    product_by_rows(out_f, in_f, m, dy_cols, View::rows(x, m, in_f, in_f))
}

impl Linear {
    /// `(x_scale·x)·Wᵀ`, added onto `onto` when given.
    fn forward(&self, x: &[f32], w: &[f32], onto: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (m, i, o) = (self.m, self.in_f, self.out_f);
        let y = project(&scaled(x, self.x_scale), w, (m, i, o), onto)?;
        Ok((CpuStorage::F32(y), Shape::from(self.out_dims.clone())))
    }

    /// The gradients of `x` and `w`, each only where it is tracked.
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, i, o) = (self.m, self.in_f, self.out_f);
        let (want_dx, want_dw) = (x.track_op(), WeightInput::wanted(&self.credit, w));
        let (dx, dw) = read(dy, |dy| {
            let dx = match want_dx {
                // dx = dy·W: rows of dy against all of W.
                true => read(w, |w| input_grad(m, i, &[GradTerm { dy, w, out: o }]).map(Some))?,
                false => None,
            };
            let dw = match want_dw {
                true => read(x, |x| weight_grad(dy, x, m, i, o)).map(Some)?,
                false => None,
            };
            Ok((dx, dw))
        })?;
        // d((s·x)·Wᵀ)/dx = s·dy·W and /dW = s·dyᵀ·x: the unscaled products, scaled.
        let rescale = |mut d: Vec<f32>| {
            if self.x_scale != 1.0 {
                d.iter_mut().for_each(|v| *v *= self.x_scale);
            }
            d
        };
        let dx = dx.map(|d| tensor(rescale(d), x.dims())).transpose()?;
        let dw = dw.map(|d| tensor(rescale(d), &[o, i])).transpose()?;
        Ok((dx, WeightInput::settle(&self.credit, dw)))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        profile::time("linear.forward", || self.forward(slice(x, xl)?, slice(w, wl)?, None))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        profile::time("linear.backward", || self.backward(x, w, dy))
    }
}

/// [`Linear`] added onto a residual (the op's third operand), whose gradient is `dy`.
struct Onto(Linear);

/// `v` times `scale`, borrowed when the scale is 1.
fn scaled(v: &[f32], scale: f32) -> std::borrow::Cow<'_, [f32]> {
    match scale == 1.0 {
        true => std::borrow::Cow::Borrowed(v),
        false => std::borrow::Cow::Owned(v.iter().map(|x| x * scale).collect()),
    }
}

impl CustomOp3 for Onto {
    fn name(&self) -> &'static str {
        "linear_onto"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        profile::time("linear.forward", || self.0.forward(slice(x, xl)?, slice(w, wl)?, Some(slice(r, rl)?)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::time("linear.backward", || {
            let (dx, dw) = self.0.backward(x, w, dy)?;
            Ok((dx, dw, r.track_op().then(|| dy.clone())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_product_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (3, 5, 16), &dev)?;
        let w = Var::randn(0f32, 1.0, (24, 16), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 5, 24), &dev)?;
        let fused = linear(&x, &w)?;
        let reference = composed(&x, &w)?;
        assert!(rel_err(&fused, &reference)? <= 1e-6);
        let gf = crate::kernels::backward(&(fused * &probe)?.sum_all()?)?;
        let gr = crate::kernels::backward(&(reference * &probe)?.sum_all()?)?;
        for v in [&x, &w] {
            let (a, b) = (gf.get(v).expect("fused grad"), gr.get(v).expect("reference grad"));
            assert!(rel_err(a, b)? <= 1e-5, "{}", rel_err(a, b)?);
        }
        Ok(())
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_product() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (4, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (6, 8), &dev)?; // not a variable: frozen
        let grads = crate::kernels::backward(&linear(&x, &w)?.sum_all()?)?;
        assert!(grads.get(&w).is_none());
        let want = w.sum(0)?.unsqueeze(0)?.broadcast_as((4, 8))?;
        assert!(rel_err(grads.get(&x).expect("x grad"), &want.contiguous()?)? <= 1e-6);
        Ok(())
    }

    #[test]
    fn onto_a_residual_matches_the_product_plus_the_residual() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (3, 5, 40), &dev)?;
        let w = Var::randn(0f32, 1.0, (24, 40), &dev)?;
        let r = Var::randn(0f32, 1.0, (3, 5, 24), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 5, 24), &dev)?;
        let fused = linear_onto(&x, &w, &r)?;
        let reference = (r.as_tensor() + composed(&x, &w)?)?;
        assert!(rel_err(&fused, &reference)? <= 1e-6);
        let gf = crate::kernels::backward(&(fused * &probe)?.sum_all()?)?;
        let gr = crate::kernels::backward(&(reference * &probe)?.sum_all()?)?;
        for v in [&x, &w, &r] {
            let (a, b) = (gf.get(v).expect("fused grad"), gr.get(v).expect("reference grad"));
            assert!(rel_err(a, b)? <= 1e-5, "{}", rel_err(a, b)?);
        }
        assert!(linear_onto(&x, &w, &x).is_err());
        Ok(())
    }

    #[test]
    fn a_low_rank_update_matches_its_composition_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (r, i, o) = (4, 40, 24);
        let x = Var::randn(0f32, 1.0, (3, 5, i), &dev)?;
        let a = Var::randn(0f32, 1.0, (r, i), &dev)?;
        let b = Var::randn(0f32, 1.0, (o, r), &dev)?;
        let y = Var::randn(0f32, 1.0, (3, 5, o), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 5, o), &dev)?;
        let scale = 0.37;
        let fused = add_low_rank(&y, &x, &a, &b, scale)?;
        let reference = (y.as_tensor() + composed(&composed(&x, &a)?, &b)?.affine(scale, 0.0)?)?;
        assert!(rel_err(&fused, &reference)? <= 1e-6);
        let gf = crate::kernels::backward(&(fused * &probe)?.sum_all()?)?;
        let gr = crate::kernels::backward(&(reference * &probe)?.sum_all()?)?;
        for (name, v) in [("x", &x), ("A", &a), ("B", &b), ("y", &y)] {
            let (f, c) = (gf.get(v).expect("fused grad"), gr.get(v).expect("reference grad"));
            assert!(rel_err(f, c)? <= 1e-5, "d{name}: {}", rel_err(f, c)?);
        }
        assert!(add_low_rank(&y, &x, &b, &a, scale).is_err(), "factors swapped");
        Ok(())
    }
}
