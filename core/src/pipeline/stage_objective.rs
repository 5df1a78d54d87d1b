//! The objective a finished stage scored its eval set with, rebuilt outside the
//! pipeline: the stage's objective plugin and config, with the head parameters it
//! trained (a classifier's) read from its end-of-stage checkpoint. With it,
//! `stagecraft eval` of a run's stage reproduces the stage's own last evaluation.

use crate::checkpoint;
use crate::config::PipelineConfig;
use crate::error::{Context, Error, Result};
use crate::plugin::{HostState, ObjectiveInstance, Registry};
use stagecraft_sdk::ModelInfo;
use std::path::Path;
use std::rc::Rc;

/// Stage `stage`'s objective of the run in `run_dir` (config `cfg`), initialized for
/// `model` and holding the stage's trained head parameters, if it has any.
pub fn stage_objective(
    run_dir: &Path,
    cfg: &PipelineConfig,
    stage: &str,
    registry: &Registry,
    state: &Rc<HostState>,
    model: &ModelInfo,
) -> Result<ObjectiveInstance> {
    let (k, s) = cfg.stage(stage).ok_or_else(|| Error::msg(format!("the run has no stage `{stage}`")))?;
    let context = || format!("stage `{stage}`: objective `{}`", s.objective.name());
    let mut objective =
        registry.new_objective(s.objective.name(), &s.objective.config_json(), state).with_context(context)?;
    objective.init(model).with_context(context)?;
    let params = objective.params();
    if params.is_empty() {
        return Ok(objective);
    }
    let path = run_dir.join("checkpoints").join(stage);
    let ckpt = checkpoint::load(&path, &state.device)?;
    for p in params {
        let name = format!("objective.{k}.{}", p.name);
        let t = ckpt
            .tensors
            .get(&name)
            .ok_or_else(|| Error::msg(format!("{}: checkpoint lacks `{name}`", path.display())))?;
        if t.dims() != p.var.dims() {
            return Err(Error::msg(format!(
                "{}: `{name}` has shape {:?}, the objective's {:?}",
                path.display(),
                t.dims(),
                p.var.dims()
            )));
        }
        p.var.set(t)?;
    }
    Ok(objective)
}
