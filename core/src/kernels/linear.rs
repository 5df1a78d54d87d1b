//! `y = x·Wᵀ` with `x [.., in]` and `W [out, in]` (PyTorch's `F.linear` without bias).
//!
//! The leading dims of `x` fold into one matrix of `m` rows, so each product is one
//! GEMM (not a batch of them against a broadcast weight), and every operand is read
//! through its strides: no transpose is materialized.
//!
//! Backward: `dx = dy·W` when `x` needs a gradient, `dW = dyᵀ·x` when `W` does. A
//! frozen weight enters the graph detached, so it costs no weight-gradient product at
//! all (candle's own matmul computes both sides whatever they need).

use super::{applies, profile};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

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
        let op = Linear { m, in_f, out_f, out_dims };
        x.contiguous()?.apply_op2(&w.contiguous()?, op)
    } else {
        composed(x, w)
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
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        profile::time("linear.forward", || {
            if !xl.is_contiguous() || !wl.is_contiguous() {
                bail!("linear: operands must be contiguous")
            }
            let lhs = Layout::contiguous_with_offset((self.m, self.in_f), xl.start_offset());
            let rhs = Layout::contiguous_with_offset((self.out_f, self.in_f), wl.start_offset()).transpose(0, 1)?;
            let y = x.matmul(w, (1, self.m, self.out_f, self.in_f), &lhs, &rhs)?;
            Ok((y, Shape::from(self.out_dims.clone())))
        })
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        profile::time("linear.backward", || {
            let dy = dy.reshape((self.m, self.out_f))?;
            let dx = match x.track_op() {
                true => Some(dy.matmul(&w.detach())?.reshape(x.shape())?),
                false => None,
            };
            let dw = match w.track_op() {
                true => Some(dy.t()?.matmul(&x.detach().reshape((self.m, self.in_f))?)?),
                false => None,
            };
            Ok((dx, dw))
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
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gr = (reference * &probe)?.sum_all()?.backward()?;
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
        let grads = linear(&x, &w)?.sum_all()?.backward()?;
        assert!(grads.get(&w).is_none());
        let want = w.sum(0)?.unsqueeze(0)?.broadcast_as((4, 8))?;
        assert!(rel_err(grads.get(&x).expect("x grad"), &want.contiguous()?)? <= 1e-6);
        Ok(())
    }
}
