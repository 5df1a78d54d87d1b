//! What a run shows while it trains: a progress bar per stage on a terminal, plain
//! lines otherwise (logs, CI), nothing with `--quiet`. Warnings go through `tracing`
//! either way, above the bar.

use super::eval::Metrics;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// The run's console.
pub struct Console {
    quiet: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
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
        Console { quiet, terminal: std::io::stderr().is_terminal(), bar: None }
    }

    /// A stage starts (or resumes) at `step` of `total`.
    pub fn stage_start(&mut self, stage: &str, step: u64, total: u64) {
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
            eprintln!("[{stage}] starting at step {step}/{total}");
        }
    }

    /// One optimizer step done.
    pub fn step(&self, stage: &str, step: u64, total: u64, loss: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}"));
            }
            None if !self.quiet && (step.is_multiple_of(50) || step == total) => {
                eprintln!("[{stage}] step {step}/{total} loss {loss:.4}")
            }
            None => {}
        }
    }

    /// An evaluation of `set` at `step`.
    pub fn eval(&self, stage: &str, step: u64, set: &str, m: &Metrics) {
        if self.quiet {
            return;
        }
        let line = format!("[{stage}] step {step}: eval {set}: {}", summary(m));
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
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

    /// The stage ended.
    pub fn stage_end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
