//! Everything a pipeline checks before it trains: the device, every data set, the
//! memory the pipeline needs at its peak, every stage's plugins and their configs, and
//! the adapters' targets along the handoffs.

use super::build;
use super::freeze;
use super::handoff;
use crate::bail;
use crate::config::{AdapterHandoff, DriftAction, DriftCheck, PipelineConfig, PluginSlot, StageConfig};
use crate::data::{load_source, preview_source, Dataset, SourcePreview, Tokenizer};
use crate::drift::{token_test, DriftConfig, TestResult};
use crate::error::{Context, Error, Result};
use crate::memory::{self, Bytes, Estimate, StepShape};
use crate::model::{Architecture, Model};
use crate::plugin::{HostState, MethodInstance, Registry};
use candle_core::{DType, Device};
use stagecraft_sdk::{MergeSupport, ModelSpec, SiteKind};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// `run.device` as a candle device.
pub(crate) fn resolve_device(spec: &str) -> Result<Device> {
    crate::device::resolve_device(spec).context("run.device")
}

/// How much of a pipeline's inputs [`load`] loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Everything, to train on.
    Run,
    /// Only the first examples of large synthetic sources (`run --check`: what is
    /// checked is the same, and the plan reports each source's full size).
    Check,
}

/// Examples of each synthetic source generated to check and estimate it before (or, for
/// `run --check`, instead of) generating it all.
const PREVIEW_EXAMPLES: usize = 256;

/// A pipeline's inputs, loaded and checked.
pub(crate) struct Loaded {
    pub device: Device,
    pub tokenizer: Tokenizer,
    /// The starting model's architecture and sizes.
    pub arch: Architecture,
    pub train_data: Vec<Arc<Dataset>>,
    pub eval_data: Vec<Option<Arc<Dataset>>>,
    /// How many examples each stage's train and eval sources have in all (more than
    /// the data sets hold where [`Depth::Check`] loaded a preview).
    pub sizes: Vec<(usize, Option<usize>)>,
    /// The memory the pipeline needs at its peak: the stage and its estimate.
    pub peak: (String, Estimate),
    /// Each stage's `drift` check, run on the loaded training data.
    pub drift: Vec<Option<DriftChecked>>,
}

/// A stage's `drift` check, run.
pub(crate) struct DriftChecked {
    /// The check as configured.
    pub check: DriftCheck,
    /// The token JS test of the stage's training data against `check.against`'s.
    pub result: TestResult,
}

impl DriftChecked {
    /// One line: the divergence, the threshold, the p-value and the verdict.
    pub fn describe(&self) -> String {
        let r = &self.result;
        format!(
            "token JS divergence {:.4} bits against stage `{}`'s training data (max_js {}, p = {:.4}): {}",
            r.effect,
            self.check.against,
            r.threshold,
            r.p_value,
            if r.flagged { "drift" } else { "no drift" }
        )
    }
}

/// Runs every stage's `drift` check on the training data; refuses (one line) where a
/// check with `action = "stop"` finds drift.
fn drift_checks(cfg: &PipelineConfig, train_data: &[Arc<Dataset>]) -> Result<Vec<Option<DriftChecked>>> {
    let mut out = Vec::with_capacity(cfg.stages.len());
    for (s, current) in cfg.stages.iter().zip(train_data) {
        let Some(check) = s.drift.clone() else {
            out.push(None);
            continue;
        };
        let Some((k, _)) = cfg.stage(&check.against) else {
            bail!("stage `{}`: drift.against `{}` is not a stage", s.name, check.against);
        };
        let test = DriftConfig { max_js: check.max_js, seed: cfg.run.seed, ..DriftConfig::default() };
        let checked = DriftChecked { result: token_test(&train_data[k], current, &test), check };
        if checked.result.flagged && checked.check.action == DriftAction::Stop {
            bail!(
                "stage `{}`: its training data drifted: {} (drift.action = \"stop\"; raise drift.max_js or set action = \"warn\" to train anyway)",
                s.name,
                checked.describe()
            );
        }
        out.push(Some(checked));
    }
    Ok(out)
}

/// One stage's sources, previewed.
struct StagePreview {
    train: SourcePreview,
    eval: Option<SourcePreview>,
}

/// Loads every data set and instantiates each stage's plugins once, so a missing file,
/// a bad plugin name or a bad plugin config fails before the first step; and refuses a
/// pipeline whose model, training state, activations or data cannot fit in the
/// device's memory, before any of them is allocated.
pub(crate) fn load(cfg: &PipelineConfig, registry: &Registry, depth: Depth) -> Result<Loaded> {
    let device = resolve_device(&cfg.run.device)?;
    let base = cfg.base_dir();
    let tokenizer = build::tokenizer(&cfg.model, &base)?;
    let arch = build::architecture(&cfg.model, tokenizer.vocab_size(), &base)?;
    for s in &cfg.stages {
        for a in &s.augment {
            a.validate(arch.spec().vocab).with_context(|| format!("stage `{}`", s.name))?;
        }
    }
    let previews = cfg.stages.iter().map(|s| preview(s, &tokenizer, &base)).collect::<Result<Vec<_>>>()?;
    let peak = peak_memory(cfg, &arch.spec(), &previews);
    peak.1.ensure_fits(&format!("stage `{}`", peak.0), &device)?;
    check_plugins(cfg, registry, &device)?;
    let mut sizes: Vec<(usize, Option<usize>)> =
        previews.iter().map(|p| (p.train.len, p.eval.as_ref().map(|e| e.len))).collect();
    let mut train_data = Vec::new();
    let mut eval_data = Vec::new();
    for ((s, p), size) in cfg.stages.iter().zip(previews).zip(&mut sizes) {
        let load = |preview: SourcePreview, whole: bool| match whole && !preview.is_complete() {
            true => load_source(&preview.dataset.name, &tokenizer, &base, s.seq_len)
                .with_context(|| format!("stage `{}`", s.name)),
            false => Ok(preview.dataset),
        };
        let mut train = load(p.train, depth == Depth::Run || s.data.packing)?;
        if s.data.packing {
            train = packed(s, &train, &arch)?;
            size.0 = train.len();
        }
        train_data.push(Arc::new(train));
        eval_data.push(p.eval.map(|e| load(e, depth == Depth::Run)).transpose()?.map(Arc::new));
    }
    let drift = drift_checks(cfg, &train_data)?;
    Ok(Loaded { device, tokenizer, arch, train_data, eval_data, sizes, peak, drift })
}

/// Stage `s`'s training data packed into rows of `seq_len` tokens: language-model data
/// on a causal model, whose rotary positions make a packed example see what it would
/// alone.
fn packed(s: &StageConfig, train: &Dataset, arch: &Architecture) -> Result<Dataset> {
    let spec = arch.spec();
    if !spec.causal {
        bail!(
            "stage `{}`: packing = true needs a decoder; a {} model attends both ways and numbers positions from each row's start",
            s.name,
            spec.arch
        );
    }
    crate::data::pack_dataset(train, s.seq_len).with_context(|| format!("stage `{}`", s.name))
}

/// Stage `s`'s sources, previewed and checked against its objective.
fn preview(s: &StageConfig, tokenizer: &Tokenizer, base: &Path) -> Result<StagePreview> {
    let load = |spec: &str| {
        preview_source(spec, tokenizer, base, s.seq_len, PREVIEW_EXAMPLES)
            .with_context(|| format!("stage `{}`", s.name))
    };
    let (train, eval) = (load(&s.data.train)?, s.data.eval.as_deref().map(load).transpose()?);
    if s.objective.name() == "completion" {
        if let Some(text) = [Some(&train), eval.as_ref()].into_iter().flatten().find(|p| is_plain_text(&p.dataset)) {
            bail!(
                "stage `{}`: objective `completion` learns completions of prompts, but `{}` is plain text (give it prompt/completion data, or use `causal_lm`)",
                s.name,
                text.dataset.name
            );
        }
    }
    Ok(StagePreview { train, eval })
}

/// The stage that needs the most memory, and its estimate: one training step (see
/// [`memory::training_step`]) plus every data set, all of which stay loaded.
fn peak_memory(cfg: &PipelineConfig, spec: &ModelSpec, previews: &[StagePreview]) -> (String, Estimate) {
    let data: Bytes = previews.iter().flat_map(|p| std::iter::once(&p.train).chain(&p.eval)).map(|p| p.memory()).sum();
    let stage_estimate = |s: &StageConfig| {
        let trains_base = s.adapters.is_empty()
            || !s.train.unfreeze.is_empty()
            || !(s.train.freeze.is_empty() || s.train.freeze.iter().any(|p| p == "*"));
        let step = StepShape { batch: s.batch_size, seq: s.seq_len, grad_accum: s.grad_accum, trains_base };
        let mut e = memory::training_step(spec, step);
        e.add("data", data);
        e
    };
    cfg.stages.iter().map(|s| (s.name.clone(), stage_estimate(s))).max_by_key(|(_, e)| e.total()).unwrap_or_default()
}

/// Instantiates each stage's objective, optimizer and adapters once, on scratch state,
/// so a bad plugin name or config, or a `teacher` without an objective that reads it
/// (or the reverse), fails before anything else is built.
fn check_plugins(cfg: &PipelineConfig, registry: &Registry, device: &Device) -> Result<()> {
    for (i, s) in cfg.stages.iter().enumerate() {
        let scratch = Rc::new(HostState::for_checks(device.clone(), DType::F32, cfg.run.seed));
        let objective = registry
            .new_objective(s.objective.name(), &s.objective.config_json(), &scratch)
            .map_err(|e| cfg.plugin_error(i, PluginSlot::Objective, e))?;
        handoff::check_teacher(s, &objective, None, 0)?;
        registry
            .new_optimizer(&s.optimizer.name, &s.optimizer.config_json(), &scratch)
            .map_err(|e| cfg.plugin_error(i, PluginSlot::Optimizer, e))?;
        for a in &s.adjust {
            let then = s.adjusted(a.after_step)?;
            registry
                .new_optimizer(&then.optimizer.name, &then.optimizer.config_json(), &scratch)
                .map_err(|e| Error::msg(format!("stage `{}`: the optimizer's config {}: {e}", s.name, a.describe())))?;
        }
        for (k, a) in s.adapters.iter().enumerate() {
            registry
                .new_method(&a.plugin, &a.config_json(), &scratch)
                .map_err(|e| cfg.plugin_error(i, PluginSlot::Adapter(k), e))?;
        }
    }
    Ok(())
}

/// Whether a data set has plain-text examples (no prompt/completion split).
fn is_plain_text(d: &Dataset) -> bool {
    d.examples.iter().any(|e| e.labels.is_none() && e.class_label.is_none())
}

/// What a stage's adapters attach to and how much of the model trains in it, as far as
/// the config tells before training.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Footprint {
    /// Per adapter of the stage, in config order: the sites it attaches to (indices
    /// into the model's site table).
    pub adapter_sites: Vec<Vec<usize>>,
    /// Parameters that train at the stage's start: base weights its freeze rules leave
    /// on, the adapters that train (its own, and earlier ones handed over with
    /// `continue` or `combine`), the objective's head.
    pub trainable: usize,
    /// Every parameter of the stage's model: base weights, every adapter alive in the
    /// stage, the objective's head.
    pub total: usize,
}

/// An adapter made while checking: its stage, the instance and its config.
struct Made {
    stage: String,
    method: MethodInstance,
    config: String,
}

/// An adapter alive in a stage: which one (index into the adapters made), whether it
/// trains there, and its parameter count.
#[derive(Debug, Clone, Copy)]
struct Alive {
    made: usize,
    trains: bool,
    params: usize,
}

/// Attaches every stage's adapters to a throwaway copy of its model's sites, following
/// the handoffs from stage to stage, so that before the first step
/// - a target pattern that matches no site fails, naming the stage and adapter;
/// - a `merge` handoff of an adapter that cannot be merged fails, naming both stages.
///
/// A stage with its own fresh `model` is checked on a placeholder of that model.
/// Returns each stage's [`Footprint`] (`None` for stages on a model directory named in
/// `from`, checked when they start).
pub(crate) fn adapter_sites(
    cfg: &PipelineConfig,
    registry: &Registry,
    device: &Device,
    model: &dyn Model,
    tokenizer: Rc<Tokenizer>,
) -> Result<Vec<Option<Footprint>>> {
    let scratch = Rc::new(HostState::for_checks(device.clone(), DType::F32, cfg.run.seed));
    let vocab = tokenizer.vocab_size();
    scratch.set_tokenizer(tokenizer);
    let fresh = fresh_models(cfg, vocab, device)?;
    let mut made: Vec<Made> = Vec::new();
    // Per stage: the model it trains (`None`: a directory) and the adapters alive at its end.
    let mut after: Vec<Option<(&dyn Model, Vec<Alive>)>> = Vec::new();
    let mut out = Vec::new();
    for (i, s) in cfg.stages.iter().enumerate() {
        let start = match (&fresh[i], s.from.as_ref().map(|f| cfg.stage(f))) {
            (Some(m), _) => Some((m.as_ref(), Vec::new())),
            (None, Some(None)) => None,
            (None, Some(Some((k, _)))) => after[k].clone(),
            (None, None) if i == 0 => Some((model, Vec::new())),
            (None, None) => after[i - 1].clone(),
        };
        let Some((model, mut alive)) = start else {
            after.push(None);
            out.push(None);
            continue;
        };
        scratch.register_model(model);
        if i > 0 {
            alive = after_handoff(s, alive, &made, model)?;
        }
        let mut adapter_sites = Vec::new();
        for a in &s.adapters {
            let mut m = registry.new_method(&a.plugin, &a.config_json(), &scratch)?;
            m.attach(model.sites().infos()).with_context(|| format!("stage `{}`: adapter `{}`", s.name, a.plugin))?;
            adapter_sites.push(m.attachments().iter().map(|at| at.site as usize).collect());
            let params = m.params().iter().map(|p| p.var.elem_count()).sum();
            alive.push(Alive { made: made.len(), trains: true, params });
            made.push(Made { stage: s.name.clone(), method: m, config: a.config_json() });
        }
        let head = head_params(s, registry, &scratch, model)?;
        let base: Vec<(String, usize)> =
            model.weights().iter().map(|(n, w)| (n.clone(), w.var().elem_count())).collect();
        let adapters_train = alive.iter().any(|a| a.trains);
        let base_trainable: usize =
            base.iter().filter(|(n, _)| freeze::base_weight_trains(s, n, adapters_train, 0)).map(|(_, n)| n).sum();
        let adapters_trainable: usize = alive.iter().filter(|a| a.trains).map(|a| a.params).sum();
        let adapters_total: usize = alive.iter().map(|a| a.params).sum();
        out.push(Some(Footprint {
            adapter_sites,
            trainable: base_trainable + adapters_trainable + head,
            total: base.iter().map(|(_, n)| n).sum::<usize>() + adapters_total + head,
        }));
        after.push(Some((model, alive)));
    }
    Ok(out)
}

/// A placeholder (no values computed) of each stage's own fresh `model`, if it has one.
fn fresh_models(cfg: &PipelineConfig, vocab: usize, device: &Device) -> Result<Vec<Option<Box<dyn Model>>>> {
    let base = cfg.base_dir();
    let placeholder = |s: &StageConfig, m| {
        build::architecture(m, vocab, &base)?.placeholder(device).with_context(|| format!("stage `{}`: model", s.name))
    };
    cfg.stages.iter().map(|s| s.model.as_ref().map(|m| placeholder(s, m)).transpose()).collect()
}

/// The parameters stage `s`'s objective creates for its head (a classifier).
fn head_params(s: &StageConfig, registry: &Registry, scratch: &Rc<HostState>, model: &dyn Model) -> Result<usize> {
    let mut objective = registry
        .new_objective(s.objective.name(), &s.objective.config_json(), scratch)
        .with_context(|| format!("stage `{}`: objective", s.name))?;
    objective.init(&model.info()).with_context(|| format!("stage `{}`: objective", s.name))?;
    Ok(objective.params().iter().map(|p| p.var.elem_count()).sum())
}

/// The adapters alive after stage `s`'s handoff, once checked, and whether each
/// trains: `stack` freezes them, `continue` trains them, `combine` makes one trainable
/// adapter of them. A `merge` of an adapter that cannot be merged, a `combine` of
/// anything but plain LoRA adapters (or of none) fail, naming both stages.
fn after_handoff(s: &StageConfig, alive: Vec<Alive>, made: &[Made], model: &dyn Model) -> Result<Vec<Alive>> {
    match s.handoff.adapters {
        AdapterHandoff::Stack => Ok(alive.into_iter().map(|a| Alive { trains: false, ..a }).collect()),
        AdapterHandoff::Continue => Ok(alive.into_iter().map(|a| Alive { trains: true, ..a }).collect()),
        AdapterHandoff::Drop => Ok(Vec::new()),
        AdapterHandoff::Merge => {
            for a in &alive {
                let Made { stage: from, method: m, .. } = &made[a.made];
                check_mergeable(m, model).map_err(|e| Error::msg(format!("stage `{}`: handoff `merge` folds adapter `{}` of stage `{from}` into the base weights, but {e}; hand it over with \"stack\" or \"drop\" instead", s.name, m.core.plugin)))?;
            }
            Ok(Vec::new())
        }
        AdapterHandoff::Combine => {
            let plain_lora = |m: &Made| m.method.core.plugin == "lora" && !m.config.contains("\"use_dora\":true");
            if let Some(a) = alive.iter().find(|a| !plain_lora(&made[a.made])) {
                let Made { stage: from, method: m, .. } = &made[a.made];
                bail!("stage `{}`: handoff `combine` combines plain LoRA adapters only (no DoRA), but adapter `{}` of stage `{from}` is not one", s.name, m.core.plugin);
            }
            if alive.is_empty() {
                bail!("stage `{}`: handoff `combine` has no adapters to combine", s.name);
            }
            // A combination is one new LoRA adapter, trained; its sites are those of the
            // first it replaces, its size the sum of theirs (concatenated ranks; an SVD
            // to a lower rank is smaller).
            let params = alive.iter().map(|a| a.params).sum();
            Ok(alive.first().map(|a| Alive { trains: true, params, ..*a }).into_iter().collect())
        }
    }
}

/// Whether `m` can be folded into `model`'s weights: what it says, or, when it does
/// not say, whether a merge of each of its sites succeeds (on copies; nothing changes).
fn check_mergeable(m: &MethodInstance, model: &dyn Model) -> Result<()> {
    let sites = model.sites().infos();
    match m.merge_support() {
        MergeSupport::YES => {}
        MergeSupport::NO => return Err(Error::msg("the method cannot be merged (it says so)")),
        _ => {
            let weights = model.weights();
            for a in m.attachments() {
                let site = &sites[a.site as usize];
                let w = weights
                    .iter()
                    .find(|(n, _)| *n == format!("{}.weight", site.name))
                    .map(|(_, w)| w.var().as_tensor().copy())
                    .transpose()?;
                let w = w.ok_or_else(|| Error::msg(format!("`{}` has no weight to merge into", site.name)))?;
                m.merge(a.site as usize, &w).context("a trial merge failed")?;
            }
        }
    }
    match m.attachments().iter().map(|a| &sites[a.site as usize]).find(|s| s.kind != SiteKind::LINEAR) {
        Some(site) => Err(Error::msg(format!(
            "it is attached to `{}`, which is not a linear site (kind {}), and only linear sites can be merged",
            site.name, site.kind
        ))),
        None => Ok(()),
    }
}
