//! Rules across fields, checked before training starts. Plugin-level checks (unknown
//! plugin, a target matching no site, a plugin rejecting its config) happen when the
//! pipeline instantiates its plugins, also before the first step.

use super::{AdapterHandoff, ExitConfig, ModelConfig, PipelineConfig, StageConfig};
use crate::bail;
use crate::error::{Error, Result};

/// Metrics the first-party objectives report on eval sets (`eval.<name>`).
pub fn objective_metrics(objective: &str) -> Option<&'static [&'static str]> {
    const LM: &[&str] = &["loss", "perplexity", "token_accuracy", "loss_p50", "loss_p90", "loss_p99"];
    const COMPLETION: &[&str] =
        &["loss", "perplexity", "token_accuracy", "exact_match", "loss_p50", "loss_p90", "loss_p99"];
    const CLASSIFICATION: &[&str] = &["loss", "accuracy", "loss_p50", "loss_p90", "loss_p99"];
    const DISTILL: &[&str] =
        &["loss", "perplexity", "token_accuracy", "kl", "agreement", "loss_p50", "loss_p90", "loss_p99"];
    match objective {
        "distill" => Some(DISTILL),
        "causal_lm" => Some(LM),
        "completion" => Some(COMPLETION),
        "classification" => Some(CLASSIFICATION),
        _ => None,
    }
}

fn check_exit(file: &str, s: &StageConfig, exit: &ExitConfig) -> Result<()> {
    let bad = |m: String| Error::msg(format!("{file}: stage `{}`: exit: {m}", s.name));
    match (exit.below, exit.above, exit.patience) {
        (Some(_), Some(_), _) => return Err(bad("give `below` or `above`, not both".into())),
        (None, None, None) => return Err(bad("give `below`, `above` or `patience`".into())),
        _ => {}
    }
    if let Some(t) = exit.below.or(exit.above).filter(|t| !t.is_finite()) {
        return Err(bad(format!("the threshold must be a finite number, got {t}")));
    }
    let (split, metric) = exit
        .metric
        .split_once('.')
        .ok_or_else(|| bad(format!("metric `{}` must be `eval.<name>` or `train.loss`", exit.metric)))?;
    match split {
        "train" if metric == "loss" => Ok(()),
        "train" => Err(bad(format!("metric `{}`: only `train.loss` is tracked on training batches", exit.metric))),
        "eval" => {
            if s.data.eval.is_none() {
                return Err(bad(format!("metric `{}` needs `data.eval`", exit.metric)));
            }
            match objective_metrics(s.objective.name()) {
                Some(known) if !known.contains(&metric) => Err(bad(format!(
                    "unknown metric `{}` for objective `{}` (known: {})",
                    exit.metric,
                    s.objective.name(),
                    known.join(", ")
                ))),
                _ => Ok(()),
            }
        }
        _ => Err(bad(format!("metric `{}` must start with `eval.` or `train.`", exit.metric))),
    }
}

/// A stage's `adjust` entries: steps in order and inside the stage, adjustable keys
/// only, and the stage as each leaves it valid.
fn check_adjustments(file: &str, cfg: &PipelineConfig, i: usize, s: &StageConfig) -> Result<()> {
    let bad = |m: String| Error::msg(format!("{file}: stage `{}`: adjust: {m}", s.name));
    let mut previous: Option<u64> = None;
    for a in &s.adjust {
        if let Some(p) = previous.filter(|p| a.after_step <= *p) {
            return Err(bad(format!("`after_step` {} comes after {p}: give the entries in step order", a.after_step)));
        }
        previous = Some(a.after_step);
        if let Some(m) = s.max_steps.filter(|m| a.after_step >= *m) {
            return Err(bad(format!("after step {}: the stage has {m} steps", a.after_step)));
        }
        let changes = a.changes();
        if changes.is_empty() {
            return Err(bad(format!("after step {}: no value changes", a.after_step)));
        }
        if let Some((k, _)) = changes.iter().find(|(k, _)| !crate::config::Adjustment::is_adjustable(k)) {
            return Err(bad(format!(
                "`{k}` cannot change while the stage trains; what can: {}",
                crate::config::ADJUSTABLE
            )));
        }
        let mut then = s.adjusted(a.after_step).map_err(|e| bad(format!("after step {}: {e}", a.after_step)))?;
        then.adjust.clear();
        check_stage(file, cfg, i, &then)
            .map_err(|e| Error::msg(format!("{e} (as `adjust` leaves the stage after step {})", a.after_step)))?;
    }
    Ok(())
}

fn check_stage(file: &str, cfg: &PipelineConfig, i: usize, s: &StageConfig) -> Result<()> {
    let bad = |m: String| Error::msg(format!("{file}: stage `{}`: {m}", s.name));
    let earlier = |name: &str| cfg.stages[..i].iter().any(|e| e.name == name);
    if s.max_steps.is_none() && s.epochs.is_none() {
        return Err(bad("give `max_steps` or `epochs`".into()));
    }
    if s.epochs == Some(0) {
        return Err(bad("`epochs` must be > 0 (for a stage that only evaluates, set `max_steps = 0`)".into()));
    }
    if s.max_steps == Some(0) && s.data.eval.is_none() && s.gates.retention.is_empty() {
        return Err(bad(
            "`max_steps = 0` only evaluates, but the stage has no `data.eval` and no retention gate".into()
        ));
    }
    for a in &s.augment {
        a.validate(usize::MAX).map_err(|e| bad(e.to_string()))?;
    }
    if !s.augment.is_empty() && s.data.packing {
        return Err(bad(
            "`augment` and `data.packing` cannot be combined: packing fixes the rows once, augment changes each row every step".into(),
        ));
    }
    if !(s.optimizer.lr > 0.0 && s.optimizer.lr.is_finite()) {
        return Err(bad(format!("optimizer.lr must be > 0, got {}", s.optimizer.lr)));
    }
    for (name, v) in [("batch_size", s.batch_size), ("seq_len", s.seq_len), ("grad_accum", s.grad_accum)] {
        if v == 0 {
            return Err(bad(format!("`{name}` must be > 0")));
        }
    }
    if s.batch_size.checked_mul(s.grad_accum).is_none() {
        return Err(bad(format!(
            "`batch_size` {} x `grad_accum` {} examples per step is too many",
            s.batch_size, s.grad_accum
        )));
    }
    if s.eval_every == Some(0) {
        return Err(bad("`eval_every` must be > 0".into()));
    }
    if s.save_every == Some(0) {
        return Err(bad("`save_every` must be > 0".into()));
    }
    if s.seq_len < 2 {
        return Err(bad("`seq_len` must be at least 2".into()));
    }
    if let Some(c) = s.grad_clip {
        if c.is_nan() || c <= 0.0 {
            return Err(bad(format!("`grad_clip` must be > 0, got {c}")));
        }
    }
    if let (Some(max), w) = (s.max_steps, s.schedule.warmup_steps) {
        if w > max {
            return Err(bad(format!("schedule.warmup_steps {w} exceeds max_steps {max}")));
        }
    }
    if !(0.0..=1.0).contains(&s.schedule.min_lr_ratio) {
        return Err(bad(format!("schedule.min_lr_ratio must be in [0, 1], got {}", s.schedule.min_lr_ratio)));
    }
    if let Some(f) = s.train.layer_lr_decay {
        if !(f > 0.0 && f <= 1.0) {
            return Err(bad(format!("train.layer_lr_decay must be in (0, 1], got {f}")));
        }
    }
    if let Some(r) = &s.data.replay {
        if r.from.is_empty() {
            return Err(bad("data.replay.from names no stage".into()));
        }
        if !(r.ratio > 0.0 && r.ratio < 1.0) {
            return Err(bad(format!("data.replay.ratio must be in (0, 1), got {}", r.ratio)));
        }
        if let Some(f) = r.from.iter().find(|f| !earlier(f)) {
            return Err(bad(format!("data.replay.from `{f}` is not an earlier stage")));
        }
    }
    for g in &s.gates.retention {
        if !earlier(&g.stage) {
            return Err(bad(format!("gates.retention.stage `{}` is not an earlier stage", g.stage)));
        }
        if g.max_drop.is_nan() || g.max_drop < 0.0 {
            return Err(bad(format!("gates.retention.max_drop must be >= 0, got {}", g.max_drop)));
        }
        let watched = &cfg.stages[cfg.stage(&g.stage).map_or(0, |(k, _)| k)];
        if watched.data.eval.is_none() {
            return Err(bad(format!("gates.retention watches `{}`, which has no `data.eval`", g.stage)));
        }
        let objective = watched.objective.name();
        match (&g.metric, objective_metrics(objective)) {
            (Some(m), Some(known)) if !known.contains(&m.as_str()) => {
                return Err(bad(format!(
                    "gates.retention.metric `{m}`: stage `{}`'s objective `{objective}` does not report it (known: {})",
                    g.stage,
                    known.join(", ")
                )));
            }
            _ => {}
        }
    }
    let is_model_dir = |d: &str| {
        cfg.base_dir().join(d).join("config.json").exists() || std::path::Path::new(d).join("config.json").exists()
    };
    for (key, value) in [("from", &s.from), ("teacher", &s.teacher)] {
        if let Some(v) = value.as_deref().filter(|v| !earlier(v) && !is_model_dir(v)) {
            return Err(bad(format!(
                "{key} `{v}` is neither an earlier stage nor a model directory with a config.json"
            )));
        }
    }
    if let Some(m) = &s.model {
        if s.from.is_some() {
            return Err(bad("give `model` (a fresh model) or `from`, not both".into()));
        }
        if m.from.is_some() {
            return Err(bad("model.from: a stage starts from a model directory with `from = \"DIR\"`".into()));
        }
        if m.tokenizer != "bytes" {
            return Err(bad("model.tokenizer: every stage uses the pipeline's tokenizer (`[model] tokenizer`)".into()));
        }
        check_fresh_model(&format!("{file}: stage `{}`: model", s.name), m)?;
    }
    if let Some(d) = &s.drift {
        if !earlier(&d.against) {
            return Err(bad(format!("drift.against `{}` is not an earlier stage", d.against)));
        }
        if !(d.max_js > 0.0 && d.max_js <= 1.0) {
            return Err(bad(format!("drift.max_js must be in (0, 1], got {}", d.max_js)));
        }
    }
    if let Some(r) = &s.regularize {
        if !s.train.unfreeze.is_empty() {
            return Err(bad("regularize does not combine with train.unfreeze: it holds the values that train from the stage's start".into()));
        }
        if !(r.lambda.is_finite() && r.lambda > 0.0) {
            return Err(bad(format!("regularize.lambda must be a finite number > 0, got {}", r.lambda)));
        }
        match r.kind {
            crate::config::RegularizeKind::Ewc => {
                if r.fisher_batches == 0 {
                    return Err(bad("regularize.fisher_batches must be at least 1".into()));
                }
                if let Some(f) = r.from.iter().find(|f| !earlier(f)) {
                    return Err(bad(format!("regularize.from `{f}` is not an earlier stage")));
                }
                if r.from.is_empty() && cfg.stage(&s.name).is_some_and(|(k, _)| k == 0) {
                    return Err(bad("regularize.kind = \"ewc\" needs an earlier stage to hold on to; the first stage has none (use \"l2sp\")".into()));
                }
            }
            crate::config::RegularizeKind::L2sp if !r.from.is_empty() => {
                return Err(bad(
                    "regularize.from is for `ewc`; `l2sp` holds every value toward the stage's start".into()
                ));
            }
            crate::config::RegularizeKind::L2sp => {}
        }
    }
    check_handoff(s).map_err(|m| bad(format!("handoff: {m}")))?;
    if !(0.0..1.0).contains(&s.train.dropout) {
        return Err(bad(format!("train.dropout must be in [0, 1), got {}", s.train.dropout)));
    }
    if let Some(exit) = &s.exit {
        check_exit(file, s, exit)?;
    }
    check_adjustments(file, cfg, i, s)?;
    let a = &s.anomaly;
    let spike_ok = a.spike_factor.is_finite() && a.spike_factor > 1.0;
    let margin_ok = a.spike_margin.is_finite() && a.spike_margin >= 0.0;
    let lr_scale_ok = a.lr_scale > 0.0 && a.lr_scale <= 1.0;
    if !(spike_ok && margin_ok && lr_scale_ok) {
        return Err(bad(
            "anomaly.spike_factor must be > 1, anomaly.spike_margin >= 0 and anomaly.lr_scale in (0, 1]".into()
        ));
    }
    Ok(())
}

/// A fresh model's architecture and required sizes; `at` names the table in errors.
fn check_fresh_model(at: &str, m: &ModelConfig) -> Result<()> {
    let Some(arch) = m.arch.as_deref() else { bail!("{at}.arch is required for a fresh model (llama or bert)") };
    if !["llama", "bert"].contains(&arch) {
        bail!("{at}.arch `{arch}` is not supported (supported: llama, bert)");
    }
    for (k, v) in [("hidden_size", m.hidden_size), ("num_layers", m.num_layers), ("num_heads", m.num_heads)] {
        if v.unwrap_or(0) == 0 {
            bail!("{at}.{k} is required (> 0) for a fresh `{arch}`");
        }
    }
    Ok(())
}

fn check_handoff(s: &StageConfig) -> std::result::Result<(), String> {
    let h = &s.handoff;
    match (h.adapters, &h.combine) {
        (AdapterHandoff::Combine, None) => {
            Err("`adapters = \"combine\"` needs `combine = { method = \"cat\" }` or `{ method = \"svd\", rank = 16 }`"
                .into())
        }
        (AdapterHandoff::Combine, Some(c)) => match (c.method.as_str(), c.rank) {
            ("cat", None) | ("svd", Some(1..)) => match c.weights.iter().find(|w| !w.is_finite()) {
                Some(w) => Err(format!("combine.weights must be finite numbers, got {w}")),
                None => Ok(()),
            },
            ("cat", Some(_)) => Err("combine.rank goes with method = \"svd\" (cat keeps every rank)".into()),
            ("svd", _) => Err("combine method \"svd\" needs a rank > 0".into()),
            (other, _) => Err(format!("combine.method must be \"cat\" or \"svd\", got \"{other}\"")),
        },
        (_, Some(_)) => Err("`combine` goes with `adapters = \"combine\"`".into()),
        _ => Ok(()),
    }
}

/// The name the rolling resume checkpoint takes in `checkpoints/`.
const RESERVED_STAGE_NAME: &str = "resume";
/// The prefix of `save_every` checkpoints' names (`resume-<stage>-step<N>`).
pub(crate) const STEP_CHECKPOINT_PREFIX: &str = "resume-";

/// A stage's name names its checkpoint directory: one plain, visible path component
/// (no `/`, `\`, control characters, nor a leading `.`), and not `resume`.
fn check_stage_name(file: &str, i: usize, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name == RESERVED_STAGE_NAME {
        Some("is reserved for the rolling resume checkpoint")
    } else if name.starts_with(STEP_CHECKPOINT_PREFIX) {
        Some("starts with `resume-`, which is reserved for `save_every` checkpoints")
    } else if name.starts_with('.') || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        Some("must be one plain path component (no `/`, `\\`, control characters or leading `.`)")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::msg(format!("{file}: stage {}: name `{}` {why}", i + 1, name.escape_debug()))),
        None => Ok(()),
    }
}

impl PipelineConfig {
    /// Checks the rules across fields; errors name the file and the stage.
    pub fn validate(&self, file: &str) -> Result<()> {
        let m = &self.model;
        match (&m.arch, &m.from) {
            (Some(_), Some(_)) => return Err(Error::msg(format!("{file}: model: give `arch` or `from`, not both"))),
            (None, None) => {
                return Err(Error::msg(format!(
                    "{file}: model: give `arch` (a fresh model) or `from` (a Hugging Face directory)"
                )))
            }
            (Some(_), None) => check_fresh_model(&format!("{file}: model"), m)?,
            (None, Some(_)) => {}
        }
        if self.stages.is_empty() {
            bail!("{file}: no [[stages]]");
        }
        self.plugins.validate(file)?;
        if self.run.save_every == Some(0) {
            bail!("{file}: run: `save_every` must be > 0");
        }
        if self.run.keep_last == 0 {
            bail!("{file}: run: `keep_last` must be > 0 (it counts the `save_every` checkpoints kept)");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.stages.iter().enumerate() {
            check_stage_name(file, i, &s.name)?;
            if !seen.insert(s.name.as_str()) {
                bail!("{file}: stage {}: name `{}` is used twice", i + 1, s.name);
            }
            check_stage(file, self, i, s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::PipelineConfig;

    const BASE: &str = r#"
[run]
name = "t"

[model]
arch = "llama"
hidden_size = 32
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=100", eval = "synthetic:arith_text?n=10&seed=1" }
optimizer = { name = "adamw", lr = 1e-3 }
max_steps = 10

[[stages]]
name = "ft"
objective = "completion"
data = { train = "synthetic:add?n=100", eval = "synthetic:add?n=10", replay = { from = "pretrain", ratio = 0.1 } }
optimizer = { lr = 1e-3, weight_decay = 0.0 }
max_steps = 10
exit = { metric = "eval.exact_match", above = 0.9 }
gates = { retention = { stage = "pretrain", max_drop = 0.1 } }
"#;

    fn err(text: &str) -> String {
        PipelineConfig::from_str(text, "p.toml", &[]).expect_err("config should be refused").to_string()
    }

    #[test]
    fn a_valid_config_parses() {
        let c = PipelineConfig::from_str(BASE, "p.toml", &[]).expect("valid");
        assert_eq!(c.stages.len(), 2);
        assert_eq!(c.stages[1].optimizer.name, "adamw");
        assert!(c.stages[1].optimizer.config_json().contains("weight_decay"));
    }

    #[test]
    fn unknown_keys_and_type_errors_have_file_line_column() {
        let e = err(&BASE.replace("max_steps = 10\n\n[[stages]]", "max_step = 10\n\n[[stages]]"));
        assert!(e.starts_with("p.toml:16:1:") && e.contains("unknown field `max_step`"), "{e}");
        let e = err(&BASE.replace("hidden_size = 32", "hidden_size = \"big\""));
        assert!(e.starts_with("p.toml:7:15:") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn rules_across_fields_name_the_stage() {
        let e = err(&BASE.replace("eval.exact_match", "eval.exactness"));
        assert!(e.contains("stage `ft`") && e.contains("unknown metric `eval.exactness`"), "{e}");
        let e = err(&BASE.replace("from = \"pretrain\", ratio", "from = \"later\", ratio"));
        assert!(e.contains("replay.from `later` is not an earlier stage"), "{e}");
        let e = err(&BASE.replace("stage = \"pretrain\", max_drop", "stage = \"ft\", max_drop"));
        assert!(e.contains("gates.retention.stage `ft`"), "{e}");
        let e = err(&BASE.replace("max_steps = 10\nexit", "exit"));
        assert!(e.contains("give `max_steps` or `epochs`"), "{e}");
    }

    #[test]
    fn a_drift_check_compares_with_an_earlier_stage() {
        let with = |d: &str| BASE.replace("max_steps = 10\nexit", &format!("max_steps = 10\ndrift = {d}\nexit"));
        PipelineConfig::from_str(&with("{ against = \"pretrain\", action = \"stop\" }"), "p.toml", &[]).expect("valid");
        let e = err(&with("{ against = \"ft\" }"));
        assert!(e.contains("stage `ft`: drift.against `ft` is not an earlier stage"), "{e}");
        let e = err(&with("{ against = \"pretrain\", max_js = 0 }"));
        assert!(e.contains("drift.max_js must be in (0, 1], got 0"), "{e}");
        let e = err(&with("{ against = \"pretrain\", action = \"halt\" }"));
        assert!(e.contains("unknown variant `halt`") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn stage_names_are_plain_path_components_and_not_resume() {
        for (name, why) in [
            ("resume", "reserved"),
            ("resume-ft-step5", "reserved for `save_every` checkpoints"),
            ("a/b", "one plain path component"),
            ("..", "one plain path component"),
            (".hidden", "one plain path component"),
            ("tab\\there", "one plain path component"),
            ("", "is empty"),
        ] {
            let e = err(&BASE.replace("name = \"ft\"", &format!("name = \"{name}\"")));
            assert!(e.contains("stage 2: name") && e.contains(why), "{name}: {e}");
        }
    }

    #[test]
    fn meaningless_or_crashing_values_are_refused() {
        for (from, to, why) in [
            ("max_steps = 10\nexit", "max_steps = 10\neval_every = 0\nexit", "`eval_every` must be > 0"),
            ("max_steps = 10\nexit", "max_steps = 10\nsave_every = 0\nexit", "stage `ft`: `save_every` must be > 0"),
            ("max_steps = 10\nexit", "max_steps = 10\nsave_every = -5\nexit", "save_every"),
            ("[run]\n", "[run]\nsave_every = 0\n", "run: `save_every` must be > 0"),
            ("[run]\n", "[run]\nkeep_last = 0\n", "run: `keep_last` must be > 0"),
            ("[run]\n", "[run]\nkeep_last = -1\n", "keep_last"),
            (
                "max_steps = 10\nexit",
                "max_steps = 10\nbatch_size = 4294967296\ngrad_accum = 4294967296\nexit",
                "is too many",
            ),
            ("from = \"pretrain\", ratio", "from = [], ratio", "names no stage"),
            ("max_drop = 0.1", "max_drop = 0.1, metric = \"bleu\"", "does not report it"),
            ("above = 0.9", "above = nan", "finite number"),
            ("max_steps = 10\nexit", "max_steps = 10\nanomaly = { spike_factor = nan }\nexit", "anomaly.spike_factor"),
            ("max_steps = 10\nexit", "max_steps = 10\nanomaly = { spike_margin = nan }\nexit", "anomaly.spike_factor"),
        ] {
            assert!(BASE.contains(from), "{from}");
            let e = err(&BASE.replace(from, to));
            assert!(e.contains(why), "{to}: {e}");
        }
    }

    #[test]
    fn overrides_apply_before_validation() {
        let c = PipelineConfig::from_str(BASE, "p.toml", &["stages.ft.max_steps=3".into(), "run.seed=9".into()])
            .expect("valid");
        assert_eq!((c.stages[1].max_steps, c.run.seed), (Some(3), 9));
        let e = PipelineConfig::from_str(BASE, "p.toml", &["stages.0.batch_size=0".into()])
            .expect_err("batch_size = 0 should be refused")
            .to_string();
        assert!(e.contains("`batch_size` must be > 0"), "{e}");
    }
}
