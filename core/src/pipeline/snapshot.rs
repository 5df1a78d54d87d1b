//! In-memory copies of what trains (parameters and optimizer state), for restoring the
//! best or the last good point of a stage: early stopping, gate rollbacks, NaN recovery.

use crate::error::Result;
use crate::train::Trainer;
use candle_core::Tensor;

/// Copies of the trainer's parameters and optimizer buffers.
pub struct Snapshot {
    /// Optimizer step it was taken at.
    pub step: u64,
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

impl Snapshot {
    /// Copies the trainer's current state.
    pub fn take(t: &Trainer) -> Result<Snapshot> {
        let params = t.params.iter().map(|p| p.var.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        let buffers = t.optimizer.buffers().iter().map(|b| b.var.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        Ok(Snapshot { step: t.step, params, buffers })
    }

    /// Puts the copied values back (parameters and optimizer state).
    pub fn restore(&self, t: &mut Trainer) -> Result<()> {
        for (p, v) in t.params.iter().zip(&self.params) {
            p.var.set(v)?;
        }
        for (b, v) in t.optimizer.buffers().iter().zip(&self.buffers) {
            b.var.set(v)?;
        }
        Ok(())
    }
}
