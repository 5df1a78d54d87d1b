//! Where tensors live and at what precision the model computes.
//!
//! Devices: `cpu`, and with the `cuda` feature `cuda` / `cuda:N` (candle's CUDA
//! backend). A build without the feature, or a machine without a driver or device,
//! gives a one-line error naming what is missing.
//!
//! Precision ([`Precision`]): `fp32` everywhere, or `bf16` mixed precision — the
//! matrix products of linear layers and attention run in bfloat16, while parameters
//! (master weights), optimizer state, the residual stream, norms, softmax and losses stay
//! f32. Plugins see f32 tensors either way, so optimizer and adapter plugins work
//! unchanged.
//!
//! ```
//! use stagecraft_core::device::{resolve_device, Precision};
//! assert!(resolve_device("cpu").is_ok());
//! assert!(resolve_device("tpu").is_err());
//! assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
//! ```

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// The device named by `spec`: `cpu`, `cuda` (device 0) or `cuda:N`.
pub fn resolve_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0, spec),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n, spec),
            _ => Err(Error::msg(format!("device `{other}`: expected `cpu`, `cuda` or `cuda:N`"))),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize, spec: &str) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::msg(format!(
            "device `{spec}`: cannot open the GPU ({}); check the NVIDIA driver and `nvidia-smi`",
            first_line(&e.to_string())
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize, spec: &str) -> Result<Device> {
    Err(Error::msg(format!("device `{spec}`: this stagecraft was built without CUDA (build it with `--features cuda`, see scripts/build-cuda.sh)")))
}

#[cfg(feature = "cuda")]
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Waits until the device has finished its queued work (before reading a timer).
pub fn synchronize(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Memory in use on the device, MiB, as the driver reports it (all of this process's
/// allocations and the context); `None` on the CPU.
pub fn device_memory_used_mib(device: &Device) -> Option<f64> {
    used_mib(device)
}

#[cfg(feature = "cuda")]
fn used_mib(device: &Device) -> Option<f64> {
    if !device.is_cuda() {
        return None;
    }
    let (free, total) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
    Some((total - free) as f64 / (1024.0 * 1024.0))
}

#[cfg(not(feature = "cuda"))]
fn used_mib(_device: &Device) -> Option<f64> {
    None
}

/// The device's name for reports (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The precision the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere (default).
    #[default]
    Fp32,
    /// bfloat16 matrix products with f32 master weights, optimizer state, norms,
    /// softmax and losses.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("precision `{other}`: expected `fp32` or `bf16`")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// `a · b` (broadcasting over leading dims) in this precision; the result is f32.
    pub fn matmul(self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Precision::Fp32 => a.broadcast_matmul(b),
            Precision::Bf16 => {
                a.to_dtype(DType::BF16)?.broadcast_matmul(&b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)
            }
        }
    }
}
