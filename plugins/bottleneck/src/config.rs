//! The `bottleneck` adapter table.
//!
//! ```
//! use stagecraft_bottleneck::{Activation, BottleneckConfig, Variant};
//!
//! let cfg: BottleneckConfig = serde_json::from_str(r#"{ "variant": "houlsby" }"#).unwrap();
//! assert_eq!(cfg.variant().unwrap(), Variant::Houlsby);
//! assert_eq!(cfg.activation().unwrap(), Activation::Silu);
//! assert_eq!(cfg.reduction_factor, 16);
//! ```

use serde::{Deserialize, Serialize};
use stagecraft_sdk::{bail, JsonSchema, Result};

/// Configuration of a bottleneck adapter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct BottleneckConfig {
    /// Where the adapters go: `"pfeiffer"` (default) after each block's MLP sublayer;
    /// `"houlsby"` after its attention sublayer too.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// The bottleneck's width is `hidden / reduction_factor` (at least 1). Default 16.
    #[serde(default = "default_reduction")]
    pub reduction_factor: usize,
    /// The non-linearity between the projections: `"relu"`, `"silu"` (swish),
    /// `"gelu"` or `"tanh"`. Default: `"relu"` for Pfeiffer, `"silu"` for Houlsby (as
    /// AdapterHub's configs).
    #[serde(default)]
    pub non_linearity: Option<String>,
    /// Only these transformer blocks (0-based). Default: every block.
    #[serde(default)]
    pub layers: Option<Vec<u32>>,
    /// The down projection starts normal(0, `init_std`) when given; by default it starts
    /// as PyTorch's `nn.Linear` (uniform on `±1/√hidden`). The up projection and both
    /// biases always start at zero.
    #[serde(default)]
    pub init_std: Option<f64>,
}

fn default_variant() -> String {
    "pfeiffer".into()
}
fn default_reduction() -> usize {
    16
}

/// Where the adapters go (see [`BottleneckConfig::variant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// After the attention and the MLP sublayers.
    Houlsby,
    /// After the MLP sublayer.
    Pfeiffer,
}

/// The non-linearity (see [`BottleneckConfig::non_linearity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x·σ(x)`.
    Silu,
    /// GELU (erf).
    Gelu,
    /// `tanh x`.
    Tanh,
}

impl BottleneckConfig {
    /// The parsed `variant`.
    pub fn variant(&self) -> Result<Variant> {
        match self.variant.as_str() {
            "houlsby" => Ok(Variant::Houlsby),
            "pfeiffer" => Ok(Variant::Pfeiffer),
            other => bail!("variant must be \"houlsby\" or \"pfeiffer\", got \"{other}\""),
        }
    }

    /// The parsed `non_linearity`, or the variant's default.
    pub fn activation(&self) -> Result<Activation> {
        let name = match &self.non_linearity {
            Some(n) => n.as_str(),
            None if self.variant()? == Variant::Houlsby => "silu",
            None => "relu",
        };
        match name {
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "tanh" => Ok(Activation::Tanh),
            other => bail!("non_linearity must be \"relu\", \"silu\", \"gelu\" or \"tanh\", got \"{other}\""),
        }
    }

    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.activation()?;
        if self.reduction_factor == 0 {
            bail!("reduction_factor must be > 0, got 0");
        }
        if let Some(std) = self.init_std.filter(|s| !(s.is_finite() && *s >= 0.0)) {
            bail!("init_std must be a finite number >= 0, got {std}");
        }
        if self.layers.as_ref().is_some_and(Vec::is_empty) {
            bail!("layers must name at least one block (leave it out for every block)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match serde_json::from_str::<BottleneckConfig>(json) {
            Ok(cfg) => cfg.validate().err().map(|e| e.0).unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"variant": "lora"}"#).starts_with("variant must be"));
        assert!(err(r#"{"reduction_factor": 0}"#).starts_with("reduction_factor"));
        assert!(err(r#"{"non_linearity": "sigmoid"}"#).starts_with("non_linearity"));
        assert!(err(r#"{"reduction": 4}"#).contains("unknown field `reduction`"));
        assert_eq!(err(r#"{}"#), "");
    }
}
