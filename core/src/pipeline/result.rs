//! A stage's result: the model it ended with and the adapters attached to it.
//!
//! Values live in the stage's end-of-stage checkpoint (`checkpoints/<stage>/`); the
//! structure — where the model came from, which adapters, in which order, with which
//! configs — goes into that checkpoint's meta as a [`StageResult`]. Together they
//! rebuild the stage's model exactly: for a later stage that starts `from` it, and
//! outside the pipeline, for `export`, `forward` and `generate` ([`open_stage`]).

use super::outcome::StageResult;
use super::{build, resume};
use crate::checkpoint;
use crate::config::PipelineConfig;
use crate::data::Tokenizer;
use crate::error::{Context, Error, Result};
use crate::model::{load_model, Adapters, Model};
use crate::plugin::{HostState, Registry};
use candle_core::{DType, Device};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Builds `result`'s model and attaches its adapters (with their initial values; the
/// caller loads the checkpoint's). The model is registered with `state`.
pub(super) fn rebuild(
    result: &StageResult,
    cfg: &PipelineConfig,
    vocab: usize,
    registry: &Registry,
    state: &Rc<HostState>,
) -> Result<(Box<dyn Model>, Adapters)> {
    let model = match (&result.model_dir, &result.fresh) {
        (Some(dir), _) => load_model(dir, &state.device)?,
        (None, Some(fresh)) => build::model(fresh, vocab, cfg.run.seed, &cfg.base_dir(), &state.device)?,
        (None, None) => build::model(&cfg.model, vocab, cfg.run.seed, &cfg.base_dir(), &state.device)?,
    };
    state.register_model(model.as_ref());
    let mut adapters = Adapters::none(model.sites().len());
    for a in &result.adapters {
        let m = registry.new_method(&a.plugin, &a.config, state)?;
        let k = adapters.attach(m, model.sites()).with_context(|| format!("adapter `{}`", a.plugin))?;
        adapters.set_frozen(k, a.frozen);
    }
    Ok((model, adapters))
}

/// The resolved config of a run directory, with relative paths resolving as they did
/// when it ran (against the original config file's directory).
pub fn run_config(run_dir: &Path) -> Result<PipelineConfig> {
    let mut cfg = PipelineConfig::from_file(&run_dir.join("config.toml"), &[])?;
    let run_json: serde_json::Value = std::fs::read_to_string(run_dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(src) = run_json.get("config_source").and_then(|v| v.as_str()) {
        cfg.source = PathBuf::from(src);
    }
    Ok(cfg)
}

/// What [`open_stage`] reads of a checkpoint's meta (every stagecraft that records
/// adapters writes it).
#[derive(Deserialize)]
struct StageCheckpointMeta {
    #[serde(default)]
    result: Option<StageResult>,
}

/// A finished stage of a run, rebuilt: its model with its adapters and trained values.
pub struct OpenedStage {
    /// The stage's name.
    pub stage: String,
    /// The run's resolved config.
    pub config: PipelineConfig,
    /// The run's tokenizer.
    pub tokenizer: Tokenizer,
    /// Shared plugin state (the model is registered with it).
    pub state: Rc<HostState>,
    /// The model, with the stage's final weights.
    pub model: Box<dyn Model>,
    /// The adapters attached at the stage's end, with their trained values.
    pub adapters: Adapters,
    /// How the adapters were configured, aligned with `adapters`.
    pub result: StageResult,
}

/// Opens the result of `stage` (default: the last stage that finished) of the run in
/// `run_dir`, on `device`, with plugins from `registry`.
pub fn open_stage(run_dir: &Path, stage: Option<&str>, registry: &Registry, device: &Device) -> Result<OpenedStage> {
    let cfg = run_config(run_dir)?;
    let ckpts = run_dir.join("checkpoints");
    let name = match stage {
        Some(s) => {
            cfg.stage(s).ok_or_else(|| {
                Error::msg(format!("{}: the run has no stage `{s}` (stages: {})", run_dir.display(), cfg.stage_names()))
            })?;
            s.to_string()
        }
        None => cfg
            .stages
            .iter()
            .rev()
            .map(|s| s.name.clone())
            .find(|s| ckpts.join(s).is_dir())
            .ok_or_else(|| Error::msg(format!("{}: no stage of this run has finished", run_dir.display())))?,
    };
    let path = ckpts.join(&name);
    if !path.is_dir() {
        return Err(Error::msg(format!(
            "{}: stage `{name}` has not finished (no {})",
            run_dir.display(),
            path.display()
        )));
    }
    let ckpt = checkpoint::load(&path, device)?;
    let meta: StageCheckpointMeta = serde_json::from_value(ckpt.meta.clone())
        .map_err(|e| Error::msg(format!("{}: not a stage checkpoint: {e}", path.display())))?;
    let result = meta.result.ok_or_else(|| {
        Error::msg(format!(
            "{}: this checkpoint does not record its adapters (written by an older stagecraft): rerun the stage",
            path.display()
        ))
    })?;
    let tokenizer = build::tokenizer(&cfg.model, &cfg.base_dir())?;
    let state = Rc::new(HostState::new(device.clone(), DType::F32, cfg.run.seed));
    state.set_tokenizer(Rc::new(tokenizer.clone()));
    state.set_training(false);
    let (model, adapters) = rebuild(&result, &cfg, tokenizer.vocab_size(), registry, &state)?;
    resume::load_result(&ckpt, model.as_ref(), &adapters)?;
    Ok(OpenedStage { stage: name, config: cfg, tokenizer, state, model, adapters, result })
}
