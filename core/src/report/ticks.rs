//! Axis ticks at round values and their labels.
//!
//! ```
//! use stagecraft_core::report::ticks::{format_tick, nice_ticks};
//! assert_eq!(nice_ticks(0.0, 600.0, 6), vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]);
//! assert_eq!(format_tick(0.0025, 5e-4), "0.0025");
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
}
