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
use super::linear::{self, GradTerm};
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

/// The sizes of a gated MLP input: `rows` rows of `in_f` features, `inter` outputs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub rows: usize,
    pub in_f: usize,
    pub inter: usize,
}

/// `silu(x·w_gateᵀ) · (x·w_upᵀ)` on slices, with `gate` and `up` for backward:
/// `(y, gate, up)`, each `rows × inter`.
pub(super) fn forward(x: &[f32], wg: &[f32], wu: &[f32], dims: Dims) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    forward_plus(x, wg, wu, dims, [&[], &[]])
}

/// [`forward`] with products `extra[0]` added to the gate and `extra[1]` to the up
/// projection before the activation (each `rows × inter`: low-rank updates `u·Bᵀ`),
/// summed in the same GEMM calls.
pub(super) fn forward_plus(
    x: &[f32],
    wg: &[f32],
    wu: &[f32],
    dims: Dims,
    extra: [&[(View<'_>, View<'_>)]; 2],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let Dims { rows: m, in_f: i, inter: o } = dims;
    let (xs, wg, wu) = (View::rows(x, m, i, i), View::rows(wg, o, i, i).t(), View::rows(wu, o, i, i).t());
    let [gate_products, up_products] =
        [(wg, extra[0]), (wu, extra[1])].map(|(w, extra)| [&[(xs, w)][..], extra].concat());
    let parts = linear::column_parts(m, o, i);
    let mut y = vec![0f32; m * o];
    let y_cols = gemm::split_columns(&mut y, m, o, parts);
    let mut up = Vec::new();
    let gate = gemm::unwritten_matrix(m, o, |gate| {
        up = gemm::unwritten_matrix(m, o, |up| {
            let blocks = gate.columns(parts).into_par_iter().zip(up.columns(parts)).zip(y_cols);
            blocks.try_for_each(|((g, u), mut y)| {
                let c = y.range();
                let g = g.write(&gemm::column_products(&gate_products, c.clone()))?;
                let u = u.write(&gemm::column_products(&up_products, c))?;
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
    Ok((y, gate, up))
}

/// Which gradients [`backward`] computes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub dx: bool,
    pub d_gate_weight: bool,
    pub d_up_weight: bool,
}

/// The gradients of [`forward`] from the output's gradient `dy`: `dx`, `dW_gate` and
/// `dW_up` where `want` asks for them. `dx = d_gate·W_gate + d_up·W_up` is summed in
/// one buffer.
#[allow(clippy::type_complexity)] // three optional gradients
pub(super) fn backward(
    (x, wg, wu): (&[f32], &[f32], &[f32]),
    (gate, up): (&[f32], &[f32]),
    dy: &[f32],
    dims: Dims,
    want: Wanted,
) -> Result<(Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>)> {
    let Dims { rows: m, in_f: i, inter: o } = dims;
    let (dg, du) = swiglu::backward(gate, up, dy, true, true);
    let terms = [GradTerm { dy: &dg, w: wg, out: o }, GradTerm { dy: &du, w: wu, out: o }];
    let dx = want.dx.then(|| linear::input_grad(m, i, &terms)).transpose()?;
    let weight_grad = |wanted: bool, d: &[f32]| wanted.then(|| linear::weight_grad(d, x, m, i, o)).transpose();
    Ok((dx, weight_grad(want.d_gate_weight, &dg)?, weight_grad(want.d_up_weight, &du)?))
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
            let (y, gate, up) = forward(slice(x, xl)?, slice(wg, wgl)?, slice(wu, wul)?, self.dims())?;
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
            let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            let Some((gate, up)) = kept.as_ref() else { bail!("gated mlp: backward before forward") };
            let want = Wanted {
                dx: x.track_op(),
                d_gate_weight: WeightInput::wanted(&self.credits.0, wg),
                d_up_weight: WeightInput::wanted(&self.credits.1, wu),
            };
            let (dx, dwg, dwu) = read(x, |xs| {
                read(wg, |wgs| {
                    read(wu, |wus| read(dy, |dy| backward((xs, wgs, wus), (gate, up), dy, self.dims(), want)))
                })
            })?;
            let (o, i) = (self.inter, self.in_f);
            let weight = |g: Option<Vec<f32>>, credit| -> Result<Option<Tensor>> {
                Ok(WeightInput::settle(credit, g.map(|g| tensor(g, &[o, i])).transpose()?))
            };
            let dwg = weight(dwg, &self.credits.0)?;
            let dwu = weight(dwu, &self.credits.1)?;
            Ok((dx.map(|d| tensor(d, x.dims())).transpose()?, dwg, dwu))
        })
    }
}

impl GatedMlpIn {
    fn dims(&self) -> Dims {
        Dims { rows: self.rows, in_f: self.in_f, inter: self.inter }
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
