//! Saving a checkpoint atomically: write a hidden temp directory, fsync, rename it in.
//!
//! ```
//! use stagecraft_core::checkpoint::{save, Checkpoint};
//! let dir = std::env::temp_dir().join(format!("ckpt-save-doc-{}", std::process::id()));
//! let ckpt = Checkpoint { tensors: Default::default(), meta: serde_json::json!({ "step": 1 }) };
//! let path = save(&dir, "step-1", &ckpt)?;
//! assert!(path.join("manifest.json").exists());
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::contents::{Checkpoint, META_FILE, TENSORS_FILE};
use super::dir::list_seq;
use super::durable;
use super::manifest::{FileEntry, Manifest, MANIFEST_FILE};
use super::staging::{self, hidden, Stage};
use crate::{Error, Result};

/// Writes `ckpt` to `<dir>/<name>/` (replacing a checkpoint of that name) and returns
/// that path. `dir` is created if missing; leftovers of crashed saves are tidied first.
/// The new checkpoint's sequence number is one more than the largest in `dir`.
pub fn save(dir: &Path, name: &str, ckpt: &Checkpoint) -> Result<PathBuf> {
    staging::check_name(name)?;
    std::fs::create_dir_all(dir).map_err(durable::io(dir))?;
    for action in staging::recover(dir)? {
        tracing::warn!("{}: {action}", dir.display());
    }
    let seq = list_seq(dir)?.last().map_or(1, |(seq, _, _)| seq + 1);

    let pid = std::process::id();
    let tmp = dir.join(hidden(name, Stage::Tmp, pid));
    durable::remove_dir_all(&tmp)?; // an earlier failed save of this name in this process
    std::fs::create_dir(&tmp).map_err(durable::io(&tmp))?;
    if let Err(e) = write_files(&tmp, name, seq, ckpt) {
        let _ = durable::remove_dir_all(&tmp);
        return Err(e);
    }
    durable::sync_dir(dir)?;

    let target = dir.join(name);
    let old = dir.join(hidden(name, Stage::Old, pid));
    let replacing = target.symlink_metadata().is_ok();
    if replacing {
        durable::remove_dir_all(&old)?;
        durable::rename(&target, &old)?;
    }
    durable::rename(&tmp, &target)?;
    durable::sync_dir(dir)?;
    if replacing {
        durable::remove_dir_all(&old)?;
        durable::sync_dir(dir)?;
    }
    Ok(target)
}

/// Writes and fsyncs the tensors, the meta document and, last, the manifest.
fn write_files(tmp: &Path, name: &str, seq: u64, ckpt: &Checkpoint) -> Result<()> {
    let mut manifest = Manifest::new(name, seq);

    let tensors_path = tmp.join(TENSORS_FILE);
    let tensors: HashMap<&str, candle_core::Tensor> =
        ckpt.tensors.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
    candle_core::safetensors::save(&tensors, &tensors_path)
        .map_err(|e| Error::file(&tensors_path, format!("cannot write tensors: {e}")))?;
    durable::sync_file(&tensors_path)?;
    manifest.files.insert(TENSORS_FILE.into(), FileEntry::of_file(&tensors_path)?);

    let meta_path = tmp.join(META_FILE);
    let mut meta = serde_json::to_vec_pretty(&ckpt.meta)
        .map_err(|e| Error::file(&meta_path, format!("cannot serialize meta: {e}")))?;
    meta.push(b'\n');
    durable::write_synced(&meta_path, &meta)?;
    manifest.files.insert(META_FILE.into(), FileEntry::of_bytes(&meta));

    durable::write_synced(&tmp.join(MANIFEST_FILE), &manifest.seal()?)?;
    durable::sync_dir(tmp)
}

#[cfg(test)]
mod tests {
    use super::super::contents::fixtures::sample;
    use super::*;

    #[test]
    fn saving_over_a_name_replaces_it_with_a_newer_sequence_number() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        save(tmp.path(), "a", &sample(1)?)?;
        save(tmp.path(), "b", &sample(2)?)?;
        let path = save(tmp.path(), "a", &sample(3)?)?;
        let m = Manifest::parse(Path::new("m"), &std::fs::read(path.join(MANIFEST_FILE))?)?;
        assert_eq!(m.seq, 3);
        let names: Vec<_> = std::fs::read_dir(tmp.path())?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(names.len(), 2, "no hidden directories left: {names:?}");
        Ok(())
    }

    #[test]
    fn bad_names_are_refused() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let err = save(tmp.path(), "../x", &sample(1)?).expect_err("bad name");
        assert!(err.to_string().contains("`../x`"), "{err}");
        Ok(())
    }
}
