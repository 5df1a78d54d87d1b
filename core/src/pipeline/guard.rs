//! The anomaly guard: rejects a step whose loss or gradient is not finite, or whose
//! loss spikes far above its running mean, restores the last good state (taken every
//! [`SNAPSHOT_EVERY`] steps) with the running mean it had then, scales the learning
//! rate down and goes on — up to `max_recoveries` times per stage.

use super::float_bits::{bits, opt_bits};
use super::snapshot::{Snapshot, SnapshotAt};
use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::config::AnomalyConfig;
use crate::error::{Error, Result};
use crate::train::{StepOutput, Trainer};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Steps before spikes are judged: the running mean needs a few losses to mean anything.
const WARMUP_STEPS: u64 = 10;
/// The running mean's weight on its past: an exponential moving average over about
/// 1 / (1 - 0.9) = 10 steps.
const MEAN_DECAY: f64 = 0.9;
/// The last good state is taken every this many steps.
pub(crate) const SNAPSHOT_EVERY: u64 = 10;
/// The snapshot's role in a checkpoint's tensor names.
const ROLE: &str = "last_good";

/// What the guard carries across a resume, besides its snapshot's tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GuardState {
    /// The learning-rate multiplier the recoveries left.
    #[serde(with = "bits")]
    lr_scale: f64,
    /// Recoveries so far in the stage.
    recoveries: u32,
    /// Running mean of the training loss.
    #[serde(with = "opt_bits")]
    running: Option<f64>,
    /// Where the last good state was taken.
    last_good: SnapshotAt,
    /// The running mean when it was taken (a recovery goes back to it too, so that the
    /// steps redone are judged against the losses that led to them).
    #[serde(with = "opt_bits")]
    running_at_last_good: Option<f64>,
}

/// A rejected step, undone.
pub(crate) struct Recovery {
    /// Why the step was rejected.
    pub why: String,
    /// The step the trainer went back to.
    pub restored: u64,
    /// The learning-rate multiplier from now on.
    pub lr_scale: f64,
}

/// The guard of one stage.
pub(crate) struct AnomalyGuard {
    cfg: AnomalyConfig,
    state: GuardState,
    last_good: Snapshot,
}

impl AnomalyGuard {
    /// A guard whose last good state is the trainer's now.
    pub fn new(cfg: &AnomalyConfig, trainer: &Trainer) -> Result<Self> {
        let last_good = Snapshot::take(trainer)?;
        let state = GuardState {
            lr_scale: 1.0,
            recoveries: 0,
            running: None,
            last_good: last_good.at(),
            running_at_last_good: None,
        };
        Ok(AnomalyGuard { cfg: cfg.clone(), state, last_good })
    }

    /// The guard a checkpoint saved.
    pub fn load(cfg: &AnomalyConfig, state: GuardState, ckpt: &Checkpoint, trainer: &Trainer) -> Result<Self> {
        let last_good = Snapshot::load(ckpt, ROLE, state.last_good, trainer)?;
        Ok(AnomalyGuard { cfg: cfg.clone(), state, last_good })
    }

    /// Its state, for a checkpoint's meta.
    pub fn state(&self) -> &GuardState {
        &self.state
    }

    /// Its snapshot's tensors, for a checkpoint.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.last_good.tensors(ROLE)
    }

    /// The learning-rate multiplier the recoveries left.
    pub fn lr_scale(&self) -> f64 {
        self.state.lr_scale
    }

    /// Why step `step`'s outcome must be rejected, if it must: a non-finite loss or
    /// gradient, or a loss above `spike_factor` × the running mean by more than
    /// `spike_margin`. Other errors are not the guard's business.
    pub fn rejects(&self, step: u64, out: &Result<StepOutput>) -> Option<String> {
        match (out, self.state.running) {
            (Err(Error::NonFinite(why)), _) => Some(why.clone()),
            (Ok(o), Some(mean)) if step > WARMUP_STEPS && self.is_spike(o.loss, mean) => {
                Some(format!("loss spike {:.4} > {} x running mean {mean:.4}", o.loss, self.cfg.spike_factor))
            }
            _ => None,
        }
    }

    fn is_spike(&self, loss: f64, mean: f64) -> bool {
        loss > self.cfg.spike_factor * mean && loss - mean > self.cfg.spike_margin
    }

    /// Takes in an accepted step's loss; the trainer's state becomes the last good one
    /// every [`SNAPSHOT_EVERY`] steps.
    pub fn accept(&mut self, loss: f64, trainer: &Trainer) -> Result<()> {
        self.state.running = Some(self.state.running.map_or(loss, |m| MEAN_DECAY * m + (1.0 - MEAN_DECAY) * loss));
        if trainer.step.is_multiple_of(SNAPSHOT_EVERY) {
            self.last_good = Snapshot::take(trainer)?;
            self.state.last_good = self.last_good.at();
            self.state.running_at_last_good = self.state.running;
        }
        Ok(())
    }

    /// Undoes a rejected step: restores the last good state and scales the learning
    /// rate, or fails the stage once `max_recoveries` are used up.
    pub fn recover(&mut self, why: String, trainer: &mut Trainer) -> Result<Recovery> {
        if self.state.recoveries >= self.cfg.max_recoveries {
            bail!("{why}; gave up after {} recoveries", self.state.recoveries);
        }
        self.state.recoveries += 1;
        self.state.lr_scale *= self.cfg.lr_scale;
        self.last_good.restore(trainer)?;
        trainer.step = self.last_good.step;
        self.state.running = self.state.running_at_last_good;
        Ok(Recovery { why, restored: self.last_good.step, lr_scale: self.state.lr_scale })
    }
}
