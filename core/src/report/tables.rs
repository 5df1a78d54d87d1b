//! The HTML tables of the report: per-stage summary, the retention matrix with cells
//! colored by forgetting, the events, and the run details (hashes, seed) as `<pre>`.
//!
//! ```
//! use stagecraft_core::report::{tables::summary_table, MetricRow};
//! let rows = vec![MetricRow::train("a<b", 5, 1.5, 1e-3, None)];
//! let html = summary_table(&rows);
//! assert!(html.contains("a&lt;b") && html.contains("1.5000"));
//! ```

use std::fmt::Write;

use super::escape::escape;
use super::events::Event;
use super::fmt::number as num;
use super::metrics::{MetricRow, Split};
use super::plots::{eval_sets, stage_order};
use super::retention::RetentionMatrix;

/// One row per stage: step range, final and best training loss, final learning rate,
/// and each eval set's metrics at its last evaluation in the stage.
pub fn summary_table(rows: &[MetricRow]) -> String {
    let mut s = String::from(
        "<table class=\"summary\"><tr><th>stage</th><th>steps</th><th>final loss</th>\
         <th>best loss</th><th>final lr</th><th>last eval</th></tr>\n",
    );
    for stage in stage_order(rows) {
        let of_stage: Vec<&MetricRow> = rows.iter().filter(|r| r.stage == stage).collect();
        let train: Vec<&&MetricRow> = of_stage.iter().filter(|r| r.split == Split::Train).collect();
        let first = of_stage.iter().map(|r| r.step).min().unwrap_or(0);
        let last = of_stage.iter().map(|r| r.step).max().unwrap_or(0);
        let final_loss = train.iter().rev().find_map(|r| r.loss);
        let best = train.iter().filter_map(|r| r.loss).filter(|v| v.is_finite()).reduce(f64::min);
        let final_lr = train.iter().rev().find_map(|r| r.lr);
        let mut evals = Vec::new();
        for set in eval_sets(rows, &stage) {
            let last_row = of_stage.iter().rev().find(|r| r.split == Split::Eval && r.set.as_ref() == Some(&set));
            if let Some(r) = last_row {
                let ms: Vec<String> =
                    r.metrics.iter().map(|(k, v)| format!("{} {}", escape(k), num(Some(*v)))).collect();
                evals.push(format!("<b>{}</b>: {}", escape(&set), ms.join(", ")));
            }
        }
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{first}–{last}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&stage),
            num(final_loss),
            num(best),
            num(final_lr),
            evals.join("<br>")
        );
    }
    s.push_str("</table>\n");
    s
}

/// The cell background for forgetting `d` relative to the largest magnitude `scale`:
/// red when worse than at the set's own stage, green when better.
fn shade(d: f64, scale: f64) -> String {
    if !d.is_finite() || d == 0.0 || scale <= 0.0 {
        return String::new();
    }
    let alpha = 0.12 + 0.5 * (d.abs() / scale).min(1.0);
    let rgb = if d > 0.0 { "214,39,40" } else { "44,160,44" };
    format!(" style=\"background: rgba({rgb},{alpha:.2})\"")
}

/// The retention matrix: a row per stage, a column per eval set, each cell its value
/// and change since the set's own stage, colored by forgetting; a final forgetting row.
pub fn retention_table(m: &RetentionMatrix) -> String {
    let drops: Vec<f64> = (0..m.stages.len())
        .flat_map(|i| (0..m.sets.len()).map(move |j| (i, j)))
        .filter_map(|(i, j)| m.drop_at(i, j))
        .filter(|d| d.is_finite())
        .collect();
    let scale = drops.iter().fold(0.0f64, |a, d| a.max(d.abs()));
    let mut s = format!("<table class=\"retention\"><tr><th>{} after ↓ / set →</th>", escape(&m.metric));
    for (j, set) in m.sets.iter().enumerate() {
        if m.metrics.is_empty() {
            let _ = write!(s, "<th>{}</th>", escape(set));
        } else {
            let _ = write!(s, "<th>{}<br><small>{}</small></th>", escape(set), escape(m.metric_of(j)));
        }
    }
    s.push_str("</tr>\n");
    for (i, stage) in m.stages.iter().enumerate() {
        let _ = write!(s, "<tr><th>{}</th>", escape(stage));
        for j in 0..m.sets.len() {
            let style = m.drop_at(i, j).filter(|_| m.own_row(j) != Some(i)).map(|d| shade(d, scale));
            let own = if m.own_row(j) == Some(i) { " class=\"own\"" } else { "" };
            let _ = write!(s, "<td{own}{}>{}</td>", style.unwrap_or_default(), escape(&m.cell_text(i, j)));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("<tr class=\"total\"><th>forgetting</th>");
    for f in m.forgetting() {
        let _ = write!(s, "<td{}>{}</td>", f.map(|d| shade(d, scale)).unwrap_or_default(), num(f));
    }
    s.push_str("</tr>\n</table>\n");
    s
}

/// The events: stage, step, kind and what happened, one row each.
pub fn events_table(events: &[Event]) -> String {
    let mut s = String::from(
        "<table class=\"events\"><tr><th>stage</th><th>step</th><th>event</th><th>what happened</th></tr>\n",
    );
    for e in events {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.stage),
            e.step,
            escape(e.kind.as_str()),
            escape(&e.message)
        );
    }
    s.push_str("</table>\n");
    s
}

/// The run details: each top-level key of an object in its own collapsible `<pre>`
/// (strings shown as they are, other values as pretty JSON); anything else in one.
pub fn details(extra: &serde_json::Value) -> String {
    let pretty = |v: &serde_json::Value| match v {
        serde_json::Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    };
    match extra {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) => {
            let mut s = String::new();
            for (key, value) in map {
                let _ = writeln!(
                    s,
                    "<details open><summary>{}</summary><pre>{}</pre></details>",
                    escape(key),
                    escape(&pretty(value))
                );
            }
            s
        }
        other => format!("<pre>{}</pre>\n", escape(&pretty(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_cells_are_shaded_by_direction() {
        let m = RetentionMatrix {
            stages: vec!["a".into(), "b<".into()],
            sets: vec!["a".into(), "b<".into()],
            metric: "exact_match".into(),
            metrics: vec![],
            values: vec![vec![Some(0.9), None], vec![Some(0.6), Some(0.8)]],
        };
        let t = retention_table(&m);
        assert!(t.contains("rgba(214,39,40,0.62)"), "{t}"); // the largest drop: full red
        assert!(t.contains("<th>b&lt;</th>") && !t.contains("b<"));
        assert_eq!(t.matches("class=\"own\"").count(), 2);
    }

    #[test]
    fn details_escape_and_keep_strings_raw() {
        let d = details(&serde_json::json!({ "config": "[run]\nname = \"a<b\"", "hashes": { "x": 1 } }));
        assert!(d.contains("name = &quot;a&lt;b&quot;"), "{d}");
        assert!(d.contains("<summary>hashes</summary>"));
        assert!(details(&serde_json::Value::Null).is_empty());
    }
}
