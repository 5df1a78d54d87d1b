//! Objective tables of the four stages: `causal_lm` and `completion` share
//! [`LmConfig`]; `classification` has [`ClassificationConfig`], `distill`
//! [`DistillConfig`].
//!
//! ```
//! use stagecraft_stages::{ClassificationConfig, LmConfig, Pooling};
//!
//! let lm: LmConfig = serde_json::from_str("{}").unwrap();
//! assert_eq!(lm.label_smoothing, 0.0);
//! let cls: ClassificationConfig = serde_json::from_str(r#"{ "num_classes": 3 }"#).unwrap();
//! assert_eq!(cls.pooling().unwrap(), Pooling::Auto);
//! ```

use serde::{Deserialize, Serialize};
use stagecraft_sdk::{bail, JsonSchema, Result};

/// Configuration of the `causal_lm` and `completion` objectives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    /// Label smoothing ε, as PyTorch's `cross_entropy(label_smoothing=ε)`: each token's
    /// loss is `(1-ε)·CE + ε·mean over the vocabulary of -log p`. Default 0; in `[0, 1)`.
    #[serde(default)]
    pub label_smoothing: f64,
}

impl LmConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("label_smoothing must be in [0, 1), got {}", self.label_smoothing);
        }
        Ok(())
    }
}

/// Configuration of the `distill` objective.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Softmax temperature `T` of both distributions in the KL term; higher values
    /// weigh the teacher's less likely tokens more. Default 2; > 0.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Weight of the KL term; the next-token loss gets `1 − alpha`. Default 0.5; in
    /// `[0, 1]` (1: the teacher only, 0: the task only).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_temperature() -> f64 {
    2.0
}

fn default_alpha() -> f64 {
    0.5
}

impl DistillConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!("temperature must be a finite number > 0, got {}", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bail!("alpha must be in [0, 1], got {}", self.alpha);
        }
        Ok(())
    }
}

/// Configuration of the `classification` objective.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct ClassificationConfig {
    /// Number of classes; `class_labels` are in `[0, num_classes)`. Required; > 1.
    pub num_classes: usize,
    /// How one vector per sequence is taken from the model (see [`Pooling`]):
    /// `"auto"` (default), `"pooled"`, `"last"`, `"first"` or `"mean"`.
    #[serde(default = "default_pooling")]
    pub pooling: String,
}

fn default_pooling() -> String {
    "auto".to_string()
}

/// How the classifier gets one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The model's `pooled` output when it provides one; otherwise the last real token
    /// for decoders and the first token for encoders.
    Auto,
    /// The model's `pooled` output (BERT's pooler).
    Pooled,
    /// `hidden` at the last position where `attention_mask` is 1 (left or right padding).
    Last,
    /// `hidden` at position 0 (`[CLS]` / `<s>`).
    First,
    /// Mean of `hidden` over positions where `attention_mask` is 1.
    Mean,
}

impl ClassificationConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.num_classes < 2 {
            bail!("num_classes must be > 1, got {}", self.num_classes);
        }
        self.pooling()?;
        Ok(())
    }

    /// The parsed `pooling` field.
    pub fn pooling(&self) -> Result<Pooling> {
        Ok(match self.pooling.as_str() {
            "auto" => Pooling::Auto,
            "pooled" => Pooling::Pooled,
            "last" => Pooling::Last,
            "first" => Pooling::First,
            "mean" => Pooling::Mean,
            other => {
                bail!("pooling must be one of \"auto\", \"pooled\", \"last\", \"first\", \"mean\", got \"{other}\"")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate<T: serde::de::DeserializeOwned>(json: &str, check: impl Fn(&T) -> Result<()>) -> String {
        match serde_json::from_str::<T>(json) {
            Ok(cfg) => check(&cfg).err().map(|e| e.0).unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn lm_defaults_to_no_smoothing() {
        assert_eq!(validate::<LmConfig>("{}", LmConfig::validate), "");
        let e = validate::<LmConfig>(r#"{"label_smoothing": 1.0}"#, LmConfig::validate);
        assert!(e.starts_with("label_smoothing must be in [0, 1)"), "{e}");
        let e = validate::<LmConfig>(r#"{"smoothing": 0.1}"#, LmConfig::validate);
        assert!(e.contains("unknown field `smoothing`"), "{e}");
    }

    #[test]
    fn classification_errors_name_the_field() {
        let check = ClassificationConfig::validate;
        assert_eq!(validate::<ClassificationConfig>(r#"{"num_classes": 2, "pooling": "mean"}"#, check), "");
        assert!(validate::<ClassificationConfig>(r#"{"num_classes": 1}"#, check).starts_with("num_classes must be > 1"));
        assert!(validate::<ClassificationConfig>(r#"{"num_classes": 3, "pooling": "max"}"#, check)
            .starts_with("pooling must be"));
        assert!(validate::<ClassificationConfig>("{}", check).contains("missing field `num_classes`"));
    }
}
