//! Where a model named on the command line or in a pipeline lives: a local directory,
//! or a repository id (`org/name`, `org/name@revision`) found offline in the local
//! Hugging Face cache.
//!
//! A local directory that exists always wins over the cache. The cache is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out as
//! `huggingface_hub` writes it: `models--org--name/refs/<ref>` holds the commit hash of
//! a ref (`main` unless `@revision` names another), and
//! `models--org--name/snapshots/<hash>/` the files (usually symlinks into `blobs/`).
//! A revision is a ref name or a commit hash. Nothing is downloaded.
//!
//! ```
//! use stagecraft_core::model::hub_cache::{repo_id, resolve_model};
//! use std::path::Path;
//! assert_eq!(repo_id("HuggingFaceTB/SmolLM2-135M@main"), Some(("HuggingFaceTB", "SmolLM2-135M", "main")));
//! assert_eq!(repo_id("./models/tiny"), None);
//! let here = resolve_model(".", Path::new("/")).unwrap();
//! assert_eq!(here.dir, Path::new("/."));
//! assert!(here.cache.is_none());
//! ```

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A model directory and, when it came from the Hugging Face cache, the repository id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The directory holding `config.json` and the weights.
    pub dir: PathBuf,
    /// `org/name@revision` when the directory is a snapshot in the cache.
    pub cache: Option<String>,
}

/// Splits `org/name[@revision]` (revision default `main`); `None` for anything that
/// is not shaped like a Hugging Face repository id (absolute, `./`, more parts).
pub fn repo_id(spec: &str) -> Option<(&str, &str, &str)> {
    let (repo, rev) = match spec.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (spec, "main"),
    };
    let (org, name) = repo.split_once('/')?;
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let rev_ok = !rev.is_empty() && !rev.contains("..") && !rev.starts_with('/');
    (part_ok(org) && part_ok(name) && rev_ok).then_some((org, name, rev))
}

/// The Hugging Face hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let home = var("HOME").unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Resolves the model `spec`: `base.join(spec)` when that is a directory, else the
/// snapshot of repository id `spec` in the Hugging Face cache. Each model found in the
/// cache is logged once, with its snapshot directory.
pub fn resolve_model(spec: &str, base: &Path) -> Result<ResolvedModel> {
    let local = base.join(spec);
    if local.is_dir() {
        return Ok(ResolvedModel { dir: local, cache: None });
    }
    let Some((org, name, rev)) = repo_id(spec) else {
        return Err(Error::msg(format!("model `{spec}`: no such directory ({})", local.display())));
    };
    let repo = hub_cache_dir().join(format!("models--{org}--{name}"));
    let dir = snapshot(&repo, rev).ok_or_else(|| not_found(spec, &repo, rev))?;
    if !dir.join(crate::model::hf::CONFIG_FILE).is_file() {
        return Err(Error::msg(format!(
            "model `{spec}`: the cached snapshot {} has no {} (download the full repository)",
            dir.display(),
            crate::model::hf::CONFIG_FILE
        )));
    }
    log_once(spec, &dir);
    Ok(ResolvedModel { dir, cache: Some(format!("{org}/{name}@{rev}")) })
}

/// [`resolve_model`] for a path given on the command line (relative to the current
/// directory): the directory to load.
pub fn resolve_model_path(spec: &Path) -> Result<PathBuf> {
    Ok(resolve_model(&spec.to_string_lossy(), Path::new(""))?.dir)
}

/// The snapshot of `rev` (a commit hash, or a ref under `refs/`) in cache repo `repo`.
fn snapshot(repo: &Path, rev: &str) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    let direct = snapshots.join(rev);
    if is_hash(rev) && direct.is_dir() {
        return Some(direct);
    }
    let hash = std::fs::read_to_string(repo.join("refs").join(rev)).ok()?;
    let dir = snapshots.join(hash.trim());
    dir.is_dir().then_some(dir)
}

/// Whether `rev` looks like a git commit hash (hex, 7 to 64 characters).
fn is_hash(rev: &str) -> bool {
    (7..=64).contains(&rev.len()) && rev.chars().all(|c| c.is_ascii_hexdigit())
}

fn not_found(spec: &str, repo: &Path, rev: &str) -> Error {
    if !repo.is_dir() {
        return Error::msg(format!(
            "model `{spec}`: not a directory and not in the Hugging Face cache (looked in {})",
            repo.display()
        ));
    }
    Error::msg(format!(
        "model `{spec}`: revision `{rev}` is not in the Hugging Face cache (looked in {} and {})",
        repo.join("refs").join(rev).display(),
        repo.join("snapshots").join(rev).display()
    ))
}

/// Logs where `spec` was found, once per process and directory.
fn log_once(spec: &str, dir: &Path) {
    static SEEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let first = SEEN.lock().map(|mut s| s.insert(dir.to_path_buf())).unwrap_or(true);
    if first {
        tracing::info!("model `{spec}`: from the Hugging Face cache, {}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert_eq!(repo_id("a/b"), Some(("a", "b", "main")));
        assert_eq!(repo_id("a/b@0123abc"), Some(("a", "b", "0123abc")));
        for p in ["/a/b", "./a", "../a/b", "a/b/c", "a", "a/b@", "a/b@../x", "a b/c"] {
            assert_eq!(repo_id(p), None, "{p}");
        }
    }

    #[test]
    fn hashes_are_hex() {
        assert!(is_hash("0123abcdef"));
        assert!(!is_hash("main"));
        assert!(!is_hash("abc"));
    }
}
