//! `stagecraft compare RUN_A RUN_B`: the difference in each eval set's main score
//! between two runs' final models, with a paired bootstrap 95% interval and a verdict
//! ([`stagecraft_core::compare`]); the table on stdout (`--json`: JSON), and
//! `compare.html`.

use clap::Args;
use stagecraft_core::compare::{compare_runs, CompareOptions};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The run compared against (A).
    run_a: PathBuf,
    /// The run compared (B): differences are B − A.
    run_b: PathBuf,
    /// Compare this metric instead of each set's main score (exact_match, accuracy,
    /// else loss): `loss`, or any metric the objective gives per example.
    #[arg(long)]
    metric: Option<String>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = CompareOptions::default().resamples)]
    resamples: usize,
    /// The bootstrap's seed.
    #[arg(long, default_value_t = CompareOptions::default().seed)]
    seed: u64,
    /// Where the page goes.
    #[arg(long, default_value = "compare.html")]
    html: PathBuf,
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let opts = CompareOptions { metric: args.metric, resamples: args.resamples.max(1), seed: args.seed };
    let c = compare_runs(&args.run_a, &args.run_b, &opts)?;
    std::fs::write(&args.html, c.to_html()).map_err(|e| anyhow::anyhow!("{}: {e}", args.html.display()))?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&c)?),
        false => println!("{}page: {}", c.to_table(), args.html.display()),
    }
    Ok(())
}
