//! What a stage leaves behind: how it ended ([`StageSummary`]), and the structure of
//! the model it ended with ([`StageResult`]: where the model came from and the adapters
//! attached to it), which its end-of-stage checkpoint records beside the values.

use crate::config::ModelConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Why a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageEnd {
    /// Reached `max_steps` / `epochs`.
    Budget,
    /// `max_steps = 0`: the stage evaluated its start model and did not train.
    EvalOnly,
    /// The exit metric crossed its threshold.
    Exit,
    /// Patience ran out (best checkpoint restored).
    Patience,
    /// The retention gate failed and rolled back.
    GateRollback,
    /// The retention gate failed and stops the pipeline.
    GateStop,
    /// The objective's hook returned `Control::STOP`.
    ObjectiveStop,
    /// The objective's hook returned `Control::ROLLBACK` (best state restored).
    ObjectiveRollback,
}

impl std::fmt::Display for StageEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageEnd::Budget => "its step budget",
            StageEnd::EvalOnly => "evaluation only (max_steps = 0)",
            StageEnd::Exit => "its exit criterion",
            StageEnd::Patience => "patience (best checkpoint restored)",
            StageEnd::GateRollback => "the retention gate (rolled back to the best state that passed)",
            StageEnd::GateStop => "the retention gate (pipeline stopped)",
            StageEnd::ObjectiveStop => "its objective (STOP)",
            StageEnd::ObjectiveRollback => "its objective (ROLLBACK to the best state)",
        })
    }
}

/// How one stage went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSummary {
    /// The stage's name.
    pub stage: String,
    /// Optimizer steps it took.
    pub steps: u64,
    /// Why it ended.
    pub end: StageEnd,
}

/// One attached adapter, as a stage hands it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    /// The adaptation-method plugin.
    pub plugin: String,
    /// Its config, as JSON (what the plugin was given).
    pub config: String,
    /// Whether it had stopped training (stacked under a later adapter).
    pub frozen: bool,
}

/// What a stage ended with, besides the values in its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// The Hugging Face directory the model was loaded from (absolute); `None`: built
    /// from the pipeline's `[model]`.
    pub model_dir: Option<PathBuf>,
    /// The fresh model a stage's own `model` table started (a distillation student);
    /// `None`: `model_dir`, else the pipeline's `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh: Option<ModelConfig>,
    /// The attached adapters, in the order they apply.
    pub adapters: Vec<AdapterRecord>,
}
