//! Line plots as inline SVG: linear scales, ticks at round values ([`super::ticks`]),
//! one polyline per series (broken at non-finite values), point markers for short
//! series, a legend.
//!
//! Bounds come from the finite points only; a constant series or a single point gets
//! a padded range, so no coordinate is ever NaN or infinite.
//!
//! ```
//! use stagecraft_core::report::svg::{nice_ticks, Plot, Series};
//! assert_eq!(nice_ticks(0.0, 600.0, 6), vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]);
//! let plot = Plot {
//!     title: "loss".into(),
//!     x_label: "step".into(),
//!     y_label: "loss".into(),
//!     series: vec![Series { label: "train".into(), points: vec![(0.0, 2.0), (10.0, 1.5)] }],
//! };
//! let svg = plot.to_svg();
//! assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
//! ```

use std::fmt::Write;

use super::escape::escape;
pub use super::ticks::{format_tick, nice_ticks};

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// `(x, y)` points in drawing order; non-finite ones break the line.
    pub points: Vec<(f64, f64)>,
}

/// A line plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// Drawn above the plot area.
    pub title: String,
    /// Below the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// The lines; a legend is drawn when there is more than one.
    pub series: Vec<Series>,
}

/// Line colors, in series order (repeating).
const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 300.0;
const LEGEND_WIDTH: f64 = 150.0;
const MARGIN: (f64, f64, f64, f64) = (70.0, 16.0, 30.0, 46.0); // left, right, top, bottom
/// Series with at most this many points get a marker on each point.
const MAX_MARKED: usize = 40;

/// A linear map from data `[d0, d1]` to pixels `[r0, r1]`.
#[derive(Debug, Clone, Copy)]
struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    fn map(&self, v: f64) -> f64 {
        self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
    }
}

/// `(min, max)` of the finite values, or `None` when there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

impl Plot {
    /// The plot as one `<svg>` element (no scripts, text escaped).
    pub fn to_svg(&self) -> String {
        let legend = self.series.len() > 1;
        let width = WIDTH + if legend { LEGEND_WIDTH } else { 0.0 };
        let (left, right, top, bottom) = MARGIN;
        let (px0, px1) = (left, WIDTH - right);
        let (py0, py1) = (HEIGHT - bottom, top);
        let points = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let finite = || points().filter(|(x, y)| x.is_finite() && y.is_finite());
        let (x_lo, x_hi) = extent(finite().map(|p| p.0)).unwrap_or((0.0, 1.0));
        let (y_lo, y_hi) = extent(finite().map(|p| p.1)).unwrap_or((0.0, 1.0));
        let x_ticks = nice_ticks(x_lo, x_hi, 6);
        let y_ticks = nice_ticks(y_lo, y_hi, 5);
        let xs = axis_scale(&x_ticks, px0, px1);
        let ys = axis_scale(&y_ticks, py0, py1);

        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" role="img" aria-label="{t}"><title>{t}</title>"#,
            t = escape(&self.title)
        );
        let _ = write!(
            s,
            r##"<rect x="{px0}" y="{py1}" width="{}" height="{}" fill="#fafafa" stroke="#999"/>"##,
            px1 - px0,
            py0 - py1
        );
        draw_ticks(&mut s, &x_ticks, &y_ticks, xs, ys);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" class="label" font-size="12">{}</text>"#,
            (px0 + px1) / 2.0,
            HEIGHT - 8.0,
            escape(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text x="14" y="{y:.1}" text-anchor="middle" transform="rotate(-90 14 {y:.1})" class="label" font-size="12">{}</text>"#,
            escape(&self.y_label),
            y = (py0 + py1) / 2.0
        );
        let _ = write!(
            s,
            r#"<text x="{left}" y="18" class="title" font-size="13" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
        if finite().next().is_none() {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="label" font-size="12">no data</text>"#,
                (px0 + px1) / 2.0,
                (py0 + py1) / 2.0
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            draw_series(&mut s, series, PALETTE[i % PALETTE.len()], xs, ys);
        }
        if legend {
            draw_legend(&mut s, &self.series, WIDTH + 4.0, top);
        }
        s.push_str("</svg>");
        s
    }
}

/// The scale from the outer ticks to a pixel range.
fn axis_scale(ticks: &[f64], r0: f64, r1: f64) -> Scale {
    let d0 = ticks.first().copied().unwrap_or(0.0);
    let d1 = ticks.last().copied().unwrap_or(1.0);
    let (d0, d1) = if d1 > d0 { (d0, d1) } else { (0.0, 1.0) };
    Scale { d0, d1, r0, r1 }
}

/// Grid lines and labels for both axes.
fn draw_ticks(s: &mut String, x_ticks: &[f64], y_ticks: &[f64], xs: Scale, ys: Scale) {
    let x_step = x_ticks.get(1).zip(x_ticks.first()).map_or(1.0, |(b, a)| b - a);
    for &t in x_ticks {
        let x = xs.map(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick" font-size="11">{}</text>"##,
            ys.r0,
            ys.r1,
            ys.r0 + 16.0,
            format_tick(t, x_step)
        );
    }
    let y_step = y_ticks.get(1).zip(y_ticks.first()).map_or(1.0, |(b, a)| b - a);
    for &t in y_ticks {
        let y = ys.map(t);
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick" font-size="11">{}</text>"##,
            xs.r0,
            xs.r1,
            xs.r0 - 6.0,
            y + 4.0,
            format_tick(t, y_step)
        );
    }
}

/// One series: a polyline per run of finite points, and markers on short series.
fn draw_series(s: &mut String, series: &Series, color: &str, xs: Scale, ys: Scale) {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    for run in series.points.split(|p| !finite(p)).filter(|r| r.len() > 1) {
        let pts: Vec<String> = run.iter().map(|&(x, y)| format!("{:.1},{:.1}", xs.map(x), ys.map(y))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
    }
    let marked: Vec<_> = series.points.iter().filter(|p| finite(p)).collect();
    let lone = |i: usize| {
        let bad = |j: Option<usize>| j.and_then(|j| series.points.get(j)).is_none_or(|p| !finite(p));
        bad(i.checked_sub(1)) && bad(Some(i + 1))
    };
    for (i, &(x, y)) in series.points.iter().enumerate() {
        if finite(&(x, y)) && (marked.len() <= MAX_MARKED || lone(i)) {
            let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#, xs.map(x), ys.map(y));
        }
    }
}

/// A color swatch and the label of each series, stacked at `(x, top)`.
fn draw_legend(s: &mut String, series: &[Series], x: f64, top: f64) {
    for (i, ser) in series.iter().enumerate() {
        let y = top + 8.0 + 18.0 * i as f64;
        let color = PALETTE[i % PALETTE.len()];
        let _ = write!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" class="legend" font-size="12">{}</text>"#,
            x + 18.0,
            x + 24.0,
            y + 4.0,
            escape(&ser.label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(series: Vec<Series>) -> Plot {
        Plot { title: "t".into(), x_label: "step".into(), y_label: "y".into(), series }
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
        ];
        for p in cases {
            let svg = p.to_svg();
            for bad in ["NaN", "inf", "e308"] {
                assert!(!svg.contains(bad), "{bad} in {svg}");
            }
        }
        assert!(plot(vec![line("one", &[(7.0, 0.5)])]).to_svg().contains("<circle"));
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
}
