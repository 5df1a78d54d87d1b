//! One step axis across the stages: stage k's step `s` is at global step
//! `s + (the last step of every stage before it, summed)`, stages taken in the order the
//! log first names them. TensorBoard's event files and the report's timeline share it.
//!
//! ```
//! use stagecraft_core::report::{GlobalSteps, MetricRow};
//! let mut g = GlobalSteps::default();
//! assert_eq!(g.observe(&MetricRow::train("pretrain", 200, 1.0, 1e-3, None)), 200);
//! assert_eq!(g.observe(&MetricRow::train("finetune", 1, 1.0, 1e-3, None)), 201);
//! assert_eq!(g.offset("finetune"), Some(200));
//! ```

use super::metrics::MetricRow;

/// The stages seen so far, each with its offset and its last step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GlobalSteps {
    stages: Vec<(String, u64, u64)>,
}

impl GlobalSteps {
    /// The offsets of every stage of `rows`.
    pub fn from_rows(rows: &[MetricRow]) -> Self {
        let mut g = GlobalSteps::default();
        for r in rows {
            g.observe(r);
        }
        g
    }

    /// Notes `row` and returns its global step.
    pub fn observe(&mut self, row: &MetricRow) -> u64 {
        if let Some(entry) = self.stages.iter_mut().find(|(s, ..)| *s == row.stage) {
            entry.2 = entry.2.max(row.step);
            return entry.1 + row.step;
        }
        let offset = self.stages.last().map_or(0, |(_, offset, last)| offset + last);
        self.stages.push((row.stage.clone(), offset, row.step));
        offset + row.step
    }

    /// The global step of `row` (its stage must have been seen; else its own step).
    pub fn global(&self, row: &MetricRow) -> u64 {
        self.offset(&row.stage).unwrap_or(0) + row.step
    }

    /// Stage `stage`'s offset, if seen.
    pub fn offset(&self, stage: &str) -> Option<u64> {
        self.stages.iter().find(|(s, ..)| s == stage).map(|(_, o, _)| *o)
    }

    /// Every stage seen: name, first global step (its offset), last global step.
    pub fn spans(&self) -> Vec<(String, u64, u64)> {
        self.stages.iter().map(|(s, o, last)| (s.clone(), *o, o + last)).collect()
    }

    /// The global step after the last one seen (where a resumed run goes on).
    pub fn next(&self) -> u64 {
        self.stages.last().map_or(0, |(_, o, last)| o + last + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_each_other_and_evals_share_their_stage_offset() {
        let rows = vec![
            MetricRow::train("a", 1, 1.0, 1e-3, None),
            MetricRow::train("a", 50, 1.0, 1e-3, None),
            MetricRow::eval("a", 50, "a", [("loss".to_string(), 1.0)].into()),
            MetricRow::train("b", 1, 1.0, 1e-3, None),
            MetricRow::eval("b", 30, "a", [("loss".to_string(), 1.0)].into()),
            MetricRow::train("c", 2, 1.0, 1e-3, None),
        ];
        let g = GlobalSteps::from_rows(&rows);
        let globals: Vec<u64> = rows.iter().map(|r| g.global(r)).collect();
        assert_eq!(globals, [1, 50, 50, 51, 80, 82]);
        assert_eq!(g.spans()[1], ("b".to_string(), 50, 80));
        assert_eq!(g.next(), 83);
    }
}
