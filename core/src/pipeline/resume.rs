//! Exact resume: what a checkpoint holds beyond tensors, saving it, and putting a
//! pipeline back exactly where a checkpoint left it.
//!
//! A checkpoint (at every evaluation and at the end of every stage) holds all model
//! weights, every adapter's parameters, the optimizer's state buffers, every objective's
//! parameters (classification heads), and in its meta the stage index and step, the
//! host RNG state (dropout), the data mixture's sampler states, the anomaly guard's,
//! early stopping's and the retention gate's state with their snapshots, and how many
//! metric rows were logged. Resuming rebuilds the stage structure
//! (handoffs, adapters, frozen sets) by replaying the config, then overwrites every
//! value from the checkpoint, so training continues bit-identically.

use super::eval::Metrics;
use super::result::StageResult;
use super::stage::{MarkSteps, Progress};
use crate::checkpoint::{self, Checkpoint};
use crate::data::MixtureState;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{MethodInstance, StageInstance};
use crate::train::Trainer;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Where the pipeline is, besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeMeta {
    /// Index of the stage.
    pub stage: usize,
    /// Whether that stage had finished (resume starts with the next one).
    pub stage_done: bool,
    /// Optimizer steps taken in the stage.
    pub step: u64,
    /// Host RNG state.
    pub rng: u64,
    /// Data sampler states (absent at a stage end).
    pub mixture: Option<MixtureState>,
    /// The anomaly guard, early stopping and retention gate state.
    pub progress: Progress,
    /// The optimizer's update count (continues across stages that carry it).
    pub optimizer_updates: u64,
    /// Steps of the snapshots saved with the checkpoint (last good, best, best passing).
    pub marks: MarkSteps,
    /// Each finished stage's final metrics on its own eval set.
    pub own_scores: BTreeMap<String, Metrics>,
    /// Rows in metrics.jsonl at the time.
    pub rows: usize,
    /// At a stage end: the model source and adapters the stage ended with.
    #[serde(default)]
    pub result: Option<StageResult>,
}

/// Saves a resume checkpoint named `name` under `<run_dir>/checkpoints`, with `extra`
/// tensors (the stage's snapshots).
pub fn save(
    run_dir: &Path,
    name: &str,
    trainer: &Trainer,
    objectives: &[Option<StageInstance>],
    current: usize,
    meta: &ResumeMeta,
    extra: BTreeMap<String, Tensor>,
) -> Result<()> {
    let mut tensors = extra;
    for (n, w) in trainer.model.weights() {
        tensors.insert(format!("model.{n}"), w.var().as_tensor().clone());
    }
    for (k, m) in trainer.adapters.methods().iter().enumerate() {
        for p in m.params() {
            tensors.insert(adapter_key(k, m, &p.name), p.var.as_tensor().clone());
        }
        for b in m.buffers() {
            tensors.insert(adapter_buffer_key(k, m, &b.name), b.var.as_tensor().clone());
        }
    }
    for b in trainer.optimizer.buffers() {
        tensors.insert(format!("optimizer.{}", b.name), b.var.as_tensor().clone());
    }
    for p in trainer.stage.params() {
        tensors.insert(format!("objective.{current}.{}", p.name), p.var.as_tensor().clone());
    }
    for (j, o) in objectives.iter().enumerate() {
        if let (true, Some(o)) = (j != current, o) {
            for p in o.params() {
                tensors.insert(format!("objective.{j}.{}", p.name), p.var.as_tensor().clone());
            }
        }
    }
    let meta = serde_json::to_value(meta).map_err(|e| Error::msg(format!("cannot record the checkpoint meta: {e}")))?;
    checkpoint::save(&run_dir.join("checkpoints"), name, &Checkpoint { tensors, meta })?;
    Ok(())
}

/// The newest checkpoint of a run that verifies, with its meta (corrupt ones are
/// reported and skipped).
pub fn latest(run_dir: &Path, device: &Device) -> Result<(Checkpoint, ResumeMeta)> {
    let dir = run_dir.join("checkpoints");
    let (path, ckpt, skipped) = checkpoint::load_latest_good(&dir, None, device)?
        .ok_or_else(|| Error::msg(format!("{}: no checkpoint to resume from", dir.display())))?;
    for e in skipped {
        tracing::warn!("{e}; using {}", path.display());
    }
    let meta: ResumeMeta = serde_json::from_value(ckpt.meta.clone())
        .map_err(|e| Error::msg(format!("{}: not a pipeline checkpoint: {e}", path.display())))?;
    Ok((ckpt, meta))
}

fn set(name: &str, var: &candle_core::Var, ckpt: &Checkpoint) -> Result<()> {
    let t: &Tensor = ckpt
        .tensors
        .get(name)
        .ok_or_else(|| Error::msg(format!("checkpoint lacks `{name}`: the config changed since it was written")))?;
    if t.dims() != var.dims() {
        return Err(Error::msg(format!(
            "checkpoint tensor `{name}` has shape {:?}, expected {:?}",
            t.dims(),
            var.dims()
        )));
    }
    Ok(var.set(t)?)
}

/// Overwrites a model's weights and its adapters' parameters with a stage's result.
pub fn load_result(ckpt: &Checkpoint, model: &dyn Model, adapters: &Adapters) -> Result<()> {
    for (n, w) in model.weights() {
        set(&format!("model.{n}"), w.var(), ckpt)?;
    }
    for (k, m) in adapters.methods().iter().enumerate() {
        for p in m.params() {
            set(&adapter_key(k, m, &p.name), &p.var, ckpt)?;
        }
        for b in m.buffers() {
            set(&adapter_buffer_key(k, m, &b.name), &b.var, ckpt)?;
        }
    }
    Ok(())
}

/// The checkpoint key of parameter `local` of the `k`-th attached adapter:
/// `adapter.<k>.<plugin>.<local>`.
pub fn adapter_key(k: usize, m: &MethodInstance, local: &str) -> String {
    format!("adapter.{k}.{}.{local}", m.core.plugin)
}

/// The checkpoint key of a buffer (running state) of the `k`-th attached adapter.
fn adapter_buffer_key(k: usize, m: &MethodInstance, local: &str) -> String {
    format!("adapter_buffer.{k}.{}.{local}", m.core.plugin)
}

/// Overwrites every value the checkpoint holds for the running stage.
pub fn load_values(
    ckpt: &Checkpoint,
    trainer: &Trainer,
    objectives: &[Option<StageInstance>],
    current: usize,
) -> Result<()> {
    load_result(ckpt, trainer.model.as_ref(), &trainer.adapters)?;
    for b in trainer.optimizer.buffers() {
        set(&format!("optimizer.{}", b.name), &b.var, ckpt)?;
    }
    for p in trainer.stage.params() {
        set(&format!("objective.{current}.{}", p.name), &p.var, ckpt)?;
    }
    for (j, o) in objectives.iter().enumerate() {
        if let (true, Some(o)) = (j != current, o) {
            for p in o.params() {
                set(&format!("objective.{j}.{}", p.name), &p.var, ckpt)?;
            }
        }
    }
    Ok(())
}
