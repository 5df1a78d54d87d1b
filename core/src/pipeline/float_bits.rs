//! Serde for floats as their bit patterns, so that a state read back from a checkpoint
//! decides exactly as the state that wrote it (JSON numbers do not keep every `f64`,
//! infinities or NaN).

use serde::{Deserialize, Deserializer, Serializer};

/// An `f64` as its `u64` bits.
pub(crate) mod bits {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// An `Option<f64>` as its `u64` bits.
pub(crate) mod opt_bits {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&v.to_bits()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(f64::from_bits))
    }
}
