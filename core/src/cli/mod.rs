//! Subcommands.

mod bench;
mod export;
mod latest_run;
mod model;
mod plugin;
mod run;
mod scaffold;

pub use run::Interrupted;

use clap::{Parser, Subcommand};
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::plugin::{search_path_with, Registry, SearchDir, TrustPolicy};

/// stagecraft: multi-stage training of transformer models with plugin adaptation
/// methods, optimizers and objectives.
#[derive(Debug, Parser)]
#[command(name = "stagecraft", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a multi-stage pipeline from its TOML file.
    Run(run::RunArgs),
    /// List, inspect and check plugins; write a new one.
    #[command(subcommand)]
    Plugin(plugin::PluginCmd),
    /// Inspect models.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Run a model (with adapters) on token ids from a safetensors file; write the
    /// logits (or last hidden state) to another.
    Forward(model::ForwardArgs),
    /// Continue a prompt with a decoder (greedy, or temperature / top-p sampling).
    Generate(model::GenerateArgs),
    /// Write a finished stage of a run as PEFT adapter directories or as a merged
    /// Hugging Face model directory.
    Export(export::ExportArgs),
    /// Merge PEFT adapters into a Hugging Face model (a new model directory), or
    /// combine LoRA adapters into one (a new adapter directory).
    Merge(export::MergeArgs),
    /// Time training steps of a standard workload; prints one JSON line.
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
