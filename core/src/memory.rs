//! How much memory a model, a training step or a forward pass needs, estimated from
//! sizes alone, and how much the device has: so that a configuration that cannot fit is
//! refused in one line before anything large is allocated, instead of aborting the
//! process (`memory allocation of N bytes failed`) or being killed by the OOM killer.
//!
//! The estimates count f32 tensors (4 bytes per element) and aim to be within a small
//! factor of the truth, erring high on the largest intermediate tensors; they are a
//! guard against configurations off by orders of magnitude, not a profiler.
//!
//! ```
//! use stagecraft_core::memory::Bytes;
//! assert_eq!(Bytes(3 * 1024 * 1024 * 1024 / 2).to_string(), "1.5 GiB");
//! assert_eq!(Bytes(u64::MAX).to_string(), "more than 16 EiB");
//! ```

use crate::error::{Error, Result};
use candle_core::Device;
use stagecraft_sdk::ModelSpec;

/// A number of bytes (saturating: sizes computed from absurd configs stop at `u64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    /// `n` f32 elements.
    pub fn f32s(n: u128) -> Bytes {
        Bytes(u64::try_from(n.saturating_mul(4)).unwrap_or(u64::MAX))
    }
}

impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(o.0))
    }
}

impl std::iter::Sum for Bytes {
    fn sum<I: Iterator<Item = Bytes>>(it: I) -> Bytes {
        it.fold(Bytes(0), |a, b| a + b)
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == u64::MAX {
            return f.write_str("more than 16 EiB");
        }
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < units.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{:.1} {}", v, units[u])
        }
    }
}

/// The memory the device can give now: on the CPU the kernel's `MemAvailable`, lowered
/// to the cgroup's limit when one is set; on a GPU its free memory. `None` when it
/// cannot be read (then nothing is refused for lack of memory).
pub fn available(device: &Device) -> Option<Bytes> {
    match device {
        Device::Cpu => cpu_available(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.cuda_stream().context().mem_get_info().ok().map(|(free, _)| Bytes(free as u64)),
        _ => None,
    }
}

fn cpu_available() -> Option<Bytes> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let mut avail = kib.saturating_mul(1024);
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"];
    if let Some(limit) = cgroup.iter().find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok()) {
        let used = ["/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        avail = avail.min(limit.saturating_sub(used));
    }
    Some(Bytes(avail))
}

/// Refuses `need` bytes for `what` when the device has less available, in one line:
/// `<what> needs about <need> (<detail>), but <device> has <available> available`.
pub fn ensure_fits(what: &str, need: Bytes, detail: &str, device: &Device) -> Result<()> {
    let Some(avail) = available(device) else { return Ok(()) };
    if need <= avail {
        return Ok(());
    }
    let on = match device.location() {
        candle_core::DeviceLocation::Cpu => "this machine".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("GPU cuda:{gpu_id}"),
        other => format!("the device {other:?}"),
    };
    let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
    let about = if need == Bytes(u64::MAX) { "" } else { "about " };
    Err(Error::msg(format!("{what} needs {about}{need}{detail}, but {on} has {avail} available")))
}

/// The parameters of a model of this shape (embeddings, blocks, head), from sizes alone.
pub fn parameter_count(spec: &ModelSpec) -> u128 {
    let (h, v, layers) = (spec.hidden as u128, spec.vocab as u128, spec.num_layers as u128);
    let q = spec.num_heads as u128 * spec.head_dim as u128;
    let kv = spec.num_kv_heads as u128 * spec.head_dim as u128;
    let attention = h * q + 2 * h * kv + q * h;
    let mlp = if spec.causal { 3 * h * spec.intermediate as u128 } else { 2 * h * spec.intermediate as u128 };
    let positions = spec.max_positions as u128 * h;
    // Embeddings, blocks, a head as large as the embeddings (tied or not: erring high).
    2 * v * h + positions + layers * (attention + mlp + 4 * h)
}

/// The largest activations a forward pass without gradients holds at once over
/// `batch × seq` tokens: a block's inputs and its MLP inner states, one layer's attention
/// scores, and the logits.
pub fn forward_bytes(spec: &ModelSpec, batch: usize, seq: usize) -> Bytes {
    let tokens = batch as u128 * seq as u128;
    let scores = batch as u128 * spec.num_heads as u128 * (seq as u128).saturating_mul(seq as u128);
    let block = tokens * (4 * spec.hidden as u128 + 3 * spec.intermediate as u128);
    let logits = tokens * spec.vocab as u128;
    Bytes::f32s(2 * scores + block + 2 * logits)
}

/// A memory estimate by part, e.g. weights, optimizer state, activations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    /// `(what, bytes)`, in the order they are reported.
    pub parts: Vec<(String, Bytes)>,
}

impl Estimate {
    /// Adds a part (parts of zero bytes are left out of the report).
    pub fn add(&mut self, what: impl Into<String>, bytes: Bytes) {
        if bytes.0 > 0 {
            self.parts.push((what.into(), bytes));
        }
    }

    /// The sum of the parts.
    pub fn total(&self) -> Bytes {
        self.parts.iter().map(|(_, b)| *b).sum()
    }

    /// Refuses the estimate, in one line naming each part, when the device has less
    /// memory available (see [`ensure_fits`]).
    pub fn ensure_fits(&self, what: &str, device: &Device) -> Result<()> {
        let detail: Vec<String> = self.parts.iter().map(|(w, b)| format!("{w} {b}")).collect();
        ensure_fits(what, self.total(), &detail.join(", "), device)
    }
}

/// The shape of one training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// Examples per micro-batch.
    pub batch: usize,
    /// Tokens per example (at most).
    pub seq: usize,
    /// Micro-batches per step (all of a step's batches are held at once).
    pub grad_accum: usize,
    /// Whether base weights train (gradients and optimizer state for all of them), or
    /// only adapters (whose sizes the host checks as plugins create them).
    pub trains_base: bool,
}

/// The memory one training step needs at its peak: the weights; their gradients and
/// optimizer state (taken as two moments, as AdamW keeps) when the base trains; the
/// activations backward needs for one micro-batch — per layer its inputs, projections,
/// MLP inner states and attention scores, then the logits with their softmax and
/// gradient; and the step's collated batches.
pub fn training_step(spec: &ModelSpec, step: StepShape) -> Estimate {
    let params = parameter_count(spec);
    let tokens = step.batch as u128 * step.seq as u128;
    let (h, i, v) = (spec.hidden as u128, spec.intermediate as u128, spec.vocab as u128);
    let scores = 2 * spec.num_heads as u128 * step.seq as u128;
    let per_layer = tokens.saturating_mul(10 * h + 4 * i + scores);
    let activations = per_layer.saturating_mul(spec.num_layers as u128) + tokens.saturating_mul(3 * v + 2 * h);
    let mut e = Estimate::default();
    e.add("weights", Bytes::f32s(params));
    if step.trains_base {
        e.add("gradients and optimizer state", Bytes::f32s(params.saturating_mul(3)));
    }
    e.add(format!("activations for {} x {} tokens", step.batch, step.seq), Bytes::f32s(activations));
    // Collated ids, labels and mask: 16 bytes a token, for every micro-batch of the step.
    let batches = tokens.saturating_mul(step.grad_accum as u128).saturating_mul(4);
    e.add(format!("{} micro-batches", step.grad_accum), Bytes::f32s(batches));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hidden: usize, vocab: usize, layers: usize) -> ModelSpec {
        ModelSpec {
            arch: "llama".into(),
            hidden,
            vocab,
            num_layers: layers,
            num_heads: hidden / 64,
            num_kv_heads: hidden / 64,
            head_dim: 64,
            intermediate: hidden * 4,
            causal: true,
            max_positions: 0,
        }
    }

    #[test]
    fn parameter_count_matches_a_known_model() {
        // TinyLlama-1.1B: hidden 2048, 22 layers, 4 kv heads, intermediate 5632, vocab 32000: 1.10B.
        let s = ModelSpec { num_kv_heads: 4, intermediate: 5632, ..spec(2048, 32000, 22) };
        let n = parameter_count(&s) as f64;
        assert!((n / 1.1e9 - 1.0).abs() < 0.1, "{n}");
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        let s = spec(1 << 40, 1 << 40, 1 << 20);
        assert_eq!(forward_bytes(&s, usize::MAX, usize::MAX), Bytes(u64::MAX));
        assert!(parameter_count(&s) > u64::MAX as u128);
    }

    #[test]
    fn a_training_step_counts_state_only_when_the_base_trains() {
        let s = spec(128, 256, 3);
        let step = StepShape { batch: 32, seq: 48, grad_accum: 1, trains_base: true };
        let full = training_step(&s, step);
        let adapters = training_step(&s, StepShape { trains_base: false, ..step });
        let names: Vec<&str> = full.parts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["weights", "gradients and optimizer state", "activations for 32 x 48 tokens", "1 micro-batches"]
        );
        assert_eq!(full.total().0 - adapters.total().0, 3 * 4 * parameter_count(&s) as u64);
        // A micro-batch count of 10^9 is refused by size alone.
        let huge = training_step(&s, StepShape { grad_accum: 1_000_000_000, ..step });
        assert!(huge.total() > Bytes(1 << 40), "{}", huge.total());
    }

    #[test]
    fn what_does_not_fit_is_refused_with_both_sizes() {
        let e = ensure_fits("the model", Bytes(u64::MAX - 1), "10 B parameters", &Device::Cpu)
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("the model needs about 16.0 EiB (10 B parameters), but this machine has "), "{e}");
        assert!(ensure_fits("a byte", Bytes(1), "", &Device::Cpu).is_ok());
    }
}
