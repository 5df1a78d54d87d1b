//! `metrics.jsonl`: one JSON object per line, appended as training goes.
//!
//! Training rows carry `loss`, `lr` and `grad_norm`; eval rows name the eval `set` and
//! carry a `metrics` object. Rows written by a run also carry when they were taken
//! (`time`, ISO 8601 UTC; `elapsed_s` since the run started, continued across resumes),
//! the throughput (`tokens_per_s`, train rows) and the memory high-water marks
//! (`peak_rss_mib`, and `peak_gpu_mib` on CUDA); all are optional when reading, so
//! older files still read. Non-finite numbers are written as `null` and read back
//! as NaN ([`super::num`]); keys this module does not know are kept in `extra`.
//!
//! ```
//! use stagecraft_core::report::{MetricRow, MetricsLog};
//! let dir = std::env::temp_dir().join(format!("metrics-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut log = MetricsLog::open(&dir)?;
//! log.append(&MetricRow::train("pretrain", 120, 1.93, 0.0028, Some(0.7)))?;
//! let metrics = [("loss".to_string(), 1.2), ("exact_match".to_string(), 0.5)].into();
//! log.append(&MetricRow::eval("pretrain", 120, "pretrain", metrics))?;
//! let rows = MetricsLog::read(log.path())?;
//! assert_eq!(rows.len(), 2);
//! assert_eq!(rows[1].metrics["exact_match"], 0.5);
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::jsonl::Jsonl;
use super::num;
use crate::Result;

/// Which kind of row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// A training step: `loss`, `lr`, `grad_norm`.
    Train,
    /// An evaluation of one eval set: `set`, `metrics`.
    Eval,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// The stage's name.
    pub stage: String,
    /// The optimizer step the row was taken at.
    pub step: u64,
    /// Training or evaluation.
    pub split: Split,
    /// Eval rows: the eval set (usually named after the stage that owns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// Train rows: the training loss (NaN if it diverged).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub loss: Option<f64>,
    /// Train rows: the learning rate used for this step.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub lr: Option<f64>,
    /// Train rows: the gradient norm before clipping, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub grad_norm: Option<f64>,
    /// Train rows of a stage with `regularize`: the penalty `λ/2·Σ w·(θ − θ₀)²` before
    /// the step's update (not part of `loss`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub penalty: Option<f64>,
    /// Train rows of a stage that mixes in replay: the mean per-example loss of the
    /// step's own (task) rows, where the objective gives per-example losses.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub task_loss: Option<f64>,
    /// Train rows of a stage that mixes in replay: the mean per-example loss of the
    /// step's replayed rows.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub replay_loss: Option<f64>,
    /// When the row was taken: ISO 8601 UTC with milliseconds (`2026-11-30T22:41:05.123Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Seconds since the run started (its first row), resumes included.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub elapsed_s: Option<f64>,
    /// Train rows: real (non-padding) tokens of the step's batches per second of the
    /// step's wall time (batching, forward, backward, update; evaluations excluded).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub tokens_per_s: Option<f64>,
    /// The process's peak resident set size so far, MiB (Linux `VmHWM`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub peak_rss_mib: Option<f64>,
    /// CUDA runs: the most device memory seen in use so far, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "num::opt")]
    pub peak_gpu_mib: Option<f64>,
    /// Eval rows: metric name → value (`loss`, `exact_match`, `loss_p50`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "num::map")]
    pub metrics: BTreeMap<String, f64>,
    /// Any other keys (throughput, wall time...), kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl MetricRow {
    /// A training row.
    pub fn train(stage: &str, step: u64, loss: f64, lr: f64, grad_norm: Option<f64>) -> Self {
        MetricRow {
            stage: stage.to_string(),
            step,
            split: Split::Train,
            set: None,
            loss: Some(loss),
            lr: Some(lr),
            grad_norm,
            penalty: None,
            task_loss: None,
            replay_loss: None,
            time: None,
            elapsed_s: None,
            tokens_per_s: None,
            peak_rss_mib: None,
            peak_gpu_mib: None,
            metrics: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// An eval row for eval set `set`.
    pub fn eval(stage: &str, step: u64, set: &str, metrics: BTreeMap<String, f64>) -> Self {
        MetricRow {
            stage: stage.to_string(),
            step,
            split: Split::Eval,
            set: Some(set.to_string()),
            loss: None,
            lr: None,
            grad_norm: None,
            penalty: None,
            task_loss: None,
            replay_loss: None,
            time: None,
            elapsed_s: None,
            tokens_per_s: None,
            peak_rss_mib: None,
            peak_gpu_mib: None,
            metrics,
            extra: BTreeMap::new(),
        }
    }

    /// This row without the fields that depend on when and how fast it ran (`time`,
    /// `elapsed_s`, `tokens_per_s`, `peak_rss_mib`, `peak_gpu_mib`): what two runs of
    /// the same work agree on.
    pub fn without_timing(&self) -> MetricRow {
        MetricRow {
            time: None,
            elapsed_s: None,
            tokens_per_s: None,
            peak_rss_mib: None,
            peak_gpu_mib: None,
            ..self.clone()
        }
    }
}

/// An open `metrics.jsonl`, appended one line (one `write`) per row.
#[derive(Debug)]
pub struct MetricsLog {
    file: Jsonl,
}

impl MetricsLog {
    /// The log's file name inside the run directory.
    pub const FILE_NAME: &'static str = "metrics.jsonl";

    /// Opens (creating if needed) `<run_dir>/metrics.jsonl` for appending. A last line
    /// without its newline (a process killed mid-write) is cut off first, so new rows
    /// never join onto it.
    pub fn open(run_dir: &Path) -> Result<Self> {
        Ok(MetricsLog { file: Jsonl::open(&run_dir.join(Self::FILE_NAME))? })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file's length in bytes (see [`Jsonl::truncate_to`]).
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether no row has been written.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Appends `row` as one line and hands it to the OS at once.
    pub fn append(&mut self, row: &MetricRow) -> Result<()> {
        self.file.append(row)
    }

    /// Cuts the log back to its first `len` bytes.
    pub fn truncate_to(&mut self, len: u64) -> Result<()> {
        self.file.truncate_to(len)
    }

    /// Makes every row appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync()
    }

    /// Reads every row of a `metrics.jsonl`. A malformed line is an error
    /// `FILE:LINE: ...`; blank lines are skipped, and so is an unparsable last line
    /// without its newline (a write cut short by a kill).
    pub fn read(path: &Path) -> Result<Vec<MetricRow>> {
        Jsonl::read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<MetricRow> {
        let mut eval = MetricRow::eval(
            "finetune_add",
            200,
            "finetune_add",
            [("loss".to_string(), 0.4), ("exact_match".to_string(), f64::NAN)].into(),
        );
        eval.extra.insert("wall_s".into(), serde_json::json!(12.5));
        vec![
            MetricRow::train("pretrain", 120, 1.93, 0.0028, Some(0.7)),
            MetricRow::train("pretrain", 121, f64::INFINITY, 0.0028, None),
            eval,
        ]
    }

    #[test]
    fn rows_round_trip_through_the_file() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let mut log = MetricsLog::open(tmp.path())?;
        for row in rows() {
            log.append(&row)?;
        }
        let text = std::fs::read_to_string(log.path())?;
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(first, r#"{"stage":"pretrain","step":120,"split":"train","loss":1.93,"lr":0.0028,"grad_norm":0.7}"#);
        let back = MetricsLog::read(log.path())?;
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], rows()[0]);
        assert!(back[1].loss.is_some_and(f64::is_nan));
        assert_eq!(back[1].grad_norm, None);
        assert_eq!(back[2].set.as_deref(), Some("finetune_add"));
        assert_eq!(back[2].metrics["loss"], 0.4);
        assert!(back[2].metrics["exact_match"].is_nan());
        assert_eq!(back[2].extra["wall_s"], 12.5);
        Ok(())
    }

    #[test]
    fn a_malformed_line_is_reported_with_file_and_line() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join(MetricsLog::FILE_NAME);
        let good = serde_json::to_string(&rows()[0])?;
        std::fs::write(&path, format!("{good}\n\n{{\"stage\": 3}}\n{good}\n"))?;
        let err = MetricsLog::read(&path).expect_err("malformed");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}:3: malformed", path.display())), "{msg}");
        assert_eq!(msg.lines().count(), 1);
        Ok(())
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_cut_before_appending() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join(MetricsLog::FILE_NAME);
        let good = serde_json::to_string(&rows()[0])?;
        std::fs::write(&path, format!("{good}\n{{\"stage\":\"pre"))?;
        assert_eq!(MetricsLog::read(&path)?.len(), 1);
        let mut log = MetricsLog::open(tmp.path())?;
        log.append(&rows()[2])?;
        let back = MetricsLog::read(&path)?;
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].stage, "finetune_add");
        Ok(())
    }
}
