//! `[[stages]]`: one stage of the pipeline — objective, data, optimizer, schedule,
//! training controls, adapters, handoff, exit criteria and gates.

use super::plugin_json::PluginJson;
use super::ModelConfig;
use serde::{Deserialize, Serialize};

fn default_batch_size() -> usize {
    16
}
fn default_seq_len() -> usize {
    128
}
fn one() -> usize {
    1
}
fn default_optimizer() -> String {
    "adamw".into()
}

/// One stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique name; other stages refer to it (replay, gates, `from`).
    pub name: String,
    /// The objective plugin: a name (`"causal_lm"`) or a table with `name` and the
    /// plugin's config (`{ name = "classification", num_classes = 2 }`).
    pub objective: Objective,
    /// Training and evaluation data.
    pub data: DataConfig,
    /// Token-level transforms applied to the stage's own training rows as batches are
    /// drawn, seeded ([`crate::data::augment`]): `[{ kind = "token_dropout", p = 0.1 }, ...]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub augment: Vec<crate::data::Augment>,
    /// The optimizer plugin and its config. Default: AdamW with its defaults (needs `lr`).
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule. Default: constant, no warm-up.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Stop after this many optimizer steps (at least one of `max_steps`, `epochs`).
    /// `0`: the stage does not train; it only evaluates (its model is its start model).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Stop after this many passes over the training data.
    #[serde(default)]
    pub epochs: Option<u32>,
    /// Examples per optimizer step (before accumulation). Default 16.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest example in tokens; longer ones are cut. Default 128.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Evaluate every this many steps (and always at the end). Default: only at the end.
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Write a resume checkpoint every this many optimizer steps, independently of
    /// evaluations (`checkpoints/resume-<stage>-step<N>/`; `[run] keep_last` of them
    /// are kept). Default: `[run] save_every`.
    #[serde(default)]
    pub save_every: Option<u64>,
    /// Clip the global gradient norm to this. Default: no clipping.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Micro-batches accumulated per optimizer step, each of `batch_size` examples.
    /// Each micro-batch weighs the same (the step's gradient is the mean of theirs, as
    /// dividing each micro-batch loss by `grad_accum` in PyTorch): exactly one batch of
    /// all their rows when rows are of equal length. Default 1.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Which base weights train.
    #[serde(default)]
    pub train: TrainConfig,
    /// Adaptation-method plugins trained in this stage.
    #[serde(default)]
    pub adapters: Vec<AdapterConfig>,
    /// What happens to adapters and optimizer state when this stage starts.
    #[serde(default)]
    pub handoff: HandoffConfig,
    /// Start from a named earlier stage's result, or a Hugging Face directory, instead of
    /// the previous stage.
    #[serde(default)]
    pub from: Option<String>,
    /// Start from a fresh model of these sizes instead of the previous stage's (a
    /// smaller student to distil into): `{ arch = "llama", hidden_size = 64, ... }`, as
    /// `[model]` without `from` and `tokenizer` (the pipeline's tokenizer is used).
    /// Exclusive with `from`.
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// The frozen model an objective that reads `teacher_logits` learns from: an earlier
    /// stage (its model and adapters as that stage ended) or a Hugging Face directory.
    #[serde(default)]
    pub teacher: Option<String>,
    /// Early exit on a metric.
    #[serde(default)]
    pub exit: Option<ExitConfig>,
    /// Forgetting gates on earlier stages' eval sets.
    #[serde(default)]
    pub gates: GatesConfig,
    /// NaN / loss-spike recovery.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// Compare this stage's training data with an earlier stage's before training.
    #[serde(default)]
    pub drift: Option<super::DriftCheck>,
    /// Hold the trainable values toward the stage's start (EWC or L2-SP), against
    /// forgetting what earlier stages learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regularize: Option<super::Regularize>,
    /// Hyperparameters that change during the stage, in step order (see
    /// [`super::Adjustment`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjust: Vec<super::Adjustment>,
}

impl StageConfig {
    /// The stage as it trains after `steps` steps: every adjustment with `after_step`
    /// at most `steps` applied, in order (itself when there is none).
    pub fn adjusted(&self, steps: u64) -> crate::error::Result<StageConfig> {
        let due: Vec<&super::Adjustment> = self.adjust.iter().filter(|a| a.after_step <= steps).collect();
        if due.is_empty() {
            return Ok(self.clone());
        }
        let failed = |e: String| crate::error::Error::msg(format!("stage `{}`: adjust: {e}", self.name));
        let mut table = toml::Table::try_from(self).map_err(|e| failed(e.to_string()))?;
        for (key, value) in due.iter().flat_map(|a| a.changes()) {
            super::set_key(&mut table, &key, value)?;
        }
        table.try_into().map_err(|e: toml::de::Error| failed(e.message().to_string()))
    }

    /// Optimizer steps the stage runs with `train_len` training examples: `max_steps`,
    /// `epochs` worth of batches, or the smaller of the two; `None` without either.
    pub fn total_steps(&self, train_len: usize) -> Option<u64> {
        let per_epoch = train_len.div_ceil(self.batch_size * self.grad_accum) as u64;
        match (self.max_steps, self.epochs) {
            (Some(m), Some(e)) => Some(m.min(per_epoch * e as u64)),
            (Some(m), None) => Some(m),
            (None, Some(e)) => Some(per_epoch * e as u64),
            (None, None) => None,
        }
    }
}

/// An objective plugin reference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Objective {
    /// Just the plugin name.
    Name(String),
    /// The plugin name and its config.
    Table {
        /// Plugin name.
        name: String,
        /// The plugin's config (checked by the plugin).
        #[serde(flatten)]
        config: toml::Table,
    },
}

impl Objective {
    /// The plugin name.
    pub fn name(&self) -> &str {
        match self {
            Objective::Name(n) | Objective::Table { name: n, .. } => n,
        }
    }
    /// The plugin's config as JSON.
    pub fn config_json(&self) -> String {
        self.plugin_json().text
    }
    /// The plugin's config as JSON, with where each key lies in it.
    pub fn plugin_json(&self) -> PluginJson {
        match self {
            Objective::Name(_) => PluginJson::of(&toml::Table::new()),
            Objective::Table { config, .. } => PluginJson::of(config),
        }
    }
}

pub use crate::data::Order;

/// `data = { train = ..., eval = ..., replay = ..., order = ... }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training source: `synthetic:<task>?n=..&seed=..`, a `.txt` or a `.jsonl` path.
    pub train: String,
    /// Evaluation source (same forms). Default: none (no eval metrics for this stage).
    #[serde(default)]
    pub eval: Option<String>,
    /// Mix in earlier stages' training data.
    #[serde(default)]
    pub replay: Option<ReplayConfig>,
    /// Data order. Default shuffled.
    #[serde(default)]
    pub order: Order,
    /// Pack the training examples into rows of up to `seq_len` tokens, attention kept
    /// inside each example (language-model data on a decoder; see
    /// [`crate::data::pack`]). Eval sets are never packed. Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
}

/// `replay = { from = "stage" | ["a", "b"], ratio = 0.1 }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Earlier stages whose training data is replayed.
    #[serde(with = "one_or_many")]
    pub from: Vec<String>,
    /// Fraction of each batch drawn from them, in (0, 1).
    pub ratio: f64,
}

mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        })
    }

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
}

/// `optimizer = { name = "adamw", lr = 3e-3, ... }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptimizerConfig {
    /// Plugin name. Default `adamw`.
    #[serde(default = "default_optimizer")]
    pub name: String,
    /// Base learning rate (the schedule scales it).
    pub lr: f64,
    /// The rest of the plugin's config (checked by the plugin).
    #[serde(flatten)]
    pub config: toml::Table,
}

impl OptimizerConfig {
    /// The plugin's config as JSON (with `lr`).
    pub fn config_json(&self) -> String {
        self.plugin_json().text
    }
    /// The plugin's config as JSON (with `lr`), with where each key lies in it.
    pub fn plugin_json(&self) -> PluginJson {
        let mut t = self.config.clone();
        t.insert("lr".into(), toml::Value::Float(self.lr));
        PluginJson::of(&t)
    }
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Flat.
    #[default]
    Constant,
    /// Linearly to `min_lr_ratio · lr` at the last step.
    Linear,
    /// Half a cosine to `min_lr_ratio · lr` at the last step.
    Cosine,
}

/// `schedule = { warmup_steps = 50, decay = "cosine", min_lr_ratio = 0.1 }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Linear warm-up from 0 over this many steps. Default 0.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Decay after warm-up. Default constant.
    #[serde(default)]
    pub decay: Decay,
    /// Final LR as a fraction of `lr`. Default 0.
    #[serde(default)]
    pub min_lr_ratio: f64,
}

/// `unfreeze = [{ at_step = 200, modules = ["model.layers.0"] }]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unfreeze {
    /// The step after which the modules train.
    pub at_step: u64,
    /// Weight-name prefixes or patterns.
    pub modules: Vec<String>,
}

/// `train = { freeze = [...], unfreeze = [...], layer_lr_decay = 0.8 }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Base weights that do not train (name prefixes or patterns, `"*"` for all).
    /// Default: none, unless the stage has adapters, whose base is frozen.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Weights that start training at a step.
    #[serde(default)]
    pub unfreeze: Vec<Unfreeze>,
    /// Model dropout probability while training: embeddings and each block's attention
    /// and MLP outputs. Default 0.
    #[serde(default)]
    pub dropout: f64,
    /// Layer-wise LR decay: block `l` of `L` trains at `lr · factor^(L-1-l)` (the top
    /// block and the head at `lr`, embeddings at `lr · factor^L`). Default: none.
    #[serde(default)]
    pub layer_lr_decay: Option<f64>,
}

/// `adapters = [{ plugin = "lora", targets = [...], r = 8 }]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    /// Adaptation-method plugin name.
    pub plugin: String,
    /// The plugin's config (checked by the plugin).
    #[serde(flatten)]
    pub config: toml::Table,
}

impl AdapterConfig {
    /// The plugin's config as JSON.
    pub fn config_json(&self) -> String {
        self.plugin_json().text
    }
    /// The plugin's config as JSON, with where each key lies in it.
    pub fn plugin_json(&self) -> PluginJson {
        PluginJson::of(&self.config)
    }
}

/// What happens to the previous stage's adapters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdapterHandoff {
    /// Fold them into the base weights (default).
    #[default]
    Merge,
    /// Freeze them and keep applying them under the new ones.
    Stack,
    /// Keep training them.
    Continue,
    /// Discard them.
    Drop,
    /// Combine them (LoRA adapters only) into one LoRA adapter, as `handoff.combine`
    /// says, which keeps training.
    Combine,
}

/// How `handoff.adapters = "combine"` combines the previous LoRA adapters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CombineConfig {
    /// `"cat"`: the exact weighted sum (rank: the sum of the ranks); `"svd"`: the
    /// weighted sum truncated to `rank` by SVD.
    pub method: String,
    /// The combined rank, for `svd`.
    #[serde(default)]
    pub rank: Option<usize>,
    /// One weight per adapter, in the order they were attached. Default: all 1.
    #[serde(default)]
    pub weights: Vec<f64>,
}

/// What happens to the previous stage's optimizer state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerHandoff {
    /// Fresh state (default).
    #[default]
    Reset,
    /// Keep the state of parameters that still train.
    Carry,
}

/// `handoff = { adapters = "merge", optimizer = "reset" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HandoffConfig {
    /// Default merge.
    #[serde(default)]
    pub adapters: AdapterHandoff,
    /// Default reset.
    #[serde(default)]
    pub optimizer: OptimizerHandoff,
    /// For `adapters = "combine"`: how (`{ method = "svd", rank = 16 }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine: Option<CombineConfig>,
}

/// `exit = { metric = "eval.loss", below = 1.2, patience = 3 }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExitConfig {
    /// `eval.<metric>` of this stage's eval set (or `train.loss`).
    pub metric: String,
    /// Stop when the metric is below this.
    #[serde(default)]
    pub below: Option<f64>,
    /// Stop when the metric is above this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Early stopping: stop after this many evaluations without improvement, and restore
    /// the best checkpoint.
    #[serde(default)]
    pub patience: Option<u32>,
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum GateAction {
    /// Restore this stage's best checkpoint that passed the gate (default).
    #[default]
    Rollback,
    /// End the pipeline.
    Stop,
}

/// `retention = { stage = "finetune_add", max_drop = 0.02, on_fail = "rollback" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionGate {
    /// The earlier stage whose eval set is watched.
    pub stage: String,
    /// Largest allowed drop of its score from the end of its own stage.
    pub max_drop: f64,
    /// The score (default: exact_match, accuracy or token_accuracy, whichever the
    /// watched stage's objective reports, else -loss).
    #[serde(default)]
    pub metric: Option<String>,
    /// Default rollback.
    #[serde(default)]
    pub on_fail: GateAction,
    /// Failing evaluations tolerated in a row before `on_fail` acts (a transient dip
    /// while the new task is being learned); the stage's last evaluation always acts.
    /// A failing checkpoint is never the one a rollback restores. Default 0.
    #[serde(default)]
    pub patience: u32,
}

/// `gates = { retention = {...} }`, or `retention = [{...}, {...}]` for several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct GatesConfig {
    /// Forgetting gates, one per watched stage.
    #[serde(default, deserialize_with = "table_or_tables", skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<RetentionGate>,
}

/// One table or a list of them, with the inner errors (unknown field, wrong type)
/// kept as they are.
fn table_or_tables<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table or a list of tables")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            Ok(vec![T::deserialize(serde::de::value::MapAccessDeserializer::new(map))?])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

fn default_spike() -> f64 {
    4.0
}
fn default_recoveries() -> u32 {
    3
}
fn default_lr_scale() -> f64 {
    0.5
}
fn default_spike_margin() -> f64 {
    0.5
}

/// `anomaly = { spike_factor = 4.0, spike_margin = 0.5, max_recoveries = 3, lr_scale = 0.5 }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// A loss above this factor × the running mean is a spike. Default 4.
    #[serde(default = "default_spike")]
    pub spike_factor: f64,
    /// ...and only if it is also this much above the running mean, so that noise on a
    /// loss near zero (0.005 → 0.05) is not taken for a blow-up. Default 0.5.
    #[serde(default = "default_spike_margin")]
    pub spike_margin: f64,
    /// Recoveries (restore last good checkpoint, scale LR) before the stage fails. Default 3.
    #[serde(default = "default_recoveries")]
    pub max_recoveries: u32,
    /// LR multiplier after each recovery. Default 0.5.
    #[serde(default = "default_lr_scale")]
    pub lr_scale: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            spike_factor: default_spike(),
            spike_margin: default_spike_margin(),
            max_recoveries: default_recoveries(),
            lr_scale: default_lr_scale(),
        }
    }
}
