//! Loading a checkpoint, after verifying the manifest and every file it lists.
//!
//! A file shorter than the manifest says is reported as `truncated`, any other
//! difference as `checksum mismatch`; either way the one-line error names the file.
//!
//! ```
//! use candle_core::Device;
//! use stagecraft_core::checkpoint::{load, save, Checkpoint};
//! let dir = std::env::temp_dir().join(format!("ckpt-load-doc-{}", std::process::id()));
//! let ckpt = Checkpoint { tensors: Default::default(), meta: serde_json::json!({ "step": 5 }) };
//! let path = save(&dir, "step-5", &ckpt)?;
//! assert_eq!(load(&path, &Device::Cpu)?.meta["step"], 5);
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;

use super::contents::{Checkpoint, META_FILE, TENSORS_FILE};
use super::durable;
use super::manifest::{sha256_hex, Manifest, MANIFEST_FILE};
use crate::{Error, Result};

/// Loads the checkpoint directory `path` onto `device`, verifying every checksum.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let (_, mut files) = read_verified(path)?;
    let mut take = |name: &str| {
        files.remove(name).ok_or_else(|| Error::file(path.join(MANIFEST_FILE), format!("does not list {name}")))
    };
    let (meta_bytes, tensor_bytes) = (take(META_FILE)?, take(TENSORS_FILE)?);
    let meta_path = path.join(META_FILE);
    let meta = serde_json::from_slice(&meta_bytes).map_err(|e| Error::file(&meta_path, format!("malformed ({e})")))?;
    let tensors_path = path.join(TENSORS_FILE);
    let tensors = candle_core::safetensors::load_buffer(&tensor_bytes, device)
        .map_err(|e| Error::file(&tensors_path, format!("cannot load tensors ({e})")))?
        .into_iter()
        .collect();
    Ok(Checkpoint { tensors, meta })
}

/// Verifies the checkpoint directory `path` without loading tensors; returns its
/// manifest.
pub fn verify(path: &Path) -> Result<Manifest> {
    Ok(read_verified(path)?.0)
}

/// Reads the manifest and every file it lists, checking sizes and checksums.
fn read_verified(path: &Path) -> Result<(Manifest, BTreeMap<String, Vec<u8>>)> {
    let manifest_path = path.join(MANIFEST_FILE);
    if !manifest_path.exists() {
        return Err(Error::file(&manifest_path, "missing (not a checkpoint, or an unfinished one)"));
    }
    let manifest = Manifest::parse(&manifest_path, &durable::read(&manifest_path)?)?;
    for required in [TENSORS_FILE, META_FILE] {
        if !manifest.files.contains_key(required) {
            return Err(Error::file(&manifest_path, format!("does not list {required}")));
        }
    }
    let mut files = BTreeMap::new();
    for (file_name, entry) in &manifest.files {
        if file_name.is_empty() || file_name.starts_with('.') || file_name.contains(['/', '\\']) {
            return Err(Error::file(&manifest_path, format!("lists a bad file name `{file_name}`")));
        }
        let file_path = path.join(file_name);
        let bytes = durable::read(&file_path)?;
        let len = bytes.len() as u64;
        if len < entry.bytes {
            return Err(Error::file(&file_path, format!("truncated ({len} of {} bytes)", entry.bytes)));
        }
        if len != entry.bytes {
            let msg = format!("checksum mismatch ({len} bytes, expected {})", entry.bytes);
            return Err(Error::file(&file_path, msg));
        }
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(Error::file(&file_path, "checksum mismatch"));
        }
        files.insert(file_name.clone(), bytes);
    }
    Ok((manifest, files))
}

#[cfg(test)]
mod tests {
    use super::super::contents::fixtures::sample;
    use super::super::write::save;
    use super::*;
    use candle_core::{DType, Tensor};

    /// The tensor's raw bytes, for bit-exact comparison of any dtype.
    fn bits(t: &Tensor) -> anyhow::Result<Vec<u64>> {
        let t = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::F32 => t.to_vec1::<f32>()?.iter().map(|x| x.to_bits() as u64).collect(),
            // bf16 → f32 is exact and keeps NaN payloads.
            DType::BF16 => bits(&t.to_dtype(DType::F32)?)?,
            DType::I64 => t.to_vec1::<i64>()?.iter().map(|&x| x as u64).collect(),
            DType::U32 => t.to_vec1::<u32>()?.iter().map(|&x| x as u64).collect(),
            other => anyhow::bail!("untested dtype {other:?}"),
        })
    }

    #[test]
    fn round_trip_is_bit_exact_for_every_dtype_and_the_meta() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let ckpt = sample(600)?;
        let path = save(tmp.path(), "step-600", &ckpt)?;
        let back = load(&path, &Device::Cpu)?;
        assert_eq!(back.meta, ckpt.meta);
        assert_eq!(back.meta["rng"].as_u64(), Some(u64::MAX - 600));
        assert_eq!(back.tensors.keys().collect::<Vec<_>>(), ckpt.tensors.keys().collect::<Vec<_>>());
        for (name, t) in &ckpt.tensors {
            let b = &back.tensors[name];
            assert_eq!((b.dtype(), b.dims()), (t.dtype(), t.dims()), "{name}");
            assert_eq!(bits(b)?, bits(t)?, "{name}");
        }
        Ok(())
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_mismatch_naming_the_file() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = save(tmp.path(), "c", &sample(1)?)?;
        let file = path.join(TENSORS_FILE);
        let mut bytes = std::fs::read(&file)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&file, &bytes)?;
        let err = load(&path, &Device::Cpu).expect_err("corrupt");
        assert_eq!(err.to_string(), format!("{}: checksum mismatch", file.display()));
        Ok(())
    }

    #[test]
    fn a_cut_file_is_reported_truncated() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = save(tmp.path(), "c", &sample(1)?)?;
        for name in [META_FILE, TENSORS_FILE, MANIFEST_FILE] {
            let file = path.join(name);
            let bytes = std::fs::read(&file)?;
            std::fs::write(&file, &bytes[..bytes.len() / 2])?;
            let err = load(&path, &Device::Cpu).expect_err("truncated");
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("{}: truncated", file.display())), "{msg}");
            assert_eq!(msg.lines().count(), 1);
            std::fs::write(&file, &bytes)?;
        }
        load(&path, &Device::Cpu)?;
        Ok(())
    }

    #[test]
    fn a_directory_without_manifest_is_not_a_checkpoint() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let err = load(tmp.path(), &Device::Cpu).expect_err("empty dir");
        assert!(err.to_string().contains("manifest.json: missing"), "{err}");
        Ok(())
    }
}
