//! The per-step rules of one stage, together: the anomaly guard, the retention gate
//! (stages with `gates.retention`) and the best state with early stopping (stages that
//! evaluate their own set, or have `exit.patience`).
//! Each owns its state and its snapshot; [`RulesState`] is what a checkpoint's meta
//! keeps of them, [`StageRules::tensors`] what its tensors keep.

use super::early_stopping::{EarlyStopping, EarlyStoppingState};
use super::gate::{GateState, RetentionGate};
use super::guard::{AnomalyGuard, GuardState};
use crate::checkpoint::Checkpoint;
use crate::config::StageConfig;
use crate::error::{Error, Result};
use crate::train::Trainer;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The rules' state in a checkpoint's meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RulesState {
    guard: GuardState,
    gate: Option<GateState>,
    early_stopping: Option<EarlyStoppingState>,
}

/// Whether stage `s` keeps its best state: it evaluates its own set, or stops early.
fn keeps_best(s: &StageConfig) -> bool {
    s.data.eval.is_some() || patience(s).is_some()
}

/// Its `exit.patience`.
fn patience(s: &StageConfig) -> Option<u32> {
    s.exit.as_ref().and_then(|e| e.patience)
}

/// The rules of one stage.
pub(crate) struct StageRules {
    pub guard: AnomalyGuard,
    pub gate: Option<RetentionGate>,
    pub early_stopping: Option<EarlyStopping>,
}

impl StageRules {
    /// The rules at the start of stage `s`, whose starting state is the trainer's.
    pub fn new(s: &StageConfig, trainer: &Trainer) -> Result<Self> {
        Ok(StageRules {
            guard: AnomalyGuard::new(&s.anomaly, trainer)?,
            gate: (!s.gates.retention.is_empty()).then(|| RetentionGate::new(trainer)).transpose()?,
            early_stopping: keeps_best(s).then(|| EarlyStopping::new(patience(s))),
        })
    }

    /// The rules as a checkpoint saved them.
    pub fn load(s: &StageConfig, state: RulesState, ckpt: &Checkpoint, trainer: &Trainer) -> Result<Self> {
        let mismatch = || {
            Error::msg(format!("stage `{}`: the checkpoint's gate or patience state does not match the config", s.name))
        };
        let gate = match (s.gates.retention.is_empty(), state.gate) {
            (true, None) => None,
            (false, Some(g)) => Some(RetentionGate::load(g, ckpt, trainer)?),
            _ => return Err(mismatch()),
        };
        let early_stopping = match (keeps_best(s), patience(s), state.early_stopping) {
            (false, _, None) => None,
            (true, p, Some(e)) => Some(EarlyStopping::load(p, e, ckpt, trainer)?),
            // A checkpoint from before stages kept their best state without patience.
            (true, None, None) => Some(EarlyStopping::new(None)),
            _ => return Err(mismatch()),
        };
        Ok(StageRules { guard: AnomalyGuard::load(&s.anomaly, state.guard, ckpt, trainer)?, gate, early_stopping })
    }

    /// Their state, for a checkpoint's meta.
    pub fn state(&self) -> RulesState {
        RulesState {
            guard: self.guard.state().clone(),
            gate: self.gate.as_ref().map(|g| g.state().clone()),
            early_stopping: self.early_stopping.as_ref().map(|e| e.state().clone()),
        }
    }

    /// Their snapshots' tensors, for a checkpoint.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = self.guard.tensors();
        out.extend(self.gate.as_ref().map(|g| g.tensors()).unwrap_or_default());
        out.extend(self.early_stopping.as_ref().map(|e| e.tensors()).unwrap_or_default());
        out
    }
}
