//! An append-only JSON-lines file: one serialized value per line, one `write` per line,
//! and its length in bytes, so that a checkpoint can record how much of the file it
//! covers and a resume can cut the file back to exactly that ([`Jsonl::truncate_to`]):
//! the bytes before the cut are never rewritten.
//!
//! ```
//! use stagecraft_core::report::Jsonl;
//! let dir = std::env::temp_dir().join(format!("jsonl-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut log = Jsonl::open(&dir.join("log.jsonl"))?;
//! log.append(&serde_json::json!({ "step": 1 }))?;
//! let mark = log.len();
//! log.append(&serde_json::json!({ "step": 2 }))?;
//! log.truncate_to(mark)?;
//! assert_eq!(std::fs::read_to_string(log.path())?, "{\"step\":1}\n");
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::durable::io;
use crate::{Error, Result};

/// An open JSON-lines file, appended to.
#[derive(Debug)]
pub struct Jsonl {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Jsonl {
    /// Opens (creating if needed) `path` for appending. A last line without its newline
    /// (a process killed mid-write) is cut off first, so new lines never join onto it.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io(path))?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        file.read_to_end(&mut bytes).map_err(io(path))?;
        let mut len = bytes.len() as u64;
        if bytes.last().is_some_and(|&b| b != b'\n') {
            len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) as u64;
            file.set_len(len).map_err(io(path))?;
            tracing::warn!("{}: dropped an unfinished last line", path.display());
        }
        Ok(Jsonl { path: path.to_path_buf(), file, len })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes: every line appended so far, newline included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `value` as one line and hands it to the OS at once.
    pub fn append(&mut self, value: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(value)
            .map_err(|e| Error::file(&self.path, format!("cannot serialize a line ({e})")))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(io(&self.path))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Cuts the file back to its first `len` bytes (one `ftruncate`: a kill leaves either
    /// length). A file shorter than `len` lost lines it had: that is an error, not a cut.
    pub fn truncate_to(&mut self, len: u64) -> Result<()> {
        if self.len < len {
            return Err(Error::file(
                &self.path,
                format!("has {} bytes, but the checkpoint recorded {len}: the run's records were damaged", self.len),
            ));
        }
        self.file.set_len(len).map_err(io(&self.path))?;
        self.file.sync_all().map_err(io(&self.path))?;
        self.len = len;
        Ok(())
    }

    /// Makes every line appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Reads every line of a JSON-lines file as a `T`. A malformed line is an error
    /// `FILE:LINE: ...`; blank lines are skipped, and so is an unparsable last line
    /// without its newline (a write cut short by a kill).
    pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        let torn = !text.is_empty() && !text.ends_with('\n');
        let mut values = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(v) => values.push(v),
                Err(_) if torn && i + 1 == lines.len() => {}
                Err(e) => return Err(Error::msg(format!("{}:{}: malformed line ({e})", path.display(), i + 1))),
            }
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_keeps_the_bytes_before_it_and_refuses_a_shorter_file() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("x.jsonl");
        let mut log = Jsonl::open(&path)?;
        log.append(&serde_json::json!({ "lr": 0.00015000000000000001f64 }))?;
        let mark = log.len();
        let before = std::fs::read(&path)?;
        log.append(&serde_json::json!({ "lr": 2 }))?;
        log.truncate_to(mark)?;
        assert_eq!(std::fs::read(&path)?, before);
        let err = log.truncate_to(mark + 1).expect_err("shorter");
        assert!(err.to_string().contains("the checkpoint recorded"), "{err}");
        let reopened = Jsonl::open(&path)?;
        assert_eq!(reopened.len(), mark);
        Ok(())
    }

    #[test]
    fn a_torn_line_is_cut_on_open() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("x.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":")?;
        assert_eq!(Jsonl::read::<serde_json::Value>(&path)?.len(), 1);
        let log = Jsonl::open(&path)?;
        assert_eq!(log.len(), 8);
        Ok(())
    }
}
