//! The `ia3` adapter table.
//!
//! ```
//! use stagecraft_ia3::Ia3Config;
//!
//! let cfg: Ia3Config = serde_json::from_str(r#"{ "targets": ["k_proj", "v_proj", "down_proj"], "feedforward": ["down_proj"] }"#).unwrap();
//! assert!(cfg.init_ia3_weights);
//! cfg.validate().unwrap();
//! ```

use serde::{Deserialize, Serialize};
use stagecraft_sdk::{bail, validate_pattern, JsonSchema, Result};

/// Configuration of one IA3 adapter (PEFT's `IA3Config`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct Ia3Config {
    /// Linear sites to rescale (PEFT's `target_modules`): names, globs, `re:` regexes
    /// or roles (`role:attn_k`). Required; each must match a linear site.
    pub targets: Vec<String>,
    /// Which of the targeted sites are feed-forward layers, whose *input* is rescaled
    /// rather than their output (PEFT's `feedforward_modules`). Every site they match
    /// must also be targeted. Default: none.
    #[serde(default)]
    pub feedforward: Vec<String>,
    /// Start every vector at 1, so the adapter starts as the identity (PEFT's
    /// `init_ia3_weights`). With false they start normal(0, 1), as PEFT's. Default true.
    #[serde(default = "yes")]
    pub init_ia3_weights: bool,
}

fn yes() -> bool {
    true
}

impl Ia3Config {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            bail!("targets must name at least one site pattern");
        }
        for t in &self.targets {
            validate_pattern(t).map_err(|e| e.context("targets"))?;
        }
        for t in &self.feedforward {
            validate_pattern(t).map_err(|e| e.context("feedforward"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match serde_json::from_str::<Ia3Config>(json) {
            Ok(cfg) => cfg.validate().err().map(|e| e.0).unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"targets": []}"#).starts_with("targets must name"));
        assert!(err(r#"{"targets": ["k_proj"], "feedforward": ["re:("]}"#).starts_with("feedforward: target pattern"));
        assert!(err(r#"{"targets": ["k_proj"], "scale": 2}"#).contains("unknown field `scale`"));
        assert_eq!(err(r#"{"targets": ["k_proj"]}"#), "");
    }
}
