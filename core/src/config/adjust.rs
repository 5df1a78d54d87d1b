//! A stage's hyperparameters that change while it trains:
//! `adjust = [{ after_step = 40, "optimizer.lr" = 1.2e-3, "train.dropout" = 0.1 }]`.
//!
//! Each entry gives `--set` keys inside the stage with the values they take from step
//! `after_step + 1` on; entries apply in order and stay in effect. What can change:
//! the optimizer's settings (`optimizer.lr` and every key of its plugin's config but
//! `optimizer.name`; the host rebuilds the optimizer with the new config and carries
//! its state over) and the model dropout (`train.dropout`). The schedule shapes the
//! new `optimizer.lr` from that step on as it shaped the old one.
//!
//! Population-based training (`stagecraft search`, `mode = "pbt"`) writes these when it
//! perturbs a trial, so a trial's config records its whole schedule and runs again as
//! it ran; `stagecraft run --resume RUN --adjust KEY=VALUE` adds one by hand where a
//! run stopped.
//!
//! ```
//! use stagecraft_core::config::Adjustment;
//! let a: Adjustment = toml::from_str(r#"after_step = 40
//! "optimizer.lr" = 1.2e-3"#).unwrap();
//! assert_eq!(a.after_step, 40);
//! assert_eq!(a.changes()[0].0, "optimizer.lr");
//! assert!(Adjustment::is_adjustable("train.dropout"));
//! assert!(!Adjustment::is_adjustable("optimizer.name"));
//! assert!(!Adjustment::is_adjustable("max_steps"));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Value;

/// What [`Adjustment::is_adjustable`] accepts, as messages name it.
pub const ADJUSTABLE: &str = "`optimizer.<key>` (all but `optimizer.name`) and `train.dropout`";

/// New values for some of a stage's hyperparameters from a step on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Adjustment {
    /// Steps the stage has taken when the values change (they apply to the next one).
    pub after_step: u64,
    /// The `--set` keys inside the stage and their new values.
    #[serde(flatten)]
    pub values: BTreeMap<String, Value>,
}

impl Adjustment {
    /// Whether `key` (a `--set` path inside a stage) can change while the stage trains.
    pub fn is_adjustable(key: &str) -> bool {
        key == "train.dropout"
            || key.strip_prefix("optimizer.").is_some_and(|k| !k.is_empty() && k != "name" && !k.contains('.'))
    }

    /// The changes as `(dotted key, value)`: a key written unquoted (`optimizer.lr = …`
    /// is a table in TOML) is read as the dotted path it spells.
    pub fn changes(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (k, v) in &self.values {
            flatten(k, v, &mut out);
        }
        out
    }

    /// `after step 40: optimizer.lr = 0.0012, train.dropout = 0.1`.
    pub fn describe(&self) -> String {
        let changes: Vec<String> = self.changes().iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("after step {}: {}", self.after_step, changes.join(", "))
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Table(t) if prefix == "optimizer" || prefix == "train" => {
            for (k, inner) in t {
                flatten(&format!("{prefix}.{k}"), inner, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquoted_keys_read_as_the_paths_they_spell() {
        let a: Adjustment =
            toml::from_str("after_step = 3\noptimizer.lr = 0.5\ntrain.dropout = 0.1").expect("an entry");
        let keys: Vec<String> = a.changes().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["optimizer.lr", "train.dropout"]);
        assert_eq!(a.describe(), "after step 3: optimizer.lr = 0.5, train.dropout = 0.1");
    }
}
