//! The run's records: `metrics.jsonl` and `events.jsonl` (append-only, each line written
//! once), `resumes.jsonl` (one line per resume), and what the console shows of them.
//!
//! Every checkpoint records how many bytes of each log it covers ([`RecordsMark`]),
//! after syncing them. A resume cuts each log back to exactly those bytes — one
//! `ftruncate`, never a rewrite — and the run writes the rest again as it redoes the
//! steps, so the logs of a resumed run are byte for byte those of an uninterrupted one.
//! Resumes themselves go to `resumes.jsonl`, which is not cut.
//!
//! Every metrics row is stamped as it is logged (time, elapsed seconds, memory; see
//! [`super::tracking`]), so the comparison of a resumed run's log with an
//! uninterrupted one's leaves those fields out ([`MetricRow::without_timing`]).
//! `metrics.csv` is regenerated from the rows at each stage's end and the run's.

use super::console::Console;
use super::eval::Metrics;
use super::run_dir::RunDir;
use super::tracking::Tracker;
use crate::error::Result;
use crate::report::csv::write_csv;
use crate::report::{write_examples, Event, EventKind, EventLog, ExampleScores, Jsonl, MetricRow, MetricsLog};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The file resumes are recorded in.
pub(crate) const RESUMES_FILE: &str = "resumes.jsonl";

/// How much of the logs a checkpoint covers, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecordsMark {
    /// Of `metrics.jsonl`.
    pub metrics: u64,
    /// Of `events.jsonl`.
    pub events: u64,
}

/// One resume, as `resumes.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// The stage the run went on with.
    pub stage: String,
    /// The step it went on from (0: the stage's start).
    pub step: u64,
    /// The checkpoint it went on from (`None`: none was written yet, so the run started over).
    pub checkpoint: Option<String>,
}

/// The open logs, their rows in memory, and the console.
pub(crate) struct Records {
    metrics: MetricsLog,
    rows: Vec<MetricRow>,
    events: EventLog,
    event_rows: Vec<Event>,
    resumes: Jsonl,
    console: Console,
    tracker: Tracker,
    dir: PathBuf,
}

impl Records {
    /// Opens a run's logs, cut back to `mark` (a new run: nothing); `tensorboard`
    /// mirrors the metrics to a new TensorBoard event file.
    pub fn open(run: &RunDir, mark: RecordsMark, quiet: bool, device: &Device, tensorboard: bool) -> Result<Self> {
        let mut metrics = MetricsLog::open(run.path())?;
        let mut events = EventLog::open(run.path())?;
        metrics.truncate_to(mark.metrics)?;
        events.truncate_to(mark.events)?;
        let rows = MetricsLog::read(metrics.path())?;
        let event_rows = EventLog::read(events.path())?;
        let resumes = Jsonl::open(&run.join(RESUMES_FILE))?;
        let tracker = Tracker::new(run, &rows, device, tensorboard)?;
        let console = Console::new(quiet);
        Ok(Records { metrics, rows, events, event_rows, resumes, console, tracker, dir: run.path().to_path_buf() })
    }

    /// How much of the logs is written, after making it durable: what a checkpoint
    /// taken now covers.
    pub fn mark(&self) -> Result<RecordsMark> {
        self.metrics.sync()?;
        self.events.sync()?;
        Ok(RecordsMark { metrics: self.metrics.len(), events: self.events.len() })
    }

    /// Every metric row so far.
    pub fn rows(&self) -> &[MetricRow] {
        &self.rows
    }

    /// Every event so far.
    pub fn events(&self) -> &[Event] {
        &self.event_rows
    }

    /// The console.
    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// Logs a training row (stamped with the time and memory now).
    pub fn train(&mut self, row: MetricRow) -> Result<()> {
        self.log(row)
    }

    /// Logs an evaluation of `set` by `stage` at `step`.
    pub fn eval(&mut self, stage: &str, step: u64, set: &str, m: &Metrics, examples: &ExampleScores) -> Result<()> {
        if !examples.is_empty() {
            write_examples(&self.dir, stage, step, set, examples)?;
        }
        self.log(MetricRow::eval(stage, step, set, m.clone()))
    }

    fn log(&mut self, mut row: MetricRow) -> Result<()> {
        self.tracker.stamp(&mut row);
        self.metrics.append(&row)?;
        self.tracker.mirror(&row)?;
        self.rows.push(row);
        Ok(())
    }

    /// Regenerates `metrics.csv` from every row so far.
    pub fn write_csv(&self) -> Result<()> {
        write_csv(&self.dir, &self.rows).map(|_| ())
    }

    /// Logs an event and shows it: a warning or a notice, by its kind.
    pub fn event(&mut self, stage: &str, step: u64, kind: EventKind, message: String) -> Result<()> {
        let line = format!("stage `{stage}` step {step}: {message}");
        if kind.is_warning() {
            self.console.warn(&line);
        } else {
            self.console.info(&line);
        }
        let e = Event::new(stage, step, kind, &message);
        self.events.append(&e)?;
        self.event_rows.push(e);
        Ok(())
    }

    /// Records a resume and shows it.
    pub fn resumed(&mut self, r: ResumeRecord) -> Result<()> {
        let from = r
            .checkpoint
            .as_ref()
            .map_or("the start (no checkpoint was written)".to_string(), |c| format!("checkpoint `{c}`"));
        self.console.info(&format!("stage `{}` step {}: resumed from {from}", r.stage, r.step));
        self.resumes.append(&r)?;
        self.resumes.sync()
    }
}
