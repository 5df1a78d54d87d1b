//! The starting model and the tokenizer, from `[model]`.

use crate::config::ModelConfig;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::model::{load_model, Bert, BertConfig, Llama, LlamaConfig, Model};
use candle_core::Device;
use std::path::Path;

/// The tokenizer: `model.tokenizer` (`bytes` or a path), or the `from` directory's
/// `tokenizer.json` when `tokenizer` is left at `bytes` and the directory has one.
pub fn tokenizer(m: &ModelConfig, base: &Path) -> Result<Tokenizer> {
    if m.tokenizer != "bytes" {
        return Tokenizer::from_file(&base.join(&m.tokenizer));
    }
    if let Some(from) = &m.from {
        if let Some(t) = Tokenizer::for_model_dir(&base.join(from))? {
            return Ok(t);
        }
    }
    Ok(Tokenizer::bytes())
}

/// The starting model: fresh with the configured sizes, or loaded from `from`.
pub fn model(m: &ModelConfig, vocab: usize, seed: u64, base: &Path, device: &Device) -> Result<Box<dyn Model>> {
    if let Some(from) = &m.from {
        return load_model(&base.join(from), device);
    }
    let hidden = m.hidden_size.unwrap_or(0);
    let vocab = m.vocab_size.unwrap_or(vocab);
    let heads = m.num_heads.unwrap_or(1);
    let layers = m.num_layers.unwrap_or(1);
    match m.arch.as_deref() {
        Some("llama") => {
            // SwiGLU's usual 8/3 ratio, rounded up to a multiple of 8.
            let inter = m.intermediate_size.unwrap_or((hidden * 8 / 3).div_ceil(8) * 8);
            let json = serde_json::json!({
                "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
                "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": m.num_kv_heads.unwrap_or(heads), "rms_norm_eps": 1e-5,
            });
            let cfg: LlamaConfig = serde_json::from_value(json).map_err(|e| Error::msg(format!("model: {e}")))?;
            cfg.validate()?;
            Ok(Box::new(Llama::new(&cfg, seed, device)?))
        }
        Some("bert") => {
            let json = serde_json::json!({
                "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": m.intermediate_size.unwrap_or(4 * hidden),
                "num_hidden_layers": layers, "num_attention_heads": heads,
                "max_position_embeddings": m.max_positions.unwrap_or(512),
            });
            let cfg: BertConfig = serde_json::from_value(json).map_err(|e| Error::msg(format!("model: {e}")))?;
            cfg.validate()?;
            Ok(Box::new(Bert::new(&cfg, seed, device)?))
        }
        other => Err(Error::msg(format!("model.arch {other:?} is not supported (supported: llama, bert)"))),
    }
}
