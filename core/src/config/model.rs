//! `[model]`: a fresh architecture with its sizes, or a Hugging Face directory.

use serde::{Deserialize, Serialize};

fn default_tokenizer() -> String {
    "bytes".into()
}

/// The model the first stage starts from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Fresh architecture: `llama` or `bert`. Exclusive with `from`.
    #[serde(default)]
    pub arch: Option<String>,
    /// A Hugging Face model directory to start from. Exclusive with `arch`.
    #[serde(default)]
    pub from: Option<String>,
    /// Hidden size (fresh models).
    #[serde(default)]
    pub hidden_size: Option<usize>,
    /// Number of blocks (fresh models).
    #[serde(default)]
    pub num_layers: Option<usize>,
    /// Attention heads (fresh models).
    #[serde(default)]
    pub num_heads: Option<usize>,
    /// Key/value heads (fresh decoders; default `num_heads`).
    #[serde(default)]
    pub num_kv_heads: Option<usize>,
    /// MLP inner size (fresh models; default: about 8/3 × hidden for llama, 4 × hidden for bert).
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Vocabulary size (fresh models; default: the tokenizer's).
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Longest sequence (fresh bert position table; default 512).
    #[serde(default)]
    pub max_positions: Option<usize>,
    /// `bytes` (default) or a path to a `tokenizer.json`; with `from`, the directory's
    /// `tokenizer.json` is used when this is not set.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
}
