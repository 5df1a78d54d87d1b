//! Time spent in each fused op, forward and backward, for `stagecraft bench --profile`.
//!
//! Off by default: [`time`] then costs one atomic load. Between [`start`] and
//! [`finish`], every fused op adds its wall time and a call to its row
//! (`attention.backward`, ...). Ops candle runs outside the fused ones are not
//! seen here; the bench reports them as the rest of each phase.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<&'static str, (u64, f64)>>> = Mutex::new(None);

/// One op's total.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// `op.forward` or `op.backward`.
    pub op: &'static str,
    /// Calls.
    pub calls: u64,
    /// Total wall time, seconds.
    pub seconds: f64,
}

/// Starts recording (clearing earlier totals).
pub fn start() {
    if let Ok(mut t) = TOTALS.lock() {
        *t = Some(HashMap::new());
    }
    ON.store(true, Ordering::Relaxed);
}

/// Stops recording and returns the totals, longest first.
pub fn finish() -> Vec<OpTime> {
    ON.store(false, Ordering::Relaxed);
    let totals = TOTALS.lock().ok().and_then(|mut t| t.take()).unwrap_or_default();
    let mut out: Vec<OpTime> = totals.into_iter().map(|(op, (calls, seconds))| OpTime { op, calls, seconds }).collect();
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    out
}

/// Runs `f`, adding its wall time to `op`'s row while recording.
pub fn time<R>(op: &'static str, f: impl FnOnce() -> R) -> R {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    if let Ok(mut totals) = TOTALS.lock() {
        if let Some(map) = totals.as_mut() {
            let e = map.entry(op).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += dt;
        }
    }
    r
}
