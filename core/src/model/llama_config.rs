//! [`LlamaConfig`]: the sizes and options of a [`Llama`](super::Llama), and reading
//! them from a Hugging Face `config.json`.
//!
//! transformers 4.x writes `rope_theta` at the top level (and `rope_scaling`, `null`
//! for plain RoPE); 5.x writes `rope_parameters: {rope_theta, rope_type}`. Both are
//! read; only `rope_type` `"default"` is supported.
//!
//! ```
//! # use stagecraft_core::model::LlamaConfig;
//! let cfg: LlamaConfig = serde_json::from_str(r#"{"vocab_size": 256, "hidden_size": 64,
//!     "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
//!     "num_key_value_heads": 2}"#)?;
//! assert_eq!(cfg.head_dim(), 16);
//! # Ok::<(), serde_json::Error>(())
//! ```

use super::hf::read_json;
use crate::bail;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use stagecraft_sdk::ModelSpec;
use std::path::Path;

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_initializer_range() -> f64 {
    0.02
}

/// Sizes and options of a Llama-style decoder (field names as in transformers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of `model.embed_tokens`).
    pub vocab_size: usize,
    /// Hidden size (model width).
    pub hidden_size: usize,
    /// Inner size of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); default: `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Size of one head; default: `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon inside RMSNorm's square root. Default 1e-6.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base. Default 10000.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Whether `lm_head` shares the embedding matrix. Default false.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections have biases. Default false.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether gate/up/down projections have biases. Default false.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Standard deviation of fresh weights. Default 0.02.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// The longest sequence the checkpoint was made for (transformers'
    /// `max_position_embeddings`; RoPE itself has no limit). Default: not known.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
}

impl LlamaConfig {
    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Architecture and sizes, as plugins and memory estimates see them.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: "llama".into(),
            hidden: self.hidden_size,
            vocab: self.vocab_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.kv_heads(),
            head_dim: self.head_dim(),
            intermediate: self.intermediate_size,
            causal: true,
            max_positions: 0,
        }
    }

    /// Checks sizes and the rules across fields.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("llama config: `{name}` must be > 0");
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(Error::msg(format!(
                "llama config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("llama config: head_dim {} must be even for rope", self.head_dim());
        }
        if !(self.rms_norm_eps >= 0.0 && self.rope_theta > 0.0 && self.initializer_range >= 0.0) {
            return Err(Error::msg("llama config: rms_norm_eps and initializer_range must be >= 0 and rope_theta > 0"));
        }
        Ok(())
    }

    /// Reads a transformers `config.json` (4.x or 5.x layout) and validates it.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let raw: HfLlamaConfig = read_json(path)?;
        let cfg = raw.into_config().map_err(|m| Error::file(path, m))?;
        cfg.validate().map_err(|e| Error::file(path, e))?;
        Ok(cfg)
    }
}

/// `rope_parameters` (5.x) or `rope_scaling` (4.x).
#[derive(Deserialize)]
struct HfRope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    /// 4.x's older spelling of `rope_type`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The `config.json` fields the Llama reads; others are ignored.
#[derive(Deserialize)]
struct HfLlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<HfRope>,
    rope_scaling: Option<HfRope>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    initializer_range: Option<f64>,
    max_position_embeddings: Option<usize>,
}

fn check_rope_type(field: &str, rope: &HfRope) -> std::result::Result<(), String> {
    match rope.rope_type.as_deref().or(rope.kind.as_deref()) {
        None | Some("default") => Ok(()),
        Some(other) => Err(format!("{field}: rope_type `{other}` is not supported (only `default`)")),
    }
}

impl HfLlamaConfig {
    fn into_config(self) -> std::result::Result<LlamaConfig, String> {
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(format!("hidden_act: `{act}` is not supported (only `silu`)"));
        }
        let mut rope_theta = self.rope_theta;
        if let Some(p) = &self.rope_parameters {
            check_rope_type("rope_parameters", p)?;
            rope_theta = p.rope_theta.or(rope_theta);
        }
        if let Some(s) = &self.rope_scaling {
            check_rope_type("rope_scaling", s)?;
        }
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or_else(default_rms_norm_eps),
            rope_theta: rope_theta.unwrap_or_else(default_rope_theta),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            initializer_range: self.initializer_range.unwrap_or_else(default_initializer_range),
            max_position_embeddings: self.max_position_embeddings,
        })
    }
}

impl LlamaConfig {
    /// `config.json` as transformers writes it for `LlamaForCausalLM` (5.x layout, with
    /// the top-level `rope_theta` that 4.x reads too). `eos_token_id` is the tokenizer's
    /// end of text.
    pub fn to_hf_json(&self, eos_token_id: Option<u32>) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings.unwrap_or(2048),
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": { "rope_theta": self.rope_theta, "rope_type": "default" },
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "mlp_bias": self.mlp_bias,
            "pretraining_tp": 1,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": true,
            "bos_token_id": null,
            "eos_token_id": eos_token_id,
            "pad_token_id": null,
            "dtype": "float32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> std::result::Result<LlamaConfig, String> {
        let json = format!(
            r#"{{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2 {extra}}}"#
        );
        serde_json::from_str::<HfLlamaConfig>(&json).map_err(|e| e.to_string())?.into_config()
    }

    #[test]
    fn rope_theta_is_read_from_both_layouts() {
        assert_eq!(parse(r#", "rope_theta": 500.0, "rope_scaling": null"#).map(|c| c.rope_theta), Ok(500.0));
        assert_eq!(
            parse(r#", "rope_parameters": {"rope_theta": 7.0, "rope_type": "default"}"#).map(|c| c.rope_theta),
            Ok(7.0)
        );
        assert_eq!(parse("").map(|c| c.rope_theta), Ok(10_000.0));
    }

    #[test]
    fn scaled_rope_is_an_error_naming_the_field() {
        let e = parse(r#", "rope_parameters": {"rope_theta": 7.0, "rope_type": "llama3"}"#).err().unwrap_or_default();
        assert!(e.contains("rope_parameters") && e.contains("llama3"), "{e}");
        let e = parse(r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#).err().unwrap_or_default();
        assert!(e.contains("rope_scaling") && e.contains("linear"), "{e}");
    }
}
