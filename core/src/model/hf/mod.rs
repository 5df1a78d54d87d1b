//! Hugging Face checkpoint directories: loading `config.json` plus `model.safetensors`
//! (or a sharded `model.safetensors.index.json`), and writing them
//! ([`save_model_dir`]).
//!
//! [`load_model`] reads `model_type` from `config.json` and builds the matching host
//! model (`llama` → [`Llama`], `bert` → [`Bert`]). Every problem with the directory is
//! one line naming the file, and the tensor or field where there is one.
//!
//! ```no_run
//! # use candle_core::Device;
//! let model = stagecraft_core::model::load_model("checkpoints/llama-tiny".as_ref(), &Device::Cpu)?;
//! println!("{} layers", model.info().num_layers);
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

mod save;
mod store;

pub use save::save_model_dir;
pub use store::{WeightStore, INDEX_FILE, SINGLE_FILE};

use super::{Bert, Llama, Model};
use crate::error::io;
use crate::error::{Error, Result};
use candle_core::{DType, Device};
use serde::de::DeserializeOwned;
use std::path::Path;

/// The config file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// Model types [`load_model`] builds.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "bert"];

/// Reads a JSON file into `T`; a syntax or schema error names the file, line and column.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid json: {e}")))
}

/// How many unused tensor names a warning lists before "and N more".
const NAMES_SHOWN: usize = 5;

/// Buffers older checkpoints store that no model reads (transformers ignores them too).
fn is_stored_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || name.ends_with("embeddings.position_ids")
}

/// Warns, one line each, about the tensors of `store` the model did not load: whole
/// layers at or beyond `num_layers` (their names start with `layer_prefix` and the layer
/// index, as `model.layers.`), then any other tensor, by name. Loading went on without
/// them, as transformers does ("Some weights of the model checkpoint were not used").
pub(crate) fn warn_unused(store: &WeightStore, layer_prefix: &str, num_layers: usize) {
    let unused: Vec<String> = store.unloaded().into_iter().filter(|n| !is_stored_buffer(n)).collect();
    let layer_of = |name: &str| name.strip_prefix(layer_prefix)?.split('.').next()?.parse::<usize>().ok();
    let (beyond, other): (Vec<String>, Vec<String>) =
        unused.into_iter().partition(|n| layer_of(n).is_some_and(|l| l >= num_layers));
    if let Some(last) = beyond.iter().filter_map(|n| layer_of(n)).max() {
        let ignored =
            if last == num_layers { format!("layer {last} is") } else { format!("layers {num_layers}-{last} are") };
        tracing::warn!(
            "{}: holds {} layers, but {CONFIG_FILE} has num_hidden_layers = {num_layers}: {ignored} ignored",
            store.listing().display(),
            last + 1
        );
    }
    if !other.is_empty() {
        let shown: Vec<String> = other.iter().take(NAMES_SHOWN).map(|n| format!("`{n}`")).collect();
        let more = match other.len().saturating_sub(NAMES_SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        let count = match other.len() {
            1 => "1 tensor is".to_string(),
            n => format!("{n} tensors are"),
        };
        tracing::warn!(
            "{}: {count} not used by the model and ignored: {}{more}",
            store.listing().display(),
            shown.join(", ")
        );
    }
}

/// Loads the model in `dir` in f32 (see [`load_model_as`]).
pub fn load_model(dir: &Path, device: &Device) -> Result<Box<dyn Model>> {
    load_model_as(dir, DType::F32, device)
}

/// Loads the model in `dir` with weights in `dtype`, dispatching on `model_type`.
pub fn load_model_as(dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn Model>> {
    Ok(match super::Architecture::from_dir(dir)? {
        super::Architecture::Llama(_) => Box::new(Llama::load(dir, dtype, device)?),
        super::Architecture::Bert(_) => Box::new(Bert::load(dir, dtype, device)?),
    })
}
