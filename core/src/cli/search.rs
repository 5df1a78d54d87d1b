//! `stagecraft search PIPELINE.toml --space SPACE.toml [--trials N] [--budget STEPS]`:
//! hierarchical hyperparameter search over the pipeline's stages
//! ([`stagecraft_core::search`]).

use clap::Args;
use stagecraft_core::search::{search as run_search, SearchOptions};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// The search space: per stage, the keys to tune and their ranges or choices.
    #[arg(long)]
    space: PathBuf,
    /// Trials per tuned stage (default: the space's `search.trials`, else 8).
    #[arg(long)]
    trials: Option<usize>,
    /// Start no new trial once all trials together trained this many optimizer steps.
    #[arg(long, value_name = "STEPS")]
    budget: Option<u64>,
    /// The search directory (started again with the same arguments, a killed search
    /// goes on where it was).
    #[arg(long, default_value = "search")]
    dir: PathBuf,
    /// Only the summary: no line per trial.
    #[arg(long)]
    quiet: bool,
}

pub fn search(args: SearchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the stagecraft executable: {e}"))?;
    let opts = SearchOptions {
        pipeline: args.pipeline.clone(),
        space: args.space,
        dir: args.dir.clone(),
        trials: args.trials,
        budget: args.budget,
        exe,
        quiet: args.quiet,
    };
    let s = run_search(opts)?;
    println!("stage           baseline (trial 0)       best");
    for (base, best) in &s.stages {
        let shown = |r: &stagecraft_core::search::TrialRecord| match (&r.metric, r.value) {
            (Some(m), Some(v)) => format!("{m} {v:.4}"),
            _ => "no score".to_string(),
        };
        println!("{:<15} {:<24} {} (trial {})", base.stage, shown(base), shown(best), best.label());
    }
    if s.budget_spent {
        println!("the step budget ended the search before every stage was tuned");
    }
    println!(
        "{} trials; best config: {} (report: {})",
        s.trials,
        args.dir.join("best.toml").display(),
        args.dir.join("report.html").display()
    );
    Ok(())
}
