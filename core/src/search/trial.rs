//! One trial: a `stagecraft run` process for one stage's values, watched through its
//! `metrics.jsonl` for the stage's evaluations on its own set, and killed when the
//! pruning rule says so. A trial is a process with a command line (recorded with it),
//! so a scheduler could as well run it on another machine.

use super::space::Prune;
use crate::error::{io, Error, Result};
use crate::pipeline::{main_metric, oriented};
use crate::report::{EventKind, EventLog, MetricRow, Split};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran its stage to the end within the stage's gates.
    Complete,
    /// The pruning rule stopped it at a rung.
    Pruned,
    /// A retention gate failed (rolled the stage back or stopped the run).
    Infeasible,
    /// The run failed (an error; see the trial's log).
    Failed,
    /// Population-based training: it reached the end of its interval and waits there
    /// (its run paused, resumable).
    Paused,
}

impl Status {
    /// How the console and the report name it.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Pruned => "pruned",
            Status::Infeasible => "infeasible (a retention gate failed)",
            Status::Failed => "failed",
            Status::Paused => "paused at the interval's end",
        }
    }
}

/// A trial's score when it reached a rung.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RungScore {
    /// The rung.
    pub rung: usize,
    /// The step of the evaluation that scored it.
    pub step: u64,
    /// The score there, higher better.
    pub score: f64,
}

/// What a trial's process did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Its stage's main metric on its own set at its last evaluation, as logged.
    pub metric: Option<(String, f64)>,
    /// That value oriented so that higher is better.
    pub score: Option<f64>,
    /// Optimizer steps it trained in the stage.
    pub steps: u64,
    /// Its scores at the rungs it reached.
    pub rungs: Vec<RungScore>,
    /// For a failed trial: the last line of its error output.
    pub error: Option<String>,
}

/// Decides at each rung whether a trial goes on: `(rung, score) → go on`.
pub type Judge<'a> = dyn FnMut(usize, f64) -> bool + 'a;

/// Runs `command` (a `stagecraft run` writing `run_dir`), watching stage `stage`'s
/// evaluations on its own set; with `prune`, asks `judge` at each rung and kills the
/// process when it says no. Output goes to `log`.
pub fn run(
    command: &mut Command,
    run_dir: &Path,
    stage: &str,
    prune: Option<Prune>,
    judge: &mut Judge<'_>,
    log: &Path,
) -> Result<Outcome> {
    let out = std::fs::File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    let mut child = command
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start a trial: {e}")))?;
    let pid_file = pid_file(run_dir);
    record_pid(&pid_file, child.id())?;
    let mut watch = Watch::new(run_dir.join("metrics.jsonl"), stage, prune);
    let exit = loop {
        let decision = watch.poll(judge);
        if decision == Decision::Prune {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(Error::msg(format!("cannot watch a trial: {e}"))),
        }
    };
    let _ = std::fs::remove_file(&pid_file);
    if exit.is_some() {
        // The rows written after the last poll; the run is over, so nothing is pruned.
        watch.poll(&mut |_, _| true);
    }
    let status = match exit {
        None => Status::Pruned,
        Some(s) if s.code() == Some(0) && gate_failed(run_dir, stage)? => Status::Infeasible,
        Some(s) if s.code() == Some(0) => Status::Complete,
        Some(s) if s.code() == Some(i32::from(crate::pipeline::GATE_STOP_EXIT)) => Status::Infeasible,
        Some(_) => Status::Failed,
    };
    let error = (status == Status::Failed).then(|| last_line(log));
    let metric = watch.last.clone();
    let score = metric.as_ref().and_then(|(name, v)| oriented(&[(name.clone(), *v)].into(), Some(name)));
    Ok(Outcome { status, metric, score, steps: watch.steps, rungs: watch.rungs, error })
}

/// Where the search records the process running in `run_dir` (`<run_dir>.pid`) while
/// it runs.
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.with_extension("pid")
}

/// Records `pid` in `path`.
pub fn record_pid(path: &Path, pid: u32) -> Result<()> {
    crate::checkpoint::durable::replace(path, pid.to_string().as_bytes())
}

/// Whether the process recorded for `run_dir` by a search (one killed before it could
/// wait for it) is still running. The pid is read rather than the run directory's lock
/// alone because a process just started may not hold the lock yet.
pub fn recorded_process_runs(run_dir: &Path) -> bool {
    let recorded = std::fs::read_to_string(pid_file(run_dir)).ok().and_then(|t| t.trim().parse::<u32>().ok());
    recorded.is_some_and(process_runs)
}

/// Whether process `pid` runs (a zombie does not). Where `/proc` is missing this cannot
/// be told, and the run directory's lock is all there is to go by.
fn process_runs(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

/// Whether a retention gate rolled stage `stage` back or stopped the run.
fn gate_failed(run_dir: &Path, stage: &str) -> Result<bool> {
    let events = EventLog::read(&run_dir.join("events.jsonl"))?;
    Ok(events.iter().any(|e| e.stage == stage && matches!(e.kind, EventKind::Rollback | EventKind::Stop)))
}

/// The last non-empty line of a trial's log.
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string()
}

/// What the watch says after reading new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    GoOn,
    Prune,
}

/// Reads a trial's metrics as they are written.
struct Watch {
    path: PathBuf,
    offset: u64,
    stage: String,
    prune: Option<Prune>,
    /// The first rung's step, once the first evaluation at or after `min_steps` is seen.
    first_rung: Option<u64>,
    rungs: Vec<RungScore>,
    last: Option<(String, f64)>,
    steps: u64,
}

impl Watch {
    fn new(path: PathBuf, stage: &str, prune: Option<Prune>) -> Self {
        Watch {
            path,
            offset: 0,
            stage: stage.to_string(),
            prune,
            first_rung: None,
            rungs: Vec::new(),
            last: None,
            steps: 0,
        }
    }

    /// Reads the complete rows written since the last call, and judges each rung the
    /// stage's evaluations reach.
    fn poll(&mut self, judge: &mut Judge<'_>) -> Decision {
        for row in self.new_rows() {
            if row.stage != self.stage {
                continue;
            }
            if row.split == Split::Train {
                self.steps = self.steps.max(row.step);
                continue;
            }
            if row.set.as_deref() != Some(self.stage.as_str()) {
                continue;
            }
            let Some(name) = main_metric(&row.metrics) else { continue };
            let value = row.metrics[name];
            self.last = Some((name.to_string(), value));
            let Some(score) = oriented(&row.metrics, Some(name)) else { continue };
            if self.judge(row.step, score, judge) == Decision::Prune {
                return Decision::Prune;
            }
        }
        Decision::GoOn
    }

    /// Records the rungs an evaluation at `step` reaches and asks `judge` about each.
    fn judge(&mut self, step: u64, score: f64, judge: &mut Judge<'_>) -> Decision {
        let Some(prune) = self.prune else { return Decision::GoOn };
        if step < prune.min_steps || step == 0 {
            return Decision::GoOn;
        }
        let first = *self.first_rung.get_or_insert(step);
        loop {
            let rung = self.rungs.len();
            let at = (first as f64 * prune.eta.powi(rung as i32)).ceil() as u64;
            if at > step {
                return Decision::GoOn;
            }
            self.rungs.push(RungScore { rung, step, score });
            if !judge(rung, score) {
                return Decision::Prune;
            }
        }
    }

    /// The complete lines appended since the last read, parsed (a torn last line is
    /// read again next time).
    fn new_rows(&mut self) -> Vec<MetricRow> {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return Vec::new() };
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut reader = std::io::BufReader::new(file);
        let mut rows = Vec::new();
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if let Ok(row) = serde_json::from_str::<MetricRow>(&line) {
                rows.push(row);
            }
            line.clear();
        }
        rows
    }
}

/// The ASHA rule at one rung: a trial with `score` goes on when it is among the best
/// `max(1, ⌊n/η⌋)` of the `n` trials at the rung (`others` and itself, ties in its
/// favour); with fewer than `η` trials at the rung every trial goes on.
pub fn asha_goes_on(others: &[f64], score: f64, eta: f64) -> bool {
    let n = others.len() + 1;
    if (n as f64) < eta {
        return true;
    }
    let keep = ((n as f64 / eta).floor() as usize).max(1);
    let better = others.iter().filter(|o| **o > score).count();
    better < keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asha_keeps_the_best_third_once_a_rung_has_eta_trials() {
        assert!(asha_goes_on(&[], 0.1, 3.0), "alone at the rung");
        assert!(asha_goes_on(&[0.9], 0.1, 3.0), "two trials: not enough to judge");
        assert!(!asha_goes_on(&[0.9, 0.8], 0.1, 3.0), "third of three, keep 1");
        assert!(asha_goes_on(&[0.9, 0.8], 0.95, 3.0), "best of three");
        assert!(asha_goes_on(&[0.9, 0.8, 0.7, 0.6, 0.5], 0.85, 3.0), "second of six, keep 2");
        assert!(!asha_goes_on(&[0.9, 0.8, 0.7, 0.6, 0.5], 0.75, 3.0), "third of six");
        assert!(asha_goes_on(&[0.5, 0.5], 0.5, 3.0), "ties go on");
    }

    #[test]
    fn rungs_are_judged_at_the_first_evaluation_past_each_one() {
        let prune = Prune { eta: 2.0, min_steps: 10 };
        let mut w = Watch::new(PathBuf::new(), "s", Some(prune));
        let mut seen = Vec::new();
        let mut judge = |rung: usize, score: f64| {
            seen.push((rung, score));
            true
        };
        for (step, score) in [(5, 0.1), (15, 0.2), (25, 0.3), (35, 0.4), (70, 0.5)] {
            assert_eq!(w.judge(step, score, &mut judge), Decision::GoOn);
        }
        // First rung at 15 (the first evaluation at or after 10), then 30, 60.
        assert_eq!(seen, [(0, 0.2), (1, 0.4), (2, 0.5)]);
        let mut no = |_: usize, _: f64| false;
        let mut w = Watch::new(PathBuf::new(), "s", Some(prune));
        assert_eq!(w.judge(12, 0.1, &mut no), Decision::Prune);
        assert_eq!(w.rungs, [RungScore { rung: 0, step: 12, score: 0.1 }]);
    }
}
