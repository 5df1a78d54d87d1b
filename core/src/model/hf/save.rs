//! Writing Hugging Face checkpoint directories: what transformers'
//! `from_pretrained` loads.
//!
//! A directory gets `config.json` (copied from the model's own directory when it came
//! from one, else written from the model's sizes), `model.safetensors` with every base
//! weight under its Hugging Face name (a tied head is not stored twice), the
//! tokenizer (`tokenizer.json`, and the tokenizer and generation configs when the
//! source directory has them), and extra `__metadata__` in the safetensors header.

use super::{CONFIG_FILE, SINGLE_FILE};
use crate::adapter::write_safetensors;
use crate::data::Tokenizer;
use crate::error::io;
use crate::error::{Error, Result};
use crate::model::Model;
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Files of a model directory copied as they are when the model came from one.
const SIDE_FILES: [&str; 4] =
    ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "tokenizer.model"];

/// Writes `model` (its current weights) as a Hugging Face directory in `dir`.
/// `source` is the directory the model was loaded from, if any; `metadata` goes into
/// the safetensors header next to `format: pt`.
pub fn save_model_dir(
    model: &dyn Model,
    tokenizer: &Tokenizer,
    source: Option<&Path>,
    dir: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(io(&dir.join(name)));
    match source.map(|s| s.join(CONFIG_FILE)).filter(|p| p.is_file()) {
        Some(config) => {
            std::fs::copy(&config, dir.join(CONFIG_FILE)).map_err(io(&config))?;
        }
        None => {
            let arch = model.spec().arch;
            let config = model
                .hf_config(tokenizer.eos_id())
                .ok_or_else(|| Error::msg(format!("a `{arch}` model has no Hugging Face format")))?;
            write(CONFIG_FILE, pretty(&config)? + "\n")?;
        }
    }
    let weights: BTreeMap<String, Tensor> =
        model.weights().into_iter().map(|(n, w)| (n, w.var().as_tensor().clone())).collect();
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    write_safetensors(&dir.join(SINGLE_FILE), &weights, meta)?;
    write("tokenizer.json", tokenizer.to_hf_json()?)?;
    let mut copied_tokenizer_config = false;
    if let Some(src) = source {
        for name in SIDE_FILES {
            let from = src.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name)).map_err(io(&from))?;
                copied_tokenizer_config |= name == "tokenizer_config.json";
            }
        }
    }
    if !copied_tokenizer_config {
        // A `tokenizer.json` alone loads through `PreTrainedTokenizerFast`.
        write(
            "tokenizer_config.json",
            pretty(&serde_json::json!({ "tokenizer_class": "PreTrainedTokenizerFast" }))? + "\n",
        )?;
    }
    Ok(())
}

fn pretty(value: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::msg(format!("cannot serialize JSON: {e}")))
}
