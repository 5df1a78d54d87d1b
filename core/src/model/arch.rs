//! [`Architecture`]: which model and with what sizes, known before any weight exists —
//! from `[model]`'s sizes or a checkpoint directory's `config.json` — so that memory
//! can be estimated and checks can run on a placeholder model.

use super::hf::{read_json, CONFIG_FILE, SUPPORTED_MODEL_TYPES};
use super::{Bert, BertConfig, Llama, LlamaConfig, Model};
use crate::error::{Error, Result};
use candle_core::Device;
use serde::Deserialize;
use stagecraft_sdk::ModelSpec;
use std::path::Path;

/// A model's architecture and sizes.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// A Llama decoder.
    Llama(LlamaConfig),
    /// A BERT encoder.
    Bert(BertConfig),
}

#[derive(Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

impl Architecture {
    /// The architecture of a Hugging Face checkpoint directory, from its `config.json`
    /// alone (no weight is read).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = dir.join(CONFIG_FILE);
        let ty: ModelType = read_json(&config)?;
        match ty.model_type.as_deref() {
            Some("llama") => Ok(Architecture::Llama(LlamaConfig::from_hf_file(&config)?)),
            Some("bert") => Ok(Architecture::Bert(BertConfig::from_hf_file(&config)?)),
            Some(other) => Err(Error::file(
                &config,
                format!(
                    "unsupported architecture: model_type `{other}` (supported: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                ),
            )),
            None => Err(Error::file(&config, "no `model_type` field")),
        }
    }

    /// Sizes, as plugins and memory estimates see them.
    pub fn spec(&self) -> ModelSpec {
        match self {
            Architecture::Llama(c) => c.spec(),
            Architecture::Bert(c) => c.spec(),
        }
    }

    /// A freshly initialized model, its weights drawn from `seed`.
    pub fn fresh(&self, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
        Ok(match self {
            Architecture::Llama(c) => Box::new(Llama::new(c, seed, device)?),
            Architecture::Bert(c) => Box::new(Bert::new(c, seed, device)?),
        })
    }

    /// A model of this shape with all-zero weights, for checks: its sites and shapes at
    /// no cost.
    pub fn placeholder(&self, device: &Device) -> Result<Box<dyn Model>> {
        Ok(match self {
            Architecture::Llama(c) => Box::new(Llama::placeholder(c, device)?),
            Architecture::Bert(c) => Box::new(Bert::placeholder(c, device)?),
        })
    }
}
