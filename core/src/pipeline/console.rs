//! What a run shows while it trains: a progress bar per stage on a terminal, log lines
//! otherwise (logs, CI), nothing but warnings with `--quiet`. Every line, above the bar
//! or without one, is a `tracing` line that starts with the stage: `INFO stage
//! `pretrain` step 50/400: loss 1.2345 (task + replay), lr 2.0e-3, 5120 tokens/s`.

use super::eval::Metrics;
use super::outcome::StageEnd;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Steps between two progress lines when there is no bar.
const LINE_EVERY: u64 = 50;

/// The run's console.
pub struct Console {
    quiet: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
    stage: Option<StageProgress>,
}

/// The stage being shown.
struct StageProgress {
    name: String,
    total: u64,
    /// What its training loss averages over (`task + replay` when replay batches mix in).
    loss_label: &'static str,
    started: Instant,
    /// Tokens trained on since `started`.
    tokens: u64,
}

impl StageProgress {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// One optimizer step, as the console shows it.
#[derive(Debug, Clone, Copy)]
pub struct StepLine {
    /// The step just taken (1-based).
    pub step: u64,
    /// Its training loss.
    pub loss: f64,
    /// Its learning rate.
    pub lr: f64,
    /// Tokens in its batches, padding left out.
    pub tokens: u64,
}

fn summary(m: &Metrics) -> String {
    ["loss", "exact_match", "accuracy"]
        .iter()
        .filter_map(|k| m.get(*k).map(|v| format!("{k} {v:.4}")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Console {
    /// A console on standard error.
    pub fn new(quiet: bool) -> Self {
        Console { quiet, terminal: std::io::stderr().is_terminal(), bar: None, stage: None }
    }

    /// A stage starts (or resumes) at `step` of `total`; `replay`: whether its training
    /// batches mix in earlier stages' data (its training loss then covers both).
    pub fn stage_start(&mut self, stage: &str, step: u64, total: u64, replay: bool) {
        let loss_label = if replay { " (task + replay)" } else { "" };
        self.stage =
            Some(StageProgress { name: stage.to_string(), total, loss_label, started: Instant::now(), tokens: 0 });
        if self.quiet {
            return;
        }
        if self.terminal {
            let bar = ProgressBar::new(total).with_position(step).with_prefix(stage.to_string());
            let style =
                ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            self.bar = Some(bar);
        } else {
            tracing::info!("stage `{stage}` step {step}/{total}: starting");
        }
    }

    /// One optimizer step done.
    pub fn step(&mut self, line: StepLine) {
        let Some(stage) = &mut self.stage else { return };
        stage.tokens += line.tokens;
        let text = format!(
            "loss {:.4}{}, lr {:.1e}, {:.0} tokens/s",
            line.loss,
            stage.loss_label,
            line.lr,
            stage.tokens_per_s()
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(line.step);
                bar.set_message(text);
            }
            None if !self.quiet && (line.step.is_multiple_of(LINE_EVERY) || line.step == stage.total) => {
                tracing::info!("stage `{}` step {}/{}: {text}", stage.name, line.step, stage.total)
            }
            None => {}
        }
    }

    /// An evaluation of `set` at `step`.
    pub fn eval(&self, stage: &str, step: u64, set: &str, m: &Metrics) {
        self.info(&format!("stage `{stage}` step {step}: eval {set}: {}", summary(m)));
    }

    /// A warning, logged above the bar.
    pub fn warn(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::warn!("{msg}")),
            None => tracing::warn!("{msg}"),
        }
    }

    /// A notice (a stage end, a resume), logged above the bar; nothing with `--quiet`.
    pub fn info(&self, msg: &str) {
        match &self.bar {
            _ if self.quiet => {}
            Some(bar) => bar.suspend(|| tracing::info!("{msg}")),
            None => tracing::info!("{msg}"),
        }
    }

    /// The stage ended at `step`, for `why` (`None`: it failed). A bar stays where the
    /// stage stopped, and says why when that is before its last step.
    pub fn stage_end(&mut self, step: u64, why: BarEnd) {
        let stage = self.stage.take();
        let Some(bar) = self.bar.take() else { return };
        let total = stage.as_ref().map_or(step, |s| s.total);
        match why {
            BarEnd::Stage(end) if step < total => bar.abandon_with_message(format!("ended at step {step} by {end}")),
            BarEnd::Stage(_) => bar.finish(),
            BarEnd::Interrupted(cause) => bar.abandon_with_message(format!("{} after step {step}", cause.describe())),
            BarEnd::Failed => bar.abandon_with_message(format!("failed at step {step}")),
        }
    }
}

/// Why a stage's progress bar stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BarEnd<'a> {
    /// The stage ended (at its budget or earlier, for this reason).
    Stage(&'a StageEnd),
    /// A signal (`SIGINT`, `SIGTERM`) stopped the run; it resumes from here.
    Interrupted(super::interrupt::Cause),
    /// An error ended the run.
    Failed,
}
