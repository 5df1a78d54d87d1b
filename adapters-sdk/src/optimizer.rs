//! Optimizers: AdamW, SGD with momentum, Lion, ...

use crate::error::Result;
use crate::host::Host;
use crate::plugin::Plugin;
use crate::types::ParamSlot;

/// An optimizer: updates parameters from their gradients.
///
/// # Lifecycle, in call order
/// 1. [`Plugin::new`] — once per stage, with the stage's `optimizer` table.
/// 2. [`init`](Self::init) — once, with every trainable parameter (grads are
///    [`NONE`](crate::TensorHandle::NONE) here). Create all state now with
///    [`Host::new_buffer`], named after the parameter (`exp_avg.<param name>`): the host
///    checkpoints buffers and restores them before the first `step` of a resumed run.
///    State that is not in buffers is not resumed.
/// 3. [`step`](Self::step) — once per optimizer step (after gradient accumulation and
///    clipping), with `step` counting from 1 in this stage. Update each parameter with
///    [`Host::assign`]; skip slots whose `grad` is `NONE`.
///
/// The host computes each parameter's learning rate (schedule × layer-wise factor) and
/// passes it in [`ParamSlot::lr`]; weight decay is the plugin's, scaled by
/// [`ParamSlot::decay_mul`].
pub trait Optimizer: Plugin {
    /// Creates state buffers.
    fn init(&mut self, host: Host<'_>, params: &[ParamSlot]) -> Result<()>;
    /// Applies one update.
    fn step(&mut self, host: Host<'_>, params: &[ParamSlot], step: u64) -> Result<()>;
}
