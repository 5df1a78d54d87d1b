//! The plan `stagecraft run --check` prints: the model, then each stage — steps, data,
//! where it starts, optimizer and schedule, adapters, replay, evaluations, exit rule and
//! gates — once everything a run checks before training has passed ([`super::check`]).

use super::check::{adapter_sites, load, Depth, DriftChecked, Footprint};
use super::{build, Pipeline};
use crate::config::{AdapterHandoff, PipelineConfig, StageConfig};
use crate::data::Dataset;
use crate::error::Result;
use crate::memory;
use crate::model::SiteTable;
use crate::plugin::Registry;
use std::fmt::Write;
use std::rc::Rc;

fn millions(n: usize) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

/// `n` with a comma between thousands: `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 site`, `4 sites`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The most site groups [`site_summary`] lists.
const SITE_GROUPS_SHOWN: usize = 8;

/// The sites `on` as one line: names with the layer number as `*`, each with how many
/// layers it covers and its role, in model order (`model.layers.*.self_attn.q_proj x4
/// (attn_q), lm_head (lm_head)`).
fn site_summary(on: &[usize], sites: &SiteTable) -> String {
    let mut groups: Vec<(String, usize, String)> = Vec::new();
    for &k in on {
        let info = &sites.infos()[k];
        let name = match info.layer.into_option() {
            Some(l) => info.name.as_str().replacen(&format!(".{l}."), ".*.", 1),
            None => info.name.to_string(),
        };
        match groups.iter_mut().find(|(n, ..)| *n == name) {
            Some(g) => g.1 += 1,
            None => groups.push((name, 1, sites.roles()[k].to_string())),
        }
    }
    let mut parts: Vec<String> = groups
        .iter()
        .take(SITE_GROUPS_SHOWN)
        .map(|(name, n, role)| {
            let times = if *n > 1 { format!(" x{n}") } else { String::new() };
            let role = if role == "other" { String::new() } else { format!(" ({role})") };
            format!("{name}{times}{role}")
        })
        .collect();
    if groups.len() > SITE_GROUPS_SHOWN {
        parts.push(format!("and {} more", count(groups.len() - SITE_GROUPS_SHOWN, "group")));
    }
    parts.join(", ")
}

impl Pipeline {
    /// Checks everything a run would check before training (config, data, plugins and
    /// their pins, adapter targets) without training or writing anything, and describes the run.
    pub fn plan(cfg: &PipelineConfig, registry: &Registry) -> Result<String> {
        let loaded = load(cfg, registry, Depth::Check)?;
        registry.check_trust(&cfg.trust())?;
        super::warn_unused_pins(registry);
        // A fresh model's values do not matter to any check: its placeholder costs nothing.
        let model = match &cfg.model.from {
            Some(_) => {
                build::model(&cfg.model, loaded.tokenizer.vocab_size(), cfg.run.seed, &cfg.base_dir(), &loaded.device)?
            }
            None => loaded.arch.placeholder(&loaded.device)?,
        };
        let footprints =
            adapter_sites(cfg, registry, &loaded.device, model.as_ref(), Rc::new(loaded.tokenizer.clone()))?;
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
        let (stage, estimate) = &loaded.peak;
        let available = memory::available(&loaded.device).map_or("unknown".into(), |b| b.to_string());
        let _ =
            writeln!(out, "memory: about {} at the peak (stage `{stage}`), {available} available", estimate.total());
        for (i, footprint) in footprints.iter().enumerate() {
            let data = StageData {
                train: &loaded.train_data[i],
                train_len: loaded.sizes[i].0,
                eval: loaded.eval_data[i].as_deref().zip(loaded.sizes[i].1),
                drift: loaded.drift[i].as_ref(),
            };
            describe_stage(&mut out, i, &cfg.stages, &data, footprint.as_ref(), model.sites());
        }
        Ok(out)
    }
}

/// A stage's data, as the plan describes it.
struct StageData<'a> {
    train: &'a Dataset,
    /// Examples in the whole train source.
    train_len: usize,
    /// The eval set and how many examples its whole source has.
    eval: Option<(&'a Dataset, usize)>,
    /// Its `drift` check, run.
    drift: Option<&'a DriftChecked>,
}

/// Stage `i`'s lines of the plan: steps and data, where it starts, its optimizer and
/// schedule, adapters (and the sites each attaches to), trainable parameters, replay,
/// regularization, evaluations, exit rule and gates.
fn describe_stage(
    out: &mut String,
    i: usize,
    stages: &[StageConfig],
    data: &StageData,
    footprint: Option<&Footprint>,
    sites: &SiteTable,
) {
    let s = &stages[i];
    let (train, len) = (data.train, data.train_len);
    let per_step = s.batch_size * s.grad_accum;
    let steps = s.total_steps(len).unwrap_or(0);
    let epochs = steps as f64 * per_step as f64 / len as f64;
    let unit = if train.packing.is_some() { "packed rows" } else { "examples" };
    let _ = writeln!(
        out,
        "{}. {} [{}] {} steps x {} {unit} ({epochs:.2} epochs of {} from {})",
        i + 1,
        s.name,
        s.objective.name(),
        steps,
        per_step,
        len,
        train.name
    );
    for d in std::iter::once(train).chain(data.eval.map(|(e, _)| e)) {
        if let Some(format) = &d.format {
            let _ = writeln!(out, "   data {}: {format}", d.name);
        }
        if let Some(packing) = &d.packing {
            let _ = writeln!(out, "   data {}: {packing}", d.name);
        }
    }
    let start = match (&s.model, &s.from) {
        (Some(m), _) => fresh_model_words(m),
        (None, Some(f)) => format!("from `{f}`"),
        (None, None) if i == 0 => "from the model".into(),
        (None, None) => "from the previous stage".into(),
    };
    let handoff = if i > 0 && s.model.is_none() {
        format!(
            ", previous adapters {}, optimizer {}",
            handoff_word(s.handoff.adapters),
            format!("{:?}", s.handoff.optimizer).to_lowercase()
        )
    } else {
        String::new()
    };
    let _ = writeln!(out, "   starts {start}{handoff}");
    if let Some(t) = &s.teacher {
        let _ = writeln!(out, "   learns from teacher `{t}` (frozen; its logits reach the objective)");
    }
    let decay = format!("{:?}", s.schedule.decay).to_lowercase();
    let _ = writeln!(
        out,
        "   {} lr {} ({decay} after {} warm-up steps), seq_len {}",
        s.optimizer.name, s.optimizer.lr, s.schedule.warmup_steps, s.seq_len
    );
    for a in &s.adjust {
        let _ = writeln!(out, "   adjusts {}", a.describe());
    }
    if let Some(f) = footprint {
        for (a, on) in s.adapters.iter().zip(&f.adapter_sites) {
            let _ =
                writeln!(out, "   adapter {} on {}: {}", a.plugin, count(on.len(), "site"), site_summary(on, sites));
        }
        let share = 100.0 * f.trainable as f64 / f.total.max(1) as f64;
        let _ =
            writeln!(out, "   trains {} of {} parameters ({share:.2}%)", thousands(f.trainable), thousands(f.total));
    }
    if let Some(r) = &s.data.replay {
        let _ = writeln!(out, "   replays {} ({:.0}% of each batch)", r.from.join(", "), r.ratio * 100.0);
    }
    if let Some(r) = &s.regularize {
        let _ = writeln!(out, "   {}", regularize_words(r, i, stages));
    }
    describe_checks(out, s, data.eval);
    if let Some(d) = data.drift {
        let _ = writeln!(out, "   drift ({} on drift): {}", d.check.action, d.describe());
    }
}

/// What a stage's `regularize` holds, and toward what.
fn regularize_words(r: &crate::config::Regularize, i: usize, stages: &[StageConfig]) -> String {
    match r.kind {
        crate::config::RegularizeKind::L2sp => {
            format!("holds its trainable values toward the stage's start (L2-SP, lambda {})", r.lambda)
        }
        crate::config::RegularizeKind::Ewc => {
            let from: Vec<&str> = match r.from.is_empty() {
                true => stages[..i].iter().map(|e| e.name.as_str()).collect(),
                false => r.from.iter().map(String::as_str).collect(),
            };
            format!(
                "holds its trainable values toward the stage's start by their Fisher information on {} (EWC, lambda {}, {} batches each)",
                from.join(", "),
                r.lambda,
                r.fisher_batches
            )
        }
    }
}

/// A stage's evaluations, exit rule and gates.
fn describe_checks(out: &mut String, s: &StageConfig, eval: Option<(&Dataset, usize)>) {
    match (eval, s.eval_every) {
        (Some((_, n)), Some(every)) => {
            let _ = writeln!(out, "   evaluates {n} examples every {every} steps and at the end");
        }
        (Some((_, n)), None) => {
            let _ = writeln!(out, "   evaluates {n} examples at the end");
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

fn handoff_word(h: AdapterHandoff) -> &'static str {
    match h {
        AdapterHandoff::Merge => "merged",
        AdapterHandoff::Stack => "stacked",
        AdapterHandoff::Continue => "continued",
        AdapterHandoff::Drop => "dropped",
        AdapterHandoff::Combine => "combined into one",
    }
}

/// "from a fresh llama (hidden 64, 2 layers, 2 heads)".
fn fresh_model_words(m: &crate::config::ModelConfig) -> String {
    let size = |v: Option<usize>| v.map_or("?".to_string(), |v| v.to_string());
    format!(
        "from a fresh {} (hidden {}, {} layers, {} heads)",
        m.arch.as_deref().unwrap_or("model"),
        size(m.hidden_size),
        size(m.num_layers),
        size(m.num_heads)
    )
}
