//! `stagecraft eval`: scores a model (with adapters) on a data set, without training,
//! with the same evaluation a pipeline stage runs on its eval set (loss, perplexity,
//! the objective's metrics, per-example loss quantiles).

use super::model::{open, ModelArgs, Opened};
use anyhow::Context;
use clap::Args;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::data::{load_source, DataKind, Dataset, Tokenizer};
use stagecraft_core::model::hub_cache::resolve_model_path;
use stagecraft_core::pipeline::{evaluate, stage_objective, Metrics};
use stagecraft_core::plugin::ObjectiveInstance;
use std::path::{Path, PathBuf};

/// Examples per batch when the model is not a run's stage.
const DEFAULT_BATCH_SIZE: usize = 8;
/// Tokens per example when the model is not a run's stage (a stage's default too).
pub(super) const DEFAULT_SEQ_LEN: usize = 128;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model: a Hugging Face model directory, `org/name[@revision]` in the local
    /// Hugging Face cache, or a run directory as `RUN_DIR[:STAGE]` (the model and
    /// adapters that stage ended with; without `:STAGE`, the last finished stage).
    #[arg(long)]
    model: String,
    /// PEFT adapter directories (or run stages `RUN_DIR:STAGE`), attached in order.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// The data spec, as in a pipeline: `synthetic:add?n=64&seed=1`, a `.txt` or a
    /// `.jsonl` file. Default for a run's stage: that stage's `data.eval`.
    #[arg(long)]
    data: Option<String>,
    /// The objective that scores it (a plugin name). Default: a run stage's own
    /// objective when it fits the data, else `classification` for labelled data and
    /// `causal_lm` for text and prompt/completion data.
    #[arg(long)]
    objective: Option<String>,
    /// The objective's config as JSON (`'{"num_classes": 3}'`). Default: `{}`, or for
    /// `classification` the number of classes the data has.
    #[arg(long)]
    objective_config: Option<String>,
    /// Examples per batch. Default: the stage's `batch_size`, else 8.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per example (longer ones are cut). Default: the stage's `seq_len`, else 128.
    #[arg(long)]
    seq_len: Option<usize>,
    /// `bytes` or a tokenizer.json. Default: the run's tokenizer, the model directory's
    /// tokenizer.json, else bytes.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Run on this device: `cpu`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write the metrics as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Whether `spec` names a run directory (`RUN_DIR` or `RUN_DIR:STAGE`).
fn is_run_spec(spec: &str) -> bool {
    split_run_spec(spec).is_some()
}

/// A run spec's directory and stage (`None`: none named); `None` when `spec` names
/// no run directory.
pub(super) fn split_run_spec(spec: &str) -> Option<(PathBuf, Option<String>)> {
    let is_run = |p: &Path| p.join("config.toml").is_file() && p.join("checkpoints").is_dir();
    if is_run(Path::new(spec)) {
        return Some((PathBuf::from(spec), None));
    }
    let (dir, stage) = spec.rsplit_once(':')?;
    is_run(Path::new(dir)).then(|| (PathBuf::from(dir), Some(stage.to_string())))
}

/// The model `model` (a model directory, `org/name` or `RUN_DIR[:STAGE]`) with
/// `adapters`, through the same path `forward` and `generate` take.
pub(super) fn open_model(model: &str, adapters: &[String], device: &str) -> anyhow::Result<Opened> {
    let run = is_run_spec(model);
    let mut adapters = adapters.to_vec();
    if run {
        adapters.insert(0, model.to_string());
    }
    let model_args =
        ModelArgs { model: (!run).then(|| PathBuf::from(model)), adapters, merge: false, device: device.to_string() };
    open(&model_args)
}

/// The tokenizer: `flag` (`--tokenizer`), the run's, the model directory's (`model`
/// as given), else bytes.
pub(super) fn tokenizer(flag: Option<&str>, model: &str, opened: &Opened) -> anyhow::Result<Tokenizer> {
    if let Some(spec) = flag {
        return Ok(Tokenizer::from_spec(spec)?);
    }
    if let Some(t) = &opened.run_tokenizer {
        return Ok(t.clone());
    }
    if opened.origin.is_none() {
        if let Some(t) = Tokenizer::for_model_dir(&resolve_model_path(Path::new(model))?)? {
            return Ok(t);
        }
    }
    Ok(Tokenizer::bytes())
}

/// The data set: `--data` (relative to the current directory) or the stage's eval set.
fn data(args: &EvalArgs, opened: &Opened, tokenizer: &Tokenizer, seq_len: usize) -> anyhow::Result<Dataset> {
    let (spec, base) = match (&args.data, &opened.origin) {
        (Some(spec), _) => (spec.clone(), PathBuf::from(".")),
        (None, Some(o)) => {
            let s = stage_config(&o.config, &o.stage)?;
            let spec =
                s.data.eval.clone().with_context(|| format!("stage `{}` has no `data.eval`: give --data", o.stage))?;
            (spec, o.config.base_dir())
        }
        (None, None) => anyhow::bail!("give --data (a data spec: synthetic:..., a .txt or .jsonl file)"),
    };
    let data = load_source(&spec, tokenizer, &base, seq_len)?;
    anyhow::ensure!(!data.is_empty(), "--data `{spec}`: no examples");
    Ok(data)
}

pub(super) fn stage_config<'a>(
    cfg: &'a PipelineConfig,
    stage: &str,
) -> anyhow::Result<&'a stagecraft_core::config::StageConfig> {
    cfg.stage(stage).map(|(_, s)| s).with_context(|| format!("the run has no stage `{stage}`"))
}

/// Whether objective `name` can score data of `kind` (plugin objectives: assumed so).
fn fits(name: &str, kind: DataKind) -> bool {
    match name {
        "classification" => kind == DataKind::Classification,
        "completion" => kind == DataKind::Completion,
        "causal_lm" | "distill" => kind != DataKind::Classification,
        _ => true,
    }
}

/// The objective for a data kind when none is named.
fn default_objective(kind: DataKind) -> &'static str {
    match kind {
        DataKind::Classification => "classification",
        DataKind::Text | DataKind::Completion => "causal_lm",
    }
}

/// The objective: the stage's own (with its trained head) when it is the one named or
/// none is named and it fits, else a new instance of the named or default one.
fn objective(args: &EvalArgs, opened: &Opened, data: &Dataset) -> anyhow::Result<ObjectiveInstance> {
    let info = opened.model.info();
    if let Some(o) = &opened.origin {
        let own = stage_config(&o.config, &o.stage)?.objective.name().to_string();
        let wanted = args.objective.as_deref().map_or(fits(&own, data.kind), |n| n == own);
        if wanted && args.objective_config.is_none() {
            return Ok(stage_objective(&o.run_dir, &o.config, &o.stage, &opened.registry, &opened.state, &info)?);
        }
    }
    let name = args.objective.clone().unwrap_or_else(|| default_objective(data.kind).to_string());
    anyhow::ensure!(
        fits(&name, data.kind),
        "objective `{name}` cannot score `{}`: it is {} data (use --objective {})",
        data.name,
        data.kind,
        default_objective(data.kind)
    );
    let config = match (&args.objective_config, name.as_str()) {
        (Some(c), _) => c.clone(),
        (None, "classification") => {
            let classes = data.examples.iter().filter_map(|e| e.class_label).max().map_or(0, |m| m as usize + 1);
            serde_json::json!({ "num_classes": classes.max(data.label_names.len()).max(2) }).to_string()
        }
        _ => "{}".to_string(),
    };
    let mut objective = opened.registry.new_objective(&name, &config, &opened.state)?;
    anyhow::ensure!(
        !objective.required_outputs().iter().any(|o| o == "teacher_logits"),
        "objective `{name}` reads a teacher's logits: eval has no teacher (use causal_lm or completion)"
    );
    objective.init(&info).with_context(|| format!("objective `{name}`"))?;
    if !objective.params().is_empty() {
        tracing::warn!("objective `{name}`: its head is freshly initialized, not trained (evaluate a run's stage to use a trained one)");
    }
    Ok(objective)
}

/// What `eval` reports: where the numbers come from, and the numbers.
#[derive(serde::Serialize)]
struct Report {
    model: String,
    adapters: Vec<String>,
    data: String,
    examples: usize,
    objective: String,
    batch_size: usize,
    seq_len: usize,
    metrics: Metrics,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut opened = open_model(&args.model, &args.adapters, &args.device)?;
    if let Some(precision) = opened.origin.as_ref().map(|o| o.config.run.precision) {
        // As the pipeline evaluates: the adapters compute in the run's precision.
        opened.adapters.set_precision(precision);
    }
    let stage = opened.origin.as_ref().map(|o| stage_config(&o.config, &o.stage)).transpose()?;
    let seq_len = args.seq_len.or(stage.map(|s| s.seq_len)).unwrap_or(DEFAULT_SEQ_LEN);
    let batch_size = args.batch_size.or(stage.map(|s| s.batch_size)).unwrap_or(DEFAULT_BATCH_SIZE);
    anyhow::ensure!(seq_len >= 2 && batch_size >= 1, "--seq-len must be at least 2 and --batch-size at least 1");
    let tokenizer = tokenizer(args.tokenizer.as_deref(), &args.model, &opened)?;
    let data = data(&args, &opened, &tokenizer, seq_len)?;
    let mut objective = objective(&args, &opened, &data)?;
    let metrics = evaluate(
        opened.model.as_ref(),
        &opened.adapters,
        &mut objective,
        &opened.state,
        &data,
        batch_size,
        &opened.state.device,
    )?;
    let report = Report {
        model: args.model.clone(),
        adapters: args.adapters.clone(),
        data: data.name.clone(),
        examples: data.len(),
        objective: objective.core.plugin.clone(),
        batch_size,
        seq_len,
        metrics,
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n")).with_context(|| format!("{}: cannot write --out", out.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    let adapters = match r.adapters.len() {
        0 => String::new(),
        _ => format!(" + {}", r.adapters.join(" + ")),
    };
    println!("model      {}{adapters}", r.model);
    println!("data       {} ({} examples, seq_len {}, batch {})", r.data, r.examples, r.seq_len, r.batch_size);
    println!("objective  {}", r.objective);
    println!();
    println!("{:<16} {:>14}", "METRIC", "VALUE");
    for (name, value) in &r.metrics {
        println!("{name:<16} {value:>14.6}");
    }
}
