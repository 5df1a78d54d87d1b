//! How an eval set is scored: a metric's direction, and a set's main score (the column
//! of the retention matrix, what a gate watches and what early stopping compares when
//! the config names no metric).
//!
//! A metric's direction comes from its name: `loss`, `perplexity`, `ppl` and `error`
//! metrics are better lower ([`lower_is_better`]), every other metric higher.
//! [`gate_line`] turns a retention gate into the bound the report draws.

use super::eval::Metrics;
use crate::config::RetentionGate;
pub(crate) use crate::report::lower_is_better;
use crate::report::{Bound, GateLine};

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

/// The bound of `gate` (in stage `stage`) in its metric's own units: the gate fails
/// when the watched set's score, [`oriented`] as the gate orients it, drops more than
/// `max_drop` below its oriented value in `base` (the set's metrics at the end of its
/// own stage). `None` when `base` lacks the metric.
pub(crate) fn gate_line(stage: &str, gate: &RetentionGate, base: &Metrics) -> Option<GateLine> {
    let metric = gate.metric.as_deref().or_else(|| main_metric(base))?;
    let floor = oriented(base, Some(metric))? - gate.max_drop;
    let lower = lower_is_better(metric);
    Some(GateLine {
        stage: stage.to_string(),
        set: gate.stage.clone(),
        metric: metric.to_string(),
        value: if lower { -floor } else { floor },
        bound: if lower { Bound::AtMost } else { Bound::AtLeast },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GateAction;

    fn gate(metric: Option<&str>, max_drop: f64) -> RetentionGate {
        RetentionGate {
            stage: "add".into(),
            max_drop,
            metric: metric.map(str::to_string),
            on_fail: GateAction::default(),
            patience: 0,
        }
    }

    #[test]
    fn a_gate_line_is_where_the_gate_starts_failing() {
        let base: Metrics = [("loss".to_string(), 1.3), ("exact_match".to_string(), 0.98)].into();
        let em = gate_line("sub", &gate(None, 0.05), &base).expect("a line");
        assert_eq!((em.set.as_str(), em.metric.as_str(), em.bound), ("add", "exact_match", Bound::AtLeast));
        assert!((em.value - 0.93).abs() < 1e-12, "{}", em.value);
        let loss = gate_line("sub", &gate(Some("loss"), 0.5), &base).expect("a line");
        assert_eq!((loss.metric.as_str(), loss.bound), ("loss", Bound::AtMost));
        assert!((loss.value - 1.8).abs() < 1e-12, "{}", loss.value);
        // Just past the line fails the gate's own test (base - now > max_drop), just
        // inside passes.
        let fails = |g: &RetentionGate, now: f64, name: &str| {
            let now: Metrics = [(name.to_string(), now)].into();
            let (b, n) = (oriented(&base, g.metric.as_deref()), oriented(&now, g.metric.as_deref().or(Some(name))));
            b.zip(n).is_some_and(|(b, n)| b - n > g.max_drop)
        };
        assert!(
            fails(&gate(None, 0.05), em.value - 1e-6, "exact_match")
                && !fails(&gate(None, 0.05), em.value + 1e-6, "exact_match")
        );
        assert!(
            fails(&gate(Some("loss"), 0.5), loss.value + 1e-6, "loss")
                && !fails(&gate(Some("loss"), 0.5), loss.value - 1e-6, "loss")
        );
        assert_eq!(gate_line("sub", &gate(Some("bleu"), 0.1), &base), None);
    }

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
