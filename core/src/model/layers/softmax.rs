//! Softmax and its relatives from differentiable candle ops, each shifted by the
//! detached maximum along `dim` so that it never overflows (the shift does not change
//! the result, so no gradient flows through it). Attention uses them; the plugin host
//! ops expose them to plugins.

use candle_core::Tensor;

/// Softmax along `dim` from differentiable ops (the max is detached: it only shifts).
pub fn softmax(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(dim)?)
}

/// Log-softmax along `dim` from differentiable ops.
pub fn log_softmax(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(dim)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `log(sum(exp(x)))` along `dim` (removed), from differentiable ops, shifted by the
/// detached maximum so that it never overflows.
pub fn logsumexp(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let lse = x.broadcast_sub(&max)?.exp()?.sum_keepdim(dim)?.log()?;
    (lse + max)?.squeeze(dim)
}
