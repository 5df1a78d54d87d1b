//! `report.html`: one self-contained page (inline CSS and SVG, no JavaScript, nothing
//! fetched) laid out as a dashboard of cards on a grid, top to bottom:
//!
//! 1. the run's key numbers ([`KeyNumbers`]);
//! 2. the timeline: training loss over all stages on one step axis, full width, then
//!    learning rate, gradient norm, throughput and memory ([`super::timeline`]);
//! 3. retention: the matrix, and every eval set's curve over the run with the gate
//!    thresholds drawn ([`super::curves`]); sets evaluated once as value tiles;
//! 4. the per-stage summary table and the events;
//! 5. each stage's evaluations in detail, collapsed ([`super::plots`]);
//! 6. the resolved config, and the run details.
//!
//! What depends on how fast the run went (wall time, memory, throughput) sits between
//! `<!--timing-->` and `<!--/timing-->` ([`timed`]): a resumed run's page is byte for
//! byte the uninterrupted run's outside those marks.
//!
//! ```
//! use stagecraft_core::report::{write_html, MetricRow, ReportInput};
//! let dir = std::env::temp_dir().join(format!("report-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let rows = vec![MetricRow::train("pretrain", 1, 2.0, 1e-3, None), MetricRow::train("pretrain", 2, 1.9, 1e-3, None)];
//! let input = ReportInput { title: "arith", rows: &rows, config_toml: Some("[run]\nseed = 1\n"), ..ReportInput::default() };
//! let path = write_html(&dir, &input)?;
//! let html = std::fs::read_to_string(&path)?;
//! assert!(html.contains("<svg") && html.contains("seed = 1") && !html.contains("<script"));
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::curves::retention_curves;
use super::escape::escape;
use super::events::Event;
use super::gate_line::GateLine;
use super::header::KeyNumbers;
use super::metrics::MetricRow;
use super::plots::{stage_detail, stage_order};
use super::retention::RetentionMatrix;
use super::svg::{Plot, Size};
use super::tables::{details, events_table, retention_table, summary_table};
use super::tiles::{tiles_html, ValueTile};
use super::timeline::{loss_timeline, resource_timelines, training_timelines};
use crate::Result;

/// The report's file name inside the run directory.
pub const REPORT_FILE: &str = "report.html";

/// Everything the page shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportInput<'a> {
    /// The page's title (the run's name).
    pub title: &'a str,
    /// The run's metrics rows (`metrics.jsonl`), in log order.
    pub rows: &'a [MetricRow],
    /// The retention matrix, each set on its main score; no retention section without.
    pub retention: Option<&'a RetentionMatrix>,
    /// The run's events (`events.jsonl`).
    pub events: &'a [Event],
    /// The retention gates' bounds, drawn on the watched sets' curves.
    pub gates: &'a [GateLine],
    /// The resolved config, as TOML.
    pub config_toml: Option<&'a str>,
    /// More run details (seed, config file, hashes): each top-level key of an object
    /// in its own `<pre>` ([`details`]).
    pub details: Option<&'a serde_json::Value>,
}

/// The pages' style sheet (the run report's, and `compare.html`'s).
pub(crate) const STYLE: &str = "\
*{box-sizing:border-box}\
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 2em 2em;max-width:1400px;color:#222;background:#f3f4f6}\
h1{font-size:1.5em;margin:.3em 0 .5em}h2{font-size:1.15em;margin:1.3em 0 .5em;color:#333}\
.keys{display:flex;flex-wrap:wrap;gap:8px}\
.key{background:#fff;border:1px solid #d9dce3;border-radius:6px;padding:.35em .8em;min-width:7.5em}\
.key .v,.tile .v{font-size:1.3em;font-weight:600;font-variant-numeric:tabular-nums}\
.key .k,.key .n,.tile .m,.tile .s{font-size:.8em;color:#555}\
.n.worse{color:#b2182b}.n.better{color:#1a7f37}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px;align-items:start}\
.grid.small{grid-template-columns:repeat(auto-fill,minmax(290px,1fr))}\
.card{background:#fff;border:1px solid #d9dce3;border-radius:6px;padding:8px;margin:0;min-width:0;overflow-x:auto}\
.card.wide{grid-column:1/-1}.card h3{font-size:.95em;margin:.1em 0 .4em}\
figure{margin:0}figure svg{display:block;width:100%;height:auto}\
.tiles{display:flex;flex-wrap:wrap;gap:8px}\
.tile{border:1px solid #e3e3e3;border-radius:4px;padding:.3em .6em;min-width:9em;background:#fcfcfd}\
table{border-collapse:collapse;margin:.2em 0;font-size:.9em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}\
td.own{font-weight:bold}tr.total td,tr.total th{border-top:2px solid #888}td,th{white-space:nowrap}\
table.summary td:last-child,table.events td:last-child{text-align:left;white-space:normal}\
.side{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.side .note{max-width:34em}\
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em;margin:.3em 0}\
pre.config{column-width:34em;column-gap:2em;column-rule:1px solid #ddd;white-space:pre-wrap}\
details.stage{background:#fff;border:1px solid #d9dce3;border-radius:6px;padding:.4em .8em;margin:.4em 0}\
details.stage[open]>summary{margin-bottom:.5em}\
summary{font-weight:bold;cursor:pointer}.note{color:#666;font-size:.85em;margin:.2em 0 .4em}\
svg text{font-family:system-ui,sans-serif;fill:#333}\
svg .tick{font-size:11px}svg .label,svg .legend{font-size:12px}svg .title{font-size:13px;font-weight:bold}\
svg .stage{font-size:10px;fill:#444}svg text.threshold{font-size:10px;fill:#b2182b}\
svg .stage,svg text.threshold{paint-order:stroke;stroke:#fff;stroke-width:3px}";

/// Builds the page.
pub fn render_html(input: &ReportInput) -> String {
    let t = escape(input.title);
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
    );
    s.push_str(&KeyNumbers::from_rows(input.rows, input.retention).to_html());
    timeline_section(&mut s, input.rows);
    if let Some(m) = input.retention {
        retention_section(&mut s, input.rows, m, input.gates);
    }
    s.push_str("<h2>Stages</h2>\n<div class=\"card\">\n");
    s.push_str(&summary_table(input.rows));
    s.push_str("</div>\n");
    if !input.events.is_empty() {
        s.push_str("<h2>Events</h2>\n<div class=\"card\">\n");
        s.push_str(&events_table(input.events));
        s.push_str("</div>\n");
    }
    detail_section(&mut s, input.rows);
    if let Some(config) = input.config_toml {
        let _ = writeln!(
            s,
            "<h2>Resolved config</h2>\n<div class=\"card\"><pre class=\"config\">{}</pre></div>",
            escape(config)
        );
    }
    let more = input.details.map(details).unwrap_or_default();
    if !more.is_empty() {
        let _ = writeln!(s, "<h2>Run details</h2>\n<div class=\"card\">\n{more}</div>");
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// Writes `<run_dir>/report.html` (through a temp file and a rename, so a reader never
/// sees half a page) and returns its path.
pub fn write_html(run_dir: &Path, input: &ReportInput) -> Result<PathBuf> {
    let path = run_dir.join(REPORT_FILE);
    crate::checkpoint::durable::replace(&path, render_html(input).as_bytes())?;
    Ok(path)
}

/// `html` marked as depending on how fast the run went (wall time, throughput,
/// memory): a resumed run's page equals the uninterrupted run's outside these marks.
pub fn timed(html: &str) -> String {
    format!("<!--timing-->{html}<!--/timing-->")
}

/// A plot as a card of the grid (full width for a wide plot).
fn figure(s: &mut String, plot: &Plot) {
    let class = if plot.size == Size::Wide { "card wide" } else { "card" };
    let _ = writeln!(s, "<figure class=\"{class}\">{}</figure>", plot.to_svg());
}

/// Value tiles as one card, under a heading.
fn tiles_card(s: &mut String, heading: &str, tiles: &[ValueTile]) {
    if !tiles.is_empty() {
        let _ = writeln!(
            s,
            "<div class=\"card\"><h3>{heading}</h3><div class=\"tiles\">\n{}</div></div>",
            tiles_html(tiles)
        );
    }
}

/// The training timeline: loss over all stages, then learning rate, gradient norm,
/// and (marked as time-dependent) throughput and memory.
fn timeline_section(s: &mut String, rows: &[MetricRow]) {
    let plots: Vec<Plot> = loss_timeline(rows).into_iter().chain(training_timelines(rows)).collect();
    let resources = resource_timelines(rows);
    if plots.is_empty() && resources.is_empty() {
        return;
    }
    s.push_str("<h2>Timeline</h2>\n<div class=\"grid small\">\n");
    for plot in &plots {
        figure(s, plot);
    }
    for plot in &resources {
        let mut card = String::new();
        figure(&mut card, plot);
        s.push_str(&timed(&card));
    }
    s.push_str("</div>\n");
}

/// The retention matrix and every set's curve over the run, gates drawn.
fn retention_section(s: &mut String, rows: &[MetricRow], m: &RetentionMatrix, gates: &[GateLine]) {
    let curves = retention_curves(rows, m, gates);
    s.push_str("<h2>Retention</h2>\n<div class=\"grid\">\n<div class=\"card wide side\">\n");
    s.push_str(&retention_table(m));
    s.push_str(
        "<p class=\"note\">The main score of each eval set after each stage, and its change since the \
         set's own stage (bold). Red: worse than at its own stage; green: better. Forgetting is \
         positive when worse. Below, each set's score at every evaluation of the run; dashed: the \
         bound of a retention gate watching it, over the gating stage.</p></div>\n",
    );
    for plot in &curves.plots {
        figure(s, plot);
    }
    tiles_card(s, "Evaluated once", &curves.tiles);
    s.push_str("</div>\n");
}

/// Each stage's evaluations, collapsed.
fn detail_section(s: &mut String, rows: &[MetricRow]) {
    let stages: Vec<(String, _)> =
        stage_order(rows).into_iter().map(|st| (st.clone(), stage_detail(rows, &st))).collect();
    if stages.iter().all(|(_, d)| d.plots.is_empty() && d.tiles.is_empty()) {
        return;
    }
    s.push_str("<h2>Evaluations by stage</h2>\n");
    for (stage, detail) in stages {
        let _ = writeln!(
            s,
            "<details class=\"stage\"><summary>Stage {}: {} plots, {} single values</summary>\n<div class=\"grid\">",
            escape(&stage),
            detail.plots.len(),
            detail.tiles.len()
        );
        for plot in &detail.plots {
            figure(s, plot);
        }
        tiles_card(s, "Evaluated once in this stage", &detail.tiles);
        s.push_str("</div></details>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Bound, EventKind};

    fn rows() -> Vec<MetricRow> {
        let m = |l: f64, e: f64| [("loss".to_string(), l), ("exact_match".to_string(), e)].into();
        let mut rows = Vec::new();
        for step in 1..=50 {
            let loss = 3.0 / step as f64;
            rows.push(MetricRow::train("pre<train>", step, loss, 1e-3, Some(0.5)));
        }
        rows.push(MetricRow::eval("pre<train>", 25, "pre<train>", m(1.2, 0.1)));
        rows.push(MetricRow::eval("pre<train>", 50, "pre<train>", m(1.0, 0.2)));
        // Second stage: constant loss and lr, a single eval point per set.
        for step in 1..=10 {
            rows.push(MetricRow::train("a&b", step, 0.7, 5e-4, None));
        }
        rows.push(MetricRow::eval(
            "a&b",
            10,
            "pre<train>",
            [("loss".to_string(), 1.1), ("exact_match".to_string(), 0.15)].into(),
        ));
        rows.push(MetricRow::eval("a&b", 10, "a&b", [("loss".to_string(), 0.6)].into()));
        rows
    }

    fn page() -> String {
        let rows = rows();
        let retention = RetentionMatrix::from_rows_main(&rows, &["exact_match", "loss"]);
        let gates = [GateLine {
            stage: "a&b".into(),
            set: "pre<train>".into(),
            metric: "exact_match".into(),
            value: 0.125,
            bound: Bound::AtLeast,
        }];
        let events = [Event::new("a&b", 5, EventKind::Gate, "drop <0.5>")];
        let details = serde_json::json!({ "data_hashes": { "a&b": "00ff" } });
        render_html(&ReportInput {
            title: "run <1> & co",
            rows: &rows,
            retention: Some(&retention),
            events: &events,
            gates: &gates,
            config_toml: Some("[run]\nname = \"x<y\"\n"),
            details: Some(&details),
        })
    }

    #[test]
    fn page_has_one_svg_per_plot_no_script_and_escaped_names() {
        let html = page();
        // Timeline: loss, lr, grad norm. Retention: pre<train>'s exact_match curve
        // (a&b evaluated once: a tile). Detail of pre<train>: eval exact_match, eval loss.
        assert_eq!(html.matches("<svg").count(), 6);
        assert_eq!(html.matches("</svg>").count(), 6);
        assert!(!html.to_lowercase().contains("<script"));
        assert!(!html.contains("src=") && !html.contains("href="), "nothing is fetched");
        assert!(html.contains("run &lt;1&gt; &amp; co"));
        assert!(html.contains("Stage pre&lt;train&gt;") && html.contains("Stage a&amp;b"));
        assert!(!html.contains("pre<train") && !html.contains("a&b"));
        assert!(html.contains("<td>drop &lt;0.5&gt;</td>"));
        assert!(!html.contains("NaN") && !html.contains("inf"));
        assert_eq!(html.matches("<table class=\"retention\"").count(), 1);
    }

    #[test]
    fn the_resolved_config_is_shown_escaped() {
        let html = page();
        assert!(html.contains("<pre class=\"config\">[run]\nname = &quot;x&lt;y&quot;\n</pre>"), "{html}");
        assert!(html.contains("<summary>data_hashes</summary>"));
    }

    #[test]
    fn the_gate_is_drawn_on_the_watched_sets_curve() {
        let html = page();
        assert_eq!(html.matches("<line class=\"threshold\"").count(), 1);
        assert!(html.contains("gate (a&amp;b): ≥ 0.125"));
    }

    #[test]
    fn single_evaluations_are_tiles_not_plots() {
        let html = page();
        // Set a&b was evaluated once in the whole run: a tile in the retention section
        // (and in its stage's detail), no curve.
        assert_eq!(html.matches("<div class=\"v\">0.6000</div><div class=\"m\">loss · a&amp;b</div>").count(), 2);
        assert!(!html.contains("Retention of a&amp;b"));
        // Stage a&b evaluated each set once: tiles only, no eval plot.
        assert!(!html.contains("a&amp;b: eval"));
        assert!(html.contains("Stage a&amp;b: 0 plots, 3 single values"));
    }

    #[test]
    fn the_header_has_the_key_numbers() {
        let html = page();
        assert!(html.contains("<div class=\"v\">2</div><div class=\"k\">stages</div>"));
        assert!(html.contains("<div class=\"v\">60</div><div class=\"k\">steps in all</div>"));
        assert!(html.contains("final pre&lt;train&gt; · exact_match"));
    }

    #[test]
    fn only_the_time_dependent_parts_are_marked_as_such() {
        let mut rows = rows();
        for (i, r) in rows.iter_mut().enumerate() {
            (r.elapsed_s, r.peak_rss_mib, r.peak_gpu_mib) = (Some(i as f64), Some(100.0 + i as f64), Some(900.0));
            r.tokens_per_s = (r.split == crate::report::Split::Train).then_some(5000.0 + i as f64);
            r.time = Some("2026-12-01T00:00:00.000Z".into());
        }
        let untimed: Vec<MetricRow> = rows.iter().map(MetricRow::without_timing).collect();
        let page = |rows: &[MetricRow]| render_html(&ReportInput { title: "t", rows, ..ReportInput::default() });
        let mut timed_page = page(&rows);
        assert_eq!(timed_page.matches("<!--timing-->").count(), 5, "wall time, RSS, GPU, throughput, memory");
        while let (Some(a), Some(b)) = (timed_page.find("<!--timing-->"), timed_page.find("<!--/timing-->")) {
            timed_page.replace_range(a..b + "<!--/timing-->".len(), "");
        }
        assert_eq!(timed_page, page(&untimed));
    }

    #[test]
    fn an_empty_run_still_makes_a_page() {
        let html = render_html(&ReportInput { title: "empty", ..ReportInput::default() });
        assert!(html.contains("<h1>empty</h1>") && !html.contains("<svg"));
    }
}
