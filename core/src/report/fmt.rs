//! Numbers as the report writes them: table values with four decimals (scientific when
//! tiny or huge), bounds without trailing zeros, wall times and memory sizes.
//!
//! ```
//! use stagecraft_core::report::fmt::{duration, mib, number, trimmed};
//! assert_eq!(number(Some(1.5)), "1.5000");
//! assert_eq!(number(Some(3e-4)), "3.000e-4");
//! assert_eq!(number(None), "-");
//! assert_eq!(number(Some(f64::NAN)), "not finite");
//! assert_eq!(trimmed(0.98 - 0.05), "0.93");
//! assert_eq!(duration(41.34), "41.3 s");
//! assert_eq!(duration(3725.0), "1 h 02 min");
//! assert_eq!(mib(205.7), "206 MiB");
//! assert_eq!(mib(3072.0), "3.0 GiB");
//! ```

/// A value for a table cell or a tile: four decimals, scientific below 0.001 or from a
/// million on, `-` for none, `not finite` for a diverged value.
pub fn number(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if !v.is_finite() => "not finite".into(),
        Some(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// `v` with at most four decimals and no trailing zeros (`0.93`, `1.8267`, `2`).
pub fn trimmed(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A wall time: `41.3 s`, `3 min 12 s`, `1 h 02 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    if whole < 3600 {
        return format!("{} min {:02} s", whole / 60, whole % 60);
    }
    format!("{} h {:02} min", whole / 3600, whole % 3600 / 60)
}

/// A memory size given in MiB: `206 MiB`, or `3.0 GiB` from 1 GiB on.
pub fn mib(v: f64) -> String {
    if v >= 1024.0 {
        format!("{:.1} GiB", v / 1024.0)
    } else {
        format!("{v:.0} MiB")
    }
}
