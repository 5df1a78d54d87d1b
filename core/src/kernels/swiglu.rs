//! SwiGLU, the gated activation of Llama's MLP: `silu(gate) · up`, element-wise, with
//! `silu(g) = g·σ(g)`.
//!
//! Backward: `d_up = dy·silu(g)`, `d_gate = dy·up·σ(g)·(1 + g·(1 - σ(g)))`. Only the two
//! inputs are kept (candle's composition also keeps `silu(g)`).

use super::exp::exp;
use super::{applies, profile, read, rows_per_task, simd, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `silu(gate) · up` for two tensors of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        bail!("swiglu: gate {:?} and up {:?} differ in shape", gate.dims(), up.dims())
    }
    if applies(gate) && applies(up) {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    swiglu_composed(gate, up)
}

/// [`swiglu`] from candle primitives (the reference; CUDA and bf16).
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `silu(g)·u` of one element, with candle's silu: `g / (1 + e^-g)`.
#[inline(always)]
pub(crate) fn silu_times(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `(d_gate, d_up)` of `silu(gate)·up` for the output gradient `dy` (each empty unless
/// wanted).
pub(crate) fn backward(g: &[f32], u: &[f32], dy: &[f32], want_gate: bool, want_up: bool) -> (Vec<f32>, Vec<f32>) {
    let n = g.len();
    let mut dg = vec![0f32; if want_gate { n } else { 0 }];
    let mut du = vec![0f32; if want_up { n } else { 0 }];
    let chunk = rows_per_task(n).max(4096);
    let inputs = g.par_chunks(chunk).zip(u.par_chunks(chunk)).zip(dy.par_chunks(chunk));
    match (want_gate, want_up) {
        (true, true) => {
            inputs.zip(dg.par_chunks_mut(chunk)).zip(du.par_chunks_mut(chunk)).for_each(|((((g, u), dy), dg), du)| {
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for i in 0..g.len() {
                            let s = sigmoid(g[i]);
                            du[i] = dy[i] * (g[i] * s);
                            dg[i] = dy[i] * u[i] * (s * (1.0 + g[i] * (1.0 - s)));
                        }
                    },
                );
            })
        }
        (true, false) => inputs.zip(dg.par_chunks_mut(chunk)).for_each(|(((g, u), dy), dg)| {
            simd::vectorized(
                #[inline(always)]
                || {
                    for i in 0..g.len() {
                        let s = sigmoid(g[i]);
                        dg[i] = dy[i] * u[i] * (s * (1.0 + g[i] * (1.0 - s)));
                    }
                },
            );
        }),
        (false, true) => inputs.zip(du.par_chunks_mut(chunk)).for_each(|(((g, _), dy), du)| {
            simd::vectorized(
                #[inline(always)]
                || {
                    for i in 0..g.len() {
                        du[i] = dy[i] * (g[i] * sigmoid(g[i]));
                    }
                },
            );
        }),
        (false, false) => {}
    }
    (dg, du)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, g: &CpuStorage, gl: &Layout, u: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        profile::time("swiglu.forward", || {
            let (g, u) = (slice(g, gl)?, slice(u, ul)?);
            let mut y = vec![0f32; g.len()];
            let chunk = rows_per_task(g.len()).max(4096);
            y.par_chunks_mut(chunk).zip(g.par_chunks(chunk)).zip(u.par_chunks(chunk)).for_each(|((y, g), u)| {
                simd::vectorized(
                    #[inline(always)]
                    || y.iter_mut().zip(g).zip(u).for_each(|((y, &g), &u)| *y = silu_times(g, u)),
                )
            });
            Ok((CpuStorage::F32(y), gl.shape().clone()))
        })
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        profile::time("swiglu.backward", || {
            let (want_gate, want_up) = (gate.track_op(), up.track_op());
            let (dg, du) = read(gate, |g| read(up, |u| read(dy, |dy| Ok(backward(g, u, dy, want_gate, want_up)))))?;
            let dg = if want_gate { Some(tensor(dg, gate.dims())?) } else { None };
            let du = if want_up { Some(tensor(du, up.dims())?) } else { None };
            Ok((dg, du))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use candle_core::{Device, Var};

    #[test]
    fn matches_silu_times_up_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let g = Var::randn(0f32, 3.0, (2, 5, 40), &dev)?;
        let u = Var::randn(0f32, 1.0, (2, 5, 40), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 5, 40), &dev)?;
        let (yf, yc) = (swiglu(&g, &u)?, swiglu_composed(&g, &u)?);
        assert!(rel_err(&yf, &yc)? <= 1e-6);
        let gf = (yf * &probe)?.sum_all()?.backward()?;
        let gc = (yc * &probe)?.sum_all()?.backward()?;
        for v in [&g, &u] {
            let e = rel_err(gf.get(v).expect("fused grad"), gc.get(v).expect("composed grad"))?;
            assert!(e <= 1e-5, "relative error {e}");
        }
        Ok(())
    }
}
