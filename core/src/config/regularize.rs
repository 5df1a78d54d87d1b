//! A stage's regularization against forgetting:
//! `regularize = { kind = "ewc", lambda = 1e5, fisher_batches = 8 }`.
//!
//! Both kinds pull the stage's trainable values back toward where the stage started
//! (its *anchor*, after the handoff), adding `λ·wᵢ·(θᵢ − θ₀ᵢ)` to each gradient before
//! clipping, the gradient of the penalty `λ/2·Σ wᵢ·(θᵢ − θ₀ᵢ)²`:
//! - `l2sp` (L2-SP, Li et al. 2018): `wᵢ = 1`, every value held equally.
//! - `ewc` (elastic weight consolidation, Kirkpatrick et al. 2017): `wᵢ` is the
//!   diagonal of the Fisher information of the earlier stages' objectives at the
//!   anchor, estimated as Avalanche does: the mean over `fisher_batches` batches of each
//!   earlier stage's training data of the squared mini-batch gradient. Values that
//!   mattered to earlier stages are held, the others move freely.
//!
//! ```
//! use stagecraft_core::config::{Regularize, RegularizeKind};
//! let r: Regularize = toml::from_str(r#"kind = "ewc"
//! lambda = 1e5"#).unwrap();
//! assert_eq!((r.kind, r.lambda, r.fisher_batches), (RegularizeKind::Ewc, 1e5, 8));
//! ```

use serde::{Deserialize, Serialize};

fn default_fisher_batches() -> usize {
    8
}

/// `regularize = { kind = "ewc" | "l2sp", lambda = 1e5, fisher_batches = 8, from = [...] }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Regularize {
    /// Which penalty.
    pub kind: RegularizeKind,
    /// Its strength `λ` (> 0), required: the useful range depends on the kind and the
    /// losses' scale. The squared gradients of a mean loss are small, so EWC often
    /// needs 1e4–1e6; L2-SP, whose weights are 1, 0.01–1.
    pub lambda: f64,
    /// `ewc`: batches of each earlier stage's training data the Fisher is estimated
    /// on. Default 8.
    #[serde(default = "default_fisher_batches")]
    pub fisher_batches: usize,
    /// `ewc`: the earlier stages whose objectives and data the Fisher is estimated
    /// from. Default: every earlier stage that trained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// The penalty a stage's [`Regularize`] adds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RegularizeKind {
    /// Elastic weight consolidation: each value held in proportion to its Fisher
    /// information on the earlier stages.
    Ewc,
    /// L2-SP: every value held toward the stage's start equally.
    L2sp,
}

impl std::fmt::Display for RegularizeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegularizeKind::Ewc => "ewc",
            RegularizeKind::L2sp => "l2sp",
        })
    }
}
