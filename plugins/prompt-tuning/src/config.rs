//! The `prompt_tuning` and `prefix_tuning` adapter tables.
//!
//! ```
//! use stagecraft_prompt_tuning::{PromptInit, PromptTuningConfig};
//!
//! let cfg: PromptTuningConfig = serde_json::from_str(r#"{ "num_virtual_tokens": 4, "init": "sample_vocab" }"#).unwrap();
//! assert_eq!(cfg.prompt_init().unwrap(), PromptInit::SampleVocab);
//! ```

use serde::{Deserialize, Serialize};
use stagecraft_sdk::{bail, JsonSchema, Result};

/// Configuration of a prompt-tuning adapter (PEFT's `PromptTuningConfig`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct PromptTuningConfig {
    /// Virtual tokens prepended to every input. Required; > 0.
    pub num_virtual_tokens: usize,
    /// How the prompt embeddings start (PEFT's `prompt_tuning_init`): `"random"`
    /// (normal(0, 1), as a fresh `nn.Embedding`), `"sample_vocab"` (the embeddings of
    /// tokens drawn uniformly from the vocabulary, with the run's seed) or `"text"`
    /// (the embeddings of `init_text`'s tokens, repeated or cut to
    /// `num_virtual_tokens`). Default `"random"`.
    #[serde(default = "default_init")]
    pub init: String,
    /// The text for `init = "text"` (PEFT's `prompt_tuning_init_text`), tokenized with
    /// the run's tokenizer.
    #[serde(default)]
    pub init_text: Option<String>,
}

/// How prompt embeddings start (see [`PromptTuningConfig::init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptInit {
    /// normal(0, 1).
    Random,
    /// Embeddings of random vocabulary tokens.
    SampleVocab,
    /// Embeddings of a text's tokens.
    Text,
}

fn default_init() -> String {
    "random".into()
}

impl PromptTuningConfig {
    /// The parsed `init`, checked against `init_text`.
    pub fn prompt_init(&self) -> Result<PromptInit> {
        if self.num_virtual_tokens == 0 {
            bail!("num_virtual_tokens must be > 0, got 0");
        }
        let init = match self.init.as_str() {
            "random" => PromptInit::Random,
            "sample_vocab" => PromptInit::SampleVocab,
            "text" => PromptInit::Text,
            other => bail!("init must be \"random\", \"sample_vocab\" or \"text\", got \"{other}\""),
        };
        match (init, &self.init_text) {
            (PromptInit::Text, None) => bail!("init = \"text\" needs init_text"),
            (PromptInit::Text, Some(t)) if t.is_empty() => bail!("init_text is empty"),
            (PromptInit::Random | PromptInit::SampleVocab, Some(_)) => {
                bail!("init_text is only used with init = \"text\" (init is \"{}\")", self.init)
            }
            _ => Ok(init),
        }
    }
}

/// Configuration of a prefix-tuning adapter (PEFT's `PrefixTuningConfig`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct PrefixTuningConfig {
    /// Key/value positions prepended at every attention layer. Required; > 0.
    pub num_virtual_tokens: usize,
    /// Produce the prefixes with a two-layer MLP (`Linear → tanh → Linear`) from a
    /// smaller embedding, which trains more stably (the paper's reparameterization).
    /// It runs once per forward pass for all layers. Default false.
    #[serde(default)]
    pub prefix_projection: bool,
    /// The MLP's hidden size. Default: the key/value width (`kv_heads × head_dim`), as PEFT.
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
    /// `"zero"` starts the prefixes (or the MLP's last layer) at zero; the default,
    /// `"random"`, starts them as a fresh `nn.Embedding` / `nn.Linear` would (PEFT's
    /// `init_weights`).
    #[serde(default = "default_init")]
    pub init: String,
}

impl PrefixTuningConfig {
    /// Checks every field; `Ok(true)` when the prefixes start at zero.
    pub fn zero_init(&self) -> Result<bool> {
        if self.num_virtual_tokens == 0 {
            bail!("num_virtual_tokens must be > 0, got 0");
        }
        if self.encoder_hidden_size == Some(0) {
            bail!("encoder_hidden_size must be > 0, got 0");
        }
        if self.encoder_hidden_size.is_some() && !self.prefix_projection {
            bail!("encoder_hidden_size is the size of the prefix MLP: it needs prefix_projection = true");
        }
        match self.init.as_str() {
            "random" => Ok(false),
            "zero" => Ok(true),
            other => bail!("init must be \"random\" or \"zero\", got \"{other}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt_err(json: &str) -> String {
        match serde_json::from_str::<PromptTuningConfig>(json) {
            Ok(cfg) => cfg.prompt_init().err().map(|e| e.0).unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    fn prefix_err(json: &str) -> String {
        match serde_json::from_str::<PrefixTuningConfig>(json) {
            Ok(cfg) => cfg.zero_init().err().map(|e| e.0).unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert!(prompt_err(r#"{"num_virtual_tokens": 0}"#).starts_with("num_virtual_tokens"));
        assert!(prompt_err(r#"{"num_virtual_tokens": 4, "init": "text"}"#).contains("needs init_text"));
        assert!(
            prompt_err(r#"{"num_virtual_tokens": 4, "init_text": "hi"}"#).contains("only used with init = \"text\"")
        );
        assert!(prompt_err(r#"{"num_virtual_tokens": 4, "init": "vocab"}"#).starts_with("init must be"));
        assert!(prompt_err(r#"{}"#).contains("missing field `num_virtual_tokens`"));
        assert_eq!(prompt_err(r#"{"num_virtual_tokens": 4, "init": "text", "init_text": "hi"}"#), "");
        assert!(
            prefix_err(r#"{"num_virtual_tokens": 4, "encoder_hidden_size": 8}"#).contains("needs prefix_projection")
        );
        assert!(prefix_err(r#"{"num_virtual_tokens": 4, "init": "ones"}"#).starts_with("init must be"));
        assert_eq!(prefix_err(r#"{"num_virtual_tokens": 4, "prefix_projection": true, "encoder_hidden_size": 8}"#), "");
    }
}
