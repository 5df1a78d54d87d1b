//! What a plot draws besides its lines: the stages of the run as shaded spans of the x
//! axis with a boundary line and their name, horizontal threshold lines (a retention
//! gate's bound), and the legend above the plot area.
//!
//! ```
//! use stagecraft_core::report::svg::{Plot, Series, StageSpan, Threshold};
//! let plot = Plot {
//!     title: "add: exact_match".into(),
//!     series: vec![Series { label: "add".into(), points: vec![(300.0, 0.98), (450.0, 0.95)] }],
//!     stages: vec![StageSpan::new("add", 0.0, 300.0), StageSpan::new("sub", 300.0, 500.0)],
//!     thresholds: vec![Threshold { value: 0.93, from: 300.0, to: 500.0, label: "gate (sub): ≥ 0.93".into() }],
//!     ..Plot::default()
//! };
//! let svg = plot.to_svg();
//! assert!(svg.contains("class=\"boundary\"") && svg.contains("gate (sub): ≥ 0.93"));
//! ```

use std::fmt::Write;

use super::axis::Axis;
use super::escape::escape;

/// One stage's stretch of the x axis.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpan {
    /// The stage's name, written above its span.
    pub name: String,
    /// Where it starts (a boundary line is drawn here, except for the first stage).
    pub start: f64,
    /// Where it ends.
    pub end: f64,
}

impl StageSpan {
    /// The span of stage `name` from `start` to `end`.
    pub fn new(name: &str, start: f64, end: f64) -> Self {
        StageSpan { name: name.to_string(), start, end }
    }
}

/// A horizontal dashed line at `value` from `from` to `to` on the x axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// Its height, in the y axis's units.
    pub value: f64,
    /// Where it starts on the x axis.
    pub from: f64,
    /// Where it ends on the x axis.
    pub to: f64,
    /// Written above its start.
    pub label: String,
}

/// Line colors, in series order (repeating).
pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
/// Thresholds are drawn in this color.
const THRESHOLD_COLOR: &str = "#b2182b";
/// Font size of stage names and threshold labels, px.
const SMALL_FONT: f64 = 10.0;
/// Font size of legend entries, px.
const LEGEND_FONT: f64 = 12.0;
/// Data this close to a threshold label counts as covered by it, px.
const LABEL_MARGIN: f64 = 4.0;
/// Height of one legend row, px.
pub const LEGEND_ROW: f64 = 16.0;
/// Width of a legend entry's color swatch and the gap after it, px.
const SWATCH: f64 = 24.0;
/// Space between legend entries, px.
const LEGEND_GAP: f64 = 14.0;

/// About how wide `text` is at `font` px (system sans-serif averages 0.6 em a character).
fn text_width(text: &str, font: f64) -> f64 {
    0.6 * font * text.chars().count() as f64
}

/// `text` cut to fit `width` px at `font` px (ending in "…"), or `None` if not even two
/// characters fit.
fn fit(text: &str, width: f64, font: f64) -> Option<String> {
    let room = (width / (0.6 * font)).floor() as usize;
    match text.chars().count() {
        n if n <= room => Some(text.to_string()),
        _ if room >= 2 => Some(text.chars().take(room - 1).chain(['…']).collect()),
        _ => None,
    }
}

/// The stages: every second span shaded, a boundary line at the start of every stage
/// but the first, and each name written in the band just above the plot area.
pub fn draw_stages(s: &mut String, stages: &[StageSpan], xs: &Axis, ys: &Axis) {
    let (lo, hi) = (xs.r0.min(xs.r1), xs.r0.max(xs.r1));
    let clamp = |v: f64| if xs.drawable(v) { xs.map(v).clamp(lo, hi) } else { lo };
    let (top, height) = (ys.r1, ys.r0 - ys.r1);
    for (i, stage) in stages.iter().enumerate() {
        let (x0, x1) = (clamp(stage.start), clamp(stage.end));
        if i % 2 == 1 && x1 > x0 {
            let _ = write!(
                s,
                r##"<rect class="span" x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}" fill="#e8eef7"/>"##,
                x1 - x0
            );
        }
        if i > 0 {
            let _ = write!(
                s,
                r##"<line class="boundary" x1="{x0:.1}" y1="{top:.1}" x2="{x0:.1}" y2="{:.1}" stroke="#555" stroke-width="1"/>"##,
                ys.r0
            );
        }
        if let Some(name) = fit(&stage.name, x1 - x0 - 4.0, SMALL_FONT) {
            let _ = write!(
                s,
                r#"<text class="stage" x="{:.1}" y="{:.1}" font-size="{SMALL_FONT}">{}</text>"#,
                x0 + 3.0,
                top - 4.0,
                escape(&name)
            );
        }
    }
}

/// Each threshold as a dashed line over its stretch of the x axis, labelled above or
/// below the line, at its start or its end: wherever the label covers fewest of the
/// `traced` pixels of the data (in that order of preference on a tie), kept inside the
/// plot area.
pub fn draw_thresholds(s: &mut String, thresholds: &[Threshold], xs: &Axis, ys: &Axis, traced: &[(f64, f64)]) {
    let (lo, hi) = (xs.r0.min(xs.r1), xs.r0.max(xs.r1));
    let (top, bottom) = (ys.r1.min(ys.r0), ys.r1.max(ys.r0));
    for t in thresholds.iter().filter(|t| ys.drawable(t.value) && xs.drawable(t.from) && xs.drawable(t.to)) {
        let (x0, x1, y) = (xs.map(t.from).clamp(lo, hi), xs.map(t.to).clamp(lo, hi), ys.map(t.value));
        let width = text_width(&t.label, SMALL_FONT);
        let inside = |x: f64| x.min(hi - 2.0 - width).max(lo + 2.0);
        let (above, below) = (y - 4.0, y + SMALL_FONT + 2.0);
        let candidates = [
            (inside(x0 + 4.0), above),
            (inside(x1 - 4.0 - width), above),
            (inside(x0 + 4.0), below),
            (inside(x1 - 4.0 - width), below),
        ];
        let covered = |&(x, baseline): &(f64, f64)| {
            let (y0, y1) = (baseline - SMALL_FONT, baseline + 2.0);
            let outside = y0 < top || y1 > bottom;
            // A margin for the glyphs' real extent and the lines' width.
            let near = |&&(px, py): &&(f64, f64)| {
                px >= x - LABEL_MARGIN
                    && px <= x + width + LABEL_MARGIN
                    && py >= y0 - LABEL_MARGIN
                    && py <= y1 + LABEL_MARGIN
            };
            (outside, traced.iter().filter(near).count())
        };
        let (label_x, label_y) = candidates.iter().copied().min_by_key(covered).unwrap_or((x0, above));
        let _ = write!(
            s,
            r#"<line class="threshold" x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="{THRESHOLD_COLOR}" stroke-width="1.5" stroke-dasharray="6 4"/><text class="threshold" x="{label_x:.1}" y="{label_y:.1}" font-size="{SMALL_FONT}" fill="{THRESHOLD_COLOR}">{}</text>"#,
            escape(&t.label)
        );
    }
}

/// Where each legend entry goes: left to right from `left`, wrapping before `right`;
/// `(x, row)` per label.
pub fn legend_layout(labels: &[&str], left: f64, right: f64) -> Vec<(f64, usize)> {
    let mut places = Vec::with_capacity(labels.len());
    let (mut x, mut row) = (left, 0);
    for label in labels {
        let width = SWATCH + text_width(label, LEGEND_FONT);
        if x > left && x + width > right {
            (x, row) = (left, row + 1);
        }
        places.push((x, row));
        x += width + LEGEND_GAP;
    }
    places
}

/// The legend: a color swatch and the label of each series, rows starting at `top`.
pub fn draw_legend(s: &mut String, labels: &[&str], places: &[(f64, usize)], top: f64) {
    for (i, (label, &(x, row))) in labels.iter().zip(places).enumerate() {
        let y = top + LEGEND_ROW * row as f64 + LEGEND_ROW / 2.0;
        let color = PALETTE[i % PALETTE.len()];
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" class="legend" font-size="{LEGEND_FONT}">{}</text>"#,
            x + SWATCH - 6.0,
            x + SWATCH,
            y + 4.0,
            escape(label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_stage_names_are_cut_to_their_span() {
        assert_eq!(fit("adapt_sub", 200.0, 10.0).as_deref(), Some("adapt_sub"));
        // 30 px hold five characters of 6 px: four and the ellipsis.
        assert_eq!(fit("adapt_sub", 30.0, 10.0).as_deref(), Some("adap…"));
        assert_eq!(fit("adapt_sub", 8.0, 10.0), None);
    }

    #[test]
    fn a_threshold_label_goes_where_it_covers_no_data() {
        let xs = Axis::linear(0.0, 100.0, 5, 0.0, 400.0);
        let ys = Axis::linear(0.0, 1.0, 5, 200.0, 0.0);
        let t = Threshold { value: 0.5, from: 0.0, to: 100.0, label: "gate (b): ≥ 0.5".into() };
        let label_at = |traced: &[(f64, f64)]| {
            let mut s = String::new();
            draw_thresholds(&mut s, std::slice::from_ref(&t), &xs, &ys, traced);
            let x = s.split("<text class=\"threshold\" x=\"").nth(1).and_then(|r| r.split('"').next());
            let y = s.split("\" y=\"").last().and_then(|r| r.split('"').next());
            (x.and_then(|v| v.parse::<f64>().ok()), y.and_then(|v| v.parse::<f64>().ok()))
        };
        // Nothing in the way: above the line's start.
        assert_eq!(label_at(&[]), (Some(4.0), Some(96.0)));
        // Data just above the start: above the line's end instead.
        let data: Vec<(f64, f64)> = (0..40).map(|k| (k as f64, 93.0)).collect();
        let (x, y) = label_at(&data);
        assert_eq!(y, Some(96.0));
        assert!(x.is_some_and(|x| x > 200.0), "{x:?}");
    }

    #[test]
    fn legend_entries_wrap_to_a_new_row() {
        let places = legend_layout(&["training loss", "task", "replay"], 60.0, 260.0);
        assert_eq!(places[0], (60.0, 0));
        assert_eq!(places[1].1, 0);
        assert_eq!(places[2], (60.0, 1), "{places:?}");
    }
}
