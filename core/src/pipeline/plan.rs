//! Everything a pipeline checks before it trains (data, plugins and their configs,
//! adapter targets), and the plan `stagecraft run --check` prints from it.

use super::run_dir::RunDir;
use super::{build, Pipeline};
use crate::config::{AdapterHandoff, PipelineConfig};
use crate::data::{load_source, Dataset, Tokenizer};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plugin::{HostState, MethodInstance, Registry};
use candle_core::{DType, Device};
use stagecraft_sdk::{MergeSupport, SiteKind};
use std::fmt::Write;
use std::rc::Rc;
use std::sync::Arc;

/// `run.device` as a candle device.
pub(super) fn resolve_device(spec: &str) -> Result<Device> {
    crate::device::resolve_device(spec).map_err(|e| Error::msg(format!("run.device: {e}")))
}

/// What `data.json` records: each data set's source, size and sha256 (training sets,
/// then eval sets).
pub(super) fn data_record(train: &[Arc<Dataset>], eval: &[Option<Arc<Dataset>>]) -> serde_json::Value {
    let sets = train.iter().chain(eval.iter().flatten());
    serde_json::Value::Array(
        sets.map(|d| serde_json::json!({ "source": d.name, "examples": d.len(), "sha256": d.sha256 })).collect(),
    )
}

/// Refuses to resume on data other than the run's (its `data.json`, when it has one).
pub(super) fn check_same_data(run: &RunDir, now: &serde_json::Value) -> Result<()> {
    let path = run.join("data.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let then: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
    if &then == now {
        return Ok(());
    }
    let (then, now) = (then.as_array().cloned().unwrap_or_default(), now.as_array().cloned().unwrap_or_default());
    let changed = then.iter().zip(&now).find(|(a, b)| a != b).map(|(a, _)| a["source"].to_string());
    let what = changed.map_or("the list of data sets".to_string(), |source| format!("data set {source}"));
    Err(Error::file(&path, format!("{what} changed since the run started: resuming would not continue the same run")))
}

/// What `plugins.json` records: each plugin library, where it came from, its SDK
/// version, its plugins and its sha256.
pub(super) fn plugins_record(registry: &Registry) -> serde_json::Value {
    let libraries = registry.libraries().iter().map(|l| {
        let sha256 = match &l.source {
            crate::plugin::Source::File { path } => crate::plugin::loader::sha256_file(path).ok(),
            crate::plugin::Source::Builtin => None,
        };
        let names: Vec<&str> = l.plugins.iter().map(|p| p.name.as_str()).collect();
        serde_json::json!({ "library": l.id, "source": l.source.to_string(), "sdk": l.sdk.to_string(), "plugins": names, "sha256": sha256 })
    });
    serde_json::Value::Array(libraries.collect())
}

/// A pipeline's inputs, loaded and checked.
pub(super) struct Loaded {
    pub device: Device,
    pub tokenizer: Tokenizer,
    pub train_data: Vec<Arc<Dataset>>,
    pub eval_data: Vec<Option<Arc<Dataset>>>,
}

/// Loads every data set and instantiates each stage's plugins once, so a missing file,
/// a bad plugin name or a bad plugin config fails before the first step.
pub(super) fn load(cfg: &PipelineConfig, registry: &Registry) -> Result<Loaded> {
    let device = resolve_device(&cfg.run.device)?;
    let base = cfg.base_dir();
    let tokenizer = build::tokenizer(&cfg.model, &base)?;
    let mut train_data = Vec::new();
    let mut eval_data = Vec::new();
    for s in &cfg.stages {
        let load = |spec: &str| {
            load_source(spec, &tokenizer, &base, s.seq_len)
                .map(Arc::new)
                .map_err(|e| Error::msg(format!("stage `{}`: {e}", s.name)))
        };
        train_data.push(load(&s.data.train)?);
        eval_data.push(s.data.eval.as_deref().map(load).transpose()?);
    }
    for s in &cfg.stages {
        let scratch = Rc::new(HostState::new(device.clone(), DType::F32, cfg.run.seed));
        registry
            .new_stage(s.objective.name(), &s.objective.config_json(), &scratch)
            .map_err(|e| Error::msg(format!("stage `{}`: objective: {e}", s.name)))?;
        registry
            .new_optimizer(&s.optimizer.name, &s.optimizer.config_json(), &scratch)
            .map_err(|e| Error::msg(format!("stage `{}`: optimizer: {e}", s.name)))?;
        for a in &s.adapters {
            registry
                .new_method(&a.plugin, &a.config_json(), &scratch)
                .map_err(|e| Error::msg(format!("stage `{}`: adapter `{}`: {e}", s.name, a.plugin)))?;
        }
    }
    Ok(Loaded { device, tokenizer, train_data, eval_data })
}

/// Attaches every stage's adapters to a throwaway copy of the model's sites, following
/// the handoffs from stage to stage, so that before the first step
/// - a target pattern that matches no site fails, naming the stage and adapter;
/// - a `merge` handoff of an adapter that cannot be merged fails, naming both stages.
///
/// Returns how many sites each stage's adapters attach to (`None` for stages on
/// another model, checked when they start).
pub(super) fn adapter_sites(
    cfg: &PipelineConfig,
    registry: &Registry,
    device: &Device,
    model: &dyn Model,
    tokenizer: Rc<Tokenizer>,
) -> Result<Vec<Option<Vec<usize>>>> {
    let scratch = Rc::new(HostState::new(device.clone(), DType::F32, cfg.run.seed));
    scratch.register_model(model);
    scratch.set_tokenizer(tokenizer);
    let mut made: Vec<(String, MethodInstance, String)> = Vec::new();
    // The adapters alive at the end of each stage (indices into `made`); `None` on
    // another model.
    let mut alive_after: Vec<Option<Vec<usize>>> = Vec::new();
    let mut out = Vec::new();
    for (i, s) in cfg.stages.iter().enumerate() {
        let start = match s.from.as_ref().map(|f| cfg.stage(f)) {
            Some(None) => None,
            Some(Some((k, _))) => alive_after[k].clone(),
            None if i == 0 => Some(Vec::new()),
            None => alive_after[i - 1].clone(),
        };
        let Some(mut alive) = start else {
            alive_after.push(None);
            out.push(None);
            continue;
        };
        if i > 0 && s.handoff.adapters == AdapterHandoff::Merge {
            for &k in &alive {
                let (from, m, _) = &made[k];
                check_mergeable(m, model).map_err(|e| Error::msg(format!("stage `{}`: handoff `merge` folds adapter `{}` of stage `{from}` into the base weights, but {e}; hand it over with \"stack\" or \"drop\" instead", s.name, m.core.plugin)))?;
            }
        }
        if i > 0 && s.handoff.adapters == AdapterHandoff::Combine {
            let plain_lora =
                |m: &MethodInstance, config: &str| m.core.plugin == "lora" && !config.contains("\"use_dora\":true");
            if let Some(&k) = alive.iter().find(|&&k| !plain_lora(&made[k].1, &made[k].2)) {
                let (from, m, _) = &made[k];
                return Err(Error::msg(format!("stage `{}`: handoff `combine` combines plain LoRA adapters only (no DoRA), but adapter `{}` of stage `{from}` is not one", s.name, m.core.plugin)));
            }
            if alive.is_empty() {
                return Err(Error::msg(format!("stage `{}`: handoff `combine` has no adapters to combine", s.name)));
            }
        }
        if i > 0 && matches!(s.handoff.adapters, AdapterHandoff::Merge | AdapterHandoff::Drop | AdapterHandoff::Combine)
        {
            // A combination is one new LoRA adapter; its sites are those of the ones it replaces.
            let combined: Vec<usize> = if s.handoff.adapters == AdapterHandoff::Combine {
                alive.first().copied().into_iter().collect()
            } else {
                Vec::new()
            };
            alive = combined;
        }
        let mut counts = Vec::new();
        for a in &s.adapters {
            let mut m = registry.new_method(&a.plugin, &a.config_json(), &scratch)?;
            m.attach(model.sites().infos())
                .map_err(|e| Error::msg(format!("stage `{}`: adapter `{}`: {e}", s.name, a.plugin)))?;
            counts.push(m.attachments().len());
            alive.push(made.len());
            made.push((s.name.clone(), m, a.config_json()));
        }
        alive_after.push(Some(alive));
        out.push(Some(counts));
    }
    Ok(out)
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
                m.merge(a.site as usize, &w).map_err(|e| Error::msg(format!("a trial merge failed: {e}")))?;
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

fn millions(n: usize) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

impl Pipeline {
    /// Checks everything a run would check before training (config, data, plugins,
    /// adapter targets) without training or writing anything, and describes the run.
    pub fn plan(cfg: &PipelineConfig, registry: &Registry) -> Result<String> {
        let loaded = load(cfg, registry)?;
        let model =
            build::model(&cfg.model, loaded.tokenizer.vocab_size(), cfg.run.seed, &cfg.base_dir(), &loaded.device)?;
        let sites = adapter_sites(cfg, registry, &loaded.device, model.as_ref(), Rc::new(loaded.tokenizer.clone()))?;
        let info = model.info();
        let params: usize = model.weights().iter().map(|(_, w)| w.var().elem_count()).sum();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "model: {} ({} layers, hidden {}, vocab {}), {} parameters, on {}",
            info.arch,
            info.num_layers,
            info.hidden,
            info.vocab,
            millions(params),
            cfg.run.device
        );
        for (i, s) in cfg.stages.iter().enumerate() {
            let train = &loaded.train_data[i];
            let per_step = s.batch_size * s.grad_accum;
            let steps = s.total_steps(train.len()).unwrap_or(0);
            let epochs = steps as f64 * per_step as f64 / train.len() as f64;
            let _ = writeln!(
                out,
                "{}. {} [{}] {} steps x {} examples ({epochs:.2} epochs of {} from {})",
                i + 1,
                s.name,
                s.objective.name(),
                steps,
                per_step,
                train.len(),
                train.name
            );
            let start = match &s.from {
                Some(f) => format!("from `{f}`"),
                None if i == 0 => "from the model".into(),
                None => "from the previous stage".into(),
            };
            let handoff = if i > 0 {
                format!(
                    ", previous adapters {}, optimizer {}",
                    handoff_word(s.handoff.adapters),
                    format!("{:?}", s.handoff.optimizer).to_lowercase()
                )
            } else {
                String::new()
            };
            let _ = writeln!(out, "   starts {start}{handoff}");
            let decay = format!("{:?}", s.schedule.decay).to_lowercase();
            let _ = writeln!(
                out,
                "   {} lr {} ({decay} after {} warm-up steps), seq_len {}",
                s.optimizer.name, s.optimizer.lr, s.schedule.warmup_steps, s.seq_len
            );
            for (a, n) in s.adapters.iter().zip(sites[i].iter().flatten()) {
                let _ = writeln!(out, "   adapter {} on {n} sites", a.plugin);
            }
            if let Some(r) = &s.data.replay {
                let _ = writeln!(out, "   replays {} ({:.0}% of each batch)", r.from.join(", "), r.ratio * 100.0);
            }
            match (&loaded.eval_data[i], s.eval_every) {
                (Some(e), Some(every)) => {
                    let _ = writeln!(out, "   evaluates {} examples every {every} steps and at the end", e.len());
                }
                (Some(e), None) => {
                    let _ = writeln!(out, "   evaluates {} examples at the end", e.len());
                }
                (None, _) => {}
            }
            if let Some(x) = &s.exit {
                let rule = [
                    x.above.map(|v| format!("above {v}")),
                    x.below.map(|v| format!("below {v}")),
                    x.patience.map(|p| format!("patience {p}")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
                let _ = writeln!(out, "   exits on {} {rule}", x.metric);
            }
            for g in &s.gates.retention {
                let action = format!("{:?}", g.on_fail).to_lowercase();
                let _ = writeln!(
                    out,
                    "   gate: `{}` may drop at most {} ({action} on failure, patience {})",
                    g.stage, g.max_drop, g.patience
                );
            }
        }
        Ok(out)
    }
}

fn handoff_word(h: AdapterHandoff) -> &'static str {
    match h {
        AdapterHandoff::Merge => "merged",
        AdapterHandoff::Stack => "stacked",
        AdapterHandoff::Continue => "continued",
        AdapterHandoff::Drop => "dropped",
        AdapterHandoff::Combine => "combined into one",
    }
}
