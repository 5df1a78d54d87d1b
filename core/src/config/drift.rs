//! A stage's data drift check: `drift = { against = "pretrain", max_js = 0.2, action = "stop" }`.
//!
//! Before any stage trains, the pipeline compares this stage's training data with an
//! earlier stage's by the token unigram Jensen–Shannon divergence
//! ([`crate::drift::js`], permutation p-value, α = 0.01). When the divergence is over
//! `max_js` and significant, `action = "warn"` logs a warning and a `drift` event and
//! trains; `action = "stop"` refuses the run (and `run --check`) in one line.
//!
//! ```
//! use stagecraft_core::config::{DriftAction, DriftCheck};
//! let d: DriftCheck = toml::from_str(r#"against = "pretrain""#).unwrap();
//! assert_eq!((d.max_js, d.action), (0.1, DriftAction::Warn));
//! ```

use serde::{Deserialize, Serialize};

fn default_max_js() -> f64 {
    crate::drift::DriftConfig::default().max_js
}

/// `drift = { against = "STAGE", max_js = 0.1, action = "warn" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftCheck {
    /// The earlier stage whose training data is the reference.
    pub against: String,
    /// Token unigram JS divergence (bits, in (0, 1]) over which the data has drifted.
    /// Default 0.1.
    #[serde(default = "default_max_js")]
    pub max_js: f64,
    /// What drift does. Default `warn`.
    #[serde(default)]
    pub action: DriftAction,
}

/// What a stage's drift check does when it finds drift.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    /// Log a warning and a `drift` event, and train (default).
    #[default]
    Warn,
    /// Refuse to run the pipeline.
    Stop,
}

impl std::fmt::Display for DriftAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriftAction::Warn => "warn",
            DriftAction::Stop => "stop",
        })
    }
}
