//! Fused CPU ops with hand-written backward passes.
//!
//! candle differentiates every primitive op on its own: a RMSNorm composed of `sqr`,
//! `mean`, `sqrt`, `recip` and two `broadcast_mul`s keeps six intermediate tensors for
//! backward and, in backward, computes a gradient for every input of every op, even
//! inputs that need none (a frozen weight, a mask), each into a fresh zero tensor it
//! then adds to. The ops here compute the same functions in one pass over memory,
//! parallel over rows, and their backward computes only the gradients some variable
//! needs ([`Tensor::track_op`]):
//!
//! | op | file | keeps for backward |
//! |---|---|---|
//! | linear `x·Wᵀ` (no frozen weight gradient, no materialized transposes) | [`linear`] | `x`, `W` |
//! | RMSNorm, LayerNorm | [`norm`] | `x`, weights (statistics are recomputed) |
//! | RoPE, reading `[b, s, h, d]` and writing heads `[b, h, s, d]` | [`rope`] | nothing |
//! | SwiGLU `silu(gate)·up` | [`swiglu`] | `gate`, `up` |
//! | Llama's MLP input `silu(x·W_gateᵀ)·(x·W_upᵀ)` (sites without adapters) | [`gated_mlp`] | `x`, weights, `gate`, `up` |
//! | causal / padded attention with GQA, output `[b, s, h·d]` | [`attention`] | `q`, `k`, `v` (probabilities are recomputed) |
//! | Llama's attention and MLP blocks, norm to residual, each one graph node (sites without adapters, or with declared low-rank updates: LoRA's) | [`decoder_block`] | normed input, heads or `gate` and `up`, the last product's input, each update's `x·Aᵀ` |
//! | softmax cross-entropy over the vocabulary with ignored rows | [`cross_entropy`] | logits, targets |
//! | the global gradient norm (no squared copy per parameter) | [`grad_norm`] | nothing |
//!
//! A trainable weight's gradient skips candle's gradient store (a zeroed copy and an
//! addition per weight): the ops deposit it and [`backward`], which replaces
//! `Tensor::backward` for losses that reach these ops, adds it to the store
//! ([`weight_grads`]).
//!
//! Each op runs fused on CPU f32 tensors while [`enabled`]; otherwise (CUDA, bf16, or
//! `stagecraft bench --unfused`) the same function is composed from candle ops, which
//! the gradient tests compare against. A CUDA kernel goes behind the same call as a
//! `cuda_fwd` of the op.

pub mod attention;
pub mod cross_entropy;
pub mod decoder_block;
pub(crate) mod exp;
pub mod gated_mlp;
mod gemm;
pub mod grad_norm;
mod lanes;
pub mod linear;
pub mod norm;
pub mod profile;
pub mod rope;
mod simd;
pub mod swiglu;
pub mod weight_grads;

pub use weight_grads::backward;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether fused ops are used where they apply (the default).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns fused ops on or off for the whole process (off: every op is composed from
/// candle primitives, as before they existed; for comparisons and tests).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused version of an op applies to `t`: fused ops are on, and `t` is an
/// f32 tensor on the CPU.
pub fn applies(t: &Tensor) -> bool {
    enabled() && t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 elements a contiguous layout covers.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("fused op expects f32, got {:?}", storage.dtype()) };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("fused op expects a contiguous tensor, got strides {:?}", layout.stride()),
    }
}

/// Runs `f` on the elements of `t` (made contiguous first if needed), row-major.
fn read<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => bail!("fused op expects a CPU tensor"),
    }
}

/// A CPU f32 tensor of `dims` from `data`.
fn tensor(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &candle_core::Device::Cpu)
}

/// Rows per task of a parallel reduction (the weight gradients of the norms): a
/// fixed count, so that partial sums are added in the same order, with the same
/// rounding, whatever the number of threads, and an exact resume stays exact.
const REDUCE_ROWS: usize = 32;

/// How many rows each parallel task takes so that about `4 ×` the pool's threads tasks
/// share `rows` rows (fewer, larger tasks for small inputs).
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// Relative error `max |a - b| / max(max |b|, tiny)`, for the gradient tests, which
/// compare a fused op with its composition: only meaningful while fused ops are on.
#[cfg(test)]
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert!(enabled(), "fused ops are off: the comparison would be composed against composed");
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-30);
    Ok(diff / scale)
}
