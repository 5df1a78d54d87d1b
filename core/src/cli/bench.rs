//! `stagecraft bench`: one JSON line per run.

use clap::Args;
use stagecraft_core::bench::{run, torch_baseline, BenchOptions, Mode, Workload};
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
    /// Then run PyTorch + PEFT on the same workload with this Python
    /// (`benches/torch_baseline.py`, W1 and W2) and report both, with the ratios.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<String>,
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
        torch: args.torch,
    };
    stagecraft_core::kernels::set_enabled(!args.unfused);
    let mut report = run(&registry, &opts)?;
    if let Some(p) = &report.profile {
        eprint!("{}", p.table(report.ms_per_step));
    }
    if let Some(python) = &opts.torch {
        let mut torch = torch_baseline(python, report.workload, report.mode, 2 * opts.steps)?;
        torch.speed_ratio = report.tokens_per_s / torch.tokens_per_s;
        torch.memory_ratio = report.peak_rss_mib / torch.peak_rss_mib;
        eprintln!(
            "{:?} {:?}: stagecraft {:.0} tokens/s, {:.0} MiB; PyTorch {:.0} tokens/s, {:.0} MiB: {:.2}x the speed, {:.2}x the memory",
            report.workload,
            report.mode,
            report.tokens_per_s,
            report.peak_rss_mib,
            torch.tokens_per_s,
            torch.peak_rss_mib,
            torch.speed_ratio,
            torch.memory_ratio
        );
        report.torch = Some(torch);
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
