//! Retention curves: for every eval set, its main score (the retention matrix's column
//! metric) at every evaluation of the whole run, on the global step axis with the
//! stages marked, and each retention gate watching the set as a dashed line over the
//! gating stage's span. A gate on another metric of the set gets a curve of that
//! metric. A set evaluated once is a value tile, not a plot of one dot.
//!
//! ```
//! use stagecraft_core::report::curves::retention_curves;
//! use stagecraft_core::report::{Bound, GateLine, MetricRow, RetentionMatrix};
//! let em = |v: f64| [("exact_match".to_string(), v)].into();
//! let rows = vec![
//!     MetricRow::eval("add", 100, "add", em(0.98)),
//!     MetricRow::eval("sub", 50, "add", em(0.95)),
//!     MetricRow::eval("sub", 50, "sub", em(0.90)),
//! ];
//! let matrix = RetentionMatrix::from_rows(&rows, "exact_match");
//! let gate = GateLine { stage: "sub".into(), set: "add".into(), metric: "exact_match".into(), value: 0.93, bound: Bound::AtLeast };
//! let curves = retention_curves(&rows, &matrix, &[gate]);
//! assert_eq!(curves.plots.len(), 1);
//! assert_eq!(curves.plots[0].thresholds[0].value, 0.93);
//! assert_eq!(curves.tiles[0].set, "sub");
//! ```

use super::gate_line::GateLine;
use super::global_step::GlobalSteps;
use super::metrics::{MetricRow, Split};
use super::retention::RetentionMatrix;
use super::svg::{Plot, Series, Threshold};
use super::tiles::ValueTile;
use super::timeline::{stage_spans, GLOBAL_STEP};

/// The retention section's plots and tiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// One per set and metric evaluated more than once.
    pub plots: Vec<Plot>,
    /// One per set and metric evaluated once.
    pub tiles: Vec<ValueTile>,
}

/// The curves of every set of `matrix` (in its column order), with `gates` drawn.
pub fn retention_curves(rows: &[MetricRow], matrix: &RetentionMatrix, gates: &[GateLine]) -> Curves {
    let steps = GlobalSteps::from_rows(rows);
    let mut curves = Curves::default();
    for (j, set) in matrix.sets.iter().enumerate() {
        let main = matrix.metric_of(j);
        let gated = gates.iter().filter(|g| g.set == *set && g.metric != main).map(|g| g.metric.as_str());
        let mut metrics = vec![main];
        for metric in gated {
            if !metrics.contains(&metric) {
                metrics.push(metric);
            }
        }
        for metric in metrics {
            let evals: Vec<&MetricRow> = rows
                .iter()
                .filter(|r| r.split == Split::Eval && r.set.as_ref() == Some(set) && r.metrics.contains_key(metric))
                .collect();
            match evals.as_slice() {
                [] => {}
                [one] => curves.tiles.push(tile(one, set, metric)),
                _ => curves.plots.push(curve(&evals, &steps, set, metric, gates)),
            }
        }
    }
    curves
}

/// The value tile of a set's only evaluation.
fn tile(row: &MetricRow, set: &str, metric: &str) -> ValueTile {
    ValueTile {
        value: row.metrics.get(metric).copied().unwrap_or(f64::NAN),
        metric: metric.to_string(),
        set: set.to_string(),
        stage: row.stage.clone(),
        step: row.step,
    }
}

/// One set's `metric` over the run, with the gates on that set and metric.
fn curve(evals: &[&MetricRow], steps: &GlobalSteps, set: &str, metric: &str, gates: &[GateLine]) -> Plot {
    let points = evals.iter().filter_map(|r| r.metrics.get(metric).map(|&v| (steps.global(r) as f64, v))).collect();
    let stages = stage_spans(steps);
    // Runs of gates with the same bound in consecutive stages (the same watched score
    // and max_drop) are one line under one label.
    let mut runs: Vec<(Threshold, Vec<&GateLine>)> = Vec::new();
    for g in gates.iter().filter(|g| g.set == set && g.metric == metric) {
        let Some(span) = stages.iter().find(|s| s.name == g.stage) else { continue };
        match runs.last_mut() {
            Some((t, run)) if t.to == span.start && run[0].value == g.value && run[0].bound == g.bound => {
                t.to = span.end;
                run.push(g);
            }
            _ => {
                runs.push((Threshold { value: g.value, from: span.start, to: span.end, label: String::new() }, vec![g]))
            }
        }
    }
    let thresholds = runs.into_iter().map(|(t, run)| Threshold { label: GateLine::label_of(&run), ..t }).collect();
    Plot {
        title: format!("Retention of {set}: {metric}"),
        x_label: GLOBAL_STEP.into(),
        y_label: metric.to_string(),
        series: vec![Series { label: set.to_string(), points }],
        stages,
        thresholds,
        ..Plot::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Bound;

    fn eval(stage: &str, step: u64, set: &str, kv: &[(&str, f64)]) -> MetricRow {
        MetricRow::eval(stage, step, set, kv.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    /// pretrain (200 steps) → add (300) → sub (100); add is gated in sub on exact
    /// match, pretrain on loss in both later stages.
    fn run() -> (Vec<MetricRow>, Vec<GateLine>) {
        let rows = vec![
            MetricRow::train("pretrain", 1, 5.0, 1e-3, None),
            eval("pretrain", 150, "pretrain", &[("loss", 1.36)]),
            eval("pretrain", 200, "pretrain", &[("loss", 1.33)]),
            eval("add", 100, "add", &[("loss", 0.4), ("exact_match", 0.69)]),
            eval("add", 100, "pretrain", &[("loss", 1.5)]),
            eval("add", 300, "add", &[("loss", 0.02), ("exact_match", 0.98)]),
            eval("add", 300, "pretrain", &[("loss", 1.54)]),
            eval("sub", 100, "sub", &[("loss", 0.05), ("exact_match", 0.99)]),
            eval("sub", 100, "add", &[("loss", 0.01), ("exact_match", 1.0)]),
            eval("sub", 100, "pretrain", &[("loss", 1.5)]),
        ];
        let gate = |stage: &str, set: &str, metric: &str, value: f64, bound| GateLine {
            stage: stage.into(),
            set: set.into(),
            metric: metric.into(),
            value,
            bound,
        };
        let gates = vec![
            gate("add", "pretrain", "loss", 1.83, Bound::AtMost),
            gate("sub", "add", "exact_match", 0.93, Bound::AtLeast),
            gate("sub", "pretrain", "loss", 1.83, Bound::AtMost),
            gate("sub", "add", "loss", 0.52, Bound::AtMost),
        ];
        (rows, gates)
    }

    /// The number in `attr="..."` after `from` in `svg`.
    fn number_after(svg: &str, from: usize, attr: &str) -> f64 {
        let rest = &svg[from..];
        let start = rest.find(&format!(" {attr}=\"")).map(|i| i + attr.len() + 3).unwrap_or(0);
        rest[start..].split('"').next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }

    /// The height of the dashed threshold line.
    fn threshold_y(svg: &str) -> f64 {
        number_after(svg, svg.find("<line class=\"threshold\"").unwrap_or(0), "y1")
    }

    /// The height of the y tick labelled `label` (its text sits 4 px below the line).
    fn tick_y(svg: &str, label: &str) -> f64 {
        let end = svg.find(&format!(">{label}</text>")).unwrap_or(0);
        let start = svg[..end].rfind("<text").unwrap_or(0);
        number_after(svg, start, "y") - 4.0
    }

    #[test]
    fn every_set_has_its_main_score_over_the_whole_run() {
        let (rows, gates) = run();
        let matrix = RetentionMatrix::from_rows_main(&rows, &["exact_match", "accuracy", "loss"]);
        let curves = retention_curves(&rows, &matrix, &gates);
        let titles: Vec<&str> = curves.plots.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["Retention of pretrain: loss", "Retention of add: exact_match", "Retention of add: loss"]);
        // pretrain's loss at every evaluation, in every stage, on the global axis.
        assert_eq!(
            curves.plots[0].series[0].points,
            [(150.0, 1.36), (200.0, 1.33), (300.0, 1.5), (500.0, 1.54), (600.0, 1.5)]
        );
        // sub was evaluated once: a tile per metric of the curve, no plot.
        assert_eq!(curves.tiles.len(), 1);
        assert_eq!((curves.tiles[0].set.as_str(), curves.tiles[0].metric.as_str()), ("sub", "exact_match"));
        assert_eq!((curves.tiles[0].value, curves.tiles[0].stage.as_str(), curves.tiles[0].step), (0.99, "sub", 100));
    }

    #[test]
    fn gate_thresholds_are_drawn_at_their_value_over_the_gating_stage() {
        let (rows, gates) = run();
        let matrix = RetentionMatrix::from_rows_main(&rows, &["exact_match", "accuracy", "loss"]);
        let curves = retention_curves(&rows, &matrix, &gates);
        let pretrain = &curves.plots[0];
        // The same bound from two consecutive gating stages: one line, one label.
        let spans: Vec<(f64, f64, f64)> = pretrain.thresholds.iter().map(|t| (t.value, t.from, t.to)).collect();
        assert_eq!(spans, [(1.83, 200.0, 600.0)]);
        assert_eq!(pretrain.thresholds[0].label, "gates (add, sub): ≤ 1.83");
        let add = &curves.plots[1];
        assert_eq!(add.thresholds.len(), 1);
        assert_eq!(add.thresholds[0].label, "gate (sub): ≥ 0.93");
        let svg = add.to_svg();
        assert!(svg.contains("class=\"threshold\"") && svg.contains("gate (sub): ≥ 0.93"));
        // Drawn at 0.93 on the y axis: 30% of the way from the 0.9 tick to the 1.0 tick.
        let (at, lo, hi) = (threshold_y(&svg), tick_y(&svg, "0.9"), tick_y(&svg, "1.0"));
        assert!(((at - lo) / (hi - lo) - 0.3).abs() < 0.01, "{at} between {lo} and {hi}");
        assert_eq!(curves.plots[2].thresholds[0].value, 0.52, "a gate on another metric gets its own curve");
    }
}
