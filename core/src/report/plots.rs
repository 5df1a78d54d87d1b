//! Which plots a stage gets, built from its metrics rows: training loss, learning rate
//! and (where logged) gradient norm against step, then one plot per eval metric with
//! one line per eval set.
//!
//! ```
//! use stagecraft_core::report::{plots::stage_plots, MetricRow};
//! let rows = vec![
//!     MetricRow::train("pretrain", 1, 2.0, 1e-3, None),
//!     MetricRow::train("pretrain", 2, 1.8, 1e-3, None),
//! ];
//! let plots = stage_plots(&rows, "pretrain");
//! let titles: Vec<&str> = plots.iter().map(|p| p.title.as_str()).collect();
//! assert_eq!(titles, ["pretrain: training loss", "pretrain: learning rate"]);
//! ```

use std::collections::BTreeSet;

use super::metrics::{MetricRow, Split};
use super::svg::{Plot, Series};

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

/// A one-series plot of a training field against step, or `None` if never logged.
fn train_plot(rows: &[MetricRow], stage: &str, what: &str, field: fn(&MetricRow) -> Option<f64>) -> Option<Plot> {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.stage == stage && r.split == Split::Train)
        .filter_map(|r| field(r).map(|v| (r.step as f64, v)))
        .collect();
    (!points.is_empty()).then(|| Plot {
        title: format!("{stage}: {what}"),
        x_label: "step".into(),
        y_label: what.into(),
        series: vec![Series { label: what.into(), points }],
        ..Plot::default()
    })
}

/// Every plot for `stage`, in display order.
pub fn stage_plots(rows: &[MetricRow], stage: &str) -> Vec<Plot> {
    let mut plots: Vec<Plot> = [
        train_plot(rows, stage, "training loss", |r| r.loss),
        train_plot(rows, stage, "learning rate", |r| r.lr),
        train_plot(rows, stage, "gradient norm", |r| r.grad_norm),
    ]
    .into_iter()
    .flatten()
    .collect();

    let evals: Vec<&MetricRow> = rows.iter().filter(|r| r.stage == stage && r.split == Split::Eval).collect();
    let metrics: BTreeSet<&String> = evals.iter().flat_map(|r| r.metrics.keys()).collect();
    let sets = eval_sets(rows, stage);
    for metric in metrics {
        let series = sets
            .iter()
            .map(|set| Series {
                label: set.clone(),
                points: evals
                    .iter()
                    .filter(|r| r.set.as_ref() == Some(set))
                    .filter_map(|r| r.metrics.get(metric).map(|&v| (r.step as f64, v)))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        plots.push(Plot {
            title: format!("{stage}: eval {metric}"),
            x_label: "step".into(),
            y_label: metric.clone(),
            series,
            ..Plot::default()
        });
    }
    plots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_metrics_get_one_plot_each_with_a_line_per_set() {
        let m = |l: f64, e: f64| [("loss".to_string(), l), ("exact_match".to_string(), e)].into();
        let rows = vec![
            MetricRow::train("b", 1, 2.0, 1e-3, Some(1.0)),
            MetricRow::eval("b", 10, "a", m(1.0, 0.5)),
            MetricRow::eval("b", 10, "b", m(2.0, 0.1)),
            MetricRow::eval("b", 20, "b", [("loss".to_string(), 1.5)].into()),
            MetricRow::train("other", 1, 2.0, 1e-3, None),
        ];
        let plots = stage_plots(&rows, "b");
        let titles: Vec<&str> = plots.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(
            titles,
            ["b: training loss", "b: learning rate", "b: gradient norm", "b: eval exact_match", "b: eval loss"]
        );
        let loss = &plots[4];
        assert_eq!(loss.series.len(), 2);
        assert_eq!(loss.series[1].points, vec![(10.0, 2.0), (20.0, 1.5)]);
        assert_eq!(stage_order(&rows), ["b", "other"]);
    }
}
