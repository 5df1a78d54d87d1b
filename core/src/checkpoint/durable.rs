//! Durable file-system steps: write-and-fsync, fsync a directory, rename, remove, each
//! mapping failures to [`Error::Io`] naming the path.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::Result;

pub use crate::error::io;

/// Creates (or truncates) `path`, writes `data` and fsyncs the file.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Replaces the file at `path` with `data` atomically: written to a hidden temporary
/// file beside it, fsynced, renamed over `path`, and the directory fsynced. A kill at
/// any moment leaves either the old file or the new one, never a partial one.
pub fn replace(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    write_synced(&tmp, data)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

/// Fsyncs a file that was written by someone else (e.g. a library writing to a path).
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).map_err(io(path))?.sync_all().map_err(io(path))
}

/// Fsyncs a directory so that the entries created, renamed or removed in it are
/// durable. A no-op where directories cannot be opened (not Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir).map_err(io(dir))?.sync_all().map_err(io(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(io(path))
}

/// Renames `from` to `to` (atomic within one file system).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(io(from))
}

/// Removes a directory tree; a tree that is already gone is not an error.
pub fn remove_dir_all(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_missing_dir_is_fine_and_io_errors_name_the_path() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        remove_dir_all(&tmp.path().join("nope"))?;
        let err = read(&tmp.path().join("missing.bin")).expect_err("missing");
        let file = tmp.path().join("config.toml");
        replace(&file, b"old")?;
        replace(&file, b"new")?;
        assert_eq!(read(&file)?, b"new");
        assert_eq!(std::fs::read_dir(tmp.path())?.count(), 1, "no temporary file is left");
        assert!(err.to_string().contains("missing.bin"), "{err}");
        Ok(())
    }
}
