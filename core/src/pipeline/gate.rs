//! The retention gate: at each evaluation of a stage with `gates.retention`, every
//! watched earlier stage's eval set is scored and compared with the score it had at the
//! end of its own stage. A drop larger than `max_drop` fails the gate; after `patience`
//! failing evaluations in a row (or at the stage's last evaluation) the gate acts:
//! it rolls the stage back to its best state that passed, or stops the pipeline.
//!
//! The stage's start passes by definition (with score -inf), so there is always a state
//! to roll back to; a failing state is never the one a rollback restores.

use super::float_bits::opt_bits;
use super::snapshot::{Snapshot, SnapshotAt};
use crate::checkpoint::Checkpoint;
use crate::config::GateAction;
use crate::error::Context;
use crate::error::Result;
use crate::train::Trainer;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The snapshot's role in a checkpoint's tensor names.
const ROLE: &str = "passing";

/// One watched set that dropped too far.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GateFailure {
    /// The watched stage.
    pub stage: String,
    /// How far its score dropped.
    pub drop: f64,
    /// How far it may drop.
    pub max_drop: f64,
    /// Failing evaluations this gate tolerates.
    pub patience: u32,
    /// What it does when it acts.
    pub action: GateAction,
}

/// What the gate decided at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GateVerdict {
    /// Every watched set is within its bound.
    Pass,
    /// Some set dropped too far, within patience: training goes on.
    Tolerated { failures: Vec<GateFailure>, count: u32, patience: u32 },
    /// Past patience: the stage was rolled back to the best state that passed (`to`).
    RolledBack { failures: Vec<GateFailure>, to: u64 },
    /// Past patience, with a gate whose action is `stop`: the pipeline stops.
    Stop { failures: Vec<GateFailure> },
}

impl GateVerdict {
    /// The failures, in words: "`add` (drop 0.1200 > 0.05), ...".
    pub fn describe(failures: &[GateFailure]) -> String {
        let each = failures.iter().map(|f| format!("`{}` (drop {:.4} > {})", f.stage, f.drop, f.max_drop));
        each.collect::<Vec<_>>().join(", ")
    }
}

/// What the gate carries across a resume, besides its snapshot's tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GateState {
    /// The best own score among the evaluations that passed.
    #[serde(with = "opt_bits")]
    passing: Option<f64>,
    /// Failing evaluations in a row.
    fails: u32,
    /// Where the best passing state was taken.
    passing_at: SnapshotAt,
}

/// The gate of one stage.
pub(crate) struct RetentionGate {
    state: GateState,
    passing: Snapshot,
}

impl RetentionGate {
    /// A gate whose best passing state is the trainer's now (the stage's start).
    pub fn new(trainer: &Trainer) -> Result<Self> {
        let passing = Snapshot::take(trainer)?;
        Ok(RetentionGate {
            state: GateState { passing: Some(f64::NEG_INFINITY), fails: 0, passing_at: passing.at() },
            passing,
        })
    }

    /// The gate a checkpoint saved.
    pub fn load(state: GateState, ckpt: &Checkpoint, trainer: &Trainer) -> Result<Self> {
        let passing = Snapshot::load(ckpt, ROLE, state.passing_at, trainer)?;
        Ok(RetentionGate { state, passing })
    }

    /// Its state, for a checkpoint's meta.
    pub fn state(&self) -> &GateState {
        &self.state
    }

    /// Its snapshot's tensors, for a checkpoint.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.passing.tensors(ROLE)
    }

    /// Decides on one evaluation: `failures` are the watched sets that dropped too far,
    /// `own` the stage's own score (higher is better), `last` whether this is the
    /// stage's last evaluation. A pass with the best own score so far becomes the
    /// rollback target; a rollback restores it into the trainer.
    pub fn decide(
        &mut self,
        failures: Vec<GateFailure>,
        own: f64,
        last: bool,
        trainer: &mut Trainer,
    ) -> Result<GateVerdict> {
        if failures.is_empty() {
            self.state.fails = 0;
            if self.state.passing.is_none_or(|best| own >= best) {
                self.state.passing = Some(own);
                self.passing = Snapshot::take(trainer)?;
                self.state.passing_at = self.passing.at();
            }
            return Ok(GateVerdict::Pass);
        }
        self.state.fails += 1;
        let patience = failures.iter().map(|f| f.patience).min().unwrap_or(0);
        if self.state.fails <= patience && !last {
            return Ok(GateVerdict::Tolerated { failures, count: self.state.fails, patience });
        }
        if failures.iter().any(|f| f.action == GateAction::Stop) {
            return Ok(GateVerdict::Stop { failures });
        }
        self.passing.restore(trainer).with_context(|| format!("rolling back to step {}", self.passing.step))?;
        Ok(GateVerdict::RolledBack { failures, to: self.passing.step })
    }
}
