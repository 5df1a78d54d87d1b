//! A directory of checkpoints: listing by sequence number, finding the newest one that
//! verifies, pruning old ones.
//!
//! Only non-hidden subdirectories count; the hidden ones belong to saves and prunes in
//! progress (or crashed, see [`super::staging::recover`]).
//!
//! ```
//! use stagecraft_core::checkpoint::{list, prune, save, Checkpoint};
//! let dir = std::env::temp_dir().join(format!("ckpt-dir-doc-{}", std::process::id()));
//! let ckpt = Checkpoint { tensors: Default::default(), meta: serde_json::json!({}) };
//! for name in ["b", "a", "c"] {
//!     save(&dir, name, &ckpt)?;
//! }
//! let names: Vec<String> = list(&dir)?.into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["b", "a", "c"]); // save order, not name order
//! prune(&dir, 1, &["b"])?;
//! assert_eq!(list(&dir)?.len(), 2); // the newest, plus the protected one
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::contents::Checkpoint;
use super::durable;
use super::manifest::{Manifest, MANIFEST_FILE};
use super::read::load;
use super::staging::{self, hidden, Stage};
use crate::{Error, Result};

/// `(seq, name, path)` of checkpoints whose manifest gives a sequence number.
type Ordered = Vec<(u64, String, PathBuf)>;

/// `(name, path)` of checkpoint directories without a readable manifest.
type Unordered = Vec<(String, PathBuf)>;

/// The checkpoint directories in `dir` (non-hidden), split into those whose manifest
/// gives a sequence number, sorted by (seq, name), and those whose manifest is missing
/// or unreadable.
fn scan(dir: &Path) -> Result<(Ordered, Unordered)> {
    let (mut ordered, mut unordered) = (Vec::new(), Vec::new());
    if !dir.exists() {
        return Ok((ordered, unordered));
    }
    for entry in std::fs::read_dir(dir).map_err(durable::io(dir))? {
        let entry = entry.map_err(durable::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let seq = std::fs::read(path.join(MANIFEST_FILE)).ok().and_then(|b| Manifest::peek_seq(&b));
        match seq {
            Some(seq) => ordered.push((seq, name, path)),
            None => unordered.push((name, path)),
        }
    }
    ordered.sort();
    unordered.sort();
    Ok((ordered, unordered))
}

/// `(seq, name, path)` of the checkpoints in `dir`, oldest first.
pub(crate) fn list_seq(dir: &Path) -> Result<Ordered> {
    Ok(scan(dir)?.0)
}

/// The checkpoints in `dir` as `(name, path)`, oldest → newest by the sequence number
/// in their manifests (not by file times). Directories without a readable manifest are
/// left out (see [`load_latest_good`], which reports them); a missing `dir` is empty.
pub fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(list_seq(dir)?.into_iter().map(|(_, name, path)| (name, path)).collect())
}

/// The newest checkpoint in `dir` whose name starts with `prefix` (all when `None`)
/// that verifies, loaded onto `device`, with one error per newer or unreadable
/// checkpoint that was skipped as corrupt (for the caller to log: "checkpoint X is
/// corrupt (...), using Y"). Leftovers of crashed saves are tidied first.
///
/// `Ok(None)` when there is no candidate at all; an error when there are candidates
/// but none verifies, so a run never silently restarts from scratch.
pub fn load_latest_good(
    dir: &Path,
    prefix: Option<&str>,
    device: &Device,
) -> Result<Option<(PathBuf, Checkpoint, Vec<Error>)>> {
    if !dir.exists() {
        return Ok(None);
    }
    for action in staging::recover(dir)? {
        tracing::warn!("{}: {action}", dir.display());
    }
    let (ordered, unordered) = scan(dir)?;
    let wanted = |name: &str| prefix.is_none_or(|p| name.starts_with(p));
    let mut skipped = Vec::new();
    for (_, path) in unordered.iter().filter(|(name, _)| wanted(name)) {
        // Fails (no sequence number means no valid manifest); kept for its message.
        if let Err(e) = load(path, device) {
            skipped.push(e);
        }
    }
    let candidates = ordered.iter().rev().filter(|(_, name, _)| wanted(name));
    for (_, _, path) in candidates {
        match load(path, device) {
            Ok(ckpt) => return Ok(Some((path.clone(), ckpt, skipped))),
            Err(e) => skipped.push(e),
        }
    }
    match skipped.first() {
        None => Ok(None),
        Some(first) => Err(Error::msg(format!(
            "no checkpoint in {} verifies ({} corrupt, e.g. {first})",
            dir.display(),
            skipped.len()
        ))),
    }
}

/// Removes all but the newest `keep` checkpoints of `dir`, never one named in
/// `protect`; returns the names removed. Each is renamed to a hidden name before it
/// is deleted, so a crash never leaves a half-deleted checkpoint in the listing.
/// Directories without a readable manifest are left alone.
pub fn prune(dir: &Path, keep: usize, protect: &[&str]) -> Result<Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    for action in staging::recover(dir)? {
        tracing::warn!("{}: {action}", dir.display());
    }
    let all = list_seq(dir)?;
    let old = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, name, path) in all.into_iter().take(old) {
        if protect.contains(&name.as_str()) {
            continue;
        }
        let doomed = dir.join(hidden(&name, Stage::Del, std::process::id()));
        durable::rename(&path, &doomed)?;
        durable::sync_dir(dir)?;
        durable::remove_dir_all(&doomed)?;
        removed.push(name);
    }
    Ok(removed)
}

/// Removes all but the newest `keep` checkpoints of `dir` whose names start with
/// `prefix`, leaving every other checkpoint alone; returns the names removed. Meant to
/// run after a save: the newest is durable before an older one goes.
pub fn prune_prefixed(dir: &Path, prefix: &str, keep: usize) -> Result<Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let matching: Vec<(u64, String, PathBuf)> =
        list_seq(dir)?.into_iter().filter(|(_, name, _)| name.starts_with(prefix)).collect();
    let old = matching.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, name, path) in matching.into_iter().take(old) {
        let doomed = dir.join(hidden(&name, Stage::Del, std::process::id()));
        durable::rename(&path, &doomed)?;
        durable::sync_dir(dir)?;
        durable::remove_dir_all(&doomed)?;
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::super::contents::fixtures::sample;
    use super::super::contents::TENSORS_FILE;
    use super::super::write::save;
    use super::*;

    fn names(dir: &Path) -> Result<Vec<String>> {
        Ok(list(dir)?.into_iter().map(|(n, _)| n).collect())
    }

    #[test]
    fn latest_good_falls_back_when_the_newest_is_corrupt() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        save(d, "s0-step100", &sample(100)?)?;
        save(d, "s0-step200", &sample(200)?)?;
        let newest = save(d, "s0-step300", &sample(300)?)?;
        save(d, "other-step400", &sample(400)?)?;
        let file = newest.join(TENSORS_FILE);
        let len = std::fs::metadata(&file)?.len();
        std::fs::OpenOptions::new().write(true).open(&file)?.set_len(len - 3)?;

        let (path, ckpt, skipped) = load_latest_good(d, Some("s0-"), &Device::Cpu)?.expect("a good checkpoint");
        assert_eq!(path, d.join("s0-step200"));
        assert_eq!(ckpt.meta["step"], 200);
        assert_eq!(skipped.len(), 1);
        let msg = skipped[0].to_string();
        assert!(msg.starts_with(&format!("{}: truncated", file.display())), "{msg}");

        let (path, _, skipped) = load_latest_good(d, None, &Device::Cpu)?.expect("any");
        assert_eq!((path, skipped.len()), (d.join("other-step400"), 0));
        Ok(())
    }

    #[test]
    fn nothing_to_load_is_none_but_all_corrupt_is_an_error() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        assert!(load_latest_good(&d.join("absent"), None, &Device::Cpu)?.is_none());
        assert!(load_latest_good(d, None, &Device::Cpu)?.is_none());
        let only = save(d, "a", &sample(1)?)?;
        std::fs::write(only.join(MANIFEST_FILE), b"{\"format\": 1, \"na")?;
        assert_eq!(names(d)?, Vec::<String>::new());
        let err = load_latest_good(d, None, &Device::Cpu).expect_err("all corrupt");
        assert!(err.to_string().contains("1 corrupt"), "{err}");
        Ok(())
    }

    #[test]
    fn leftovers_of_a_crashed_save_are_ignored_then_cleaned() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        save(d, "a", &sample(1)?)?;
        // A save of `b` killed halfway by a process that no longer exists.
        let crashed = d.join(hidden("b", Stage::Tmp, 4_000_000_000));
        std::fs::create_dir(&crashed)?;
        std::fs::write(crashed.join(TENSORS_FILE), b"partial")?;
        assert_eq!(names(d)?, ["a"]);
        let (path, _, skipped) = load_latest_good(d, None, &Device::Cpu)?.expect("a");
        assert_eq!((path, skipped.len()), (d.join("a"), 0));
        assert!(!crashed.exists());
        Ok(())
    }

    #[test]
    fn listing_follows_sequence_numbers_and_prune_keeps_protected() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        for name in ["z", "y", "x", "w"] {
            save(d, name, &sample(1)?)?;
        }
        save(d, "y", &sample(2)?)?; // re-saved: now the newest
        assert_eq!(names(d)?, ["z", "x", "w", "y"]);
        assert_eq!(prune(d, 2, &["z"])?, ["x"]);
        assert_eq!(names(d)?, ["z", "w", "y"]);
        assert_eq!(prune(d, 0, &[])?, ["z", "w", "y"]);
        assert!(std::fs::read_dir(d)?.next().is_none());
        Ok(())
    }

    #[test]
    fn pruning_by_prefix_keeps_the_newest_of_those_and_every_other() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        for name in ["s-1", "end", "s-2", "s-3", "resume", "s-4"] {
            save(d, name, &sample(1)?)?;
        }
        assert_eq!(prune_prefixed(d, "s-", 2)?, ["s-1", "s-2"]);
        assert_eq!(names(d)?, ["end", "s-3", "resume", "s-4"]);
        assert_eq!(prune_prefixed(d, "s-", 2)?, Vec::<String>::new());
        assert_eq!(prune_prefixed(&d.join("absent"), "s-", 1)?, Vec::<String>::new());
        Ok(())
    }
}
