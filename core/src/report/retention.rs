//! The retention matrix: every eval set's metric at the end of every stage, and the
//! forgetting it shows.
//!
//! Rows are the stages at whose end the evaluation ran, columns the eval sets. A set's
//! own row is the stage of the same name (else the first row where it has a value);
//! forgetting at a later row is the drop from the own-row value, positive when the
//! model got worse: `own - value` for metrics where higher is better, `value - own`
//! for losses and errors ([`lower_is_better`]).
//!
//! ```
//! use stagecraft_core::report::RetentionMatrix;
//! let m = RetentionMatrix {
//!     stages: vec!["add".into(), "sub".into()],
//!     sets: vec!["add".into(), "sub".into()],
//!     metric: "exact_match".into(),
//!     metrics: vec![],
//!     values: vec![vec![Some(0.97), None], vec![Some(0.90), Some(0.95)]],
//! };
//! let f = m.forgetting();
//! assert!((f[0].unwrap_or(0.0) - 0.07).abs() < 1e-12);
//! assert_eq!(f[1], Some(0.0));
//! assert!(m.to_table().contains("0.9000 (-0.0700)"));
//! ```

use crate::error::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{MetricRow, Split};
use crate::{Error, Result};

/// The retention file's name inside the run directory.
pub const RETENTION_FILE: &str = "retention.json";

/// One metric of every eval set at the end of every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionMatrix {
    /// Row labels: the stages at whose end the sets were evaluated, in run order.
    pub stages: Vec<String>,
    /// Column labels: the eval sets.
    pub sets: Vec<String>,
    /// The metric (`exact_match`, `loss`, ...), for every set without its own entry in
    /// `metrics`.
    pub metric: String,
    /// Per-set metrics (each set's main score), parallel to `sets`; empty when every
    /// set uses `metric`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    /// `values[row][col]`; `None` where the set was not evaluated (yet).
    pub values: Vec<Vec<Option<f64>>>,
}

/// Whether smaller values of `metric` are better: names containing `loss`, `ppl`,
/// `perplexity` or `error`.
pub fn lower_is_better(metric: &str) -> bool {
    let m = metric.to_ascii_lowercase();
    ["loss", "ppl", "perplexity", "error"].iter().any(|k| m.contains(k))
}

impl RetentionMatrix {
    /// The matrix for `metric` from a run's rows: for each stage (in order of first
    /// appearance) and each eval set, the value from that stage's last eval of the set.
    pub fn from_rows(rows: &[MetricRow], metric: &str) -> Self {
        let mut stages: Vec<String> = Vec::new();
        let mut sets: Vec<String> = Vec::new();
        for row in rows {
            if !stages.contains(&row.stage) {
                stages.push(row.stage.clone());
            }
            if let (Split::Eval, Some(set)) = (row.split, &row.set) {
                if !sets.contains(set) {
                    sets.push(set.clone());
                }
            }
        }
        let mut values = vec![vec![None; sets.len()]; stages.len()];
        let mut at_step = vec![vec![0u64; sets.len()]; stages.len()];
        for row in rows.iter().filter(|r| r.split == Split::Eval) {
            let (Some(set), Some(&v)) = (&row.set, row.metrics.get(metric)) else {
                continue;
            };
            let i = stages.iter().position(|s| *s == row.stage);
            let j = sets.iter().position(|s| s == set);
            if let (Some(i), Some(j)) = (i, j) {
                if values[i][j].is_none() || row.step >= at_step[i][j] {
                    values[i][j] = Some(v);
                    at_step[i][j] = row.step;
                }
            }
        }
        RetentionMatrix { stages, sets, metric: metric.to_string(), metrics: Vec::new(), values }
    }

    /// The matrix with each set on its main score: the first of `preference` that the
    /// set's evaluations report (say `exact_match`, then `accuracy`, then `loss`).
    pub fn from_rows_main(rows: &[MetricRow], preference: &[&str]) -> Self {
        let fallback = preference.last().copied().unwrap_or("loss");
        let mut m = Self::from_rows(rows, fallback);
        let per_set: Vec<String> = m
            .sets
            .iter()
            .map(|set| {
                let reports = |k: &str| {
                    rows.iter().any(|r| {
                        r.split == Split::Eval && r.set.as_deref() == Some(set.as_str()) && r.metrics.contains_key(k)
                    })
                };
                preference.iter().find(|k| reports(k)).unwrap_or(&fallback).to_string()
            })
            .collect();
        for (j, metric) in per_set.iter().enumerate() {
            let col = Self::from_rows(rows, metric);
            for (i, row) in m.values.iter_mut().enumerate() {
                row[j] = col.sets.iter().position(|s| *s == m.sets[j]).and_then(|c| col.value(i, c));
            }
        }
        if per_set.iter().any(|k| *k != per_set[0]) {
            m.metric = "main score".into();
            m.metrics = per_set;
        } else if let Some(k) = per_set.first() {
            m.metric = k.clone();
        }
        m
    }

    /// The metric of set `col`.
    pub fn metric_of(&self, col: usize) -> &str {
        self.metrics.get(col).unwrap_or(&self.metric)
    }

    /// `values[row][col]`, `None` when missing or out of range.
    pub fn value(&self, row: usize, col: usize) -> Option<f64> {
        self.values.get(row)?.get(col).copied().flatten()
    }

    /// The row holding set `col`'s reference value: the stage of the same name if it
    /// has a value there, else the first row with a value.
    pub fn own_row(&self, col: usize) -> Option<usize> {
        let set = self.sets.get(col)?;
        let named = self.stages.iter().position(|s| s == set);
        match named {
            Some(i) if self.value(i, col).is_some() => Some(i),
            _ => (0..self.stages.len()).find(|&i| self.value(i, col).is_some()),
        }
    }

    /// Forgetting of set `col` at `row` (positive = worse than at its own stage);
    /// `None` before the own row or where a value is missing.
    pub fn drop_at(&self, row: usize, col: usize) -> Option<f64> {
        let own = self.own_row(col)?;
        if row < own {
            return None;
        }
        let (reference, now) = (self.value(own, col)?, self.value(row, col)?);
        Some(if lower_is_better(self.metric_of(col)) { now - reference } else { reference - now })
    }

    /// For each set, the forgetting at the final row.
    pub fn forgetting(&self) -> Vec<Option<f64>> {
        let last = self.stages.len().saturating_sub(1);
        (0..self.sets.len()).map(|j| self.drop_at(last, j)).collect()
    }

    /// The final forgetting of the set named `set`.
    pub fn forgetting_of(&self, set: &str) -> Option<f64> {
        let j = self.sets.iter().position(|s| s == set)?;
        self.forgetting().get(j).copied().flatten()
    }

    /// A plain-text table with aligned columns: each cell shows the value and, after
    /// the set's own row, the change from the own-row value (`value - own`, signed);
    /// a last row gives the forgetting.
    pub fn to_table(&self) -> String {
        let mut grid: Vec<Vec<String>> = Vec::new();
        let mut header = vec![self.metric.clone()];
        header.extend(self.sets.iter().enumerate().map(|(j, s)| {
            if self.metrics.is_empty() {
                s.clone()
            } else {
                format!("{s} ({})", self.metric_of(j))
            }
        }));
        grid.push(header);
        for (i, stage) in self.stages.iter().enumerate() {
            let mut line = vec![stage.clone()];
            for j in 0..self.sets.len() {
                line.push(self.cell_text(i, j));
            }
            grid.push(line);
        }
        let mut last = vec!["forgetting".to_string()];
        last.extend(self.forgetting().iter().map(|f| f.map_or("-".into(), |f| format!("{f:.4}"))));
        grid.push(last);
        render_grid(&grid)
    }

    /// `value` or `value (±delta)` for one cell.
    pub fn cell_text(&self, row: usize, col: usize) -> String {
        let Some(v) = self.value(row, col) else {
            return "-".to_string();
        };
        match (self.own_row(col), self.own_row(col).and_then(|o| self.value(o, col))) {
            (Some(own), Some(reference)) if row > own => format!("{v:.4} ({:+.4})", v - reference),
            _ => format!("{v:.4}"),
        }
    }

    /// Writes the matrix as `<run_dir>/retention.json`; returns the path.
    pub fn write_json(&self, run_dir: &Path) -> Result<PathBuf> {
        let path = run_dir.join(RETENTION_FILE);
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|e| Error::file(&path, format!("cannot serialize ({e})")))?;
        text.push(b'\n');
        crate::checkpoint::durable::replace(&path, &text)?;
        Ok(path)
    }

    /// Reads a `retention.json`, checking that `values` is stages × sets.
    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(io(path))?;
        let m: RetentionMatrix =
            serde_json::from_slice(&text).map_err(|e| Error::file(path, format!("malformed ({e})")))?;
        if m.values.len() != m.stages.len() || m.values.iter().any(|r| r.len() != m.sets.len()) {
            return Err(Error::file(path, "values is not stages × sets"));
        }
        Ok(m)
    }
}

/// Aligned text: first column left-aligned, the others right-aligned, two spaces apart.
fn render_grid(grid: &[Vec<String>]) -> String {
    let cols = grid.iter().map(Vec::len).max().unwrap_or(0);
    let width = |j: usize| grid.iter().filter_map(|r| r.get(j)).map(|c| c.chars().count()).max();
    let widths: Vec<usize> = (0..cols).map(|j| width(j).unwrap_or(0)).collect();
    let mut out = String::new();
    for row in grid {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            let w = widths[j];
            if j == 0 {
                line.push_str(&format!("{cell:<w$}"));
            } else {
                line.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(stage: &str, step: u64, set: &str, metric: &str, v: f64) -> MetricRow {
        MetricRow::eval(stage, step, set, [(metric.to_string(), v)].into())
    }

    fn matrix(metric: &str) -> RetentionMatrix {
        let rows = vec![
            MetricRow::train("pretrain", 1, 2.0, 1e-3, None),
            eval("pretrain", 100, "pretrain", metric, 0.50),
            eval("pretrain", 600, "pretrain", metric, 0.60),
            eval("add", 800, "pretrain", metric, 0.55),
            eval("add", 800, "add", metric, 0.97),
            eval("sub", 900, "pretrain", metric, 0.40),
            eval("sub", 900, "add", metric, 0.99),
            eval("sub", 900, "sub", metric, 0.90),
        ];
        RetentionMatrix::from_rows(&rows, metric)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn built_from_the_last_eval_of_each_stage() {
        let m = matrix("exact_match");
        assert_eq!(m.stages, ["pretrain", "add", "sub"]);
        assert_eq!(m.sets, ["pretrain", "add", "sub"]);
        assert_eq!(m.values[0], [Some(0.60), None, None]);
        assert_eq!(m.values[2], [Some(0.40), Some(0.99), Some(0.90)]);
    }

    #[test]
    fn forgetting_is_positive_when_worse_whatever_the_direction() {
        let m = matrix("exact_match");
        let f = m.forgetting();
        assert!(close(f[0], 0.20) && close(f[1], -0.02) && close(f[2], 0.0), "{f:?}");
        assert!(close(m.drop_at(1, 0), 0.05));
        assert_eq!(m.drop_at(0, 1), None);
        let loss = matrix("loss");
        let f = loss.forgetting();
        assert!(close(f[0], -0.20) && close(f[1], 0.02), "{f:?}");
        assert!(close(loss.forgetting_of("pretrain"), -0.20));
    }

    #[test]
    fn each_set_gets_its_main_score() {
        let eval = |stage: &str, set: &str, kv: &[(&str, f64)]| {
            MetricRow::eval(stage, 1, set, kv.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        };
        let rows = vec![
            eval("lm", "lm", &[("loss", 1.0)]),
            eval("add", "add", &[("loss", 0.1), ("exact_match", 0.9)]),
            eval("add", "lm", &[("loss", 3.0)]),
        ];
        let m = RetentionMatrix::from_rows_main(&rows, &["exact_match", "accuracy", "loss"]);
        assert_eq!(m.metrics, vec!["loss".to_string(), "exact_match".to_string()]);
        assert_eq!(m.value(1, 1), Some(0.9));
        assert!(close(m.forgetting()[0], 2.0), "a loss that rose is forgetting");
        assert!(m.to_table().contains("lm (loss)"));
    }

    #[test]
    fn own_row_falls_back_to_the_first_value() {
        let m = RetentionMatrix {
            stages: vec!["a".into(), "b".into()],
            sets: vec!["held_out".into()],
            metric: "exact_match".into(),
            metrics: vec![],
            values: vec![vec![Some(0.8)], vec![Some(0.5)]],
        };
        assert_eq!(m.own_row(0), Some(0));
        assert!(close(m.forgetting()[0], 0.3));
    }

    #[test]
    fn table_columns_line_up() {
        let t = matrix("exact_match").to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("exact_match") && lines[4].starts_with("forgetting"));
        assert!(lines[3].contains("0.4000 (-0.2000)") && lines[3].contains("0.9900 (+0.0200)"));
        let ends: Vec<usize> = lines.iter().map(|l| l.len()).collect();
        assert_eq!(ends[3], ends[0], "{t}");
    }

    #[test]
    fn json_round_trip_and_shape_check() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let m = matrix("loss");
        let path = m.write_json(tmp.path())?;
        assert_eq!(RetentionMatrix::read_json(&path)?, m);
        std::fs::write(&path, r#"{"stages":["a"],"sets":[],"metric":"x","values":[]}"#)?;
        assert!(RetentionMatrix::read_json(&path).is_err());
        Ok(())
    }
}
