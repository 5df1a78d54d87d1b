//! In-memory copies of what trains (parameters and optimizer state), for restoring the
//! best or the last good point of a stage: early stopping, gate rollbacks, NaN recovery.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::train::Trainer;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a snapshot was taken: the stage's step and the optimizer's update count (what
/// a checkpoint's meta records of a snapshot besides its tensors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotAt {
    pub step: u64,
    pub updates: u64,
}

/// Copies of the trainer's parameters and optimizer buffers, by name.
pub(crate) struct Snapshot {
    /// Optimizer step it was taken at.
    pub step: u64,
    updates: u64,
    params: BTreeMap<String, Tensor>,
    buffers: BTreeMap<String, Tensor>,
}

impl Snapshot {
    /// Copies the trainer's current state.
    pub fn take(t: &Trainer) -> Result<Snapshot> {
        let params = t.params.iter().map(|p| Ok((p.name.clone(), p.var.as_tensor().copy()?))).collect::<Result<_>>()?;
        let buffers = t
            .optimizer
            .buffers()
            .iter()
            .map(|b| Ok((b.name.clone(), b.var.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Snapshot { step: t.step, updates: t.optimizer.updates, params, buffers })
    }

    /// Where it was taken.
    pub fn at(&self) -> SnapshotAt {
        SnapshotAt { step: self.step, updates: self.updates }
    }

    /// Puts the copied values back (parameters and optimizer state). What started
    /// training after the snapshot (unfrozen since) keeps its value.
    pub fn restore(&self, t: &mut Trainer) -> Result<()> {
        for p in &t.params {
            if let Some(v) = self.params.get(&p.name) {
                p.var.set(v)?;
            }
        }
        for b in t.optimizer.buffers() {
            if let Some(v) = self.buffers.get(&b.name) {
                b.var.set(v)?;
            }
        }
        t.optimizer.updates = self.updates;
        Ok(())
    }

    /// Its tensors, named `snapshot.<role>.param.<name>` / `snapshot.<role>.buffer.<name>`.
    pub fn tensors(&self, role: &str) -> BTreeMap<String, Tensor> {
        let params = self.params.iter().map(|(n, t)| (format!("snapshot.{role}.param.{n}"), t.clone()));
        let buffers = self.buffers.iter().map(|(n, t)| (format!("snapshot.{role}.buffer.{n}"), t.clone()));
        params.chain(buffers).collect()
    }

    /// Reads back a snapshot saved by [`tensors`](Self::tensors), checking each tensor
    /// against the trainer's.
    pub fn load(ckpt: &Checkpoint, role: &str, at: SnapshotAt, trainer: &Trainer) -> Result<Snapshot> {
        let like: BTreeMap<String, Tensor> = trainer
            .params
            .iter()
            .map(|p| (format!("param.{}", p.name), p.var.as_tensor().clone()))
            .chain(
                trainer.optimizer.buffers().iter().map(|b| (format!("buffer.{}", b.name), b.var.as_tensor().clone())),
            )
            .collect();
        let prefix = format!("snapshot.{role}.");
        let mut snap =
            Snapshot { step: at.step, updates: at.updates, params: BTreeMap::new(), buffers: BTreeMap::new() };
        for (name, t) in ckpt.tensors.iter().filter_map(|(n, t)| n.strip_prefix(&prefix).map(|n| (n, t))) {
            let want = like.get(name).ok_or_else(|| Error::msg(format!("checkpoint tensor `{prefix}{name}` matches nothing that trains: the config changed since it was written")))?;
            if t.dims() != want.dims() {
                return Err(Error::msg(format!(
                    "checkpoint tensor `{prefix}{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    want.dims()
                )));
            }
            match name.split_once('.') {
                Some(("param", n)) => snap.params.insert(n.to_string(), t.clone()),
                Some((_, n)) => snap.buffers.insert(n.to_string(), t.clone()),
                None => None,
            };
        }
        Ok(snap)
    }
}
