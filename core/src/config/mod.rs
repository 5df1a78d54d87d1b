//! The pipeline config: one TOML file declaring the run, the model and the stages.
//!
//! Parsing is strict (an unknown key is an error) and every error names the file, line
//! and column: `pipeline.toml:12:9: unknown field `max_step`, expected one of ...`.
//! [`PipelineConfig::from_file`] reads, applies `--set key=value` overrides and checks
//! the rules across fields ([`validate`](PipelineConfig::validate)) before any
//! training starts. A plugin's refusal of its own config, found when the plugin is
//! instantiated, is reported the same way at the key in the file
//! ([`PipelineConfig::plugin_error`]).
//!
//! ```
//! use stagecraft_core::config::PipelineConfig;
//! let cfg = PipelineConfig::from_str(r#"
//! [run]
//! name = "demo"
//! [model]
//! arch = "llama"
//! hidden_size = 32
//! num_layers = 1
//! num_heads = 2
//! [[stages]]
//! name = "pretrain"
//! objective = "causal_lm"
//! data = { train = "synthetic:arith_text?n=100" }
//! optimizer = { name = "adamw", lr = 1e-3 }
//! max_steps = 10
//! "#, "demo.toml", &[])?;
//! assert_eq!(cfg.stages[0].max_steps, Some(10));
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

mod adjust;
mod drift;
mod key_path;
mod model;
mod overrides;
mod plugin_errors;
mod plugin_json;
mod plugins;
mod regularize;
mod run;
mod spans;
mod stage;
mod validate;

pub use adjust::{Adjustment, ADJUSTABLE};
pub use drift::{DriftAction, DriftCheck};
pub use key_path::{KeyPart, KeyPath};
pub use model::ModelConfig;
pub use overrides::apply_override;
pub(crate) use overrides::{parse_value, set_key};
pub use plugin_errors::PluginSlot;
pub use plugin_json::{Part, PluginJson};
pub use plugins::PluginsConfig;
pub use regularize::{Regularize, RegularizeKind};
pub use run::RunConfig;
pub use stage::{
    AdapterConfig, AdapterHandoff, AnomalyConfig, CombineConfig, DataConfig, Decay, ExitConfig, GateAction,
    GatesConfig, HandoffConfig, Objective, OptimizerConfig, OptimizerHandoff, Order, ReplayConfig, RetentionGate,
    ScheduleConfig, StageConfig, TrainConfig, Unfreeze,
};
pub(crate) use validate::STEP_CHECKPOINT_PREFIX;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run-wide settings.
    #[serde(default)]
    pub run: RunConfig,
    /// The model the first stage starts from.
    pub model: ModelConfig,
    /// The stages, run in order.
    pub stages: Vec<StageConfig>,
    /// Where plugin libraries are found besides the default search path.
    #[serde(default, skip_serializing_if = "PluginsConfig::is_empty")]
    pub plugins: PluginsConfig,
    /// The file it was read from (set by the loader).
    #[serde(skip)]
    pub source: PathBuf,
    /// The text it was parsed from, for errors found later (set by the loader).
    #[serde(skip)]
    pub(crate) origin: Option<ConfigText>,
}

/// The text a config was parsed from, and how errors name its file.
#[derive(Clone)]
pub(crate) struct ConfigText {
    /// The file, as errors name it.
    pub file: String,
    /// Its text (before `--set` overrides).
    pub text: std::sync::Arc<str>,
}

impl std::fmt::Debug for ConfigText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigText").field("file", &self.file).finish_non_exhaustive()
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, col)
}

fn located(file: &str, text: &str, e: &toml::de::Error) -> Error {
    at_path(file, text, e, "")
}

/// `file:line:col: path.to.key: message`.
fn at_path(file: &str, text: &str, e: &toml::de::Error, path: &str) -> Error {
    let msg = e.message().trim().replace('\n', " ");
    let msg = if path.is_empty() || path == "." { msg } else { format!("{path}: {msg}") };
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            Error::msg(format!("{file}:{line}:{col}: {msg}"))
        }
        None => Error::msg(format!("{file}: {msg}")),
    }
}

impl PipelineConfig {
    /// Reads and validates a pipeline file, with `key=value` overrides applied.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::msg(format!("{}: cannot read: {e}", path.display())))?;
        let mut cfg = Self::from_str(&text, &path.display().to_string(), overrides)?;
        cfg.source = path.to_path_buf();
        Ok(cfg)
    }

    /// Parses and validates config text; `file` names it in errors.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        let mut cfg: PipelineConfig = if overrides.is_empty() {
            let de = toml::Deserializer::parse(text).map_err(|e| located(file, text, &e))?;
            serde_path_to_error::deserialize(de).map_err(|e| at_path(file, text, e.inner(), &e.path().to_string()))?
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| located(file, text, &e))?;
            for o in overrides {
                apply_override(&mut table, o)?;
            }
            let rewritten = toml::to_string(&table).map_err(|e| Error::msg(format!("{file}: {e}")))?;
            toml::from_str(&rewritten).map_err(|e| {
                Error::msg(format!("{file} (with --set overrides): {}", e.message().trim().replace('\n', " ")))
            })?
        };
        cfg.validate(file)?;
        cfg.origin = Some(ConfigText { file: file.to_string(), text: text.into() });
        Ok(cfg)
    }

    /// The config's file as errors name it.
    pub fn file_name(&self) -> &str {
        self.origin.as_ref().map_or("the pipeline config", |o| o.file.as_str())
    }

    /// The trust policy of its `[plugins]` table.
    pub fn trust(&self) -> crate::plugin::TrustPolicy {
        self.plugins.trust(self.file_name())
    }

    /// The directory relative paths in the config resolve against.
    pub fn base_dir(&self) -> PathBuf {
        self.source.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// Leaves out the stages after `last` (`run --until`); refused when no stage has
    /// that name.
    pub fn keep_stages_until(&mut self, last: &str) -> Result<()> {
        let Some((i, _)) = self.stage(last) else {
            return Err(Error::msg(format!("--until {last}: no such stage (the stages are {})", self.stage_names())));
        };
        self.stages.truncate(i + 1);
        Ok(())
    }

    /// The stages' names, comma-separated, for messages.
    pub fn stage_names(&self) -> String {
        self.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The stage called `name`, with its index.
    pub fn stage(&self, name: &str) -> Option<(usize, &StageConfig)> {
        self.stages.iter().enumerate().find(|(_, s)| s.name == name)
    }
}
