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
