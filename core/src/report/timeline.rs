//! The run on one step axis ([`GlobalSteps`]): training loss across every stage (with
//! the task and replay parts as their own lines where a stage mixes replay), and the
//! learning rate, gradient norm, throughput and memory, each with the stages shaded,
//! named and their boundaries marked. The y axis turns logarithmic by itself where the
//! values span decades (a pretraining loss of 1.5 beside a task loss of 0.02).
//!
//! ```
//! use stagecraft_core::report::{timeline::loss_timeline, MetricRow};
//! let rows = vec![
//!     MetricRow::train("pretrain", 1, 5.0, 1e-3, None),
//!     MetricRow::train("pretrain", 200, 1.5, 1e-3, None),
//!     MetricRow::train("add", 1, 0.8, 1e-3, None),
//!     MetricRow::train("add", 300, 0.02, 1e-3, None),
//! ];
//! let plot = loss_timeline(&rows).expect("training rows");
//! assert_eq!(plot.stages[1].start, 200.0);
//! assert!(plot.to_svg().contains("(log)"));
//! ```

use super::global_step::GlobalSteps;
use super::metrics::{MetricRow, Split};
use super::svg::{Plot, Series, Size, StageSpan};

/// The x axis's label on every global-step plot.
pub const GLOBAL_STEP: &str = "global step (all stages)";

/// The stages of the run as spans of the global step axis.
pub fn stage_spans(steps: &GlobalSteps) -> Vec<StageSpan> {
    steps.spans().into_iter().map(|(name, start, end)| StageSpan::new(&name, start as f64, end as f64)).collect()
}

/// A line of `field` of the training rows against their global step, or `None` when
/// no row has it.
fn train_series(
    rows: &[MetricRow],
    steps: &GlobalSteps,
    label: &str,
    field: fn(&MetricRow) -> Option<f64>,
) -> Option<Series> {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .filter_map(|r| field(r).map(|v| (steps.global(r) as f64, v)))
        .collect();
    (!points.is_empty()).then(|| Series { label: label.to_string(), points })
}

/// A plot over the global step axis with the run's stages marked; `None` without series.
fn timeline(rows: &[MetricRow], title: &str, y_label: &str, series: Vec<Option<Series>>) -> Option<Plot> {
    let series: Vec<Series> = series.into_iter().flatten().collect();
    (!series.is_empty()).then(|| Plot {
        title: title.to_string(),
        x_label: GLOBAL_STEP.into(),
        y_label: y_label.to_string(),
        series,
        stages: stage_spans(&GlobalSteps::from_rows(rows)),
        ..Plot::default()
    })
}

/// Training loss over every stage, full width: the loss of each step, and its task and
/// replay parts where logged.
pub fn loss_timeline(rows: &[MetricRow]) -> Option<Plot> {
    let steps = GlobalSteps::from_rows(rows);
    let loss = [
        train_series(rows, &steps, "training loss", |r| r.loss),
        train_series(rows, &steps, "task loss", |r| r.task_loss),
        train_series(rows, &steps, "replay loss", |r| r.replay_loss),
    ];
    let plot = timeline(rows, "Training loss, all stages", "loss", loss.into())?;
    Some(Plot { size: Size::Wide, ..plot })
}

/// Learning rate and gradient norm over the global step axis, each where logged, small
/// (four fit a row).
pub fn training_timelines(rows: &[MetricRow]) -> Vec<Plot> {
    let steps = GlobalSteps::from_rows(rows);
    let one = |label: &str, field: fn(&MetricRow) -> Option<f64>| vec![train_series(rows, &steps, label, field)];
    small([
        timeline(rows, "Learning rate", "learning rate", one("learning rate", |r| r.lr)),
        timeline(rows, "Gradient norm (before clipping)", "gradient norm", one("gradient norm", |r| r.grad_norm)),
    ])
}

/// Throughput and memory over the global step axis, each where logged, small: what
/// depends on how fast the run went (a resumed run cannot reproduce it).
pub fn resource_timelines(rows: &[MetricRow]) -> Vec<Plot> {
    let steps = GlobalSteps::from_rows(rows);
    // Memory high-water marks are on every row (eval rows too); the training rows are
    // enough to show them grow.
    let memory = vec![
        train_series(rows, &steps, "peak RSS", |r| r.peak_rss_mib),
        train_series(rows, &steps, "peak GPU", |r| r.peak_gpu_mib),
    ];
    let throughput = vec![train_series(rows, &steps, "tokens / s", |r| r.tokens_per_s)];
    small([
        timeline(rows, "Throughput", "tokens / s", throughput),
        timeline(rows, "Memory (high-water mark)", "MiB", memory),
    ])
}

/// The plots that exist, small.
fn small<const N: usize>(plots: [Option<Plot>; N]) -> Vec<Plot> {
    plots.into_iter().flatten().map(|plot| Plot { size: Size::Small, ..plot }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_stages() -> Vec<MetricRow> {
        let mut rows = Vec::new();
        for step in 1..=200 {
            let mut r = MetricRow::train("pretrain", step, 5.0 / step as f64 + 1.4, 1e-3, Some(0.5));
            r.tokens_per_s = Some(9000.0);
            r.peak_rss_mib = Some(200.0);
            rows.push(r);
        }
        for step in 1..=300 {
            let mut r = MetricRow::train("add", step, 0.3, 1e-3, None);
            r.task_loss = Some(0.5 / step as f64);
            r.replay_loss = Some(1.5);
            rows.push(r);
        }
        rows
    }

    #[test]
    fn the_timeline_marks_stage_boundaries_on_the_global_axis() {
        let plot = loss_timeline(&two_stages()).expect("a plot");
        assert_eq!(plot.stages, [StageSpan::new("pretrain", 0.0, 200.0), StageSpan::new("add", 200.0, 500.0)]);
        assert_eq!(plot.series[0].points[200], (201.0, 0.3), "the second stage continues the axis");
        let svg = plot.to_svg();
        assert_eq!(svg.matches("class=\"boundary\"").count(), 1);
        assert!(svg.contains(">pretrain<") && svg.contains(">add<"));
    }

    #[test]
    fn task_and_replay_loss_are_their_own_series_where_logged() {
        let plot = loss_timeline(&two_stages()).expect("a plot");
        let labels: Vec<&str> = plot.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["training loss", "task loss", "replay loss"]);
        assert_eq!(plot.series[1].points.len(), 300, "only the replay stage has them");
        assert_eq!(plot.series[1].points[0], (201.0, 0.5));
        let pretrain_only: Vec<MetricRow> = two_stages().into_iter().filter(|r| r.stage == "pretrain").collect();
        assert_eq!(loss_timeline(&pretrain_only).expect("a plot").series.len(), 1);
    }

    #[test]
    fn the_loss_axis_is_log_when_values_span_decades_and_linear_otherwise() {
        // Task loss falls to 0.5/300 ≈ 0.0017 while pretraining was at 6.4: 3.6 decades.
        let svg = loss_timeline(&two_stages()).expect("a plot").to_svg();
        assert!(svg.contains("loss (log)"), "{svg}");
        let flat: Vec<MetricRow> =
            (1..=50).map(|s| MetricRow::train("a", s, 2.0 - s as f64 / 100.0, 1e-3, None)).collect();
        assert!(!loss_timeline(&flat).expect("a plot").to_svg().contains("(log)"));
    }

    #[test]
    fn throughput_and_memory_plots_exist_only_where_logged() {
        let titles = |plots: Vec<Plot>| plots.into_iter().map(|p| p.title).collect::<Vec<String>>();
        assert_eq!(titles(training_timelines(&two_stages())), ["Learning rate", "Gradient norm (before clipping)"]);
        assert_eq!(titles(resource_timelines(&two_stages())), ["Throughput", "Memory (high-water mark)"]);
        let memory = &resource_timelines(&two_stages())[1];
        assert_eq!(memory.series.len(), 1, "no GPU memory logged");
        assert_eq!(memory.series[0].points.len(), 200, "only the first stage logged memory");
        let bare = vec![MetricRow::train("a", 1, 1.0, 1e-3, None)];
        assert_eq!(titles(training_timelines(&bare)), ["Learning rate"]);
        assert!(resource_timelines(&bare).is_empty());
    }
}
