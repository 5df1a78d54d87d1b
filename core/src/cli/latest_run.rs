//! `--resume latest` (and `--resume runs/NAME`): the newest run directory in a
//! pipeline's runs folder.
//!
//! `stagecraft run` names a new run directory `<out_dir>/<name>/YYYYMMDD-HHMMSS` (UTC),
//! with `-2`, `-3`, ... when that name is taken. The newest is the one with the latest
//! timestamp, then the highest suffix; only directories that hold a run (its
//! `config.toml`) count, and directories named otherwise (`--run-dir`) are not runs
//! of this folder.

use anyhow::bail;
use std::path::{Path, PathBuf};

/// The order of a run directory's name: its timestamp, then its suffix (1 when none);
/// `None` for a name `stagecraft run` does not give.
fn order(name: &str) -> Option<(&str, u32)> {
    let stamp = name.get(..15)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(&stamp[..8]) && &stamp[8..9] == "-" && digits(&stamp[9..])) {
        return None;
    }
    match &name[15..] {
        "" => Some((stamp, 1)),
        rest => {
            let n = rest.strip_prefix('-').filter(|n| digits(n))?;
            Some((stamp, n.parse().ok()?))
        }
    }
}

/// The run `flag DIR` names (`--resume`, `--from`): `DIR` itself when it holds a run
/// (its `config.toml`), else the newest run in it (`runs/NAME`, a pipeline's runs
/// folder).
pub fn resolve(dir: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{flag} {}: no such run directory", dir.display());
    }
    if dir.join("config.toml").is_file() {
        return Ok(dir.to_path_buf());
    }
    find(dir).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", dir.display()))
}

/// The newest run directory in `folder`; an error saying where it looked when there
/// is none.
pub fn find(folder: &Path) -> anyhow::Result<PathBuf> {
    let entries = match std::fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no run to resume: {} does not exist", folder.display())
        }
        Err(e) => bail!("--resume latest: cannot read {}: {e}", folder.display()),
    };
    let mut runs: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, path)| order(name).is_some() && path.join("config.toml").is_file())
        .collect();
    runs.sort_by(|(a, _), (b, _)| order(a).cmp(&order(b)));
    match runs.pop() {
        Some((_, path)) => Ok(path),
        None => bail!("no run to resume in {} (no run directory there)", folder.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_run_is_the_latest_timestamp_then_the_highest_suffix() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let err = find(&tmp.path().join("absent")).expect_err("absent").to_string();
        assert!(err.contains("absent") && err.contains("does not exist"), "{err}");
        let err = find(tmp.path()).expect_err("empty").to_string();
        assert!(err.contains(&tmp.path().display().to_string()) && err.contains("no run"), "{err}");
        for name in
            ["20261130-101010", "20261130-101010-2", "20261130-101010-10", "20261129-235959", "zzz", "20261130-101011"]
        {
            std::fs::create_dir_all(tmp.path().join(name))?;
            std::fs::write(tmp.path().join(name).join("config.toml"), "")?;
        }
        // The newest by name holds no run yet (killed before writing its config).
        std::fs::remove_file(tmp.path().join("20261130-101011/config.toml"))?;
        assert_eq!(find(tmp.path())?, tmp.path().join("20261130-101010-10"));
        assert_eq!(order("20261130-101010-x"), None);
        // `--resume runs/NAME` takes the newest run in it; a run directory is itself.
        assert_eq!(resolve(tmp.path(), "--resume")?, tmp.path().join("20261130-101010-10"));
        let run = tmp.path().join("20261130-101010");
        assert_eq!(resolve(&run, "--resume")?, run);
        Ok(())
    }
}
