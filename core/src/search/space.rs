//! The search space (`stagecraft search --space SPACE.toml`): the search's settings, and
//! per stage the keys to tune with their distributions. Keys are `--set` paths inside
//! the stage (`optimizer.lr` is `stages.<stage>.optimizer.lr`).
//!
//! ```toml
//! [search]                                   # every setting is optional
//! sampler = "tpe"                            # or "random"
//! trials = 8                                 # per stage, the pipeline's own values first
//! seed = 0
//! startup_trials = 4                         # TPE: random trials before it models results
//! prune = { eta = 3, min_steps = 0 }         # ASHA; `prune = false` turns it off
//! mode = "sample"                            # or "pbt": population-based training
//! pbt = { interval = 50, quantile = 0.25, perturb = [0.8, 1.2], resample = 0.25 }
//!
//! [stages.pretrain]                          # stages are tuned in pipeline order
//! "optimizer.lr" = { log_uniform = [1e-4, 1e-2] }
//! "schedule.warmup_steps" = { int = [0, 100] }
//!
//! [stages.adapt]
//! "optimizer.weight_decay" = { uniform = [0.0, 0.1] }
//! "adapters.0.r" = { choice = [4, 8, 16] }
//! max_steps = { int = [50, 400], log = true }
//! ```

use super::tpe::{Dim, SamplerKind};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use toml::Value;

/// The search's settings (`[search]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `tpe` or `random`.
    #[serde(default = "default_sampler")]
    pub sampler: String,
    /// Trials per tuned stage, the first with the pipeline's own values.
    #[serde(default = "default_trials")]
    pub trials: usize,
    /// The sampler's seed.
    #[serde(default)]
    pub seed: u64,
    /// TPE: trials before it models the results (random until then).
    #[serde(default = "default_startup")]
    pub startup_trials: usize,
    /// Pruning (`false`: none).
    #[serde(default)]
    pub prune: PruneSetting,
    /// How a stage is tuned: trials sampled one after the other, or a population
    /// trained together.
    #[serde(default)]
    pub mode: Mode,
    /// With `mode = "pbt"`.
    #[serde(default)]
    pub pbt: super::pbt::PbtSettings,
}

/// How a stage's trials are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each trial trains the stage with values the sampler draws (TPE or random),
    /// pruned by ASHA.
    #[default]
    Sample,
    /// Population-based training ([`super::pbt`]): `trials` members train the stage
    /// together; at every interval the worst copy the state of the best and perturb
    /// its values.
    Pbt,
}

/// `prune = false`, or `prune = { eta, min_steps }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PruneSetting {
    /// `true` (the defaults) or `false` (off).
    Switch(bool),
    /// Asynchronous successive halving with these settings.
    Asha(Prune),
}

impl Default for PruneSetting {
    fn default() -> Self {
        PruneSetting::Switch(true)
    }
}

impl PruneSetting {
    /// The pruning in effect, if any.
    pub fn asha(&self) -> Option<Prune> {
        match self {
            PruneSetting::Switch(true) => Some(Prune::default()),
            PruneSetting::Switch(false) => None,
            PruneSetting::Asha(p) => Some(*p),
        }
    }
}

/// Asynchronous successive halving (ASHA): rungs at `r₀·ηᵏ` steps, `r₀` the first
/// evaluation at or after `min_steps`; at each rung a trial goes on only while its
/// score is among the best `1/η` of the trials that reached the rung.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// The reduction factor (> 1).
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// Steps before the first rung.
    #[serde(default)]
    pub min_steps: u64,
}

impl Default for Prune {
    fn default() -> Self {
        Prune { eta: default_eta(), min_steps: 0 }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sampler: default_sampler(),
            trials: default_trials(),
            seed: 0,
            startup_trials: default_startup(),
            prune: PruneSetting::default(),
            mode: Mode::default(),
            pbt: super::pbt::PbtSettings::default(),
        }
    }
}

fn default_sampler() -> String {
    "tpe".into()
}
fn default_trials() -> usize {
    8
}
fn default_startup() -> usize {
    4
}
fn default_eta() -> f64 {
    3.0
}

/// How one key is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    /// `[lo, hi]`, uniform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniform: Option<[f64; 2]>,
    /// `[lo, hi]`, uniform in log space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uniform: Option<[f64; 2]>,
    /// `[lo, hi]`, integers (log-scaled with `log = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int: Option<[i64; 2]>,
    /// With `int`: log-scaled.
    #[serde(default)]
    pub log: bool,
    /// Any TOML values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<Vec<Value>>,
}

/// A tuned key's value in a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key inside the stage.
    pub key: String,
    /// Its value (`None`: not set, the pipeline's default applies).
    pub value: Option<Value>,
}

/// One tuned key of a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The `--set` path inside the stage.
    pub key: String,
    /// Its dimension.
    pub dim: Dim,
    /// For a choice: the values, by index.
    pub choices: Vec<Value>,
}

impl Param {
    /// The TOML value of a sampler coordinate.
    pub fn value(&self, x: f64) -> Value {
        match self.dim {
            Dim::Real { .. } => Value::Float(x),
            Dim::Int { .. } => Value::Integer(x.round() as i64),
            Dim::Choice { .. } => self.choices[(x as usize).min(self.choices.len() - 1)].clone(),
        }
    }

    /// The sampler coordinate of a TOML value, when the value lies in the dimension.
    pub fn coordinate(&self, v: &Value) -> Option<f64> {
        let number = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        match self.dim {
            Dim::Real { lo, hi, .. } => number.filter(|x| (lo..=hi).contains(x)),
            Dim::Int { lo, hi, .. } => v.as_integer().filter(|i| (lo..=hi).contains(i)).map(|i| i as f64),
            Dim::Choice { .. } => self.choices.iter().position(|c| c == v).map(|i| i as f64),
        }
    }

    /// The value as the report and the console show it.
    pub fn show(v: &Value) -> String {
        match v {
            Value::Float(f) if f.abs() < 1e-3 || f.abs() >= 1e4 => format!("{f:.3e}"),
            Value::Float(f) => format!("{}", (f * 1e4).round() / 1e4),
            other => other.to_string(),
        }
    }
}

/// The keys tuned in one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpace {
    /// The stage.
    pub stage: String,
    /// Its index in the pipeline.
    pub index: usize,
    /// Its keys, in key order.
    pub params: Vec<Param>,
}

impl StageSpace {
    /// The sampler's dimensions.
    pub fn dims(&self) -> Vec<Dim> {
        self.params.iter().map(|p| p.dim).collect()
    }

    /// `--set` overrides for `values` (keys without a value stay as the pipeline has
    /// them).
    pub fn overrides(&self, values: &[KeyValue]) -> Vec<String> {
        values
            .iter()
            .filter_map(|kv| Some(format!("stages.{}.{}={}", self.stage, kv.key, kv.value.as_ref()?)))
            .collect()
    }
}

/// A parsed space file.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    /// `[search]`.
    pub settings: Settings,
    /// The tuned stages, in pipeline order.
    pub stages: Vec<StageSpace>,
}

/// The file as written, before it is checked against the pipeline.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceFile {
    #[serde(default)]
    search: Option<Settings>,
    #[serde(default)]
    stages: toml::Table,
}

impl Space {
    /// Reads `path` and checks it against `pipeline` (every stage exists, every key is
    /// a config key the value types fit: the pipeline is resolved with each key set).
    pub fn load(path: &Path, pipeline: &Path) -> Result<Space> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::msg(format!("{}: cannot read: {e}", path.display())))?;
        let at = |e: &dyn std::fmt::Display| Error::msg(format!("{}: {e}", path.display()));
        let file: SpaceFile = toml::from_str(&text).map_err(|e| at(&e.message().to_string()))?;
        let settings = file.search.unwrap_or_default();
        check_settings(&settings).map_err(|e| at(&e))?;
        let cfg = PipelineConfig::from_file(pipeline, &[])?;
        let mut stages = Vec::new();
        for (name, keys) in &file.stages {
            let Some((index, _)) = cfg.stage(name) else {
                return Err(at(&format!("[stages.{name}]: the pipeline has no such stage ({})", cfg.stage_names())));
            };
            let Some(keys) = keys.as_table().filter(|t| !t.is_empty()) else {
                return Err(at(&format!("[stages.{name}]: expected a table of keys to tune")));
            };
            let mut params = Vec::new();
            for (key, d) in keys {
                let d: Distribution = d
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| at(&format!("stages.{name}.\"{key}\": {}", e.message())))?;
                params.push(param(key, &d).map_err(|e| at(&format!("stages.{name}.\"{key}\": {e}")))?);
            }
            stages.push(StageSpace { stage: name.clone(), index, params });
        }
        if stages.is_empty() {
            return Err(at(&"no [stages.<name>] table: nothing to tune"));
        }
        stages.sort_by_key(|s| s.index);
        if settings.mode == Mode::Pbt {
            for s in &stages {
                super::pbt::check_stage(&settings, &cfg, s).map_err(|e| at(&format!("[stages.{}]: {e}", s.stage)))?;
            }
        }
        for s in &stages {
            let probe: Vec<KeyValue> =
                s.params.iter().map(|p| KeyValue { key: p.key.clone(), value: Some(p.value(middle(p.dim))) }).collect();
            PipelineConfig::from_file(pipeline, &s.overrides(&probe))
                .map_err(|e| at(&format!("[stages.{}] does not fit the pipeline: {e}", s.stage)))?;
        }
        Ok(Space { settings, stages })
    }

    /// The sampler the settings name.
    pub fn sampler(&self) -> SamplerKind {
        match self.settings.sampler.as_str() {
            "random" => SamplerKind::Random,
            _ => SamplerKind::Tpe { startup: self.settings.startup_trials },
        }
    }
}

fn check_settings(s: &Settings) -> std::result::Result<(), String> {
    if !matches!(s.sampler.as_str(), "tpe" | "random") {
        return Err(format!("search.sampler = \"{}\": expected \"tpe\" or \"random\"", s.sampler));
    }
    if s.trials == 0 {
        return Err("search.trials = 0: at least one trial per stage".into());
    }
    if s.mode == Mode::Pbt {
        s.pbt.check(s.trials)?;
    }
    if let Some(p) = s.prune.asha() {
        if !(p.eta > 1.0 && p.eta.is_finite()) {
            return Err(format!("search.prune.eta = {}: must be above 1", p.eta));
        }
    }
    Ok(())
}

/// A key's dimension from its distribution (exactly one kind given, bounds ordered).
fn param(key: &str, d: &Distribution) -> std::result::Result<Param, String> {
    let kinds = [d.uniform.is_some(), d.log_uniform.is_some(), d.int.is_some(), d.choice.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("give exactly one of uniform, log_uniform, int, choice".into());
    }
    if d.log && d.int.is_none() {
        return Err("`log = true` goes with `int` (use log_uniform for reals)".into());
    }
    let ordered = |lo: f64, hi: f64| lo.is_finite() && hi.is_finite() && lo <= hi;
    let (dim, choices) = match (d.uniform, d.log_uniform, d.int, &d.choice) {
        (Some([lo, hi]), ..) if ordered(lo, hi) => (Dim::Real { lo, hi, log: false }, Vec::new()),
        (_, Some([lo, hi]), ..) if ordered(lo, hi) && lo > 0.0 => (Dim::Real { lo, hi, log: true }, Vec::new()),
        (_, _, Some([lo, hi]), _) if lo <= hi && (!d.log || lo >= 1) => (Dim::Int { lo, hi, log: d.log }, Vec::new()),
        (_, _, _, Some(c)) if !c.is_empty() => (Dim::Choice { n: c.len() }, c.clone()),
        (_, Some(_), ..) => return Err("log_uniform needs 0 < lo <= hi".into()),
        (_, _, Some(_), _) if d.log => return Err("a log-scaled int needs 1 <= lo <= hi".into()),
        (_, _, _, Some(_)) => return Err("choice needs at least one value".into()),
        _ => return Err("needs lo <= hi, both finite".into()),
    };
    Ok(Param { key: key.to_string(), dim, choices })
}

/// A point inside a dimension (to check that the key fits the pipeline).
fn middle(dim: Dim) -> f64 {
    match dim {
        Dim::Real { lo, hi, log: false } => (lo + hi) / 2.0,
        Dim::Real { lo, hi, log: true } => ((lo.ln() + hi.ln()) / 2.0).exp(),
        Dim::Int { lo, hi, .. } => ((lo + hi) / 2) as f64,
        Dim::Choice { .. } => 0.0,
    }
}

/// The value at a `--set` path inside stage `stage` of a resolved config, if set.
pub fn current_value(cfg: &PipelineConfig, stage: usize, key: &str) -> Option<Value> {
    let mut node = Value::try_from(&cfg.stages[stage]).ok()?;
    for part in key.split('.') {
        node = match node {
            Value::Table(mut t) => t.remove(part)?,
            Value::Array(a) => {
                let i = part
                    .parse::<usize>()
                    .ok()
                    .or_else(|| a.iter().position(|e| e.get("name").and_then(Value::as_str) == Some(part)))?;
                a.into_iter().nth(i)?
            }
            _ => return None,
        };
    }
    Some(node)
}
