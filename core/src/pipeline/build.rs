//! The starting model and the tokenizer, from `[model]`.

use crate::config::ModelConfig;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::model::hub_cache::resolve_model;
use crate::model::{load_model, Architecture, BertConfig, LlamaConfig, Model};
use candle_core::Device;
use std::path::Path;

/// The tokenizer: `model.tokenizer` (`bytes` or a path), or the `from` directory's
/// `tokenizer.json` when `tokenizer` is left at `bytes` and the directory has one.
pub fn tokenizer(m: &ModelConfig, base: &Path) -> Result<Tokenizer> {
    if m.tokenizer != "bytes" {
        return Tokenizer::from_file(&base.join(&m.tokenizer));
    }
    if let Some(from) = &m.from {
        if let Some(t) = Tokenizer::for_model_dir(&resolve_model(from, base)?.dir)? {
            return Ok(t);
        }
    }
    Ok(Tokenizer::bytes())
}

/// The architecture `[model]` describes: its sizes (defaults filled in), or the `from`
/// directory's `config.json`. Nothing is allocated.
pub fn architecture(m: &ModelConfig, vocab: usize, base: &Path) -> Result<Architecture> {
    if let Some(from) = &m.from {
        return Architecture::from_dir(&resolve_model(from, base)?.dir);
    }
    let hidden = m.hidden_size.unwrap_or(0);
    let vocab = m.vocab_size.unwrap_or(vocab);
    let heads = m.num_heads.unwrap_or(1);
    let layers = m.num_layers.unwrap_or(1);
    match m.arch.as_deref() {
        Some("llama") => {
            // SwiGLU's usual 8/3 ratio, rounded up to a multiple of 8.
            let inter = match m.intermediate_size {
                Some(i) => i,
                None => hidden
                    .checked_mul(8)
                    .map(|h8| (h8 / 3).div_ceil(8) * 8)
                    .ok_or_else(|| Error::msg(format!("model.hidden_size {hidden} is too large")))?,
            };
            let json = serde_json::json!({
                "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
                "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": m.num_kv_heads.unwrap_or(heads), "rms_norm_eps": 1e-5,
            });
            let cfg: LlamaConfig = serde_json::from_value(json).map_err(|e| Error::msg(format!("model: {e}")))?;
            cfg.validate()?;
            Ok(Architecture::Llama(cfg))
        }
        Some("bert") => {
            let inter = match m.intermediate_size {
                Some(i) => i,
                None => hidden
                    .checked_mul(4)
                    .ok_or_else(|| Error::msg(format!("model.hidden_size {hidden} is too large")))?,
            };
            let json = serde_json::json!({
                "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
                "num_hidden_layers": layers, "num_attention_heads": heads,
                "max_position_embeddings": m.max_positions.unwrap_or(512),
            });
            let cfg: BertConfig = serde_json::from_value(json).map_err(|e| Error::msg(format!("model: {e}")))?;
            cfg.validate()?;
            Ok(Architecture::Bert(cfg))
        }
        other => Err(Error::msg(format!("model.arch {other:?} is not supported (supported: llama, bert)"))),
    }
}

/// The starting model: fresh with the configured sizes, or loaded from `from`.
pub fn model(m: &ModelConfig, vocab: usize, seed: u64, base: &Path, device: &Device) -> Result<Box<dyn Model>> {
    match &m.from {
        Some(from) => load_model(&resolve_model(from, base)?.dir, device),
        None => architecture(m, vocab, base)?.fresh(seed, device),
    }
}
