//! Exact resume: what a checkpoint holds beyond tensors, the checkpoint's tensor names,
//! saving one, and putting a pipeline's values back from one.
//!
//! A checkpoint (`checkpoints/resume/` at every evaluation, `checkpoints/<stage>/` at
//! the end of every stage) holds all model weights, every adapter's parameters and
//! buffers, the optimizer's state, every objective's parameters (classification
//! heads), the stage rules' snapshots, and in its meta ([`ResumeMeta`]) the stage and
//! step, the host RNG state (dropout), the data mixture's sampler states, the stage
//! rules' state, each finished stage's own scores and how many bytes of the logs it
//! covers. Resuming rebuilds the stage structure (handoffs, adapters, frozen sets) by
//! replaying the config, then overwrites every value from the checkpoint, so training
//! continues bit-identically.
//!
//! Tensor names: `model.<weight>`, `adapter.<k>.<plugin>.<param>`,
//! `adapter_buffer.<k>.<plugin>.<buffer>`, `optimizer.<buffer>`,
//! `objective.<stage index>.<param>`, `snapshot.<role>.{param,buffer}.<name>`.

use super::eval::Metrics;
use super::outcome::{StageResult, StageSummary};
use super::records::RecordsMark;
use super::rules::RulesState;
use crate::checkpoint::{self, Checkpoint};
use crate::data::MixtureState;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::ObjectiveInstance;
use crate::train::Trainer;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The rolling checkpoint taken at every evaluation (a stage may not take this name).
pub(crate) const RESUME_CHECKPOINT: &str = "resume";

/// Where the pipeline is, besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResumeMeta {
    /// Index of the stage.
    pub stage: usize,
    /// Whether that stage had finished (resume starts with the next one).
    pub stage_done: bool,
    /// Optimizer steps taken in the stage.
    pub step: u64,
    /// Host RNG state.
    pub rng: u64,
    /// Within a stage: the data sampler states.
    pub mixture: Option<MixtureState>,
    /// Within a stage: the anomaly guard's, the gate's and early stopping's state.
    pub rules: Option<RulesState>,
    /// The optimizer's update count (continues across stages that carry it).
    pub optimizer_updates: u64,
    /// Each finished stage's final metrics on its own eval set.
    pub own_scores: BTreeMap<String, Metrics>,
    /// How much of the logs the checkpoint covers.
    pub records: RecordsMark,
    /// How the stages before this one ended.
    pub ended: Vec<StageSummary>,
    /// At a stage end: the model source and adapters the stage ended with.
    pub result: Option<StageResult>,
}

/// Where in a stage a checkpoint is taken.
pub(crate) enum Position {
    /// At an evaluation within the stage.
    Within { mixture: MixtureState, rules: RulesState },
    /// At the stage's end, with what it ended with.
    End(StageResult),
}

impl ResumeMeta {
    /// The meta of a checkpoint of stage `stage` taken now.
    pub fn new(
        stage: usize,
        trainer: &Trainer,
        at: Position,
        own_scores: &BTreeMap<String, Metrics>,
        ended: &[StageSummary],
        records: RecordsMark,
    ) -> Self {
        let (mixture, rules, result) = match at {
            Position::Within { mixture, rules } => (Some(mixture), Some(rules), None),
            Position::End(result) => (None, None, Some(result)),
        };
        ResumeMeta {
            stage,
            stage_done: result.is_some(),
            step: trainer.step,
            rng: trainer.state.rng.borrow().state(),
            mixture,
            rules,
            optimizer_updates: trainer.optimizer.updates,
            own_scores: own_scores.clone(),
            records,
            ended: ended.to_vec(),
            result,
        }
    }
}

/// Every value a model with its adapters holds, by checkpoint name.
fn result_vars(model: &dyn Model, adapters: &Adapters) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> =
        model.weights().into_iter().map(|(n, w)| (format!("model.{n}"), w.var().clone())).collect();
    for (k, m) in adapters.methods().iter().enumerate() {
        let plugin = &m.core.plugin;
        vars.extend(m.params().iter().map(|p| (format!("adapter.{k}.{plugin}.{}", p.name), p.var.clone())));
        vars.extend(m.buffers().iter().map(|b| (format!("adapter_buffer.{k}.{plugin}.{}", b.name), b.var.clone())));
    }
    vars
}

/// Every value training holds: the model's and adapters', the optimizer's state, and
/// every objective's parameters (`objectives[k]` for stage `k`; the running stage's is
/// the trainer's).
fn training_vars(trainer: &Trainer, objectives: &[Option<ObjectiveInstance>], current: usize) -> Vec<(String, Var)> {
    let mut vars = result_vars(trainer.model.as_ref(), &trainer.adapters);
    vars.extend(trainer.optimizer.buffers().iter().map(|b| (format!("optimizer.{}", b.name), b.var.clone())));
    let others =
        objectives.iter().enumerate().filter(|(j, _)| *j != current).filter_map(|(j, o)| Some((j, o.as_ref()?)));
    for (j, objective) in std::iter::once((current, &trainer.objective)).chain(others) {
        vars.extend(objective.params().iter().map(|p| (format!("objective.{j}.{}", p.name), p.var.clone())));
    }
    vars
}

/// Saves checkpoint `name` under `<run_dir>/checkpoints`: every value training holds,
/// `extra` tensors (the stage rules' snapshots) and `meta`.
pub(crate) fn save(
    run_dir: &Path,
    name: &str,
    trainer: &Trainer,
    objectives: &[Option<ObjectiveInstance>],
    meta: &ResumeMeta,
    extra: BTreeMap<String, Tensor>,
) -> Result<()> {
    let mut tensors = extra;
    tensors.extend(training_vars(trainer, objectives, meta.stage).into_iter().map(|(k, v)| (k, v.as_tensor().clone())));
    let meta = serde_json::to_value(meta).map_err(|e| Error::msg(format!("cannot record the checkpoint meta: {e}")))?;
    checkpoint::save(&run_dir.join("checkpoints"), name, &Checkpoint { tensors, meta }).map(|_| ())
}

/// The newest checkpoint of a run that verifies, with its meta and name (corrupt ones
/// are reported and skipped); `None` when the run wrote none yet.
pub(crate) fn latest(run_dir: &Path, device: &Device) -> Result<Option<(Checkpoint, ResumeMeta, String)>> {
    let dir = run_dir.join("checkpoints");
    let Some((path, ckpt, skipped)) = checkpoint::load_latest_good(&dir, None, device)? else { return Ok(None) };
    for e in skipped {
        tracing::warn!("{e}; using {}", path.display());
    }
    let meta: ResumeMeta = serde_json::from_value(ckpt.meta.clone()).map_err(|e| {
        Error::msg(format!("{}: not a checkpoint this stagecraft can resume from: {e}", path.display()))
    })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Some((ckpt, meta, name)))
}

fn set(name: &str, var: &Var, ckpt: &Checkpoint) -> Result<()> {
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

/// Overwrites a model's weights and its adapters' values with a stage's result.
pub(crate) fn load_result(ckpt: &Checkpoint, model: &dyn Model, adapters: &Adapters) -> Result<()> {
    result_vars(model, adapters).iter().try_for_each(|(name, var)| set(name, var, ckpt))
}

/// Overwrites every value training holds with the checkpoint's.
pub(crate) fn load_values(
    ckpt: &Checkpoint,
    trainer: &Trainer,
    objectives: &[Option<ObjectiveInstance>],
    current: usize,
) -> Result<()> {
    training_vars(trainer, objectives, current).iter().try_for_each(|(name, var)| set(name, var, ckpt))
}
