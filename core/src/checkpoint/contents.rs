//! What a checkpoint holds: named tensors and an opaque JSON document.
//!
//! ```
//! use std::collections::BTreeMap;
//! use candle_core::{Device, Tensor};
//! use stagecraft_core::checkpoint::Checkpoint;
//! let mut tensors = BTreeMap::new();
//! tensors.insert("w".to_string(), Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?);
//! let ckpt = Checkpoint { tensors, meta: serde_json::json!({ "step": 10 }) };
//! assert_eq!(ckpt.meta["step"], 10);
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::BTreeMap;

use candle_core::Tensor;

/// The tensor file inside a checkpoint directory.
pub const TENSORS_FILE: &str = "tensors.safetensors";

/// The JSON file inside a checkpoint directory.
pub const META_FILE: &str = "meta.json";

/// Everything needed to resume a run exactly.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Weights, adapter parameters and optimizer state, by name, in any dtype; stored
    /// bit-exactly.
    pub tensors: BTreeMap<String, Tensor>,
    /// Step, stage index, RNG states, data cursors, schedule position, resolved
    /// config... opaque to this module. Integers (`u64` RNG states included) round-trip
    /// exactly; a float that must be bit-exact belongs in `tensors` or stored as its
    /// bits (`f64::to_bits`), since JSON float parsing may differ in the last bit.
    pub meta: serde_json::Value,
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use candle_core::{Device, Result};

    /// A checkpoint with f32 (including -0.0, NaN, infinity, a subnormal), i64, u32
    /// and bf16 tensors and a meta document holding `step`.
    pub fn sample(step: u64) -> Result<Checkpoint> {
        let dev = Device::Cpu;
        let mut tensors = BTreeMap::new();
        let f = vec![1.5f32, -0.0, f32::NAN, f32::INFINITY, 1e-45, std::f32::consts::PI];
        tensors.insert("model.w".to_string(), Tensor::from_vec(f, (2, 3), &dev)?);
        tensors.insert("data.cursor".to_string(), Tensor::new(&[i64::MIN, -1, step as i64], &dev)?);
        tensors.insert("rng.words".to_string(), Tensor::new(&[u32::MAX, 0, 7], &dev)?);
        let h = Tensor::new(&[0.1f32, 3.0], &dev)?.to_dtype(candle_core::DType::BF16)?;
        tensors.insert("optim.m".to_string(), h);
        let meta = serde_json::json!({
            "step": step,
            "stage": 1,
            "rng": u64::MAX - step,
            "config": { "name": "arith", "lr": 0.003 },
        });
        Ok(Checkpoint { tensors, meta })
    }
}
