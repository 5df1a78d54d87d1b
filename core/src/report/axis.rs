//! A plot axis: its ticks, their labels, and the map from data to pixels, linear or
//! logarithmic. A value axis ends at its outer ticks; a step axis can end at the data
//! ([`Axis::linear_tight`]). Every tick is on the plot.
//!
//! ```
//! use stagecraft_core::report::axis::Axis;
//! let y = Axis::log(0.02, 5.5, 200.0, 0.0);
//! assert_eq!(y.ticks.first(), Some(&0.02));
//! assert_eq!(y.ticks.last(), Some(&10.0));
//! // 1 is log10(50) decades above the bottom of log10(500) decades, 200 px tall.
//! assert!((y.map(1.0) - (200.0 - 200.0 * 50f64.log10() / 500f64.log10())).abs() < 1e-9);
//! assert!(!y.drawable(0.0));
//! let x = Axis::linear(0.0, 600.0, 6, 0.0, 600.0);
//! assert_eq!((x.map(300.0), x.labels()[1].as_str()), (300.0, "100"));
//! let steps = Axis::linear_tight(0.0, 660.0, 4, 0.0, 660.0);
//! assert_eq!((steps.ticks.last(), steps.map(660.0)), (Some(&600.0), 660.0));
//! ```

use super::ticks::{format_log_tick, format_tick, log_ticks, nice_ticks};

/// Whether values are placed by their value or by their logarithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Equal differences, equal distances.
    Linear,
    /// Equal ratios, equal distances; only positive values can be drawn.
    Log,
}

/// One axis of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Linear or log.
    pub kind: Kind,
    /// The tick values, ascending, all within `[d0, d1]`.
    pub ticks: Vec<f64>,
    /// The data value at pixel `r0`.
    pub d0: f64,
    /// The data value at pixel `r1`.
    pub d1: f64,
    /// The pixel of `d0`.
    pub r0: f64,
    /// The pixel of `d1`.
    pub r1: f64,
}

impl Axis {
    /// A linear axis from the round tick at or below `lo` to the one at or above `hi`,
    /// about `target` intervals, from pixel `r0` to `r1`.
    pub fn linear(lo: f64, hi: f64, target: usize, r0: f64, r1: f64) -> Self {
        let ticks = nice_ticks(lo, hi, target);
        Self::with_ticks(Kind::Linear, ticks, r0, r1)
    }

    /// A linear axis from exactly `lo` to `hi` (a step axis ends where the run ends),
    /// with the round ticks between them; a degenerate range falls back to
    /// [`Axis::linear`].
    pub fn linear_tight(lo: f64, hi: f64, target: usize, r0: f64, r1: f64) -> Self {
        let loose = Self::linear(lo, hi, target, r0, r1);
        if !(lo.is_finite() && hi.is_finite() && hi > lo) {
            return loose;
        }
        let slack = (hi - lo) * 1e-9;
        let ticks = loose.ticks.into_iter().filter(|t| (lo - slack..=hi + slack).contains(t)).collect();
        Axis { kind: Kind::Linear, ticks, d0: lo, d1: hi, r0, r1 }
    }

    /// A log axis over `[lo, hi]` (both positive), from pixel `r0` to `r1`.
    pub fn log(lo: f64, hi: f64, r0: f64, r1: f64) -> Self {
        Self::with_ticks(Kind::Log, log_ticks(lo, hi), r0, r1)
    }

    /// An axis whose ends are its outer ticks.
    fn with_ticks(kind: Kind, ticks: Vec<f64>, r0: f64, r1: f64) -> Self {
        let (d0, d1) = (ticks.first().copied().unwrap_or(f64::NAN), ticks.last().copied().unwrap_or(f64::NAN));
        Axis { kind, ticks, d0, d1, r0, r1 }
    }

    /// Whether `v` has a place on this axis (finite, and positive on a log axis).
    pub fn drawable(&self, v: f64) -> bool {
        v.is_finite() && (self.kind == Kind::Linear || v > 0.0)
    }

    /// The pixel of `v` (the caller checks [`Axis::drawable`] first).
    pub fn map(&self, v: f64) -> f64 {
        let (d0, d1) = self.ends();
        let t = |v: f64| if self.kind == Kind::Log { v.log10() } else { v };
        self.r0 + (t(v) - t(d0)) / (t(d1) - t(d0)) * (self.r1 - self.r0)
    }

    /// The tick labels, parallel to `ticks`.
    pub fn labels(&self) -> Vec<String> {
        let step = self.ticks.get(1).zip(self.ticks.first()).map_or(1.0, |(b, a)| b - a);
        let label = |&t: &f64| match self.kind {
            Kind::Linear => format_tick(t, step),
            Kind::Log => format_log_tick(t),
        };
        self.ticks.iter().map(label).collect()
    }

    /// The data values at the axis's ends, never equal (so `map` never divides by zero).
    fn ends(&self) -> (f64, f64) {
        match self.kind {
            _ if self.d1 > self.d0 && self.drawable(self.d0) && self.drawable(self.d1) => (self.d0, self.d1),
            Kind::Linear => (0.0, 1.0),
            Kind::Log => (1.0, 10.0),
        }
    }
}
