//! Per-example scores of every evaluation: `examples/<stage>-step<N>-<set>.json` in the
//! run directory, one file per evaluation the metrics log records, with each example's
//! loss and each metric the objective gives per example (`Metric::per_example` in the
//! SDK; the first-party `completion` and `classification` objectives do), in the eval
//! set's order. `stagecraft compare` pairs them between two runs.
//!
//! ```
//! use stagecraft_core::report::ExampleScores;
//! let s = ExampleScores { loss: vec![Some(0.5), None], metrics: [("exact_match".into(), vec![Some(1.0), None])].into() };
//! let back: ExampleScores = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
//! assert_eq!(back, s);
//! ```

use crate::error::{io, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The folder of the run directory the files are in.
pub const EXAMPLES_DIR: &str = "examples";

/// One evaluation's scores, example by example.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleScores {
    /// Each example's loss (`None`: not finite), or empty when the objective gives
    /// no per-example loss.
    pub loss: Vec<Option<f64>>,
    /// Metric → each example's score (`None`: the metric does not score it), for the
    /// metrics given per example.
    pub metrics: BTreeMap<String, Vec<Option<f64>>>,
}

impl ExampleScores {
    /// Whether it holds nothing to pair.
    pub fn is_empty(&self) -> bool {
        self.loss.is_empty() && self.metrics.is_empty()
    }

    /// Each example's score on `metric` (`loss` for the loss), if recorded.
    pub fn scores(&self, metric: &str) -> Option<&[Option<f64>]> {
        match metric {
            "loss" if !self.loss.is_empty() => Some(&self.loss),
            _ => self.metrics.get(metric).map(Vec::as_slice),
        }
    }
}

/// The file of the evaluation of `set` logged by `stage` at `step`.
pub fn examples_path(run_dir: &Path, stage: &str, step: u64, set: &str) -> PathBuf {
    run_dir.join(EXAMPLES_DIR).join(format!("{stage}-step{step}-{set}.json"))
}

/// Writes `scores` for that evaluation (through a temporary file and a rename).
pub fn write_examples(run_dir: &Path, stage: &str, step: u64, set: &str, scores: &ExampleScores) -> Result<()> {
    let path = examples_path(run_dir, stage, step, set);
    let dir = run_dir.join(EXAMPLES_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let text = serde_json::to_string(scores).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))
}

/// Reads the scores of that evaluation; `None` when the run did not write them (an
/// older run, or an evaluation whose objective gives nothing per example).
pub fn read_examples(run_dir: &Path, stage: &str, step: u64, set: &str) -> Result<Option<ExampleScores>> {
    let path = examples_path(run_dir, stage, step, set);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::msg(format!("{}: not per-example scores: {e}", path.display())))
}
