//! Reading the weights of a Hugging Face checkpoint directory.
//!
//! A directory holds either `model.safetensors` or a sharded checkpoint:
//! `model.safetensors.index.json` whose `weight_map` names the shard file of every
//! tensor. F32, F16 and BF16 tensors are accepted and converted to the model's dtype;
//! every other dtype, a missing tensor, a wrong shape or an unreadable file is an
//! [`Error::File`] naming the file and the tensor.

use crate::error::io;
use crate::error::{Error, Result};
use candle_core::safetensors::{BufferedSafetensors, Load};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    tensors: BufferedSafetensors,
}

/// The `model.safetensors.index.json` fields the host reads.
#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

/// The tensors of a checkpoint directory, by name.
pub struct WeightStore {
    shards: Vec<Shard>,
    /// Tensor name → shard.
    names: HashMap<String, usize>,
    /// The file that lists the names: the index, or the single file.
    listing: PathBuf,
    /// The names [`load`](Self::load) has been asked for.
    loaded: RefCell<HashSet<String>>,
}

fn open_shard(path: &Path) -> Result<Shard> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let tensors =
        BufferedSafetensors::new(bytes).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    Ok(Shard { path: path.to_path_buf(), tensors })
}

impl WeightStore {
    /// Opens `dir/model.safetensors`, or the shards listed by
    /// `dir/model.safetensors.index.json` when there is no single file.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.exists() || !index.exists() {
            let shard = open_shard(&single)?;
            let names = shard.tensors.tensors().into_iter().map(|(n, _)| (n, 0)).collect();
            return Ok(WeightStore { shards: vec![shard], names, listing: single, loaded: RefCell::default() });
        }
        let map: Index = super::read_json(&index)?;
        let files: BTreeSet<&String> = map.weight_map.values().collect();
        let mut shards = Vec::with_capacity(files.len());
        let mut names = HashMap::with_capacity(map.weight_map.len());
        for file in files {
            if Path::new(file).components().count() != 1 {
                return Err(Error::file(
                    &index,
                    format!("shard `{file}` is not a file name in the checkpoint directory"),
                ));
            }
            let i = shards.len();
            names.extend(map.weight_map.iter().filter(|(_, f)| *f == file).map(|(n, _)| (n.clone(), i)));
            shards.push(open_shard(&dir.join(file))?);
        }
        Ok(WeightStore { shards, names, listing: index, loaded: RefCell::default() })
    }

    /// Whether the checkpoint has a tensor of that name.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The file that lists the tensor names: `model.safetensors`, or the index of a
    /// sharded checkpoint.
    pub fn listing(&self) -> &Path {
        &self.listing
    }

    /// The names of the tensors no [`load`](Self::load) has asked for, sorted.
    pub fn unloaded(&self) -> Vec<String> {
        let loaded = self.loaded.borrow();
        let mut names: Vec<String> = self.names.keys().filter(|n| !loaded.contains(*n)).cloned().collect();
        names.sort();
        names
    }

    /// Tensor `name`, which must have `shape` and a float dtype, as `dtype` on `device`.
    pub fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(&i) = self.names.get(name) else {
            return Err(Error::file(&self.listing, format!("missing tensor `{name}`")));
        };
        self.loaded.borrow_mut().insert(name.to_string());
        let shard = &self.shards[i];
        let at = |msg: String| Error::file(&shard.path, format!("tensor `{name}`: {msg}"));
        let view = shard
            .tensors
            .get(name)
            .map_err(|_| Error::file(&shard.path, format!("missing tensor `{name}` (listed in {INDEX_FILE})")))?;
        if view.shape() != shape {
            return Err(at(format!("expected shape {shape:?}, found {:?}", view.shape())));
        }
        let t = view.load(device).map_err(|e| at(e.to_string()))?;
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(at(format!("unsupported dtype {:?} (expected F32, F16 or BF16)", view.dtype())));
        }
        t.to_dtype(dtype).map_err(|e| at(e.to_string()))
    }
}
