//! `stagecraft bench`: one JSON line per run.

use clap::Args;
use stagecraft_core::bench::{run, torch_baseline, BenchOptions, Mode, Report, Workload};
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
    /// With `--torch`: measure stagecraft and PyTorch alternately this many times
    /// (stagecraft first in odd rounds, PyTorch first in even ones) and report the round
    /// with the median speed ratio (and every round's ratio), for machines whose speed
    /// drifts within a minute.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20), requires = "torch")]
    rounds: u32,
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
    let Some(python) = opts.torch.clone() else {
        let report = run(&registry, &opts)?;
        if let Some(p) = &report.profile {
            eprint!("{}", p.table(report.ms_per_step));
        }
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        // Which side goes first alternates: a run started right after the other side's
        // process exits (its memory handed back to the kernel) was measured slower than
        // the next one (W2 full: 1928 then 1774 ms per step).
        let torch_first = round % 2 == 0;
        let mode = opts.mode.unwrap_or(opts.workload.default_mode());
        let baseline = || torch_baseline(&python, opts.workload, mode, 2 * opts.steps);
        let early = if torch_first { Some(baseline()?) } else { None };
        let mut report = run(&registry, &opts)?;
        if let Some(p) = &report.profile {
            eprint!("{}", p.table(report.ms_per_step));
        }
        let mut torch = match early {
            Some(t) => t,
            None => baseline()?,
        };
        torch.speed_ratio = report.tokens_per_s / torch.tokens_per_s;
        torch.memory_ratio = report.peak_rss_mib / torch.peak_rss_mib;
        eprintln!(
            "{:?} {:?}{}: stagecraft {:.0} tokens/s, {:.0} MiB; PyTorch {:.0} tokens/s, {:.0} MiB: {:.2}x the speed, {:.2}x the memory",
            report.workload,
            report.mode,
            match (args.rounds > 1, torch_first) {
                (true, false) => format!(" (round {round} of {}, stagecraft first)", args.rounds),
                (true, true) => format!(" (round {round} of {}, PyTorch first)", args.rounds),
                (false, _) => String::new(),
            },
            report.tokens_per_s,
            report.peak_rss_mib,
            torch.tokens_per_s,
            torch.peak_rss_mib,
            torch.speed_ratio,
            torch.memory_ratio
        );
        report.torch = Some(torch);
        rounds.push(report);
    }
    let report = median_round(rounds);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The round whose speed ratio is the median, with every round's ratio in its PyTorch
/// report, in round order (when there was more than one).
fn median_round(rounds: Vec<Report>) -> Report {
    let ratios: Vec<f64> = rounds.iter().map(|r| r.torch.as_ref().map_or(f64::NAN, |t| t.speed_ratio)).collect();
    let mut report = rounds.into_iter().nth(median_index(&ratios)).expect("at least one round");
    if let Some(t) = report.torch.as_mut().filter(|_| ratios.len() > 1) {
        t.round_ratios = ratios;
    }
    report
}

/// The index of the median of `values` (the lower middle one for an even count).
fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[values.len().saturating_sub(1) / 2]
}

#[cfg(test)]
mod tests {
    use super::median_index;

    #[test]
    fn the_median_round_is_the_middle_ratio() {
        assert_eq!(median_index(&[1.0]), 0);
        assert_eq!(median_index(&[1.0, 1.15, 1.05]), 2);
        assert_eq!(median_index(&[0.9, 1.2, 0.8, 1.0]), 0);
    }
}
