//! Optimizers: AdamW, SGD with momentum, Lion, ...

use crate::error::Result;
use crate::host::Host;
use crate::plugin::Plugin;
use crate::types::ParamSlot;

/// An optimizer: updates parameters from their gradients.
///
/// # Lifecycle, in call order
/// 1. [`Plugin::new`] — once per stage (and on a resume), with the stage's `optimizer`
///    table; not for a stage whose handoff carries the previous stage's optimizer over
///    (`handoff.optimizer = "carry"` keeps the instance, its state and its step count).
/// 2. [`init`](Self::init) — with every trainable parameter (grads are
///    [`NONE`](crate::TensorHandle::NONE) here): once when the stage starts or resumes,
///    and again, with all of them, when a `train.unfreeze` rule adds some. Create all
///    state now with [`Host::new_buffer`], named after the parameter
///    (`exp_avg.<param name>`): asking again for a buffer that exists returns it as it
///    is, so a later `init` keeps the state of the parameters it already had. The host
///    checkpoints buffers and restores them before the first `step` of a resumed run;
///    state that is not in buffers is not resumed.
/// 3. [`step`](Self::step) — once per optimizer step (after gradient accumulation and
///    clipping), with `step` counting this optimizer's updates from 1 (it goes on
///    across a `carry` handoff and after a resume, and goes back with a rollback).
///    Update each parameter with [`Host::assign`]; skip slots whose `grad` is `NONE`.
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
