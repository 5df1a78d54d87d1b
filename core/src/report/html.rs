//! `report.html`: one self-contained page (inline CSS and SVG, no JavaScript) with a
//! summary table, the retention matrix, per-stage plots, the events and the run details.
//!
//! ```
//! use stagecraft_core::report::{write_html, MetricRow};
//! let dir = std::env::temp_dir().join(format!("report-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let rows = vec![MetricRow::train("pretrain", 1, 2.0, 1e-3, None)];
//! let path = write_html(&dir, "arith", &rows, None, &[], &serde_json::json!({}))?;
//! let html = std::fs::read_to_string(&path)?;
//! assert!(html.contains("<svg") && !html.contains("<script"));
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::escape::escape;
use super::events::Event;
use super::metrics::MetricRow;
use super::plots::{stage_order, stage_plots};
use super::retention::RetentionMatrix;
use super::tables::{details, retention_table, summary_table};
use crate::Result;

/// The report's file name inside the run directory.
pub const REPORT_FILE: &str = "report.html";

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}\
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}\
td.own{font-weight:bold}tr.total td,tr.total th{border-top:2px solid #888}\
.plots{display:flex;flex-wrap:wrap;gap:1em}\
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}\
summary{font-weight:bold;cursor:pointer}.note{color:#666;font-size:.9em}\
svg text{font-family:system-ui,sans-serif;fill:#333}\
svg .tick{font-size:11px}svg .label{font-size:12px}svg .legend{font-size:12px}\
svg .title{font-size:13px;font-weight:bold}";

/// Builds the page.
pub fn render_html(
    title: &str,
    rows: &[MetricRow],
    retention: Option<&RetentionMatrix>,
    events: &[Event],
    extra: &serde_json::Value,
) -> String {
    let t = escape(title);
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
    );
    s.push_str("<h2>Summary</h2>\n");
    s.push_str(&summary_table(rows));
    if let Some(m) = retention {
        s.push_str(
            "<h2>Retention</h2>\n<p class=\"note\">Each cell: the value after that stage, and \
                    its change since the set's own stage (bold). Red: worse than at its own stage; \
                    green: better. Forgetting is positive when worse.</p>\n",
        );
        s.push_str(&retention_table(m));
    }
    for stage in stage_order(rows) {
        let _ = writeln!(s, "<h2>Stage {}</h2>\n<div class=\"plots\">", escape(&stage));
        for plot in stage_plots(rows, &stage) {
            let _ = writeln!(s, "<figure>{}</figure>", plot.to_svg());
        }
        s.push_str("</div>\n");
    }
    if !events.is_empty() {
        s.push_str(
            "<h2>Events</h2>\n<table><tr><th>stage</th><th>step</th><th>event</th><th>what happened</th></tr>\n",
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
    }
    let more = details(extra);
    if !more.is_empty() {
        s.push_str("<h2>Run details</h2>\n");
        s.push_str(&more);
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// Writes `<run_dir>/report.html` (through a temp file and a rename, so a reader never
/// sees half a page) and returns its path.
pub fn write_html(
    run_dir: &Path,
    title: &str,
    rows: &[MetricRow],
    retention: Option<&RetentionMatrix>,
    events: &[Event],
    extra: &serde_json::Value,
) -> Result<PathBuf> {
    let path = run_dir.join(REPORT_FILE);
    let html = render_html(title, rows, retention, events, extra);
    crate::checkpoint::durable::replace(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<MetricRow> {
        let m = |l: f64, e: f64| [("loss".to_string(), l), ("exact_match".to_string(), e)].into();
        let mut rows = Vec::new();
        for step in 0..50 {
            let loss = 3.0 / (1.0 + step as f64);
            rows.push(MetricRow::train("pre<train>", step, loss, 1e-3, Some(0.5)));
        }
        rows.push(MetricRow::eval("pre<train>", 49, "pre<train>", m(1.0, 0.2)));
        // Second stage: constant loss and lr, a single eval point per set.
        for step in 50..60 {
            rows.push(MetricRow::train("a&b", step, 0.7, 5e-4, None));
        }
        rows.push(MetricRow::eval("a&b", 59, "pre<train>", [("loss".to_string(), 1.1)].into()));
        rows.push(MetricRow::eval("a&b", 59, "a&b", [("loss".to_string(), 0.6)].into()));
        rows
    }

    #[test]
    fn page_has_one_svg_per_plot_no_script_and_escaped_names() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let rows = rows();
        let retention = RetentionMatrix::from_rows(&rows, "loss");
        let extra = serde_json::json!({ "config": "name = \"x<y\"", "data_hashes": { "a&b": "00ff" } });
        let path = write_html(
            tmp.path(),
            "run <1> & co",
            &rows,
            Some(&retention),
            &[Event::new("a&b", 55, super::super::events::EventKind::Gate, "drop <0.5>")],
            &extra,
        )?;
        let html = std::fs::read_to_string(path)?;
        // pre<train>: loss, lr, grad norm, eval exact_match, eval loss; a&b: loss, lr, eval loss.
        assert_eq!(html.matches("<svg").count(), 8);
        assert_eq!(html.matches("</svg>").count(), 8);
        assert!(!html.to_lowercase().contains("<script"));
        assert!(html.contains("run &lt;1&gt; &amp; co"));
        assert!(html.contains("Stage pre&lt;train&gt;") && html.contains("Stage a&amp;b"));
        assert!(!html.contains("pre<train") && !html.contains("a&b"));
        assert!(html.contains("<td>drop &lt;0.5&gt;</td>"));
        assert!(html.contains("x&lt;y"));
        assert!(!html.contains("NaN") && !html.contains("inf"));
        assert_eq!(html.matches("<table class=\"retention\"").count(), 1);
        Ok(())
    }

    #[test]
    fn an_empty_run_still_makes_a_page() {
        let html = render_html("empty", &[], None, &[], &serde_json::Value::Null);
        assert!(html.contains("<h1>empty</h1>") && !html.contains("<svg"));
    }
}
