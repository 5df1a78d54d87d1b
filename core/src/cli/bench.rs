//! `stagecraft bench`: one JSON line per run.

use clap::Args;
use stagecraft_core::bench::{run, Mode, Workload};
use stagecraft_core::plugin::{search_path, Registry};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which standard workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Full fine-tuning or LoRA.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Measured steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut registry = Registry::with_builtins(super::report_dir())?;
    for e in registry.load_dirs(&search_path()) {
        tracing::warn!("{e}");
    }
    let report = run(&registry, args.workload, args.mode, args.steps, 2)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
