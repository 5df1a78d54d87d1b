//! Transformer building blocks written with differentiable candle ops only.
//!
//! candle's fused `rms_norm`, `layer_norm`, `softmax_last_dim` and `rope` kernels have
//! no backward: a graph through them stops gradients silently. Everything here is
//! composed from primitive ops (`sqr`, `mean`, `exp`, `matmul`, `narrow`, `cat`, ...),
//! each of which candle differentiates.

mod attention;
mod norm;
mod rope;
mod softmax;

pub use attention::{attention, attention_mask, extend_mask, repeat_kv, MASK_VALUE};
pub use norm::{layer_norm, rms_norm};
pub use rope::{Rope, RopeTables};
pub use softmax::{log_softmax, logsumexp, softmax};
