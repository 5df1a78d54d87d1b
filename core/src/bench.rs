//! The standard training workloads, for `stagecraft bench`: a Llama of fixed shapes
//! trained on random tokens, with AdamW, in full fine-tuning or LoRA mode, through the
//! same plugins and trainer as a pipeline. Shapes match `torch_baseline.py`, so the
//! numbers compare with PyTorch + PEFT on the same machine.
//!
//! | workload | vocab | hidden | intermediate | layers | heads (kv) | seq | batch | default mode |
//! |---|---|---|---|---|---|---|---|---|
//! | w1 | 256 | 256 | 688 | 4 | 4 | 128 | 8 | given |
//! | w2 | 256 | 512 | 1376 | 8 | 8 | 256 | 8 | given |
//! | w350m | 32000 | 1024 | 2816 | 24 | 16 | 2048 | 8 | full |
//! | w1b | 128256 (tied) | 2048 | 8192 | 16 | 32 (8) | 2048 | 4 | LoRA r 16, all seven projections |
//!
//! The GPU workloads match `torch_gpu_anchor.py`'s, and the report adds the model
//! FLOPs utilization (MFU) those use.

use crate::device::{device_memory_used_mib, device_name, synchronize, Precision};
use crate::error::{Error, Result};
use crate::kernels;
use crate::model::{Adapters, Llama, LlamaConfig, Model};
use crate::plugin::{HostState, Registry};
use crate::rng::Rng;
use crate::train::{Batch, Trainer};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::rc::Rc;
use std::time::Instant;

/// One of the standard workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// hidden 256, 4 layers, seq 128, batch 8, vocab 256.
    W1,
    /// hidden 512, 8 layers, seq 256, batch 8, vocab 256.
    W2,
    /// ~350M Llama for GPUs: hidden 1024, 24 layers, 16 heads, intermediate 2816,
    /// vocab 32000, seq 2048, batch 8; full training by default.
    W350m,
    /// The Llama-3.2-1B shape: hidden 2048, 16 layers, 32 heads / 8 KV heads,
    /// intermediate 8192, vocab 128256, tied embeddings, seq 2048, batch 4; LoRA r 16
    /// on all seven projections by default.
    W1b,
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every weight, AdamW.
    Full,
    /// LoRA (r 8, alpha 16 on q_proj and v_proj; on w1b r 16, alpha 32 on all seven
    /// projections); base frozen; AdamW.
    Lora,
}

/// How a benchmark runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The workload.
    pub workload: Workload,
    /// Full or LoRA (default: the workload's own).
    pub mode: Option<Mode>,
    /// Measured steps.
    pub steps: usize,
    /// Steps before measuring.
    pub warmup: usize,
    /// Where it runs.
    pub device: Device,
    /// The model's compute precision.
    pub precision: Precision,
    /// A smaller batch than the workload's (to fit a device's memory).
    pub batch: Option<usize>,
    /// Also report where the step's time goes ([`Profile`]).
    pub profile: bool,
    /// A Python with PyTorch and PEFT: after stagecraft, run PyTorch on the same
    /// workload ([`torch_baseline`]) and report both (CPU workloads W1 and W2).
    pub torch: Option<String>,
}

/// Peak dense bf16 throughput of an H100/H200 SXM, FLOP/s: the MFU denominator.
pub const PEAK_FLOPS: f64 = 989e12;

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload.
    pub workload: Workload,
    /// Mode.
    pub mode: Mode,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `fp32` or `bf16`.
    pub precision: Precision,
    /// Sequence length.
    pub seq: usize,
    /// Batch size.
    pub batch: usize,
    /// Measured steps (after warm-up).
    pub steps: usize,
    /// All parameters (adapters included).
    pub params: usize,
    /// Trained parameters.
    pub trainable: usize,
    /// Median milliseconds per optimizer step.
    pub ms_per_step: f64,
    /// Tokens per second at the median step time.
    pub tokens_per_s: f64,
    /// Model FLOPs per token: 6 × matmul parameters + 12 × layers × hidden × seq.
    pub flops_per_token: f64,
    /// Model FLOPs utilization against [`PEAK_FLOPS`] (GPUs only).
    pub mfu: Option<f64>,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// Peak device memory in use, MiB, as the driver reports it (GPUs only).
    pub peak_gpu_mib: Option<f64>,
    /// Whether the fused CPU ops ran ([`crate::kernels`]).
    pub fused: bool,
    /// Where the time went, with `--profile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// PyTorch on the same workload, measured right after, with `--torch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<TorchReport>,
}

/// What PyTorch + PEFT measured on a workload (`benches/torch_baseline.py`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TorchReport {
    /// Median milliseconds per optimizer step.
    pub ms_per_step: f64,
    /// Tokens per second at the median step time.
    pub tokens_per_s: f64,
    /// Threads PyTorch used.
    pub threads: usize,
    /// Peak resident memory of the Python process (interpreter included), MiB.
    #[serde(default)]
    pub peak_rss_mib: f64,
    /// stagecraft's tokens/s over PyTorch's.
    #[serde(default)]
    pub speed_ratio: f64,
    /// stagecraft's peak resident memory over PyTorch's.
    #[serde(default)]
    pub memory_ratio: f64,
    /// With `--rounds N`: the speed ratio of every round, in order (the report is the
    /// round with the median ratio).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_ratios: Vec<f64>,
}

/// The PyTorch baseline script, run by [`torch_baseline`] from memory.
const TORCH_BASELINE: &str = include_str!("../../benches/torch_baseline.py");

/// Runs `benches/torch_baseline.py` (PyTorch + PEFT, fp32, 2 threads by default) on a
/// CPU workload with `python`, for `steps` measured steps after its own 5 warm-up steps.
pub fn torch_baseline(python: &str, workload: Workload, mode: Mode, steps: usize) -> Result<TorchReport> {
    let name = match workload {
        Workload::W1 => "w1",
        Workload::W2 => "w2",
        other => return Err(Error::msg(format!("--torch compares the CPU workloads w1 and w2, not {other:?}"))),
    };
    let mode = match mode {
        Mode::Full => "full",
        Mode::Lora => "lora",
    };
    // The script prints its JSON line; the epilogue adds the process's peak RSS.
    let epilogue = "\nimport json, resource\nprint(json.dumps({'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n";
    let mut child = std::process::Command::new(python)
        .args(["-", name, mode, &steps.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("--torch {python}: cannot start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let script = format!("{TORCH_BASELINE}{epilogue}");
        stdin.write_all(script.as_bytes()).map_err(|e| Error::msg(format!("--torch {python}: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::msg(format!("--torch {python}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(Error::msg(format!("--torch {python}: the PyTorch baseline failed ({}): {last}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with('{'));
    let parse = |l: Option<&str>| -> Result<serde_json::Value> {
        let l = l.ok_or_else(|| Error::msg(format!("--torch {python}: the baseline printed no result")))?;
        serde_json::from_str(l).map_err(|e| Error::msg(format!("--torch {python}: unreadable baseline result: {e}")))
    };
    let mut report: TorchReport = serde_json::from_value(parse(lines.next())?)
        .map_err(|e| Error::msg(format!("--torch {python}: unexpected baseline result: {e}")))?;
    report.peak_rss_mib = parse(lines.next())?["peak_rss_mib"].as_f64().unwrap_or(0.0);
    Ok(report)
}

/// Where a step's time goes: the phases (medians over the measured steps) and the
/// fused ops (mean per step, longest first). What a phase spends outside the fused
/// ops is candle's own ops, the plugins' host ops and the autograd bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Forward and loss, ms.
    pub forward_ms: f64,
    /// Backward and gradient accumulation, ms.
    pub backward_ms: f64,
    /// Gradient norm, clipping and the optimizer, ms.
    pub update_ms: f64,
    /// Per fused op: `(op, calls per step, ms per step)`.
    pub ops: Vec<(String, f64, f64)>,
}

impl Profile {
    /// A table for people: phases, then the fused ops.
    pub fn table(&self, step_ms: f64) -> String {
        let mut out = format!(
            "step {step_ms:.1} ms: forward {:.1} ms, backward {:.1} ms, update {:.1} ms\n",
            self.forward_ms, self.backward_ms, self.update_ms
        );
        out.push_str(&format!("{:<24} {:>9} {:>10} {:>7}\n", "fused op", "calls", "ms/step", "share"));
        for (op, calls, ms) in &self.ops {
            out.push_str(&format!("{op:<24} {calls:>9.0} {ms:>10.2} {:>6.1}%\n", 100.0 * ms / step_ms));
        }
        let fused: f64 = self.ops.iter().map(|o| o.2).sum();
        out.push_str(&format!(
            "{:<24} {:>9} {:>10.2} {:>6.1}%\n",
            "(outside fused ops)",
            "",
            step_ms - fused,
            100.0 * (step_ms - fused) / step_ms
        ));
        out
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

impl Workload {
    /// `(config, seq, batch)`.
    pub fn shape(self) -> (LlamaConfig, usize, usize) {
        // (vocab, hidden, intermediate, layers, heads, kv heads, tied, seq, batch)
        let (vocab, hidden, inter, layers, heads, kv, tied, seq, batch) = match self {
            Workload::W1 => (256, 256, 688, 4, 4, 4, false, 128, 8),
            Workload::W2 => (256, 512, 1376, 8, 8, 8, false, 256, 8),
            Workload::W350m => (32000, 1024, 2816, 24, 16, 16, false, 2048, 8),
            Workload::W1b => (128256, 2048, 8192, 16, 32, 8, true, 2048, 4),
        };
        let cfg = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            max_position_embeddings: Some(seq),
        };
        (cfg, seq, batch)
    }

    /// Full training, except w1b (LoRA).
    pub fn default_mode(self) -> Mode {
        if self == Workload::W1b {
            Mode::Lora
        } else {
            Mode::Full
        }
    }

    /// The LoRA adapter's config for this workload.
    fn lora_config(self) -> &'static str {
        match self {
            Workload::W1b => {
                r#"{"targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "r": 16, "alpha": 32}"#
            }
            _ => r#"{"targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16}"#,
        }
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Model FLOPs per token (PaLM's count, attention without the causal saving): 6 ×
/// the parameters that take part in matrix products (all but an untied embedding
/// table) + 12 × layers × hidden × seq.
pub fn flops_per_token(cfg: &LlamaConfig, params: usize, seq: usize) -> f64 {
    let embedding = if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size * cfg.hidden_size };
    6.0 * (params - embedding) as f64 + 12.0 * (cfg.num_hidden_layers * cfg.hidden_size * seq) as f64
}

/// Runs `warmup + steps` training steps and reports the median.
pub fn run(registry: &Registry, opts: &BenchOptions) -> Result<Report> {
    if opts.steps == 0 {
        return Err(Error::msg("--steps must be > 0"));
    }
    let device = opts.device.clone();
    let (workload, mode) = (opts.workload, opts.mode.unwrap_or(opts.workload.default_mode()));
    let (cfg, seq, batch) = workload.shape();
    let batch = opts.batch.unwrap_or(batch);
    let state = Rc::new(HostState::new(device.clone(), DType::F32, 0));
    let model = Llama::new(&cfg, 0, &device)?;
    state.register_model(&model);
    let mut adapters = Adapters::none(model.sites().len());
    adapters.set_precision(opts.precision);
    if mode == Mode::Lora {
        for (_, w) in model.weights() {
            w.set_trainable(false);
        }
        adapters.attach(registry.new_method("lora", workload.lora_config(), &state)?, model.sites())?;
    }
    let stage = registry.new_objective("causal_lm", "{}", &state)?;
    let opt = registry.new_optimizer("adamw", r#"{"lr": 0.0001, "weight_decay": 0.0}"#, &state)?;
    let mut trainer = Trainer::new(state, Box::new(model), adapters, stage, opt)?;
    let trainable: usize = trainer.params.iter().map(|p| p.var.elem_count()).sum();
    let adapter_params: usize =
        trainer.adapters.methods().iter().flat_map(|m| m.params()).map(|p| p.var.elem_count()).sum();
    let params = trainer.model.weights().iter().map(|(_, w)| w.var().elem_count()).sum::<usize>() + adapter_params;

    let mut rng = Rng::new(0);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let batch_t = Batch::tokens(Tensor::from_vec(ids, (batch, seq), &device)?);
    let mut times = Vec::with_capacity(opts.steps);
    let mut phases = Vec::with_capacity(opts.steps);
    let mut peak_gpu: Option<f64> = None;
    for i in 0..opts.warmup + opts.steps {
        if i == opts.warmup && opts.profile {
            kernels::profile::start();
        }
        synchronize(&device)?;
        let t = Instant::now();
        let out = trainer.train_step(&batch_t, 1e-4)?;
        synchronize(&device)?;
        if i >= opts.warmup {
            times.push(t.elapsed().as_secs_f64());
            phases.push(out.times);
        }
        peak_gpu = device_memory_used_mib(&device).map(|m| peak_gpu.map_or(m, |p: f64| p.max(m)));
    }
    let profile = opts.profile.then(|| {
        let per_step = |x: f64| 1e3 * x / opts.steps as f64;
        Profile {
            forward_ms: 1e3 * median(phases.iter().map(|p| p.forward).collect()),
            backward_ms: 1e3 * median(phases.iter().map(|p| p.backward).collect()),
            update_ms: 1e3 * median(phases.iter().map(|p| p.update).collect()),
            ops: kernels::profile::finish()
                .into_iter()
                .map(|o| (o.op.to_string(), o.calls as f64 / opts.steps as f64, per_step(o.seconds)))
                .collect(),
        }
    });
    let med = median(times);
    let tokens_per_s = (batch * seq) as f64 / med;
    let flops = flops_per_token(&cfg, params, seq);
    Ok(Report {
        workload,
        mode,
        device: device_name(&device),
        precision: opts.precision,
        seq,
        batch,
        steps: opts.steps,
        params,
        trainable,
        ms_per_step: med * 1e3,
        tokens_per_s,
        flops_per_token: flops,
        mfu: device.is_cuda().then(|| flops * tokens_per_s / PEAK_FLOPS),
        peak_rss_mib: peak_rss_mib(),
        peak_gpu_mib: peak_gpu,
        fused: kernels::enabled(),
        profile,
        torch: None,
    })
}
