//! A retention gate's bound as the report draws it: on the watched set's retention
//! curve, a horizontal line over the gating stage's span at the value the set's score
//! may not cross. The pipeline computes it from the same score the gate compares
//! (`pipeline::score`), so the line is where the gate fails.
//!
//! ```
//! use stagecraft_core::report::{Bound, GateLine};
//! let line = GateLine { stage: "adapt".into(), set: "add".into(), metric: "exact_match".into(), value: 0.98 - 0.05, bound: Bound::AtLeast };
//! assert_eq!(line.label(), "gate (adapt): ≥ 0.93");
//! ```

use super::fmt::trimmed;

/// Which side of the line passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The score must stay at or above the line (accuracies, exact match).
    AtLeast,
    /// The score must stay at or below the line (losses, perplexity).
    AtMost,
}

/// One retention gate, in the watched set's own units.
#[derive(Debug, Clone, PartialEq)]
pub struct GateLine {
    /// The stage that has the gate: the line spans its steps.
    pub stage: String,
    /// The watched eval set (named after the stage that owns it).
    pub set: String,
    /// The metric the gate compares.
    pub metric: String,
    /// The bound: the set's score at the end of its own stage, minus (for a loss,
    /// plus) the gate's `max_drop`.
    pub value: f64,
    /// Whether the score must stay above or below `value`.
    pub bound: Bound,
}

impl GateLine {
    /// `gate (<stage>): ≥ <value>` (`≤` for a metric that is better lower).
    pub fn label(&self) -> String {
        Self::label_of(&[self])
    }

    /// One label for gates of several stages with the same bound (the first's):
    /// `gates (<stage>, <stage>): ≤ <value>`.
    pub fn label_of(lines: &[&GateLine]) -> String {
        let Some(first) = lines.first() else { return String::new() };
        let sign = match first.bound {
            Bound::AtLeast => "≥",
            Bound::AtMost => "≤",
        };
        let stages: Vec<&str> = lines.iter().map(|g| g.stage.as_str()).collect();
        let gates = if lines.len() > 1 { "gates" } else { "gate" };
        format!("{gates} ({}): {sign} {}", stages.join(", "), trimmed(first.value))
    }
}
