//! Atomic, verified checkpoints that hold everything needed to resume a run exactly.
//!
//! A checkpoint is a directory `<dir>/<name>/` with three files:
//! - `tensors.safetensors`: every tensor (weights, adapters, optimizer state), any
//!   dtype, bit-exact;
//! - `meta.json`: the opaque resume state (step, stage, RNG states, data cursors,
//!   schedule position, resolved config);
//! - `manifest.json`: format version, a sequence number (orders checkpoints, oldest →
//!   newest, independently of file times), the size and SHA-256 of each file, and a
//!   SHA-256 of the manifest itself. [`load`] verifies all of them.
//!
//! # Crash safety
//!
//! [`save`] writes everything into a hidden `<dir>/.<name>.tmp-<pid>/`, fsyncs each file
//! and then the directory, and only then makes the checkpoint visible:
//!
//! 1. if `<dir>/<name>` exists, rename it to `.<name>.old-<pid>`;
//! 2. rename `.<name>.tmp-<pid>` to `<name>`; fsync `<dir>`;
//! 3. delete `.<name>.old-<pid>`.
//!
//! Renames are atomic on one file system, and a directory is only ever renamed to
//! `<name>` after all its contents are durable, so `<name>`, when it exists, is a
//! complete checkpoint. A crash before step 1 leaves the old `<name>` untouched (plus a
//! partial `.tmp`); after step 2, the new one. A crash between steps 1 and 2 leaves no
//! `<name>` but a complete old checkpoint in `.<name>.old-<pid>`: recovery
//! ([`staging::recover`], run by [`save`], [`load_latest_good`] and [`prune`]) renames
//! it back and deletes the stale `.tmp`, `.old` and `.del` directories of processes
//! that are gone. Hidden directories never appear in [`list`]. If the disk itself
//! damages a file, the checksums catch it and [`load_latest_good`] falls back to the
//! previous checkpoint. One process at a time may save into a directory.
//!
//! ```
//! use std::collections::BTreeMap;
//! use candle_core::{Device, Tensor};
//! use stagecraft_core::checkpoint::{load_latest_good, save, Checkpoint};
//!
//! let dir = std::env::temp_dir().join(format!("ckpt-mod-doc-{}", std::process::id()));
//! let mut tensors = BTreeMap::new();
//! tensors.insert("w".to_string(), Tensor::new(&[1.5f32, -0.0], &Device::Cpu)?);
//! let ckpt = Checkpoint { tensors, meta: serde_json::json!({ "step": 600, "stage": 0 }) };
//! save(&dir, "pretrain-step600", &ckpt)?;
//!
//! let (path, back, skipped) = load_latest_good(&dir, None, &Device::Cpu)?.expect("saved");
//! assert!(path.ends_with("pretrain-step600") && skipped.is_empty());
//! assert_eq!(back.meta["step"], 600);
//! assert_eq!(back.tensors["w"].to_vec1::<f32>()?[1].to_bits(), (-0.0f32).to_bits());
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod contents;
mod dir;
pub(crate) mod durable;
mod manifest;
mod read;
pub(crate) mod staging;
mod write;

pub use contents::{Checkpoint, META_FILE, TENSORS_FILE};
pub use dir::{list, load_latest_good, prune, prune_prefixed};
pub use manifest::{sha256_hex, FileEntry, Manifest, FORMAT_VERSION, MANIFEST_FILE};
pub use read::{load, verify};
pub use write::save;
