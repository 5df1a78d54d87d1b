//! What a run was made from, recorded in its directory: `data.json` (each data set's
//! source, size and sha256; `plugins.json` is [`super::plugin_record`]'s). A resume
//! checks the data against `data.json`.

use super::run_dir::RunDir;
use crate::data::Dataset;
use crate::error::{Error, Result};
use std::sync::Arc;

/// What `data.json` records: each data set's source, size and sha256 (training sets,
/// then eval sets).
pub(crate) fn data_record(train: &[Arc<Dataset>], eval: &[Option<Arc<Dataset>>]) -> serde_json::Value {
    let sets = train.iter().chain(eval.iter().flatten());
    serde_json::Value::Array(
        sets.map(|d| serde_json::json!({ "source": d.name, "examples": d.len(), "sha256": d.sha256 })).collect(),
    )
}

/// Refuses to resume on data other than the run's (its `data.json`, when it has one).
pub(crate) fn check_same_data(run: &RunDir, now: &serde_json::Value) -> Result<()> {
    let path = run.join("data.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let then: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
    if &then == now {
        return Ok(());
    }
    let (then, now) = (then.as_array().cloned().unwrap_or_default(), now.as_array().cloned().unwrap_or_default());
    let changed = then.iter().zip(&now).find(|(a, b)| a != b).map(|(a, _)| a["source"].to_string());
    let what = changed.map_or("the list of data sets".to_string(), |source| format!("data set {source}"));
    Err(Error::file(&path, format!("{what} changed since the run started: resuming would not continue the same run")))
}
