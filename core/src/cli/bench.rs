//! `stagecraft bench`: one JSON line per run.

use clap::Args;
use stagecraft_core::bench::{run, Mode, Workload};

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
    let registry = super::registry()?;
    let report = run(&registry, args.workload, args.mode, args.steps, 2)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
