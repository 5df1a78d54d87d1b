//! What a stage starts from: the previous stage's model, adapters and optimizer, a
//! Hugging Face directory, or an earlier stage's result (`from`), or a fresh model of
//! its own (`model`); what it does with the adapters it receives (`handoff.adapters`:
//! merge, drop, stack, continue, combine) before attaching its own; and the frozen
//! `teacher` its objective may learn from.

use super::outcome::{AdapterRecord, StageResult};
use super::resume;
use super::{build, result};
use crate::adapter::{combine_lora, merge_into_base, Combine, LoraInput};
use crate::checkpoint;
use crate::config::{AdapterHandoff, PipelineConfig, StageConfig};
use crate::error::{Context, Error, Result};
use crate::model::hub_cache::resolve_model;
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, ObjectiveInstance, OptimizerInstance, Registry};
use crate::train::{no_teacher, Teacher, TEACHER_LOGITS};
use std::path::Path;
use std::rc::Rc;

/// What passes from one stage to the next.
pub(crate) struct Carried {
    pub model: Box<dyn Model>,
    pub adapters: Adapters,
    pub optimizer: Option<OptimizerInstance>,
}

/// What building models and adapters takes: the config, the plugins and the state they
/// share, the run directory (earlier stages' checkpoints) and the tokenizer's size.
pub(crate) struct Env<'a> {
    pub cfg: &'a PipelineConfig,
    pub registry: &'a Registry,
    pub state: &'a Rc<HostState>,
    pub run_dir: &'a Path,
    pub vocab: usize,
}

/// Where stage `i` starts: what the previous stage carried, a model directory named in
/// `from` (no adapters, a new optimizer), or the result of an earlier stage named in
/// `from` (its model and adapters, read from its end-of-stage checkpoint).
pub(crate) fn start_from(
    env: &Env,
    i: usize,
    carried: Carried,
    results: &[Option<StageResult>],
    lineage: &mut StageResult,
) -> Result<Carried> {
    let cfg = env.cfg;
    let s = &cfg.stages[i];
    if let Some(fresh) = &s.model {
        drop(carried);
        let model = build::model(fresh, env.vocab, cfg.run.seed, &cfg.base_dir(), &env.state.device)
            .with_context(|| format!("stage `{}`: model", s.name))?;
        env.state.register_model(model.as_ref());
        *lineage = StageResult { fresh: Some(fresh.clone()), ..StageResult::default() };
        return Ok(Carried { adapters: Adapters::none(model.sites().len()), model, optimizer: None });
    }
    let Some(from) = &s.from else { return Ok(carried) };
    match cfg.stage(from).map(|(k, _)| k) {
        Some(k) if k + 1 == i => Ok(carried),
        Some(k) => {
            let (model, adapters, ended) = ended_stage(env, from, results[k].as_ref())?;
            *lineage = ended;
            Ok(Carried { model, adapters, optimizer: None })
        }
        None => {
            let dir = resolve_model(from, &cfg.base_dir())?.dir;
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            let model = crate::model::load_model(&dir, &env.state.device)?;
            env.state.register_model(model.as_ref());
            *lineage = StageResult { model_dir: Some(dir), ..StageResult::default() };
            Ok(Carried { adapters: Adapters::none(model.sites().len()), model, optimizer: None })
        }
    }
}

/// The model and adapters earlier stage `name` ended with (`ended`, `None` if it has not
/// run), rebuilt and loaded from its end-of-stage checkpoint, with its structure.
fn ended_stage(env: &Env, name: &str, ended: Option<&StageResult>) -> Result<(Box<dyn Model>, Adapters, StageResult)> {
    let ended = ended.cloned().ok_or_else(|| Error::msg(format!("stage `{name}` has not run yet")))?;
    let (model, adapters) = result::rebuild(&ended, env.cfg, env.vocab, env.registry, env.state)?;
    let ckpt = checkpoint::load(&env.run_dir.join("checkpoints").join(name), &env.state.device)?;
    resume::load_result(&ckpt, model.as_ref(), &adapters)?;
    Ok((model, adapters, ended))
}

/// Stage `i`'s `teacher`, frozen: an earlier stage's result (its model and adapters,
/// read from its end-of-stage checkpoint) or a model directory. Building it registers
/// it with the host, so the caller registers the student again.
pub(crate) fn teacher(env: &Env, i: usize, results: &[Option<StageResult>]) -> Result<Option<Teacher>> {
    let cfg = env.cfg;
    let s = &cfg.stages[i];
    let Some(source) = &s.teacher else { return Ok(None) };
    let context = || format!("stage `{}`: teacher `{source}`", s.name);
    let (model, adapters) = match cfg.stage(source).map(|(k, _)| k) {
        Some(k) => {
            let (model, adapters, _) = ended_stage(env, source, results[k].as_ref()).with_context(context)?;
            (model, adapters)
        }
        None => {
            let dir = resolve_model(source, &cfg.base_dir()).with_context(context)?.dir;
            let model = crate::model::load_model(&dir, &env.state.device).with_context(context)?;
            let adapters = Adapters::none(model.sites().len());
            (model, adapters)
        }
    };
    Ok(Some(Teacher::new(source.clone(), model, adapters, env.state.clone())))
}

/// Refuses a `teacher` the objective does not read, an objective that reads
/// `teacher_logits` without one, and a teacher whose vocabulary differs from the
/// student's (`student_vocab`).
pub(crate) fn check_teacher(
    s: &StageConfig,
    objective: &ObjectiveInstance,
    teacher: Option<&Teacher>,
    student_vocab: usize,
) -> Result<()> {
    let reads = objective.required_outputs().iter().any(|o| o == TEACHER_LOGITS);
    let name = s.objective.name();
    match (reads, &s.teacher) {
        (true, None) => Err(no_teacher(name)).with_context(|| format!("stage `{}`", s.name)),
        (false, Some(t)) => Err(Error::msg(format!(
            "stage `{}`: `teacher = \"{t}\"` is set, but objective `{name}` does not read `{TEACHER_LOGITS}` (use an objective that does, such as `distill`)",
            s.name
        ))),
        _ => match teacher.filter(|t| t.vocab() != student_vocab) {
            Some(t) => Err(Error::msg(format!(
                "stage `{}`: teacher `{}` has a vocabulary of {}, the student {student_vocab}: their logits cannot be compared",
                s.name,
                t.source,
                t.vocab()
            ))),
            None => Ok(()),
        },
    }
}

/// Applies stage `s`'s handoff to the adapters it received, then attaches its own;
/// `lineage` follows (the adapters attached, in order).
pub(crate) fn apply(
    s: &StageConfig,
    model: &dyn Model,
    adapters: &mut Adapters,
    lineage: &mut StageResult,
    env: &Env,
) -> Result<()> {
    match s.handoff.adapters {
        AdapterHandoff::Merge => {
            merge_into_base(model, adapters)?;
            lineage.adapters.clear();
        }
        AdapterHandoff::Drop => {
            drop(adapters.take());
            lineage.adapters.clear();
        }
        AdapterHandoff::Stack => (0..adapters.methods().len()).for_each(|k| adapters.set_frozen(k, true)),
        AdapterHandoff::Continue => (0..adapters.methods().len()).for_each(|k| adapters.set_frozen(k, false)),
        AdapterHandoff::Combine => combine(s, model, adapters, lineage, env)?,
    }
    for a in &s.adapters {
        let m = env.registry.new_method(&a.plugin, &a.config_json(), env.state)?;
        adapters.attach(m, model.sites()).with_context(|| format!("stage `{}`: adapter `{}`", s.name, a.plugin))?;
        lineage.adapters.push(AdapterRecord { plugin: a.plugin.clone(), config: a.config_json(), frozen: false });
    }
    Ok(())
}

/// Replaces the attached LoRA adapters by their combination (see [`combine_lora`]),
/// which keeps training.
fn combine(
    s: &StageConfig,
    model: &dyn Model,
    adapters: &mut Adapters,
    lineage: &mut StageResult,
    env: &Env,
) -> Result<()> {
    let c = s
        .handoff
        .combine
        .clone()
        .ok_or_else(|| Error::msg(format!("stage `{}`: handoff `combine` without `combine`", s.name)))?;
    let how = match c.rank {
        Some(rank) if c.method == "svd" => Combine::Svd { rank },
        _ => Combine::Cat,
    };
    let n = adapters.methods().len();
    let weights = if c.weights.is_empty() { vec![1.0; n] } else { c.weights.clone() };
    if weights.len() != n {
        return Err(Error::msg(format!(
            "stage `{}`: handoff.combine.weights has {} values for the {n} adapters attached",
            s.name,
            weights.len()
        )));
    }
    let configs = lineage
        .adapters
        .iter()
        .map(|a| serde_json::from_str(&a.config).map_err(|e| Error::msg(format!("adapter `{}`: {e}", a.plugin))))
        .collect::<Result<Vec<serde_json::Value>>>()?;
    let inputs = LoraInput::all(adapters, &configs, &weights);
    let combined = combine_lora(&inputs, how, env.registry, env.state, model)
        .with_context(|| format!("stage `{}`: handoff `combine`", s.name))?;
    drop(adapters.take());
    let k = adapters.adopt(combined.method, model.sites())?;
    adapters.set_frozen(k, false);
    lineage.adapters =
        vec![AdapterRecord { plugin: "lora".into(), config: combined.config.to_string(), frozen: false }];
    Ok(())
}
