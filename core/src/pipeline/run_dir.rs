//! A run directory, owned by one run at a time.
//!
//! A run holds an exclusive lock on `<run_dir>/.lock` for as long as it lives (the OS
//! drops it when the process ends, however it ends), so a second process can neither
//! write into a run that is going on nor resume it twice. A new run refuses a directory
//! that already holds a run (its `config.toml`): that one is continued with
//! `--resume`, never appended to. Every file the run writes whole (`config.toml`,
//! `data.json`, `run.json`, `plugins.json`, `retention.json`, `report.html`) is
//! replaced atomically ([`durable::replace`]); the logs are append-only and cut back by
//! byte offsets ([`super::records`]).

use crate::bail;
use crate::checkpoint::durable::{self, io};
use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The file a run's resolved config is written to: its presence means the directory
/// holds a run.
pub(crate) const CONFIG_FILE: &str = "config.toml";
/// The lock file.
const LOCK_FILE: &str = ".lock";
/// How many `-2`, `-3`, ... suffixes [`RunDir::create_unique`] tries.
const MAX_SUFFIX: u32 = 1000;

/// An open, locked run directory.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// The directory of a new run at `path`: created if needed; one that holds a run
    /// already (or that another process holds) is refused.
    pub fn create(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        let dir = RunDir::lock(path)?;
        if path.join(CONFIG_FILE).exists() {
            return Err(Error::msg(format!(
                "{}: holds a run already; continue it with `stagecraft run --resume {}` or choose another --run-dir",
                path.display(),
                path.display()
            )));
        }
        Ok(dir)
    }

    /// A new directory `<parent>/<stem>`, or `<stem>-2`, `<stem>-3`, ... when that name
    /// is taken (two runs started in the same second never share a directory).
    pub fn create_unique(parent: &Path, stem: &str) -> Result<RunDir> {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        for k in 1..=MAX_SUFFIX {
            let path = if k == 1 { parent.join(stem) } else { parent.join(format!("{stem}-{k}")) };
            match std::fs::create_dir(&path) {
                Ok(()) => return RunDir::create(&path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(Error::msg(format!("{}: {MAX_SUFFIX} runs named `{stem}` exist already", parent.display())))
    }

    /// The directory of an existing run, to resume it.
    pub fn reopen(path: &Path) -> Result<RunDir> {
        if !path.join(CONFIG_FILE).is_file() {
            bail!("{}: not a run directory (no {CONFIG_FILE})", path.display());
        }
        let dir = RunDir::lock(path)?;
        dir.check_checkpoints()?;
        Ok(dir)
    }

    /// Whether another process holds the run in `path` now (its lock is taken).
    pub fn is_busy(path: &Path) -> bool {
        let Ok(file) = File::options().write(true).open(path.join(LOCK_FILE)) else { return false };
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    fn lock(path: &Path) -> Result<RunDir> {
        let lock_path = path.join(LOCK_FILE);
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => Ok(RunDir { path: path.to_path_buf(), _lock: lock }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(Error::msg(format!("{}: another stagecraft process is running in this directory", path.display())))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(&lock_path)(e)),
        }
    }

    /// Entries of `checkpoints/` that are not checkpoint directories (a file where a
    /// checkpoint was) would only fail when the run next saves there: refused now.
    fn check_checkpoints(&self) -> Result<()> {
        let dir = self.path.join("checkpoints");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !entry.path().is_dir() {
                return Err(Error::msg(format!(
                    "{}: not a checkpoint directory; move it out of the way and resume again",
                    entry.path().display()
                )));
            }
        }
        Ok(())
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Replaces the file `name` with `data`, atomically.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        durable::replace(&self.path.join(name), data)
    }

    /// Replaces the file `name` with `value` as pretty JSON, atomically.
    pub fn write_json(&self, name: &str, value: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::file(self.join(name), format!("cannot serialize ({e})")))?;
        self.write(name, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_owned_by_one_run() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let first = RunDir::create(&tmp.path().join("run"))?;
        let err = RunDir::create(&tmp.path().join("run")).expect_err("locked");
        assert!(err.to_string().contains("another stagecraft process"), "{err}");
        first.write(CONFIG_FILE, b"[run]\n")?;
        drop(first);
        let err = RunDir::create(&tmp.path().join("run")).expect_err("holds a run");
        assert!(err.to_string().contains("--resume"), "{err}");
        RunDir::reopen(&tmp.path().join("run"))?;
        Ok(())
    }

    #[test]
    fn runs_started_together_get_their_own_directories() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let a = RunDir::create_unique(tmp.path(), "20261130-101010")?;
        let b = RunDir::create_unique(tmp.path(), "20261130-101010")?;
        assert!(a.path().ends_with("20261130-101010") && b.path().ends_with("20261130-101010-2"));
        Ok(())
    }

    #[test]
    fn a_file_where_a_checkpoint_was_is_refused_before_resuming() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let run = tmp.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints"))?;
        std::fs::write(run.join(CONFIG_FILE), "")?;
        std::fs::write(run.join("checkpoints/resume"), "")?;
        let err = RunDir::reopen(&run).expect_err("a file");
        assert!(err.to_string().contains("checkpoints/resume: not a checkpoint directory"), "{err}");
        Ok(())
    }
}
