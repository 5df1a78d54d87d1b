//! The page's header: the run's key numbers at a glance (stages, total steps, wall
//! time, peak memory) and each eval set's final score with its forgetting. Wall time
//! and memory are marked as time-dependent: a resumed run cannot reproduce them.
//!
//! ```
//! use stagecraft_core::report::header::KeyNumbers;
//! use stagecraft_core::report::MetricRow;
//! let mut row = MetricRow::train("pretrain", 200, 1.5, 1e-3, None);
//! row.elapsed_s = Some(41.3);
//! row.peak_rss_mib = Some(205.7);
//! let keys = KeyNumbers::from_rows(&[row], None);
//! assert_eq!((keys.stages, keys.steps), (1, 200));
//! let html = keys.to_html();
//! assert!(html.contains("41.3 s") && html.contains("206 MiB"));
//! ```

use super::escape::escape;
use super::fmt::{duration, mib, number};
use super::global_step::GlobalSteps;
use super::html::timed;
use super::metrics::MetricRow;
use super::retention::RetentionMatrix;

/// An eval set's score after the last stage.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalScore {
    /// The eval set.
    pub set: String,
    /// Its main score's metric.
    pub metric: String,
    /// The score after the last stage (`None`: not evaluated then).
    pub value: Option<f64>,
    /// How much worse than at the end of its own stage (positive = forgot).
    pub forgetting: Option<f64>,
}

/// The run's key numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyNumbers {
    /// Stages that logged anything.
    pub stages: usize,
    /// Steps of all stages together (the last global step).
    pub steps: u64,
    /// Seconds from the run's start to its last row, resumes included.
    pub wall_s: Option<f64>,
    /// The process's peak resident set size, MiB.
    pub peak_rss_mib: Option<f64>,
    /// The peak device memory in use, MiB (CUDA runs).
    pub peak_gpu_mib: Option<f64>,
    /// Each eval set's final score, in the retention matrix's column order.
    pub final_scores: Vec<FinalScore>,
}

/// The largest finite value of `field` over `rows`.
fn max_of(rows: &[MetricRow], field: fn(&MetricRow) -> Option<f64>) -> Option<f64> {
    rows.iter().filter_map(field).filter(|v| v.is_finite()).reduce(f64::max)
}

impl KeyNumbers {
    /// The key numbers of a run's rows and its retention matrix.
    pub fn from_rows(rows: &[MetricRow], retention: Option<&RetentionMatrix>) -> Self {
        let spans = GlobalSteps::from_rows(rows).spans();
        let final_scores = retention.map_or_else(Vec::new, |m| {
            let last = m.stages.len().saturating_sub(1);
            let forgetting = m.forgetting();
            let score = |(j, set): (usize, &String)| FinalScore {
                set: set.clone(),
                metric: m.metric_of(j).to_string(),
                value: m.value(last, j),
                forgetting: forgetting.get(j).copied().flatten(),
            };
            m.sets.iter().enumerate().map(score).collect()
        });
        KeyNumbers {
            stages: spans.len(),
            steps: spans.last().map_or(0, |(_, _, end)| *end),
            wall_s: max_of(rows, |r| r.elapsed_s),
            peak_rss_mib: max_of(rows, |r| r.peak_rss_mib),
            peak_gpu_mib: max_of(rows, |r| r.peak_gpu_mib),
            final_scores,
        }
    }

    /// The numbers as a row of `<div class="key">` boxes; those that depend on how fast
    /// the run went (wall time, memory) are marked as time-dependent ([`timed`]).
    pub fn to_html(&self) -> String {
        let mut keys =
            vec![Key::new(self.stages.to_string(), "stages"), Key::new(self.steps.to_string(), "steps in all")];
        let timing = [
            (self.wall_s.map(duration), "wall time"),
            (self.peak_rss_mib.map(mib), "peak RSS"),
            (self.peak_gpu_mib.map(mib), "peak GPU memory"),
        ];
        keys.extend(
            timing.into_iter().filter_map(|(value, what)| Some(Key { timing: true, ..Key::new(value?, what) })),
        );
        for f in &self.final_scores {
            let what = format!("final {} · {}", f.set, f.metric);
            keys.push(Key { note: f.forgetting.map(Note::forgetting), ..Key::new(number(f.value), &what) });
        }
        let mut s = String::from("<div class=\"keys\">\n");
        for key in keys {
            let line = format!("{}\n", key.to_html());
            s.push_str(&if key.timing { timed(&line) } else { line });
        }
        s.push_str("</div>\n");
        s
    }
}

/// One box of the header.
struct Key {
    /// The number, large.
    value: String,
    /// What it is.
    what: String,
    /// A remark below, colored.
    note: Option<Note>,
    /// Whether it depends on how fast the run went.
    timing: bool,
}

/// A remark under a key number.
struct Note {
    text: String,
    /// `worse`, `better` or `same`: its color.
    class: &'static str,
}

impl Note {
    /// The forgetting `d` (positive: worse), red when worse, green when better.
    fn forgetting(d: f64) -> Self {
        let class = match d {
            d if d > 0.0 => "worse",
            d if d < 0.0 => "better",
            _ => "same",
        };
        Note { text: format!("forgetting {d:+.4}"), class }
    }
}

impl Key {
    fn new(value: String, what: &str) -> Self {
        Key { value, what: what.to_string(), note: None, timing: false }
    }

    fn to_html(&self) -> String {
        let note = self
            .note
            .as_ref()
            .map_or(String::new(), |n| format!("<div class=\"n {}\">{}</div>", n.class, escape(&n.text)));
        format!(
            "<div class=\"key\"><div class=\"v\">{}</div><div class=\"k\">{}</div>{note}</div>",
            escape(&self.value),
            escape(&self.what)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_numbers_sum_steps_and_take_the_peaks() {
        let mut a = MetricRow::train("a", 200, 1.5, 1e-3, None);
        a.peak_rss_mib = Some(150.0);
        a.elapsed_s = Some(20.0);
        let mut b = MetricRow::train("b", 300, 0.1, 1e-3, None);
        b.peak_rss_mib = Some(210.0);
        b.elapsed_s = Some(75.0);
        let eval = |stage: &str, step: u64, set: &str, v: f64| {
            MetricRow::eval(stage, step, set, [("exact_match".to_string(), v)].into())
        };
        let rows = vec![a, eval("a", 200, "a", 0.9), b, eval("b", 300, "a", 0.8), eval("b", 300, "b", 0.95)];
        let m = RetentionMatrix::from_rows(&rows, "exact_match");
        let keys = KeyNumbers::from_rows(&rows, Some(&m));
        assert_eq!((keys.stages, keys.steps, keys.wall_s, keys.peak_rss_mib), (2, 500, Some(75.0), Some(210.0)));
        assert_eq!(keys.peak_gpu_mib, None);
        let html = keys.to_html();
        assert!(html.contains("1 min 15 s") && html.contains("210 MiB") && !html.contains("GPU"));
        assert!(
            html.contains("final a · exact_match") && html.contains("<div class=\"n worse\">forgetting +0.1000</div>")
        );
    }
}
