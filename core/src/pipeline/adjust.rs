//! `stagecraft run --resume RUN --adjust KEY=VALUE`: new values for hyperparameters of
//! the stage a run stopped in, from the step it stopped at. They go into the run's
//! config.toml as an `adjust` entry of that stage ([`crate::config::Adjustment`]), so the
//! config records the run's whole schedule: resumed again later, or run from scratch
//! with that config, the stage trains as it did.

use super::branch::link_dir;
use super::resume;
use super::run_config;
use super::run_dir::CONFIG_FILE;
use crate::bail;
use crate::checkpoint::durable;
use crate::config::{parse_value, Adjustment, PipelineConfig, ADJUSTABLE};
use crate::error::{io, Error, Result};
use candle_core::Device;
use std::path::Path;

/// Adds `changes` (`KEY=VALUE`, keys inside the stage) to the config of the stage in
/// progress at `at` (the checkpoint's stage, steps taken and whether the stage had
/// ended), merged into an entry of that step if there is one, and checks the result.
pub(crate) fn add(cfg: &mut PipelineConfig, at: Option<(usize, u64, bool)>, changes: &[String]) -> Result<()> {
    let Some((stage, step, ended)) = at else {
        bail!("the run has no checkpoint yet: nothing trained to adjust");
    };
    let s = &mut cfg.stages[stage];
    if ended {
        bail!("the run's newest checkpoint is the end of stage `{}`: --adjust changes a stage in progress", s.name);
    }
    let mut entry = match s.adjust.iter().position(|a| a.after_step == step) {
        Some(k) => s.adjust.remove(k),
        None => Adjustment { after_step: step, values: Default::default() },
    };
    for kv in changes {
        let Some((key, raw)) = kv.split_once('=') else { bail!("`{kv}`: expected KEY=VALUE") };
        let key = key.trim().strip_prefix(&format!("stages.{}.", s.name)).unwrap_or(key.trim());
        if !Adjustment::is_adjustable(key) {
            bail!("`{key}` cannot change while stage `{}` trains; what can: {ADJUSTABLE}", s.name);
        }
        entry.values.insert(key.to_string(), parse_value(raw.trim()));
    }
    let at = s.adjust.iter().position(|a| a.after_step > step).unwrap_or(s.adjust.len());
    s.adjust.insert(at, entry);
    let file = cfg.file_name().to_string();
    cfg.validate(&file)
}

/// A copy of the stopped run `from` (paused or interrupted inside a stage) at `to`,
/// with `changes` added as an adjustment at its checkpoint's step: what a member of a
/// population does when it takes over another's state. Checkpoint files are hard links
/// (a run replaces checkpoints, never rewrites them in place); the rest is copied.
pub fn fork_paused(from: &Path, to: &Path, changes: &[String]) -> Result<()> {
    copy_run(from, to)?;
    if changes.is_empty() {
        return Ok(());
    }
    let mut cfg = run_config(to)?;
    let found = resume::latest(to, &Device::Cpu)?;
    let at = found.as_ref().map(|(_, meta, _)| (meta.stage, meta.step, meta.stage_done));
    add(&mut cfg, at, changes).map_err(|e| Error::msg(format!("{}: {e}", from.display())))?;
    let resolved = toml::to_string(&cfg).map_err(|e| Error::msg(format!("cannot write the resolved config: {e}")))?;
    durable::replace(&to.join(CONFIG_FILE), resolved.as_bytes())
}

/// The run directory `from` at `to`, without its lock and hidden leftovers.
fn copy_run(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        match (entry.file_type().map_err(io(&src))?.is_dir(), name == "checkpoints") {
            (true, true) => {
                std::fs::create_dir_all(&dst).map_err(io(&dst))?;
                for c in std::fs::read_dir(&src).map_err(io(&src))? {
                    let c = c.map_err(io(&src))?;
                    if !c.file_name().to_string_lossy().starts_with('.') {
                        link_dir(&c.path(), &dst.join(c.file_name()))?;
                    }
                }
            }
            (true, false) => copy_run(&src, &dst)?,
            (false, _) => {
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
        }
    }
    Ok(())
}
