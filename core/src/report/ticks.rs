//! Axis ticks at round values and their labels, for linear axes ([`nice_ticks`]) and
//! log axes ([`log_ticks`]: powers of ten, with 2× and 5× between them when the range
//! spans few decades). [`spans_decades`] says when a log axis reads better.
//!
//! ```
//! use stagecraft_core::report::ticks::{format_log_tick, format_tick, log_ticks, nice_ticks, spans_decades};
//! assert_eq!(nice_ticks(0.0, 600.0, 6), vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]);
//! assert_eq!(format_tick(0.0025, 5e-4), "0.0025");
//! assert_eq!(log_ticks(0.03, 4.0), vec![0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]);
//! assert_eq!(format_log_tick(0.05), "0.05");
//! assert!(spans_decades([0.02, 1.5].into_iter()) && !spans_decades([0.9, 1.5].into_iter()));
//! ```

/// Ticks at round values (1, 2 or 5 × 10^k apart) covering `[lo, hi]`: the first is at
/// or below `lo`, the last at or above `hi`, about `target` intervals in between.
/// A degenerate or non-finite range is padded first.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = padded(lo, hi);
    let step = nice_step((hi - lo) / target.max(1) as f64);
    let (first, last) = ((lo / step).floor(), (hi / step).ceil());
    let n = (last - first).max(1.0) as i64;
    (0..=n).map(|k| (first + k as f64) * step).collect()
}

/// A range with room in it: non-finite bounds become `[0, 1]`, an empty one is widened
/// by 10% of its value (or by 1 around zero).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() || lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if !span.is_finite() {
        return (0.0, 1.0);
    }
    let size = lo.abs().max(hi.abs());
    if span > size * 1e-9 && span > f64::MIN_POSITIVE {
        return (lo, hi);
    }
    let pad = if size > f64::MIN_POSITIVE * 1e9 { size * 0.1 } else { 1.0 };
    (lo - pad, hi + pad)
}

/// The round number (1, 2 or 5 × 10^k) nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let r = raw / mag;
    let m = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// A tick label with as many decimals as the tick spacing needs; scientific notation
/// for very small spacings or very large values.
pub fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if step < 1e-4 || v.abs() >= 1e6 {
        // Enough mantissa digits that neighbouring ticks differ.
        let digits = (v.abs().log10().floor() - step.log10().floor()).clamp(0.0, 10.0) as usize;
        return format!("{v:.digits$e}");
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 10.0) as usize;
    format!("{v:.decimals$}")
}

/// A log axis is chosen when the positive values span at least this many decades.
pub const LOG_DECADES: f64 = 1.5;
/// Up to this many decades a log axis also gets ticks at 2× and 5× each power of ten.
const FEW_DECADES: i32 = 3;
/// Past this many decades, powers of ten are skipped so that about this many remain.
const MAX_DECADE_TICKS: i32 = 6;

/// Whether the finite values are all positive and span at least [`LOG_DECADES`]
/// decades (largest / smallest ≥ 10^1.5): a log axis shows them better than a linear one.
pub fn spans_decades(values: impl Iterator<Item = f64>) -> bool {
    let mut range: Option<(f64, f64)> = None;
    for v in values.filter(|v| v.is_finite()) {
        if v <= 0.0 {
            return false;
        }
        range = Some(range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
    }
    range.is_some_and(|(lo, hi)| (hi / lo).log10() >= LOG_DECADES)
}

/// `m × 10^k`, computed so that `2 × 10^-2` is exactly `0.02`.
fn times_ten_to(m: f64, k: i32) -> f64 {
    if k < 0 {
        m / 10f64.powi(-k)
    } else {
        m * 10f64.powi(k)
    }
}

/// Ticks for a log axis covering `[lo, hi]`: the first at or below `lo`, the last at
/// or above `hi`; powers of ten, with 2× and 5× between them when the range spans at
/// most three decades, and only every second (third...) power when it spans many.
/// Non-positive or non-finite bounds give `[1, 10]`; a single value is widened by 2×.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = if lo > 0.0 && hi >= lo && hi.is_finite() { (lo, hi) } else { (1.0, 10.0) };
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo / 2.0, hi * 2.0) };
    // A small tolerance so that a value at a power of ten is its own tick.
    let k0 = (lo.log10() + 1e-9).floor() as i32;
    let k1 = (hi.log10() - 1e-9).ceil() as i32;
    let decades = (k1 - k0).max(1);
    if decades > FEW_DECADES {
        let stride = (decades + MAX_DECADE_TICKS - 1) / MAX_DECADE_TICKS;
        let n = (decades + stride - 1) / stride;
        return (0..=n).map(|i| times_ten_to(1.0, k0 + i * stride)).collect();
    }
    let candidates: Vec<f64> = (k0..=k1).flat_map(|k| [1.0, 2.0, 5.0].map(|m| times_ten_to(m, k))).collect();
    let first = candidates.iter().rposition(|&c| c <= lo * (1.0 + 1e-9)).unwrap_or(0);
    let last = candidates.iter().position(|&c| c >= hi * (1.0 - 1e-9)).unwrap_or(candidates.len() - 1);
    candidates[first..=last].to_vec()
}

/// A log-axis tick label: plain decimals from 0.0001 to 100000 (`0.02`, `5`, `200`),
/// else `2e-5`, `1e6`.
pub fn format_log_tick(v: f64) -> String {
    if !(v.is_finite() && v > 0.0) {
        return "0".to_string();
    }
    let k = (v.log10() + 1e-9).floor() as i32;
    if (-4..6).contains(&k) {
        let decimals = usize::try_from(-k).unwrap_or(0);
        return format!("{v:.decimals$}");
    }
    let m = (v / times_ten_to(1.0, k)).round();
    format!("{m}e{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(got: &[f64], want: &[f64]) -> bool {
        got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9)
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert!(approx(&nice_ticks(0.0, 1.0, 5), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        assert!(approx(&nice_ticks(0.93, 2.41, 5), &[0.5, 1.0, 1.5, 2.0, 2.5]));
        // Degenerate ranges are padded: 5 ± 0.5, and 0 ± 1.
        assert!(approx(&nice_ticks(5.0, 5.0, 5), &[4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]));
        assert!(approx(&nice_ticks(0.0, 0.0, 4), &[-1.0, -0.5, 0.0, 0.5, 1.0]));
        assert!(nice_ticks(f64::NAN, 1.0, 4).iter().all(|t| t.is_finite()));
        assert_eq!(format_tick(0.6000000000000001, 0.2), "0.6");
        assert_eq!(format_tick(300.0, 100.0), "300");
        assert_eq!(format_tick(3e-5, 1e-5), "3e-5");
        assert_eq!(format_tick(1.05e-3, 5e-5), "1.05e-3");
        assert_eq!(format_tick(1e-3, 5e-5), "1.00e-3");
        assert_eq!(format_tick(0.0028, 5e-4), "0.0028");
    }

    #[test]
    fn log_ticks_are_powers_of_ten_with_two_and_five_when_few_decades() {
        // Three decades: 1, 2, 5 of each, from the last at or below lo to the first at or above hi.
        assert!(approx(&log_ticks(0.015, 1.6), &[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]));
        // A bound on a tick is that tick.
        assert!(approx(&log_ticks(0.1, 10.0), &[0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]));
        // Five decades: powers of ten only.
        assert!(approx(&log_ticks(3e-4, 20.0), &[1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]));
        // Twelve decades: every second power, at most about six ticks.
        let many = log_ticks(1e-9, 1e3);
        assert!(approx(&many, &[1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 10.0, 1e3]), "{many:?}");
        // Degenerate input never gives a non-positive or non-finite tick.
        for (lo, hi) in [(0.0, 1.0), (-1.0, 5.0), (f64::NAN, 1.0), (3.0, 3.0), (2.0, f64::INFINITY)] {
            let t = log_ticks(lo, hi);
            assert!(t.len() >= 2 && t.iter().all(|v| v.is_finite() && *v > 0.0), "{lo} {hi}: {t:?}");
        }
        assert_eq!(format_log_tick(0.02), "0.02");
        assert_eq!(format_log_tick(5.0), "5");
        assert_eq!(format_log_tick(200.0), "200");
        assert_eq!(format_log_tick(2e-5), "2e-5");
        assert_eq!(format_log_tick(1e6), "1e6");
    }

    #[test]
    fn log_axis_only_for_positive_values_spanning_decades() {
        assert!(spans_decades([1.5, 0.02, f64::NAN].into_iter()));
        assert!(!spans_decades([1.5, 0.9].into_iter()), "less than 1.5 decades");
        assert!(!spans_decades([1.5, 0.0, 0.001].into_iter()), "a zero cannot be drawn on a log axis");
        assert!(!spans_decades(std::iter::empty()));
    }
}
