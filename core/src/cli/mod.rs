//! Subcommands.

mod plugin;

use clap::{Parser, Subcommand};

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
    /// List, inspect and check plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCmd),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd),
    }
}

/// Where one-off commands write abi_stable's full mismatch reports.
pub fn report_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("stagecraft-reports")
}
