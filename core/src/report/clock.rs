//! Wall-clock times as the metrics log writes them: ISO 8601 UTC with milliseconds
//! (`2026-11-30T22:41:05.123Z`), and back to seconds since the Unix epoch.
//!
//! ```
//! use stagecraft_core::report::clock::{iso8601, parse_iso8601};
//! assert_eq!(iso8601(951_782_400.25), "2000-02-29T00:00:00.250Z");
//! assert_eq!(parse_iso8601("2000-02-29T00:00:00.250Z"), Some(951_782_400.25));
//! assert_eq!(parse_iso8601("yesterday"), None);
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now (0 on a clock set before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `unix` seconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso8601(unix: f64) -> String {
    let ms = (unix.max(0.0) * 1000.0).round() as u64;
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the Unix epoch of a `YYYY-MM-DDTHH:MM:SS[.fff]Z` time; `None` for
/// anything else.
pub fn parse_iso8601(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let sec = t.next()?.parse::<f64>().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&min) {
        return None;
    }
    let days = days_from_civil(y, m, day);
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_the_text() {
        for t in [0.0, 1_795_883_705.123, 4_102_444_800.999, 951_868_799.5] {
            let back = parse_iso8601(&iso8601(t)).unwrap_or(f64::NAN);
            assert!((back - t).abs() < 1e-3, "{t} -> {} -> {back}", iso8601(t));
        }
        assert_eq!(iso8601(1_795_883_705.0), "2026-11-28T16:35:05.000Z");
    }

    #[test]
    fn malformed_times_are_none() {
        for s in ["", "2026-11-28 16:35:05Z", "2026-13-28T16:35:05Z", "2026-11-28T16:35:05", "2026-11-28T25:00:00Z"] {
            assert_eq!(parse_iso8601(s), None, "{s}");
        }
    }
}
