//! TensorBoard scalars: `<run_dir>/tensorboard/events.out.tfevents.<secs>.<host>`.
//!
//! The file is a TFRecord stream (each record: `u64` little-endian length, masked
//! CRC32C of the length, the data, masked CRC32C of the data) of `Event` protos,
//! encoded with [`prost`] from the message definitions below (the fields TensorBoard
//! reads from `tensorflow/core/util/event.proto` and `summary.proto`). The first event
//! is `file_version = "brain.Event:2"`; every scalar is one event with `wall_time`,
//! `step` (the run's global step, see [`super::GlobalSteps`]) and one
//! `summary.value {tag, simple_value}`. A resumed run opens a new file and first
//! writes a `SessionLog START` at the step it goes on from, which makes TensorBoard
//! drop the events of the steps the resume redoes.
//!
//! ```
//! use stagecraft_core::report::tensorboard::{read_events, EventWriter};
//! let dir = std::env::temp_dir().join(format!("tb-doc-{}", std::process::id()));
//! let mut w = EventWriter::create(&dir, None)?;
//! w.scalar("train/loss", 7, 1.25, 1_700_000_000.0)?;
//! let events = read_events(w.path())?;
//! assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
//! let s = events[1].summary.as_ref().map(|s| (s.value[0].tag.clone(), s.value[0].simple_value));
//! assert_eq!((events[1].step, s), (7, Some(("train/loss".to_string(), Some(1.25)))));
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::clock::unix_now;
use crate::error::{io, Error};
use crate::Result;

/// The folder inside the run directory.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// `tensorflow.Event` (the fields written here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The first event of a file: `brain.Event:2`.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// Scalars.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    /// A session's start (written on resume).
    #[prost(message, optional, tag = "6")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value` (scalars only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The series' name (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// 1: START (TensorBoard drops events at and after this event's step).
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// CRC32C, masked the TFRecord way.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// An open event file, appended one record per scalar.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (made if needed) and writes its
    /// `file_version` event; `resume_at`: a resumed run's first global step, written
    /// as a `SessionLog START`.
    pub fn create(dir: &Path, resume_at: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let now = unix_now();
        let base = format!("events.out.tfevents.{}.{}", now as u64, host());
        let mut path = dir.join(&base);
        if path.exists() {
            path = dir.join(format!("{base}.{}", std::process::id()));
        }
        let file = File::options().create_new(true).write(true).open(&path).map_err(io(&path))?;
        let mut w = EventWriter { path, file: BufWriter::new(file) };
        let version = Event { wall_time: now, file_version: Some("brain.Event:2".into()), ..Event::default() };
        w.write(&version)?;
        if let Some(step) = resume_at {
            let start = Event {
                wall_time: now,
                step: step as i64,
                session_log: Some(SessionLog { status: 1 }),
                ..Event::default()
            };
            w.write(&start)?;
        }
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends scalar `tag` = `value` at global `step`, taken at `wall_time`, and
    /// hands it to the OS.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64, wall_time: f64) -> Result<()> {
        self.scalars(&[(tag.to_string(), value)], step, wall_time)
    }

    /// Appends one event per `(tag, value)` at global `step` and hands them to the OS.
    pub fn scalars(&mut self, values: &[(String, f64)], step: u64, wall_time: f64) -> Result<()> {
        for (tag, v) in values {
            let value = Value { tag: tag.clone(), simple_value: Some(*v as f32) };
            let e = Event {
                wall_time,
                step: step as i64,
                summary: Some(Summary { value: vec![value] }),
                ..Event::default()
            };
            self.write(&e)?;
        }
        self.flush()
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        let data = e.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file.write_all(&record).map_err(io(&self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(io(&self.path))
    }
}

/// Reads every event of an event file, checking both CRCs of every record. A record
/// cut short at the end (a process killed mid-write) ends the list.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut events = Vec::new();
    let mut at = 0usize;
    while bytes.len() >= at + 12 {
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        if crc != masked_crc(len_bytes) {
            return Err(Error::msg(format!("{}: byte {at}: bad length checksum", path.display())));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        let start = at + 12;
        let Some(end) = start.checked_add(len).filter(|e| e + 4 <= bytes.len()) else { break };
        let data = &bytes[start..end];
        let crc = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        if crc != masked_crc(data) {
            return Err(Error::msg(format!("{}: byte {start}: bad data checksum", path.display())));
        }
        let e = Event::decode(data).map_err(|e| Error::msg(format!("{}: byte {start}: {e}", path.display())))?;
        events.push(e);
        at = end + 4;
    }
    Ok(events)
}

/// This machine's name for the file name (`localhost` where unknown).
fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let safe: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect();
    if safe.is_empty() {
        "localhost".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masked_crc_matches_tensorflow() {
        // crc32c("") = 0 and crc32c("123456789") = 0xe3069283 (RFC 3720); masked as in
        // tensorflow/core/lib/hash/crc32c.h: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        // ((0xe3069283 >> 15) | (0xe3069283 << 17)) + 0xa282ead8 mod 2^32, by hand:
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_error() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let mut w = EventWriter::create(tmp.path(), Some(5))?;
        w.scalar("train/loss", 5, 2.0, 1.0)?;
        let path = w.path().to_path_buf();
        drop(w);
        let events = read_events(&path)?;
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].session_log, Some(SessionLog { status: 1 }));
        let mut bytes = std::fs::read(&path)?;
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes)?;
        let err = read_events(&path).expect_err("corrupt");
        assert!(err.to_string().contains("bad data checksum"), "{err}");
        Ok(())
    }
}
