//! A stage's evaluations in detail: one plot per eval metric with a line per eval set,
//! one plot per set of its quantiles of a metric (`loss_p50`, `loss_p90`, `loss_p99`), and a
//! value tile for every set and metric evaluated only once in the stage (instead of a
//! line of one dot). Training curves are on the run's timeline ([`super::timeline`]).
//!
//! ```
//! use stagecraft_core::report::{plots::stage_detail, MetricRow};
//! let loss = |v: f64| [("loss".to_string(), v)].into();
//! let rows = vec![
//!     MetricRow::eval("pretrain", 100, "pretrain", loss(1.4)),
//!     MetricRow::eval("pretrain", 200, "pretrain", loss(1.3)),
//!     MetricRow::eval("pretrain", 200, "held_out", loss(1.6)),
//! ];
//! let detail = stage_detail(&rows, "pretrain");
//! let titles: Vec<&str> = detail.plots.iter().map(|p| p.title.as_str()).collect();
//! assert_eq!(titles, ["pretrain: eval loss"]);
//! assert_eq!(detail.plots[0].series.len(), 1);
//! assert_eq!(detail.tiles[0].set, "held_out");
//! ```

use std::collections::BTreeSet;

use super::metrics::{MetricRow, Split};
use super::svg::{Plot, Series};
use super::tiles::ValueTile;

/// Stage names in order of first appearance.
pub fn stage_order(rows: &[MetricRow]) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    for row in rows {
        if !stages.contains(&row.stage) {
            stages.push(row.stage.clone());
        }
    }
    stages
}

/// Eval set names of `stage` in order of first appearance.
pub fn eval_sets(rows: &[MetricRow], stage: &str) -> Vec<String> {
    let mut sets: Vec<String> = Vec::new();
    for row in rows.iter().filter(|r| r.stage == stage && r.split == Split::Eval) {
        if let Some(set) = &row.set {
            if !sets.contains(set) {
                sets.push(set.clone());
            }
        }
    }
    sets
}

/// A stage's detail: plots of what was evaluated more than once, tiles of the rest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageDetail {
    /// Eval metric plots (a line per set), then quantile plots (one per set).
    pub plots: Vec<Plot>,
    /// One per set and metric evaluated once in the stage.
    pub tiles: Vec<ValueTile>,
}

/// The metric `metric` is a quantile of (`loss` for `loss_p90`), if it is one.
fn quantile_of(metric: &str) -> Option<&str> {
    let (base, q) = metric.rsplit_once("_p")?;
    (!base.is_empty() && !q.is_empty() && q.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// Whether `metric` is a quantile of another (`loss_p90`).
fn is_quantile(metric: &str) -> bool {
    quantile_of(metric).is_some()
}

/// `(step, value)` of `metric` at each evaluation of `set` among `evals`.
fn points(evals: &[&MetricRow], set: &str, metric: &str) -> Vec<(f64, f64)> {
    evals
        .iter()
        .filter(|r| r.set.as_deref() == Some(set))
        .filter_map(|r| r.metrics.get(metric).map(|&v| (r.step as f64, v)))
        .collect()
}

/// The plots and tiles of `stage`'s evaluations.
pub fn stage_detail(rows: &[MetricRow], stage: &str) -> StageDetail {
    let evals: Vec<&MetricRow> = rows.iter().filter(|r| r.stage == stage && r.split == Split::Eval).collect();
    let metrics: BTreeSet<&str> = evals.iter().flat_map(|r| r.metrics.keys()).map(String::as_str).collect();
    let sets = eval_sets(rows, stage);
    let mut detail = StageDetail::default();
    for set in &sets {
        for &metric in &metrics {
            if let [(step, value)] = points(&evals, set, metric).as_slice() {
                let (metric, set, stage) = (metric.to_string(), set.clone(), stage.to_string());
                detail.tiles.push(ValueTile { value: *value, metric, set, stage, step: *step as u64 });
            }
        }
    }
    let repeated = |set: &String, metric: &str| points(&evals, set, metric).len() > 1;
    for &metric in metrics.iter().filter(|m| !is_quantile(m)) {
        let series: Vec<Series> = sets
            .iter()
            .filter(|set| repeated(set, metric))
            .map(|set| Series { label: set.clone(), points: points(&evals, set, metric) })
            .collect();
        if !series.is_empty() {
            let title = format!("{stage}: eval {metric}");
            detail.plots.push(Plot {
                title,
                x_label: "step".into(),
                y_label: metric.into(),
                series,
                ..Plot::default()
            });
        }
    }
    let bases: BTreeSet<&str> = metrics.iter().filter_map(|m| quantile_of(m)).collect();
    for set in &sets {
        for &base in &bases {
            let series: Vec<Series> = metrics
                .iter()
                .filter(|m| quantile_of(m) == Some(base) && repeated(set, m))
                .map(|m| Series { label: m.to_string(), points: points(&evals, set, m) })
                .collect();
            if !series.is_empty() {
                let title = format!("{stage}: {set} {base} quantiles");
                detail.plots.push(Plot {
                    title,
                    x_label: "step".into(),
                    y_label: base.into(),
                    series,
                    ..Plot::default()
                });
            }
        }
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_get_a_plot_each_quantiles_a_plot_per_set_single_evals_a_tile() {
        let m = |l: f64, e: f64| {
            [("loss".to_string(), l), ("exact_match".to_string(), e), ("loss_p90".to_string(), 2.0 * l)].into()
        };
        let rows = vec![
            MetricRow::train("b", 1, 2.0, 1e-3, Some(1.0)),
            MetricRow::eval("b", 10, "a", m(1.0, 0.5)),
            MetricRow::eval("b", 10, "b", m(2.0, 0.1)),
            MetricRow::eval("b", 20, "b", [("loss".to_string(), 1.5), ("loss_p90".to_string(), 2.5)].into()),
            MetricRow::train("other", 1, 2.0, 1e-3, None),
        ];
        let detail = stage_detail(&rows, "b");
        let titles: Vec<&str> = detail.plots.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["b: eval loss", "b: b loss quantiles"]);
        assert_eq!(detail.plots[0].series.len(), 1, "set a was evaluated once");
        assert_eq!(detail.plots[0].series[0].points, vec![(10.0, 2.0), (20.0, 1.5)]);
        let tiles: Vec<(&str, &str, f64)> =
            detail.tiles.iter().map(|t| (t.set.as_str(), t.metric.as_str(), t.value)).collect();
        assert_eq!(
            tiles,
            [("a", "exact_match", 0.5), ("a", "loss", 1.0), ("a", "loss_p90", 2.0), ("b", "exact_match", 0.1)]
        );
        assert!(detail.plots.iter().all(|p| p.series.iter().all(|s| s.points.len() > 1)), "no plot of one dot");
        assert_eq!(stage_order(&rows), ["b", "other"]);
        assert_eq!(quantile_of("loss_p99"), Some("loss"));
        assert!(!is_quantile("exact_match") && !is_quantile("top_p") && !is_quantile("_p5"));
    }
}
