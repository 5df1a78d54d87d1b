//! `stagecraft bench`: one JSON line per run.

use clap::Args;
use stagecraft_core::bench::{run, BenchOptions, Mode, Workload};
use stagecraft_core::device::{resolve_device, Precision};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which standard workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Full fine-tuning or LoRA (default: full, LoRA for w1b).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Measured steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `fp32`, or `bf16` mixed precision.
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// A smaller batch than the workload's (to fit a device's memory).
    #[arg(long)]
    batch: Option<usize>,
    /// Also print where a step's time goes: forward, backward, update, and the fused
    /// ops (a table on stderr; in the JSON as `profile`).
    #[arg(long)]
    profile: bool,
    /// Compose every op from candle primitives instead of the fused CPU ops (to compare).
    #[arg(long)]
    unfused: bool,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let registry = super::registry()?;
    let opts = BenchOptions {
        workload: args.workload,
        mode: args.mode,
        steps: args.steps,
        warmup: 2,
        device: resolve_device(&args.device)?,
        precision: args.precision,
        batch: args.batch,
        profile: args.profile,
    };
    stagecraft_core::kernels::set_enabled(!args.unfused);
    let report = run(&registry, &opts)?;
    if let Some(p) = &report.profile {
        eprint!("{}", p.table(report.ms_per_step));
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
