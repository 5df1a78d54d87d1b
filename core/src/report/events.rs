//! `events.jsonl`: what happened besides training steps, one JSON object per line: the
//! anomaly guard's recoveries, retention gates failing, rolling back or stopping, early
//! stops, each stage's end and each resume. Append-only: a resumed run keeps the events
//! of the part it redoes, followed by a `resume` event.
//!
//! ```
//! use stagecraft_core::report::{Event, EventLog};
//! let dir = std::env::temp_dir().join(format!("events-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut log = EventLog::open(&dir)?;
//! log.append(&Event::new("adapt", 50, "gate", "retention gate failing on `add`"))?;
//! assert_eq!(EventLog::read(log.path())?[0].kind, "gate");
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The stage it happened in.
    pub stage: String,
    /// The stage's step.
    pub step: u64,
    /// `anomaly`, `gate`, `rollback`, `stop`, `patience`, `end` or `resume`.
    pub kind: String,
    /// What happened, in words.
    pub message: String,
}

impl Event {
    /// An event.
    pub fn new(stage: &str, step: u64, kind: &str, message: &str) -> Self {
        Event { stage: stage.to_string(), step, kind: kind.to_string(), message: message.to_string() }
    }
}

/// The open `events.jsonl` of a run directory.
pub struct EventLog {
    path: PathBuf,
    file: File,
}

impl EventLog {
    /// The file's name inside the run directory.
    pub const FILE_NAME: &'static str = "events.jsonl";

    /// Opens (or creates) `<run_dir>/events.jsonl` for appending.
    pub fn open(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(Self::FILE_NAME);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        Ok(EventLog { path, file })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a line.
    pub fn append(&mut self, e: &Event) -> Result<()> {
        let mut line = serde_json::to_string(e)
            .map_err(|err| Error::file(&self.path, format!("cannot serialize event ({err})")))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|source| Error::Io { path: self.path.clone(), source })
    }

    /// Reads every event; a torn last line (a crash mid-write) is skipped.
    pub fn read(path: &Path) -> Result<Vec<Event>> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::file(path, format!("line {}: {e}", i + 1))))
            .collect()
    }
}
