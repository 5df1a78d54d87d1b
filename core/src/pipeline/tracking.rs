//! What every metrics row is stamped with as it is logged — the wall-clock time, the
//! seconds since the run started, the memory high-water marks — and where it goes
//! besides `metrics.jsonl`: TensorBoard's event files (`[run] tensorboard = true`).
//!
//! The run's start is read back from the log itself (its first stamped row's `time`
//! less its `elapsed_s`), so `elapsed_s` goes on across a resume instead of restarting.

use super::run_dir::RunDir;
use crate::bench::peak_rss_mib;
use crate::device::device_memory_used_mib;
use crate::error::Result;
use crate::report::clock::{iso8601, parse_iso8601, unix_now};
use crate::report::tensorboard::{EventWriter, TENSORBOARD_DIR};
use crate::report::{GlobalSteps, MetricRow, Split};
use candle_core::Device;

/// How a run's rows are stamped and mirrored.
pub(crate) struct Tracker {
    start: f64,
    device: Device,
    peak_gpu: Option<f64>,
    steps: GlobalSteps,
    tensorboard: Option<EventWriter>,
}

impl Tracker {
    /// A tracker for a run whose log holds `rows` (a resumed run's, cut back to its
    /// checkpoint; a new run's: none); `tensorboard` opens a new event file.
    pub fn new(run: &RunDir, rows: &[MetricRow], device: &Device, tensorboard: bool) -> Result<Self> {
        let start =
            rows.iter().find_map(|r| Some(parse_iso8601(r.time.as_deref()?)? - r.elapsed_s?)).unwrap_or_else(unix_now);
        let steps = GlobalSteps::from_rows(rows);
        let tensorboard = if tensorboard {
            let resume_at = (!rows.is_empty()).then(|| steps.next());
            Some(EventWriter::create(&run.join(TENSORBOARD_DIR), resume_at)?)
        } else {
            None
        };
        Ok(Tracker { start, device: device.clone(), peak_gpu: None, steps, tensorboard })
    }

    /// Sets `row`'s time, elapsed seconds and memory high-water marks.
    pub fn stamp(&mut self, row: &mut MetricRow) {
        let now = unix_now();
        row.time = Some(iso8601(now));
        row.elapsed_s = Some(((now - self.start).max(0.0) * 1000.0).round() / 1000.0);
        row.peak_rss_mib = Some((peak_rss_mib() * 10.0).round() / 10.0);
        if let Some(used) = device_memory_used_mib(&self.device) {
            self.peak_gpu = Some(self.peak_gpu.map_or(used, |p| p.max(used)));
        }
        row.peak_gpu_mib = self.peak_gpu;
    }

    /// Notes `row` on the global step axis and writes its scalars to TensorBoard.
    pub fn mirror(&mut self, row: &MetricRow) -> Result<()> {
        let step = self.steps.observe(row);
        let Some(tb) = self.tensorboard.as_mut() else { return Ok(()) };
        let wall = row.time.as_deref().and_then(parse_iso8601).unwrap_or_else(unix_now);
        tb.scalars(&scalars(row), step, wall)
    }
}

/// A row's TensorBoard scalars: `train/<field>` or `eval/<set>/<metric>`.
fn scalars(row: &MetricRow) -> Vec<(String, f64)> {
    match row.split {
        Split::Train => [
            ("loss", row.loss),
            ("task_loss", row.task_loss),
            ("replay_loss", row.replay_loss),
            ("lr", row.lr),
            ("grad_norm", row.grad_norm),
            ("penalty", row.penalty),
            ("tokens_per_s", row.tokens_per_s),
            ("peak_rss_mib", row.peak_rss_mib),
            ("peak_gpu_mib", row.peak_gpu_mib),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((format!("train/{k}"), v?)))
        .collect(),
        Split::Eval => {
            let set = row.set.as_deref().unwrap_or(&row.stage);
            row.metrics.iter().map(|(m, v)| (format!("eval/{set}/{m}"), *v)).collect()
        }
    }
}
