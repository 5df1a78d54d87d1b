//! How an eval set is scored: a metric's direction, and a set's main score (the column
//! of the retention matrix, what a gate watches and what early stopping compares when
//! the config names no metric).
//!
//! A metric's direction comes from its name: `loss`, `perplexity`, `ppl` and `error`
//! metrics are better lower ([`lower_is_better`]), every other metric higher.

use super::eval::Metrics;
pub(crate) use crate::report::lower_is_better;

/// The metrics a set's main score is chosen from, in order of preference: the first
/// one its evaluations report.
pub(crate) const MAIN_SCORE: [&str; 3] = ["exact_match", "accuracy", "loss"];

/// The name of `m`'s main score.
pub(crate) fn main_metric(m: &Metrics) -> Option<&'static str> {
    MAIN_SCORE.into_iter().find(|k| m.contains_key(*k))
}

/// `metric` (default: the main score) of `m`, oriented so that higher is better.
pub(crate) fn oriented(m: &Metrics, metric: Option<&str>) -> Option<f64> {
    let name = metric.or_else(|| main_metric(m))?;
    m.get(name).map(|v| if lower_is_better(name) { -v } else { *v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_score_prefers_task_metrics_and_losses_count_downwards() {
        let m: Metrics = [("loss".to_string(), 0.5), ("exact_match".to_string(), 0.75)].into();
        assert_eq!(main_metric(&m), Some("exact_match"));
        assert_eq!(oriented(&m, None), Some(0.75));
        assert_eq!(oriented(&m, Some("loss")), Some(-0.5));
        let lm: Metrics = [("loss".to_string(), 2.0), ("token_accuracy".to_string(), 0.3)].into();
        assert_eq!(oriented(&lm, None), Some(-2.0));
        assert_eq!(oriented(&lm, Some("bleu")), None);
    }
}
