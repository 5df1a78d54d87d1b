//! Subcommands.

mod bench;
mod compare;
mod drift;
mod eval;
mod export;
mod help;
mod latest_run;
mod model;
mod plugin;
mod run;
mod scaffold;
mod search;

pub use drift::DriftFound;
pub use run::Interrupted;

use clap::{Parser, Subcommand};
pub use run::GateStopped;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::plugin::{search_path_with, Registry, SearchDir, TrustPolicy};

/// stagecraft: multi-stage training of transformer models with plugin adaptation
/// methods, optimizers and objectives.
#[derive(Debug, Parser)]
#[command(name = "stagecraft", version, after_help = help::TOP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a multi-stage pipeline from its TOML file.
    #[command(after_help = help::RUN)]
    Run(run::RunArgs),
    /// List plugins, inspect a library file, write a new plugin crate.
    #[command(subcommand, after_help = help::PLUGIN)]
    Plugin(plugin::PluginCmd),
    /// Inspect models.
    #[command(subcommand, after_help = help::MODEL)]
    Model(model::ModelCmd),
    /// Run a model (with adapters) on token ids from a safetensors file; write the
    /// logits (or last hidden state) to another.
    #[command(after_help = help::FORWARD)]
    Forward(model::ForwardArgs),
    /// Continue a prompt with a decoder (greedy, or temperature / top-p sampling).
    #[command(after_help = help::GENERATE)]
    Generate(model::GenerateArgs),
    /// Write a finished stage of a run as PEFT adapter directories or as a merged
    /// Hugging Face model directory.
    #[command(after_help = help::EXPORT)]
    Export(export::ExportArgs),
    /// Merge PEFT adapters into a Hugging Face model (a new model directory), or
    /// combine LoRA adapters into one (a new adapter directory).
    #[command(after_help = help::MERGE)]
    Merge(export::MergeArgs),
    /// Evaluate a model (a Hugging Face directory or a run's stage, with adapters) on a
    /// data set without training: the metrics a pipeline stage reports on its eval set.
    #[command(
        after_help = "Examples:\n  stagecraft eval --model runs/demo:finetune --data 'synthetic:add?n=64&seed=9'\n  stagecraft eval --model tests/fixtures/llama-tiny/base --adapter my-lora --data notes.txt --out metrics.json"
    )]
    Eval(eval::EvalArgs),
    /// Compare a data set with a reference (two specs, or a run's training data):
    /// token JS divergence, length KS, label chi-square, hidden-state MMD; exit 4 on drift.
    #[command(after_help = help::DRIFT)]
    Drift(drift::DriftArgs),
    /// Compare two runs' final evaluations: per eval set, the difference in its main
    /// score with a paired bootstrap 95% interval and a verdict; also compare.html.
    #[command(after_help = help::COMPARE)]
    Compare(compare::CompareArgs),
    /// Tune the pipeline's stages one after the other (random or TPE sampling, ASHA
    /// pruning), each stage's trials starting from the best of the stages before.
    #[command(after_help = help::SEARCH)]
    Search(search::SearchArgs),
    /// Time training steps of a standard workload; prints one JSON line.
    #[command(after_help = help::BENCH)]
    Bench(bench::BenchArgs),
}

impl Cli {
    /// Whether the command must go on when whoever reads its output goes away: a
    /// training run, whose checkpoints matter more than its log lines.
    pub fn outlives_its_reader(&self) -> bool {
        matches!(&self.command, Command::Run(args) if args.trains())
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Model(cmd) => model::sites(cmd),
        Command::Forward(args) => model::forward(args),
        Command::Generate(args) => model::generate_cmd(args),
        Command::Export(args) => export::export(args),
        Command::Merge(args) => export::merge(args),
        Command::Eval(args) => eval::eval(args),
        Command::Drift(args) => drift::drift(args),
        Command::Compare(args) => compare::compare(args),
        Command::Search(args) => search::search(args),
        Command::Bench(args) => bench::bench(args),
    }
}

/// The built-in plugins and those on the search path, each file opened only when a
/// plugin it provides is used, after a load in a child process (problems are warnings).
pub fn registry() -> anyhow::Result<Registry> {
    registry_with(Vec::new(), TrustPolicy::default())
}

/// [`registry`] for a pipeline: its `[plugins] paths` are searched too.
pub fn pipeline_registry(cfg: &PipelineConfig) -> anyhow::Result<Registry> {
    registry_with(cfg.plugins.search_dirs(&cfg.base_dir()), cfg.trust())
}

/// The registry: each library file is checked against `trust` before any of its code
/// runs (even the preflight's).
fn registry_with(config_dirs: Vec<SearchDir>, trust: TrustPolicy) -> anyhow::Result<Registry> {
    let mut registry = Registry::with_builtins(report_dir())?;
    registry.set_preflight(plugin::preflight());
    registry.set_trust(trust)?;
    for e in registry.scan_dirs(&search_path_with(config_dirs)) {
        tracing::warn!("{e}");
    }
    Ok(registry)
}

/// Where one-off commands write abi_stable's full mismatch reports.
pub fn report_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("stagecraft-reports")
}
