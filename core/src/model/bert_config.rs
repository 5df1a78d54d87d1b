//! [`BertConfig`]: the sizes and options of a [`Bert`](super::Bert) encoder, and
//! reading them from a Hugging Face `config.json`.
//!
//! ```
//! # use stagecraft_core::model::BertConfig;
//! let cfg: BertConfig = serde_json::from_str(r#"{"vocab_size": 128, "hidden_size": 64,
//!     "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}"#)?;
//! assert_eq!(cfg.layer_norm_eps, 1e-12);
//! # Ok::<(), serde_json::Error>(())
//! ```

use super::hf::read_json;
use crate::bail;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use stagecraft_sdk::ModelSpec;
use std::path::Path;

fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_initializer_range() -> f64 {
    0.02
}

/// Sizes and options of a BERT-style encoder (field names as in transformers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    /// Vocabulary size (rows of `embeddings.word_embeddings`).
    pub vocab_size: usize,
    /// Hidden size (model width).
    pub hidden_size: usize,
    /// Number of encoder blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Inner size of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens (rows of `embeddings.position_embeddings`). Default 512.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Number of token types (rows of `embeddings.token_type_embeddings`). Default 2.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon inside LayerNorm's square root. Default 1e-12.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of fresh weights. Default 0.02.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Whether the model has a pooler (`pooled = tanh(pooler.dense(h[:, 0]))`).
    /// Default false. A loaded checkpoint has one when it holds `pooler.dense.weight`.
    #[serde(default)]
    pub pooler: bool,
}

impl BertConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Architecture and sizes, as plugins and memory estimates see them.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: "bert".into(),
            hidden: self.hidden_size,
            vocab: self.vocab_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_attention_heads,
            head_dim: self.head_dim(),
            intermediate: self.intermediate_size,
            causal: false,
            max_positions: self.max_position_embeddings,
        }
    }

    /// Checks sizes and the rules across fields.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("bert config: `{name}` must be > 0");
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::msg(format!(
                "bert config: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.layer_norm_eps >= 0.0 && self.initializer_range >= 0.0) {
            return Err(Error::msg("bert config: layer_norm_eps and initializer_range must be >= 0"));
        }
        Ok(())
    }

    /// Reads a transformers `config.json` and validates it. `pooler` is false here;
    /// the loader sets it from the checkpoint's tensors.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let raw: HfBertConfig = read_json(path)?;
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "gelu") {
            return Err(Error::file(path, format!("hidden_act: `{act}` is not supported (only `gelu`)")));
        }
        if let Some(p) = raw.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
            return Err(Error::file(
                path,
                format!("position_embedding_type: `{p}` is not supported (only `absolute`)"),
            ));
        }
        let cfg = BertConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or_else(default_max_position_embeddings),
            type_vocab_size: raw.type_vocab_size.unwrap_or_else(default_type_vocab_size),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or_else(default_layer_norm_eps),
            initializer_range: raw.initializer_range.unwrap_or_else(default_initializer_range),
            pooler: false,
        };
        cfg.validate().map_err(|e| Error::file(path, e))?;
        Ok(cfg)
    }
}

impl BertConfig {
    /// `config.json` as transformers writes it for `BertModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "position_embedding_type": "absolute",
            "pad_token_id": 0,
            "use_cache": true,
            "classifier_dropout": null,
            "dtype": "float32",
        })
    }
}

/// The `config.json` fields the encoder reads; others are ignored.
#[derive(Deserialize)]
struct HfBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    initializer_range: Option<f64>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}
