//! The input half of Llama's MLP in one op: `silu(x·W_gateᵀ) · (x·W_upᵀ)`.
//!
//! Composed, the two products and SwiGLU are three graph nodes: in backward candle
//! gives `x` two gradients (a zero tensor plus each, added) and keeps `gate` and `up`
//! as nodes whose gradients are summed the same way — the largest tensors of the
//! block, `[rows, intermediate]` each. Here the products run back to back and SwiGLU
//! runs on each block of columns as soon as its products are done, while they are in
//! cache; `gate` and `up` are kept inside the op for backward, which computes
//! `d_gate`, `d_up`, then `dx = d_gate·W_gate + d_up·W_up` into one buffer and each
//! weight's gradient only when it trains.

use super::gemm::{self, View};
use super::linear::{self, block_rows};
use super::swiglu::{self, silu_times, swiglu};
use super::weight_grads::WeightInput;
use super::{applies, profile, read, simd, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Mutex, PoisonError};

/// `silu(x·w_gateᵀ) · (x·w_upᵀ)` for `x [.., in]` and both weights `[inter, in]`.
pub fn gated_mlp_in(x: &Tensor, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
    let (inter, in_f) = w_gate.dims2()?;
    if w_up.dims() != w_gate.dims() {
        bail!("gated mlp: gate weight {:?} and up weight {:?} differ", w_gate.dims(), w_up.dims())
    }
    let Some((&last, lead)) = x.dims().split_last() else { bail!("gated mlp of a scalar") };
    if last != in_f {
        bail!("gated mlp: input has {last} features, weights {:?} expect {in_f}", w_gate.dims())
    }
    let rows = lead.iter().product::<usize>();
    if !(applies(x) && applies(w_gate) && applies(w_up) && rows > 0) {
        return composed(x, w_gate, w_up);
    }
    let out_dims: Vec<usize> = lead.iter().copied().chain([inter]).collect();
    let (gate, up) = (WeightInput::new(w_gate, x.track_op()), WeightInput::new(w_up, x.track_op()));
    let credits = (gate.credit, up.credit);
    let op = GatedMlpIn { rows, in_f, inter, out_dims, kept: Mutex::new(None), credits };
    x.contiguous()?.apply_op3(&gate.tensor.contiguous()?, &up.tensor.contiguous()?, op)
}

/// The same from the separate products and SwiGLU (the reference; CUDA and bf16).
pub fn composed(x: &Tensor, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
    swiglu(&linear::linear(x, w_gate)?, &linear::linear(x, w_up)?)
}

/// The op: sizes, and `gate` and `up` from its forward pass, for backward.
struct GatedMlpIn {
    rows: usize,
    in_f: usize,
    inter: usize,
    out_dims: Vec<usize>,
    kept: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
    /// The variables the gate and up weights' gradients go to when the op took them
    /// detached ([`WeightInput`]).
    credits: (Option<Tensor>, Option<Tensor>),
}

impl CustomOp3 for GatedMlpIn {
    fn name(&self) -> &'static str {
        "gated_mlp_in"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        wg: &CpuStorage,
        wgl: &Layout,
        wu: &CpuStorage,
        wul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        profile::time("gated_mlp.forward", || {
            let (x, wg, wu) = (slice(x, xl)?, slice(wg, wgl)?, slice(wu, wul)?);
            let (m, i, o) = (self.rows, self.in_f, self.inter);
            let (xs, wg, wu) = (View::rows(x, m, i, i), View::rows(wg, o, i, i).t(), View::rows(wu, o, i, i).t());
            let parts = linear::column_parts(m, o, i);
            let mut y = vec![0f32; m * o];
            let y_cols = gemm::split_columns(&mut y, m, o, parts);
            let mut up = Vec::new();
            let gate = gemm::unwritten_matrix(m, o, |gate| {
                up = gemm::unwritten_matrix(m, o, |up| {
                    let blocks = gate.columns(parts).into_par_iter().zip(up.columns(parts)).zip(y_cols);
                    blocks.try_for_each(|((g, u), mut y)| {
                        let c = y.range();
                        let g = g.write(&[(xs, wg.columns(c.start, c.end))])?;
                        let u = u.write(&[(xs, wu.columns(c.start, c.end))])?;
                        simd::vectorized(
                            #[inline(always)]
                            || {
                                for r in 0..m {
                                    for ((y, &g), &u) in y.row_mut(r).iter_mut().zip(g.row(r)).zip(u.row(r)) {
                                        *y = silu_times(g, u);
                                    }
                                }
                            },
                        );
                        Ok(())
                    })
                })?;
                Ok(())
            })?;
            *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some((gate, up));
            Ok((CpuStorage::F32(y), Shape::from(self.out_dims.clone())))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        wg: &Tensor,
        wu: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::time("gated_mlp.backward", || {
            let (m, i, o) = (self.rows, self.in_f, self.inter);
            let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            let Some((gate, up)) = kept.as_ref() else { bail!("gated mlp: backward before forward") };
            let (dg, du) = read(dy, |dy| Ok(swiglu::backward(gate, up, dy, true, true)))?;
            let dx = match x.track_op() {
                // dx = d_gate·W_gate + d_up·W_up, summed in one buffer.
                true => Some(read(wg, |wg| {
                    read(wu, |wu| {
                        let (wg, wu) = (View::rows(wg, o, i, i), View::rows(wu, o, i, i));
                        gemm::unwritten_matrix(m, i, |dx| {
                            dx.rows(block_rows(m, i, o)).into_par_iter().try_for_each(|blk| {
                                let (r0, r1) = (blk.row_range().start, blk.row_range().end);
                                let (dg, du) = (&dg[r0 * o..r1 * o], &du[r0 * o..r1 * o]);
                                let (dg, du) = (View::rows(dg, r1 - r0, o, o), View::rows(du, r1 - r0, o, o));
                                blk.write(&[(dg, wg), (du, wu)]).map(drop)
                            })
                        })
                    })
                })?),
                false => None,
            };
            let weight_grad = |w: &Tensor, d: &[f32], credit: &Option<Tensor>| -> Result<Option<Tensor>> {
                let g = match WeightInput::wanted(credit, w) {
                    true => Some(read(x, |x| linear::weight_grad(d, x, m, i, o)).and_then(|g| tensor(g, &[o, i]))?),
                    false => None,
                };
                Ok(WeightInput::settle(credit, g))
            };
            let dwg = weight_grad(wg, &dg, &self.credits.0)?;
            let dwu = weight_grad(wu, &du, &self.credits.1)?;
            Ok((dx.map(|d| tensor(d, x.dims())).transpose()?, dwg, dwu))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_separate_products_and_swiglu_with_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // 135 rows: several parallel blocks, the last one short.
        let x = Var::randn(0f32, 1.0, (3, 45, 16), &dev)?;
        let wg = Var::randn(0f32, 0.5, (40, 16), &dev)?;
        let wu = Var::randn(0f32, 0.5, (40, 16), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 45, 40), &dev)?;
        let (fused, reference) = (gated_mlp_in(&x, &wg, &wu)?, composed(&x, &wg, &wu)?);
        assert!(rel_err(&fused, &reference)? <= 1e-6);
        let gf = crate::kernels::backward(&(fused * &probe)?.sum_all()?)?;
        let gr = crate::kernels::backward(&(reference * &probe)?.sum_all()?)?;
        for v in [&x, &wg, &wu] {
            let e = rel_err(gf.get(v).expect("fused grad"), gr.get(v).expect("reference grad"))?;
            assert!(e <= 1e-5, "relative error {e}");
        }
        Ok(())
    }

    #[test]
    fn frozen_weights_get_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (7, 8), &dev)?;
        let (wg, wu) = (Tensor::randn(0f32, 0.5, (12, 8), &dev)?, Tensor::randn(0f32, 0.5, (12, 8), &dev)?);
        let grads = crate::kernels::backward(&gated_mlp_in(&x, &wg, &wu)?.sum_all()?)?;
        assert!(grads.get(&wg).is_none() && grads.get(&wu).is_none());
        let reference = crate::kernels::backward(&composed(&x, &wg, &wu)?.sum_all()?)?;
        let e = rel_err(grads.get(&x).expect("x grad"), reference.get(&x).expect("x grad"))?;
        assert!(e <= 1e-5, "relative error {e}");
        Ok(())
    }
}
