//! The `optimizer` tables of `adamw`, `sgd` and `lion`, with PyTorch's defaults.
//!
//! Every config has a required `lr`: the base learning rate. The host schedules it
//! (warmup, decay, per-layer factors) and passes the effective per-parameter value in
//! `ParamSlot::lr` at every step; the optimizers use that value, never the config's.
//!
//! ```
//! use stagecraft_optimizers::AdamWConfig;
//!
//! let cfg: AdamWConfig = serde_json::from_str(r#"{ "lr": 3e-4 }"#).unwrap();
//! assert_eq!((cfg.betas, cfg.eps, cfg.weight_decay), ([0.9, 0.999], 1e-8, 0.01));
//! cfg.validate().unwrap();
//! ```

use serde::{Deserialize, Serialize};
use stagecraft_sdk::{bail, JsonSchema, Result};

/// AdamW (`torch.optim.AdamW`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Base learning rate: the host schedules it and passes the effective
    /// per-parameter value in `ParamSlot::lr`. Required; ≥ 0.
    pub lr: f64,
    /// Decay rates `[β1, β2]` of the first and second moment averages.
    /// Default `[0.9, 0.999]`; each in `[0, 1)`.
    #[serde(default = "default_adamw_betas")]
    pub betas: [f64; 2],
    /// Added to `√v̂` in the denominator, for numerical stability. Default 1e-8; ≥ 0.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameter by
    /// `1 - lr · weight_decay · decay_mul`. Default 0.01; ≥ 0.
    #[serde(default = "default_adamw_weight_decay")]
    pub weight_decay: f64,
}

/// SGD with momentum (`torch.optim.SGD`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Base learning rate: the host schedules it and passes the effective
    /// per-parameter value in `ParamSlot::lr`. Required; ≥ 0.
    pub lr: f64,
    /// Momentum factor; 0 is plain SGD. Default 0.9 (PyTorch's default is 0); ≥ 0.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Dampening: the gradient enters the momentum buffer scaled by `1 - dampening`
    /// (except at the first step, as in PyTorch). Default 0; in `[0, 1]`.
    #[serde(default)]
    pub dampening: f64,
    /// Nesterov momentum. Default false; needs `momentum > 0` and `dampening = 0`.
    #[serde(default)]
    pub nesterov: bool,
    /// L2 penalty, added to the gradient as `weight_decay · decay_mul · p` (coupled,
    /// as PyTorch's SGD). Default 0; ≥ 0.
    #[serde(default)]
    pub weight_decay: f64,
}

/// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct LionConfig {
    /// Base learning rate: the host schedules it and passes the effective
    /// per-parameter value in `ParamSlot::lr`. Required; ≥ 0. Lion wants one 3-10×
    /// smaller than AdamW's.
    pub lr: f64,
    /// `[β1, β2]`: β1 interpolates the update direction, β2 the momentum average.
    /// Default `[0.9, 0.99]`; each in `[0, 1)`.
    #[serde(default = "default_lion_betas")]
    pub betas: [f64; 2],
    /// Decoupled weight decay: each step multiplies the parameter by
    /// `1 - lr · weight_decay · decay_mul`. Default 0; ≥ 0.
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_adamw_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_lion_betas() -> [f64; 2] {
    [0.9, 0.99]
}

fn default_eps() -> f64 {
    1e-8
}

fn default_adamw_weight_decay() -> f64 {
    0.01
}

fn default_momentum() -> f64 {
    0.9
}

/// Errors unless `value` is finite and ≥ 0, naming `field`.
fn non_negative(field: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("{field} must be a finite number >= 0, got {value}");
    }
    Ok(())
}

/// Errors unless both betas are in `[0, 1)`.
fn betas_in_range(betas: [f64; 2]) -> Result<()> {
    for (i, b) in betas.iter().enumerate() {
        if !(0.0..1.0).contains(b) {
            bail!("betas[{i}] must be in [0, 1), got {b}");
        }
    }
    Ok(())
}

impl AdamWConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        betas_in_range(self.betas)?;
        non_negative("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }
}

impl SgdConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        non_negative("momentum", self.momentum)?;
        if !(0.0..=1.0).contains(&self.dampening) {
            bail!("dampening must be in [0, 1], got {}", self.dampening);
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            bail!(
                "nesterov needs momentum > 0 and dampening = 0, got momentum {} and dampening {}",
                self.momentum,
                self.dampening
            );
        }
        non_negative("weight_decay", self.weight_decay)
    }
}

impl LionConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        betas_in_range(self.betas)?;
        non_negative("weight_decay", self.weight_decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn parse<T: DeserializeOwned>(json: &str) -> std::result::Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_pytorchs() {
        let a: AdamWConfig = parse(r#"{"lr": 0.001}"#).expect("valid adamw config");
        assert_eq!((a.betas, a.eps, a.weight_decay), ([0.9, 0.999], 1e-8, 0.01));
        let s: SgdConfig = parse(r#"{"lr": 0.1}"#).expect("valid sgd config");
        assert_eq!((s.momentum, s.dampening, s.nesterov, s.weight_decay), (0.9, 0.0, false, 0.0));
        let l: LionConfig = parse(r#"{"lr": 1e-4}"#).expect("valid lion config");
        assert_eq!((l.betas, l.weight_decay), ([0.9, 0.99], 0.0));
        assert!(a.validate().is_ok() && s.validate().is_ok() && l.validate().is_ok());
    }

    #[test]
    fn lr_is_required_and_unknown_keys_are_errors() {
        assert!(parse::<AdamWConfig>("{}").err().unwrap_or_default().contains("missing field `lr`"));
        let e = parse::<LionConfig>(r#"{"lr": 1e-4, "beta1": 0.9}"#).err().unwrap_or_default();
        assert!(e.contains("unknown field `beta1`"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad_beta: AdamWConfig = parse(r#"{"lr": 0.001, "betas": [0.9, 1.0]}"#).expect("parses");
        assert_eq!(bad_beta.validate().err().map(|e| e.0).unwrap_or_default(), "betas[1] must be in [0, 1), got 1");
        let bad_eps: AdamWConfig = parse(r#"{"lr": 0.001, "eps": -1}"#).expect("parses");
        assert!(bad_eps.validate().err().map(|e| e.0).unwrap_or_default().starts_with("eps must be"));
        let bad_lr: LionConfig = parse(r#"{"lr": -0.1}"#).expect("parses");
        assert!(bad_lr.validate().err().map(|e| e.0).unwrap_or_default().starts_with("lr must be"));
        let bad_nesterov: SgdConfig = parse(r#"{"lr": 0.1, "nesterov": true, "dampening": 0.1}"#).expect("parses");
        assert!(bad_nesterov.validate().err().map(|e| e.0).unwrap_or_default().starts_with("nesterov needs"));
    }
}
