//! The `lora` adapter table: which sites, what rank, how scaled, how initialized, and
//! whether the update is DoRA's.
//!
//! ```
//! use stagecraft_lora::LoraConfig;
//!
//! let cfg: LoraConfig = serde_json::from_str(r#"{ "targets": ["q_proj", "v_proj"] }"#).unwrap();
//! assert_eq!((cfg.r, cfg.alpha, cfg.init.as_str()), (8, 16.0, "kaiming"));
//! assert_eq!(cfg.scaling(8, 16.0), 2.0);
//! cfg.validate().unwrap();
//! ```

use serde::{Deserialize, Serialize};
use stagecraft_sdk::{bail, validate_pattern, JsonSchema, Result};
use std::collections::BTreeMap;

/// Configuration of one LoRA adapter: PEFT's `LoraConfig`, with PEFT's names where
/// PEFT has the option.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Linear sites to adapt, as PEFT's `target_modules`: a plain name (`q_proj`)
    /// matches the last components of a site name, `*` globs the whole name, `re:...`
    /// is a regular expression over the whole name, `role:attn_q` names a role in any
    /// architecture. Required; each pattern must match at least one linear site.
    pub targets: Vec<String>,
    /// Rank of the update `ΔW = B·A`. Default 8; must be > 0.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r` (or `alpha / √r` with
    /// `use_rslora`). Default 16.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Per-site ranks: target pattern → rank, overriding `r` where the pattern matches
    /// (PEFT's `rank_pattern`). Two patterns giving one site different ranks is an
    /// error. Default: none.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-site alphas, as `rank_pattern` (PEFT's `alpha_pattern`). Default: none.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only sites in these transformer blocks (0-based), as PEFT's
    /// `layers_to_transform`. Default: every block (and sites outside blocks).
    #[serde(default)]
    pub layers_to_transform: Option<Vec<u32>>,
    /// Dropout probability on the adapter's input (training only). Default 0; in `[0, 1)`.
    #[serde(default)]
    pub dropout: f64,
    /// Rank-stabilized scaling `alpha / √r` (Kalajdzievski, 2023) instead of
    /// `alpha / r`. Default false.
    #[serde(default)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (DoRA, Liu et al., 2024): a trainable magnitude per
    /// output row, initialised to the row norms of the base weight, times the direction
    /// of `W + scaling·B·A`. Default false.
    #[serde(default)]
    pub use_dora: bool,
    /// Initialization of `A` (`B` always starts at zero, so the adapter starts as the
    /// identity): `"kaiming"` (default) is PyTorch's `kaiming_uniform_(a=√5)`, uniform
    /// on `±1/√in`; `"gaussian"` is normal with standard deviation `1/r`, as PEFT's
    /// `init_lora_weights="gaussian"`.
    #[serde(default = "default_init")]
    pub init: String,
}

fn default_r() -> usize {
    8
}

fn default_alpha() -> f64 {
    16.0
}

fn default_init() -> String {
    "kaiming".to_string()
}

/// How the `A` matrix starts (see [`LoraConfig::init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// Uniform on `±1/√in_features`.
    Kaiming,
    /// Normal, mean 0, standard deviation `1/r`.
    Gaussian,
}

impl LoraConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            bail!("targets must name at least one site pattern");
        }
        for t in &self.targets {
            validate_pattern(t).map_err(|e| e.context("targets"))?;
        }
        if self.r == 0 {
            bail!("r must be > 0, got 0");
        }
        if !self.alpha.is_finite() {
            bail!("alpha must be a finite number, got {}", self.alpha);
        }
        for (p, r) in &self.rank_pattern {
            validate_pattern(p).map_err(|e| e.context("rank_pattern"))?;
            if *r == 0 {
                bail!("rank_pattern: `{p}` must give a rank > 0, got 0");
            }
        }
        for (p, a) in &self.alpha_pattern {
            validate_pattern(p).map_err(|e| e.context("alpha_pattern"))?;
            if !a.is_finite() {
                bail!("alpha_pattern: `{p}` must give a finite alpha, got {a}");
            }
        }
        if self.layers_to_transform.as_ref().is_some_and(Vec::is_empty) {
            bail!("layers_to_transform must name at least one layer (leave it out for every layer)");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        self.lora_init()?;
        Ok(())
    }

    /// The factor applied to `B·A·x` for a rank and alpha: `alpha / r`, or
    /// `alpha / √r` with `use_rslora`.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        let r = r.max(1) as f64;
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// The parsed `init` field.
    pub fn lora_init(&self) -> Result<LoraInit> {
        match self.init.as_str() {
            "kaiming" => Ok(LoraInit::Kaiming),
            "gaussian" => Ok(LoraInit::Gaussian),
            other => bail!("init must be \"kaiming\" or \"gaussian\", got \"{other}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<LoraConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn err(json: &str) -> String {
        match parse(json) {
            Ok(cfg) => cfg.validate().err().map(|e| e.0).unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_follow_peft() {
        let cfg = parse(r#"{"targets": ["q_proj"]}"#).expect("valid config");
        assert_eq!(cfg.r, 8);
        assert_eq!(cfg.alpha, 16.0);
        assert_eq!(cfg.dropout, 0.0);
        assert!(!cfg.use_rslora && !cfg.use_dora);
        assert!(cfg.rank_pattern.is_empty() && cfg.layers_to_transform.is_none());
        assert_eq!(cfg.lora_init().expect("default init"), LoraInit::Kaiming);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn rslora_scales_by_the_square_root_of_the_rank() {
        let cfg = parse(r#"{"targets": ["q_proj"], "use_rslora": true}"#).expect("valid config");
        assert_eq!(cfg.scaling(16, 8.0), 2.0);
        let cfg = LoraConfig { use_rslora: false, ..cfg };
        assert_eq!(cfg.scaling(16, 8.0), 0.5);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"targets": ["q_proj"], "r": 0}"#).starts_with("r must be > 0"));
        assert!(err(r#"{"targets": ["q_proj"], "dropout": 1.0}"#).starts_with("dropout must be in [0, 1)"));
        assert!(err(r#"{"targets": ["q_proj"], "init": "xavier"}"#).starts_with("init must be"));
        assert!(err(r#"{"targets": []}"#).starts_with("targets must name"));
        assert!(err(r#"{"targets": ["re:("]}"#).starts_with("targets: target pattern `re:(`"));
        assert!(err(r#"{"targets": ["q_proj"], "rank_pattern": {"v_proj": 0}}"#).starts_with("rank_pattern: `v_proj`"));
        assert!(err(r#"{"targets": ["q_proj"], "layers_to_transform": []}"#).starts_with("layers_to_transform"));
        assert!(err(r#"{}"#).contains("missing field `targets`"));
        assert!(err(r#"{"targets": ["q_proj"], "rank": 4}"#).contains("unknown field `rank`"));
    }
}
