//! JSON for floats that may not be finite: NaN and ±infinity are written as `null`
//! (JSON has no such numbers) and `null` reads back as NaN, so a diverged loss is kept
//! as "not a number" rather than dropped or failing the whole log.
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Row {
//!     #[serde(default, with = "stagecraft_core::report::num::opt")]
//!     loss: Option<f64>,
//! }
//! let s = serde_json::to_string(&Row { loss: Some(f64::NAN) })?;
//! assert_eq!(s, r#"{"loss":null}"#);
//! let back: Row = serde_json::from_str(&s)?;
//! assert!(back.loss.is_some_and(f64::is_nan));
//! let absent: Row = serde_json::from_str("{}")?;
//! assert!(absent.loss.is_none());
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::{Deserialize, Deserializer, Serializer};

/// A finite float, or `None` for a non-finite one.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `Option<f64>` fields: `None` should be skipped when serializing
/// (`skip_serializing_if = "Option::is_none"`); `Some(non-finite)` is `null`; on read
/// an absent field is `None` (with `#[serde(default)]`) and `null` is `Some(NaN)`.
pub mod opt {
    use super::*;

    /// Writes `None` or a non-finite value as `null`.
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_some(&v.and_then(finite))
    }

    /// Reads `null` as `Some(NaN)`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Some(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN)))
    }
}

/// `BTreeMap<String, f64>` fields: non-finite values are written as `null` and read
/// back as NaN.
pub mod map {
    use std::collections::BTreeMap;

    use super::*;

    /// Writes non-finite values as `null`.
    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, finite(*v))))
    }

    /// Reads `null` values as NaN.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
    }
}
