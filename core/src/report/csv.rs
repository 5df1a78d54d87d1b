//! `metrics.csv`: the metrics log as one table, for spreadsheets and pandas.
//!
//! Columns, in this order: `stage, step, global_step, split, set, loss, task_loss,
//! replay_loss, lr, grad_norm, penalty, time, elapsed_s, tokens_per_s, peak_rss_mib, peak_gpu_mib`, then one column
//! `eval/<set>/<metric>` per eval metric seen, sorted. The file is regenerated whole
//! from `metrics.jsonl` (the source of truth) at the end of every stage and of the run,
//! so a column that appears later, or a resume that cut the log back, never leaves it
//! with a stale header or duplicated rows. Empty cells: not measured; `NaN`/`inf`:
//! not finite.
//!
//! ```
//! use stagecraft_core::report::{csv::to_csv, MetricRow};
//! let rows = vec![
//!     MetricRow::train("pretrain", 1, 2.0, 1e-3, None),
//!     MetricRow::eval("pretrain", 1, "pretrain", [("loss".to_string(), 1.5)].into()),
//! ];
//! let text = to_csv(&rows);
//! let mut lines = text.lines();
//! assert!(lines.next().unwrap().ends_with("peak_gpu_mib,eval/pretrain/loss"));
//! assert_eq!(lines.next(), Some("pretrain,1,1,train,,2,,,0.001,,,,,,,,"));
//! assert_eq!(lines.next(), Some("pretrain,1,1,eval,pretrain,,,,,,,,,,,,1.5"));
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::global_step::GlobalSteps;
use super::metrics::{MetricRow, Split};
use crate::error::io;
use crate::Result;

/// The file's name inside the run directory.
pub const CSV_FILE: &str = "metrics.csv";

/// The columns every table has, before the eval columns.
pub const FIXED_COLUMNS: [&str; 16] = [
    "stage",
    "step",
    "global_step",
    "split",
    "set",
    "loss",
    "task_loss",
    "replay_loss",
    "lr",
    "grad_norm",
    "penalty",
    "time",
    "elapsed_s",
    "tokens_per_s",
    "peak_rss_mib",
    "peak_gpu_mib",
];

/// `rows` as CSV text: the header line, then one line per row.
pub fn to_csv(rows: &[MetricRow]) -> String {
    let evals: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| r.split == Split::Eval)
        .flat_map(|r| r.metrics.keys().map(|m| (r.set.clone().unwrap_or_default(), m.clone())))
        .collect();
    let mut header: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
    header.extend(evals.iter().map(|(set, m)| format!("eval/{set}/{m}")));
    let mut out = line(&header);
    let mut steps = GlobalSteps::default();
    for r in rows {
        let global = steps.observe(r);
        let split = match r.split {
            Split::Train => "train",
            Split::Eval => "eval",
        };
        let mut cells = vec![r.stage.clone(), r.step.to_string(), global.to_string(), split.to_string()];
        cells.push(r.set.clone().unwrap_or_default());
        for v in [r.loss, r.task_loss, r.replay_loss, r.lr, r.grad_norm, r.penalty] {
            cells.push(num(v));
        }
        cells.push(r.time.clone().unwrap_or_default());
        for v in [r.elapsed_s, r.tokens_per_s, r.peak_rss_mib, r.peak_gpu_mib] {
            cells.push(num(v));
        }
        for (set, m) in &evals {
            let mine = r.split == Split::Eval && r.set.as_deref() == Some(set.as_str());
            cells.push(num(if mine { r.metrics.get(m).copied() } else { None }));
        }
        out.push_str(&line(&cells));
    }
    out
}

/// Writes `<run_dir>/metrics.csv` from `rows` (through a temporary file and a rename,
/// so a reader never sees half a table).
pub fn write_csv(run_dir: &Path, rows: &[MetricRow]) -> Result<PathBuf> {
    let path = run_dir.join(CSV_FILE);
    let tmp = run_dir.join(format!("{CSV_FILE}.tmp"));
    std::fs::write(&tmp, to_csv(rows)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

fn num(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.is_nan() => "NaN".into(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
        Some(v) => v.to_string(),
    }
}

/// One CSV line; cells with a comma, a quote or a line break are quoted (RFC 4180).
fn line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.clone() })
        .collect();
    format!("{}\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_every_column_and_odd_names_are_quoted() {
        let mut t = MetricRow::train("a,b", 3, f64::NAN, 1e-3, Some(0.5));
        t.tokens_per_s = Some(1200.0);
        t.penalty = Some(0.25);
        let rows = vec![
            t,
            MetricRow::eval("a,b", 3, "x", [("loss".to_string(), 1.0), ("exact_match".to_string(), 0.5)].into()),
            MetricRow::eval("c", 2, "y\"q", [("loss".to_string(), 2.0)].into()),
        ];
        let text = to_csv(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].ends_with(",eval/x/exact_match,eval/x/loss,\"eval/y\"\"q/loss\""), "{}", lines[0]);
        assert_eq!(lines[1], "\"a,b\",3,3,train,,NaN,,,0.001,0.5,0.25,,,1200,,,,,");
        assert_eq!(lines[2], "\"a,b\",3,3,eval,x,,,,,,,,,,,,0.5,1,");
        assert_eq!(lines[3], "c,2,5,eval,\"y\"\"q\",,,,,,,,,,,,,,2");
    }
}
