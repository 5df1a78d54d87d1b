//! The best state a stage saw, and early stopping: a stage that evaluates its own set
//! keeps a copy of its state at its best evaluation (by the exit metric, else its main
//! score), which an objective's `Control::ROLLBACK` restores; with `exit.patience`, it
//! stops after that many evaluations without a better score and goes back to it.

use super::float_bits::opt_bits;
use super::snapshot::{Snapshot, SnapshotAt};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::train::Trainer;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The snapshot's role in a checkpoint's tensor names.
const ROLE: &str = "best";

/// What early stopping carries across a resume, besides its snapshot's tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub(crate) struct EarlyStoppingState {
    /// The best score so far (higher is better).
    #[serde(with = "opt_bits")]
    best: Option<f64>,
    /// Evaluations since the best one.
    since_best: u32,
    /// Where the best state was taken.
    best_at: SnapshotAt,
}

/// The best state of one stage, and its early stopping.
pub(crate) struct EarlyStopping {
    /// Evaluations without improvement before stopping; `None`: never stops.
    patience: Option<u32>,
    state: EarlyStoppingState,
    best: Option<Snapshot>,
}

/// What early stopping decided at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Patience {
    /// Keep training.
    Continue,
    /// Out of patience: the best state (taken at this step) was restored.
    Exhausted { best: u64 },
}

impl EarlyStopping {
    /// Keeps the best state; with `patience`, stops after that many evaluations without
    /// improvement.
    pub fn new(patience: Option<u32>) -> Self {
        EarlyStopping { patience, state: EarlyStoppingState::default(), best: None }
    }

    /// Early stopping as a checkpoint saved it.
    pub fn load(
        patience: Option<u32>,
        state: EarlyStoppingState,
        ckpt: &Checkpoint,
        trainer: &Trainer,
    ) -> Result<Self> {
        let best = state.best.map(|_| Snapshot::load(ckpt, ROLE, state.best_at, trainer)).transpose()?;
        Ok(EarlyStopping { patience, state, best })
    }

    /// Its state, for a checkpoint's meta.
    pub fn state(&self) -> &EarlyStoppingState {
        &self.state
    }

    /// Its snapshot's tensors, for a checkpoint.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.best.as_ref().map(|b| b.tensors(ROLE)).unwrap_or_default()
    }

    /// Takes in one evaluation's score (higher is better).
    pub fn observe(&mut self, score: f64, trainer: &mut Trainer) -> Result<Patience> {
        if self.state.best.is_none_or(|b| score > b) {
            let snap = Snapshot::take(trainer)?;
            self.state = EarlyStoppingState { best: Some(score), since_best: 0, best_at: snap.at() };
            self.best = Some(snap);
            return Ok(Patience::Continue);
        }
        self.state.since_best += 1;
        match &self.best {
            Some(best) if self.patience.is_some_and(|p| self.state.since_best >= p) => {
                best.restore(trainer)?;
                Ok(Patience::Exhausted { best: best.step })
            }
            _ => Ok(Patience::Continue),
        }
    }

    /// Puts the best state back; its step, or `None` when nothing was evaluated yet.
    pub fn restore_best(&self, trainer: &mut Trainer) -> Result<Option<u64>> {
        let Some(best) = &self.best else { return Ok(None) };
        best.restore(trainer)?;
        Ok(Some(best.step))
    }
}
