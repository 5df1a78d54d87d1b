//! Line plots as inline SVG: a linear x axis ending where the data ends, a linear or log y axis ([`YScale`]; a log
//! one is chosen by itself when the values span decades), ticks at round values
//! ([`super::ticks`]), one polyline per series (broken at values the axis cannot show),
//! point markers for short series, a legend above the plot, and optionally the run's
//! stages and threshold lines ([`super::marks`]).
//!
//! Bounds come from the drawable points (and the stages and thresholds) only; a
//! constant series or a single point gets a padded range, so no coordinate is ever NaN
//! or infinite. The `<svg>` has a `viewBox`, so CSS can scale it to its container.
//!
//! ```
//! use stagecraft_core::report::svg::{nice_ticks, Plot, Series};
//! assert_eq!(nice_ticks(0.0, 600.0, 6), vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]);
//! let plot = Plot {
//!     title: "loss".into(),
//!     x_label: "step".into(),
//!     y_label: "loss".into(),
//!     series: vec![Series { label: "train".into(), points: vec![(0.0, 2.0), (10.0, 1.5)] }],
//!     ..Plot::default()
//! };
//! let svg = plot.to_svg();
//! assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
//! ```

use std::fmt::Write;

use super::axis::{Axis, Kind};
use super::escape::escape;
use super::marks::{draw_legend, draw_stages, draw_thresholds, legend_layout, LEGEND_ROW, PALETTE};
pub use super::marks::{StageSpan, Threshold};
use super::ticks::spans_decades;
pub use super::ticks::{format_tick, nice_ticks};

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// `(x, y)` points in drawing order; ones the axes cannot show break the line.
    pub points: Vec<(f64, f64)>,
}

/// How the y axis places values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YScale {
    /// Log when the positive values span at least 1.5 decades, else linear.
    #[default]
    Auto,
    /// Always linear.
    Linear,
    /// Log (linear if there is no positive value).
    Log,
}

/// How big the plot is drawn (before CSS scales it to its card).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// One card of a grid of three a row: 460 × 280.
    #[default]
    Card,
    /// One card of a grid of four a row: 360 × 250.
    Small,
    /// A full row of the grid: 1240 × 340.
    Wide,
}

impl Size {
    fn pixels(self) -> (f64, f64) {
        match self {
            Size::Card => (460.0, 280.0),
            Size::Small => (360.0, 250.0),
            Size::Wide => (1240.0, 340.0),
        }
    }
}

/// A line plot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plot {
    /// Drawn above the plot area.
    pub title: String,
    /// Below the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// The lines; a legend is drawn when there is more than one.
    pub series: Vec<Series>,
    /// Linear, log, or chosen from the values.
    pub y_scale: YScale,
    /// The run's stages along the x axis: shaded, named, boundaries marked.
    pub stages: Vec<StageSpan>,
    /// Horizontal dashed lines (a gate's bound), labelled.
    pub thresholds: Vec<Threshold>,
    /// Card or full width.
    pub size: Size,
}

/// Margins around the plot area, px.
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const BOTTOM: f64 = 40.0;
/// The title's band at the top, px.
const TITLE: f64 = 24.0;
/// The band above the plot area holding the stage names, px.
const STAGE_BAND: f64 = 14.0;
/// Series with at most this many points get a marker on each point.
const MAX_MARKED: usize = 40;

/// `(min, max)` of the values, or `None` when there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

impl Plot {
    /// The plot as one `<svg>` element (no scripts, text escaped).
    pub fn to_svg(&self) -> String {
        let (width, height) = self.size.pixels();
        let labels: Vec<&str> = self.series.iter().map(|s| s.label.as_str()).collect();
        let legend = if labels.len() > 1 { legend_layout(&labels, LEFT, width - RIGHT) } else { Vec::new() };
        let legend_rows = legend.iter().map(|&(_, row)| row + 1).max().unwrap_or(0);
        let band = if self.stages.is_empty() { 0.0 } else { STAGE_BAND };
        let top = TITLE + LEGEND_ROW * legend_rows as f64 + band + 4.0;
        let xs = self.x_axis(LEFT, width - RIGHT);
        let ys = self.y_axis(height - BOTTOM, top);

        let t = escape(&self.title);
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><title>{t}</title>"#
        );
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="#fafafa" stroke="#999"/>"##,
            xs.r1 - xs.r0,
            ys.r0 - ys.r1
        );
        draw_stages(&mut s, &self.stages, &xs, &ys);
        draw_ticks(&mut s, &xs, &ys);
        draw_thresholds(&mut s, &self.thresholds, &xs, &ys, &self.traced(&xs, &ys));
        for (i, series) in self.series.iter().enumerate() {
            draw_series(&mut s, series, PALETTE[i % PALETTE.len()], &xs, &ys);
        }
        if !self.has_data(&xs, &ys) {
            let (x, y) = ((xs.r0 + xs.r1) / 2.0, (ys.r0 + ys.r1) / 2.0);
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" class="label" font-size="12">no data</text>"#
            );
        }
        draw_legend(&mut s, &labels, &legend, TITLE);
        self.draw_labels(&mut s, &xs, &ys, height);
        s.push_str("</svg>");
        s
    }

    /// The x axis: over every finite x of the points, the stages and the thresholds.
    fn x_axis(&self, r0: f64, r1: f64) -> Axis {
        let points = self.series.iter().flat_map(|s| &s.points).filter(|p| p.1.is_finite()).map(|p| p.0);
        let stages = self.stages.iter().flat_map(|s| [s.start, s.end]);
        let thresholds = self.thresholds.iter().flat_map(|t| [t.from, t.to]);
        let (lo, hi) = extent(points.chain(stages).chain(thresholds).filter(|x| x.is_finite())).unwrap_or((0.0, 1.0));
        let target = match r1 - r0 {
            w if w > 800.0 => 12,
            w if w > 350.0 => 6,
            _ => 4,
        };
        Axis::linear_tight(lo, hi, target, r0, r1)
    }

    /// The y axis: log or linear ([`YScale`]), over every value it can show of the
    /// points with a finite x, and the thresholds.
    fn y_axis(&self, r0: f64, r1: f64) -> Axis {
        let points = self.series.iter().flat_map(|s| &s.points).filter(|p| p.0.is_finite()).map(|p| p.1);
        let values: Vec<f64> =
            points.chain(self.thresholds.iter().map(|t| t.value)).filter(|v| v.is_finite()).collect();
        let log = match self.y_scale {
            YScale::Auto => spans_decades(values.iter().copied()),
            YScale::Linear => false,
            YScale::Log => values.iter().any(|&v| v > 0.0),
        };
        if log {
            let (lo, hi) = extent(values.into_iter().filter(|&v| v > 0.0)).unwrap_or((1.0, 10.0));
            return Axis::log(lo, hi, r0, r1);
        }
        let (lo, hi) = extent(values.into_iter()).unwrap_or((0.0, 1.0));
        Axis::linear(lo, hi, 5, r0, r1)
    }

    /// Pixels along every line and at every point drawn, a few px apart: what a label
    /// should not cover.
    fn traced(&self, xs: &Axis, ys: &Axis) -> Vec<(f64, f64)> {
        let drawable = |&(x, y): &(f64, f64)| xs.drawable(x) && ys.drawable(y);
        let mut out = Vec::new();
        for series in &self.series {
            for run in series.points.split(|p| !drawable(p)) {
                let pixels: Vec<(f64, f64)> = run.iter().map(|&(x, y)| (xs.map(x), ys.map(y))).collect();
                out.extend(pixels.first());
                for pair in pixels.windows(2) {
                    let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
                    let n = ((x1 - x0).hypot(y1 - y0) / 3.0).ceil().clamp(1.0, 1000.0) as usize;
                    out.extend((1..=n).map(|k| k as f64 / n as f64).map(|t| (x0 + t * (x1 - x0), y0 + t * (y1 - y0))));
                }
            }
        }
        out
    }

    /// Whether any point has a place on both axes.
    fn has_data(&self, xs: &Axis, ys: &Axis) -> bool {
        self.series.iter().flat_map(|s| &s.points).any(|&(x, y)| xs.drawable(x) && ys.drawable(y))
    }

    /// The title, the axis labels, and "log" beside a log y axis's label.
    fn draw_labels(&self, s: &mut String, xs: &Axis, ys: &Axis, height: f64) {
        let y_label = match ys.kind {
            Kind::Log => format!("{} (log)", self.y_label),
            Kind::Linear => self.y_label.clone(),
        };
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="label" font-size="12">{}</text>"#,
            (xs.r0 + xs.r1) / 2.0,
            height - 6.0,
            escape(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text x="13" y="{y:.1}" text-anchor="middle" transform="rotate(-90 13 {y:.1})" class="label" font-size="12">{}</text>"#,
            escape(&y_label),
            y = (ys.r0 + ys.r1) / 2.0
        );
        let _ = write!(
            s,
            r#"<text x="{LEFT}" y="16" class="title" font-size="13" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
    }
}

/// Grid lines and labels for both axes.
fn draw_ticks(s: &mut String, xs: &Axis, ys: &Axis) {
    for (&t, label) in xs.ticks.iter().zip(xs.labels()) {
        let x = xs.map(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick" font-size="11">{label}</text>"##,
            ys.r0,
            ys.r1,
            ys.r0 + 15.0
        );
    }
    for (&t, label) in ys.ticks.iter().zip(ys.labels()) {
        let y = ys.map(t);
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick" font-size="11">{label}</text>"##,
            xs.r0,
            xs.r1,
            xs.r0 - 6.0,
            y + 4.0
        );
    }
}

/// One series: a polyline per run of drawable points, and markers on short series
/// (and on points with no drawable neighbour, which no line shows).
fn draw_series(s: &mut String, series: &Series, color: &str, xs: &Axis, ys: &Axis) {
    let drawable = |&(x, y): &(f64, f64)| xs.drawable(x) && ys.drawable(y);
    for run in series.points.split(|p| !drawable(p)).filter(|r| r.len() > 1) {
        let pts: Vec<String> = run.iter().map(|&(x, y)| format!("{:.1},{:.1}", xs.map(x), ys.map(y))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
    }
    let marked = series.points.iter().filter(|p| drawable(p)).count();
    let lone = |i: usize| {
        let bad = |j: Option<usize>| j.and_then(|j| series.points.get(j)).is_none_or(|p| !drawable(p));
        bad(i.checked_sub(1)) && bad(Some(i + 1))
    };
    for (i, &(x, y)) in series.points.iter().enumerate() {
        if drawable(&(x, y)) && (marked <= MAX_MARKED || lone(i)) {
            let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#, xs.map(x), ys.map(y));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(series: Vec<Series>) -> Plot {
        Plot { title: "t".into(), x_label: "step".into(), y_label: "y".into(), series, ..Plot::default() }
    }

    fn line(label: &str, points: &[(f64, f64)]) -> Series {
        Series { label: label.into(), points: points.to_vec() }
    }

    #[test]
    fn constant_single_point_and_empty_plots_have_no_nan() {
        let cases = [
            plot(vec![line("c", &[(0.0, 2.0), (10.0, 2.0), (20.0, 2.0)])]),
            plot(vec![line("one", &[(7.0, 0.5)])]),
            plot(vec![line("zero", &[(0.0, 0.0)])]),
            plot(vec![line("bad", &[(0.0, f64::NAN), (1.0, f64::INFINITY)])]),
            plot(vec![]),
            Plot { y_scale: YScale::Log, ..plot(vec![line("neg", &[(0.0, -1.0), (1.0, 0.0)])]) },
            Plot { y_scale: YScale::Log, ..plot(vec![line("one", &[(3.0, 0.2)])]) },
        ];
        for p in cases {
            let svg = p.to_svg();
            for bad in ["NaN", "inf", "e308"] {
                assert!(!svg.contains(bad), "{bad} in {svg}");
            }
        }
        assert!(plot(vec![line("one", &[(7.0, 0.5)])]).to_svg().contains("<circle"));
        assert!(plot(vec![]).to_svg().contains("no data"));
    }

    #[test]
    fn a_nan_breaks_the_line_and_a_legend_lists_every_series() {
        let p = plot(vec![
            line("a<b", &[(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0), (4.0, 0.5)]),
            line("c&d", &[(0.0, 3.0), (4.0, 3.5)]),
        ]);
        let svg = p.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("a&lt;b") && svg.contains("c&amp;d"));
        assert!(!svg.contains("a<b"));
        assert_eq!(svg.matches("class=\"legend\"").count(), 2);
    }

    #[test]
    fn values_spanning_decades_get_a_log_axis_and_others_a_linear_one() {
        let decades = plot(vec![line("loss", &[(0.0, 5.0), (1.0, 1.5), (2.0, 0.02)])]);
        let svg = decades.to_svg();
        assert!(svg.contains("y (log)"), "{svg}");
        // Ticks at 1, 2 and 5 times powers of ten, from 0.02 up to 5.
        for tick in [">0.02<", ">0.1<", ">0.5<", ">1<", ">5<"] {
            assert!(svg.contains(tick), "{tick} missing");
        }
        let narrow = plot(vec![line("loss", &[(0.0, 1.5), (1.0, 0.9)])]);
        assert!(!narrow.to_svg().contains("(log)"));
        let forced = Plot { y_scale: YScale::Linear, ..decades };
        assert!(!forced.to_svg().contains("(log)"));
    }

    #[test]
    fn a_zero_is_not_drawn_on_a_log_axis_but_breaks_the_line() {
        let p = Plot {
            y_scale: YScale::Log,
            ..plot(vec![line("l", &[(0.0, 1.0), (1.0, 0.1), (2.0, 0.0), (3.0, 0.01), (4.0, 0.02)])])
        };
        let svg = p.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
    }

    #[test]
    fn stage_boundaries_are_drawn_after_the_first_stage() {
        let stages =
            vec![StageSpan::new("a", 0.0, 100.0), StageSpan::new("b", 100.0, 150.0), StageSpan::new("c", 150.0, 400.0)];
        let p = Plot { stages, ..plot(vec![line("l", &[(1.0, 1.0), (400.0, 2.0)])]) };
        let svg = p.to_svg();
        assert_eq!(svg.matches("class=\"boundary\"").count(), 2);
        assert_eq!(svg.matches("class=\"stage\"").count(), 3);
        assert_eq!(svg.matches("class=\"span\"").count(), 1, "every second stage is shaded");
    }
}
