//! `stagecraft run [PIPELINE.toml] [--set key=value]... [--until STAGE] [--check]`,
//! `stagecraft run [PIPELINE.toml] --from RUN_DIR --after STAGE` (a branch), and
//! `stagecraft run [PIPELINE.toml] --resume RUN_DIR|latest [--adjust KEY=VALUE]...`.
//!
//! A run stopped by SIGINT (Ctrl-C) or SIGTERM saves a resume checkpoint, prints the
//! command that resumes it and exits with 130 or 143 ([`Interrupted`]); one that
//! reaches its `--pause-at STAGE:STEP` does the same and exits with 0.

use anyhow::Context;
use clap::Args;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::device::Precision;
use stagecraft_core::pipeline::{
    run_config, BranchPoint, Cause, Interrupt, PausePoint, Pipeline, PluginChanges, RunDir, StageEnd,
};
use std::path::{Path, PathBuf};

/// The default pipeline, built into the binary so `stagecraft run` works anywhere.
const DEFAULT_PIPELINE: &str = include_str!("../../../examples/pipelines/default.toml");

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (default: the built-in `examples/pipelines/default.toml`).
    pipeline: Option<PathBuf>,
    /// Override a config value: `--set stages.finetune.max_steps=100`.
    #[arg(long = "set")]
    overrides: Vec<String>,
    /// Train on this device (`cpu`, `cuda`, `cuda:N`) instead of `run.device`.
    #[arg(long)]
    device: Option<String>,
    /// Compute in this precision instead of `run.precision`.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Write the run here instead of `<run.out_dir>/<run.name>/<timestamp>/`.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Use this random seed instead of `run.seed` (initialization, data order, dropout).
    #[arg(long)]
    seed: Option<u64>,
    /// No progress bar or progress lines: only warnings, errors and the final summary.
    #[arg(long)]
    quiet: bool,
    /// Check everything a run checks before training (config, data, plugins, adapter
    /// targets) and print the plan, without training or writing anything.
    #[arg(long, conflicts_with = "resume")]
    check: bool,
    /// Continue an interrupted run from its newest good checkpoint (its own config is
    /// used; --set is not allowed). `latest`: the newest run directory under
    /// `<run.out_dir>/<run.name>/` of PIPELINE (the only use of PIPELINE with --resume);
    /// a runs folder (`runs/NAME`): the newest run in it.
    #[arg(long, value_name = "RUN_DIR|latest", conflicts_with_all = ["overrides", "run_dir", "device", "precision", "seed"])]
    resume: Option<PathBuf>,
    /// Start after a finished stage of another run instead of training the stages up
    /// to it again: the pipeline's stages up to --after must be that run's (same
    /// configs, data, seed and plugin builds); its checkpoints and logs of those stages
    /// are taken over and the later stages train from the end of --after.
    #[arg(long, value_name = "RUN_DIR", requires = "after", conflicts_with_all = ["resume", "check"])]
    from: Option<PathBuf>,
    /// With --from: the last stage taken from that run.
    #[arg(long, value_name = "STAGE", requires = "from")]
    after: Option<String>,
    /// Run the stages up to and including STAGE only (the later ones are left out of the
    /// run and its config).
    #[arg(long, value_name = "STAGE", conflicts_with = "resume")]
    until: Option<String>,
    /// With --resume: go on although a plugin library file's sha256 differs from the one
    /// the run recorded in its plugins.json (without it that is refused). The change is
    /// recorded there next to the original hash, with the stage and step it took effect.
    #[arg(long, requires = "resume")]
    allow_plugin_change: bool,
    /// Stop once stage STAGE has taken STEP steps (after that step's evaluation, if one
    /// is due), saving the resume checkpoint as Ctrl-C would; exits with 0, and
    /// `--resume` goes on from there.
    #[arg(long, value_name = "STAGE:STEP", conflicts_with = "check")]
    pause_at: Option<PausePoint>,
    /// With --resume: from the step the run stopped at, give a hyperparameter of the
    /// stage in progress a new value: `optimizer.lr=1e-3`, `optimizer.weight_decay=0.01`,
    /// `train.dropout=0.1` (any optimizer key but its name). Recorded in the run's
    /// config.toml as an `adjust` entry of the stage.
    #[arg(long, value_name = "KEY=VALUE", requires = "resume")]
    adjust: Vec<String>,
}

impl RunArgs {
    /// Whether this command trains (rather than checking a pipeline and printing its plan).
    pub fn trains(&self) -> bool {
        !self.check
    }
}

/// A run a signal stopped, after it saved a resume checkpoint: the process exits with
/// `code` (130 for SIGINT, 143 for SIGTERM, as shells report them).
#[derive(Debug)]
pub struct Interrupted {
    /// The exit code.
    pub code: u8,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted (exit code {})", self.code)
    }
}

impl std::error::Error for Interrupted {}

/// What `--resume` names as a keyword rather than a directory.
const LATEST: &str = "latest";

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let interrupt = if args.check { Interrupt::none() } else { Interrupt::install()? };
    if let Some(named) = &args.resume {
        let dir = match named.as_os_str() == LATEST {
            true => super::latest_run::find(&runs_folder(args.pipeline.as_deref())?).context("--resume latest")?,
            false if args.pipeline.is_some() => anyhow::bail!(
                "--resume {}: a run resumes with its own config; give PIPELINE only with `--resume latest`",
                named.display()
            ),
            false => super::latest_run::resolve(named, "--resume")?,
        };
        let cfg = run_config(&dir)?;
        check_pause(&cfg, args.pause_at.as_ref())?;
        let registry = super::pipeline_registry(&cfg)?;
        let t = std::time::Instant::now();
        let changes = if args.allow_plugin_change { PluginChanges::Allow } else { PluginChanges::Refuse };
        let (mut pipeline, _) = Pipeline::resume_with(&dir, registry, args.quiet, changes, &args.adjust)?;
        pipeline.stop_on(interrupt.with_pause(args.pause_at.clone()));
        return finish(pipeline, t);
    }
    let mut overrides = args.overrides.clone();
    if let Some(d) = &args.device {
        overrides.push(format!("run.device={d}"));
    }
    if let Some(p) = args.precision {
        overrides.push(format!("run.precision={p}"));
    }
    if let Some(seed) = args.seed {
        overrides.push(format!("run.seed={seed}"));
    }
    let mut cfg = match &args.pipeline {
        Some(path) => PipelineConfig::from_file(path, &overrides)?,
        None => PipelineConfig::from_str(DEFAULT_PIPELINE, "examples/pipelines/default.toml (built in)", &overrides)?,
    };
    if let Some(last) = &args.until {
        cfg.keep_stages_until(last)?;
    }
    check_pause(&cfg, args.pause_at.as_ref())?;
    let registry = super::pipeline_registry(&cfg)?;
    if args.check {
        print!("{}", Pipeline::plan(&cfg, &registry)?);
        return Ok(());
    }
    let run_dir = match &args.run_dir {
        Some(dir) => RunDir::create(dir)?,
        None => {
            let secs =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            RunDir::create_unique(&PathBuf::from(&cfg.run.out_dir).join(&cfg.run.name), &timestamp(secs))?
        }
    };
    let t = std::time::Instant::now();
    let (mut pipeline, _tokenizer) = match (&args.from, &args.after) {
        (Some(run), Some(after)) => {
            let from = BranchPoint { run: super::latest_run::resolve(run, "--from")?, after: after.clone() };
            Pipeline::branch(cfg, registry, run_dir, &from, args.quiet)?
        }
        _ => Pipeline::in_dir(cfg, registry, run_dir, args.quiet)?,
    };
    pipeline.stop_on(interrupt.with_pause(args.pause_at.clone()));
    finish(pipeline, t)
}

/// A `--pause-at` stage must be one the run trains, and the step inside it.
fn check_pause(cfg: &PipelineConfig, pause: Option<&PausePoint>) -> anyhow::Result<()> {
    let Some(p) = pause else { return Ok(()) };
    let Some((_, s)) = cfg.stage(&p.stage) else {
        anyhow::bail!(
            "--pause-at {}:{}: the run has no stage `{}` (its stages: {})",
            p.stage,
            p.step,
            p.stage,
            cfg.stage_names()
        );
    };
    if let Some(m) = s.max_steps.filter(|m| p.step >= *m) {
        anyhow::bail!("--pause-at {}:{}: stage `{}` has {m} steps; pause before its last", p.stage, p.step, p.stage);
    }
    Ok(())
}

/// Where the runs of `pipeline` (the built-in one when `None`) go:
/// `<run.out_dir>/<run.name>`.
fn runs_folder(pipeline: Option<&Path>) -> anyhow::Result<PathBuf> {
    let cfg = match pipeline {
        Some(path) => PipelineConfig::from_file(path, &[])?,
        None => PipelineConfig::from_str(DEFAULT_PIPELINE, "examples/pipelines/default.toml (built in)", &[])?,
    };
    Ok(PathBuf::from(&cfg.run.out_dir).join(&cfg.run.name))
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time.
fn timestamp(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn finish(pipeline: Pipeline, t: std::time::Instant) -> anyhow::Result<()> {
    let summary = pipeline.run()?;
    if let Some(at) = &summary.interrupted {
        let resume = shell_word(&summary.run_dir.display().to_string());
        let saved = at.checkpoint.display();
        let (stage, step) = (&at.stage, at.step);
        match at.cause {
            Cause::Pause => {
                println!("paused in stage `{stage}` after step {step}: saved {saved}; resume with: stagecraft run --resume {resume}");
                return Ok(());
            }
            Cause::Signal(signal) => {
                let name = signal.name();
                eprintln!("{name} stopped the run in stage `{stage}` after step {step}: saved {saved}; resume with: stagecraft run --resume {resume}");
                return Err(Interrupted { code: signal.exit_code() }.into());
            }
        }
    }
    for s in &summary.stages {
        match s.end {
            StageEnd::EvalOnly => println!("stage {}: evaluated only (max_steps = 0)", s.stage),
            _ => println!("stage {}: {} steps, ended by {}", s.stage, s.steps, s.end),
        }
    }
    println!("{}", summary.retention.to_table());
    println!("run directory: {} ({:.1}s)", summary.run_dir.display(), t.elapsed().as_secs_f64());
    if let Some(s) = summary.stages.last().filter(|s| s.end == StageEnd::GateStop) {
        return Err(GateStopped { stage: s.stage.clone(), metrics: summary.run_dir.join("metrics.jsonl") }.into());
    }
    Ok(())
}

/// The pipeline ended early because a retention gate failed (`stagecraft` exits with
/// [`GateStopped::EXIT_CODE`], so a script can tell it from an error).
#[derive(Debug)]
pub struct GateStopped {
    stage: String,
    metrics: PathBuf,
}

impl GateStopped {
    /// The process exit code of a gate stop.
    pub const EXIT_CODE: u8 = stagecraft_core::pipeline::GATE_STOP_EXIT;
}

impl std::fmt::Display for GateStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the pipeline stopped: a retention gate failed in stage `{}` (see the warning above and {})",
            self.stage,
            self.metrics.display()
        )
    }
}

impl std::error::Error for GateStopped {}

/// `word` quoted for a POSIX shell when it holds anything but plain path characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c);
    match !word.is_empty() && word.chars().all(plain) {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', "'\\''")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(super::shell_word("runs/t/20261130-101010-2"), "runs/t/20261130-101010-2");
        assert_eq!(super::shell_word("my runs/it's"), "'my runs/it'\\''s'");
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(super::timestamp(0), "19700101-000000");
        assert_eq!(super::timestamp(951_782_400 + 3_661), "20000229-010101");
        assert_eq!(super::timestamp(1_795_883_705), "20261128-163505");
    }
}
