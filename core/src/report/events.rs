//! `events.jsonl`: what happened besides training steps, one JSON object per line: the
//! anomaly guard's recoveries, retention gates failing, rolling back or stopping, early
//! stops and each stage's end. Append-only; a resume cuts it back to what its checkpoint
//! covers, so a resumed run's events are those of an uninterrupted one.
//!
//! ```
//! use stagecraft_core::report::{Event, EventKind, EventLog};
//! let dir = std::env::temp_dir().join(format!("events-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut log = EventLog::open(&dir)?;
//! log.append(&Event::new("adapt", 50, EventKind::Gate, "retention gate failing on `add`"))?;
//! assert_eq!(EventLog::read(log.path())?[0].kind, EventKind::Gate);
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::jsonl::Jsonl;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The anomaly guard rejected a step (non-finite or spiking loss) and restored the
    /// last good state.
    Anomaly,
    /// A retention gate failed, within its patience.
    Gate,
    /// A retention gate failed past its patience and rolled the stage back.
    Rollback,
    /// A retention gate failed past its patience and stopped the pipeline.
    Stop,
    /// Early stopping ran out of patience and restored the best state.
    Patience,
    /// The stage's objective ended it from a hook (`Control::STOP` or `ROLLBACK`).
    Objective,
    /// A stage ended.
    End,
    /// A signal (SIGINT, SIGTERM) stopped the run; it can be resumed.
    Interrupt,
    /// A stage's `drift` check found its training data drifted from an earlier stage's.
    Drift,
    /// Some of a stage's hyperparameters changed (its `adjust` entries).
    Adjust,
}

impl EventKind {
    /// Its name in `events.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Anomaly => "anomaly",
            EventKind::Gate => "gate",
            EventKind::Rollback => "rollback",
            EventKind::Stop => "stop",
            EventKind::Patience => "patience",
            EventKind::Objective => "objective",
            EventKind::End => "end",
            EventKind::Interrupt => "interrupt",
            EventKind::Drift => "drift",
            EventKind::Adjust => "adjust",
        }
    }

    /// Whether it is shown as a warning (something went wrong) rather than a notice.
    pub fn is_warning(self) -> bool {
        matches!(self, EventKind::Anomaly | EventKind::Gate | EventKind::Rollback | EventKind::Stop | EventKind::Drift)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The stage it happened in.
    pub stage: String,
    /// The stage's step.
    pub step: u64,
    /// What kind of event.
    pub kind: EventKind,
    /// What happened, in words.
    pub message: String,
}

impl Event {
    /// An event.
    pub fn new(stage: &str, step: u64, kind: EventKind, message: &str) -> Self {
        Event { stage: stage.to_string(), step, kind, message: message.to_string() }
    }
}

/// The open `events.jsonl` of a run directory.
pub struct EventLog {
    file: Jsonl,
}

impl EventLog {
    /// The file's name inside the run directory.
    pub const FILE_NAME: &'static str = "events.jsonl";

    /// Opens (or creates) `<run_dir>/events.jsonl` for appending.
    pub fn open(run_dir: &Path) -> Result<Self> {
        Ok(EventLog { file: Jsonl::open(&run_dir.join(Self::FILE_NAME))? })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file's length in bytes (see [`Jsonl::truncate_to`]).
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether no event has been written.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Appends one event as a line.
    pub fn append(&mut self, e: &Event) -> Result<()> {
        self.file.append(e)
    }

    /// Cuts the log back to its first `len` bytes.
    pub fn truncate_to(&mut self, len: u64) -> Result<()> {
        self.file.truncate_to(len)
    }

    /// Makes every event appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync()
    }

    /// Reads every event; a torn last line (a crash mid-write) is skipped.
    pub fn read(path: &Path) -> Result<Vec<Event>> {
        Jsonl::read(path)
    }
}
