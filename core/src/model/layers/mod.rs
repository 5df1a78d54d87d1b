//! Transformer building blocks: attention masks, RoPE tables, and the composed
//! (primitive-op) attention and softmax.
//!
//! candle's fused `rms_norm`, `layer_norm`, `softmax_last_dim` and `rope` kernels have
//! no backward: a graph through them stops gradients silently. The compositions here
//! use only ops candle differentiates; [`crate::kernels`] has the fused ops with
//! hand-written backward passes that the models use on CPU, and the norms.

mod attention;
mod rope;
mod softmax;

pub use crate::kernels::norm::{layer_norm, rms_norm};
pub use attention::{attention, attention_mask, extend_mask, repeat_kv, MASK_VALUE, SHARED};
pub use rope::{Rope, RopeTables};
pub use softmax::{log_softmax, logsumexp, softmax};
