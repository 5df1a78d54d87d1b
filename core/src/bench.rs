//! The standard training workloads, for `stagecraft bench`: a Llama of fixed shapes
//! trained on random tokens, with AdamW, in full fine-tuning or LoRA mode, through the
//! same plugins and trainer as a pipeline. Shapes match `torch_baseline.py`, so the
//! numbers compare with PyTorch + PEFT on the same machine.
//!
//! | workload | vocab | hidden | intermediate | layers | heads | seq | batch |
//! |---|---|---|---|---|---|---|---|
//! | w1 | 256 | 256 | 688 | 4 | 4 | 128 | 8 |
//! | w2 | 256 | 512 | 1376 | 8 | 8 | 256 | 8 |

use crate::error::{Error, Result};
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
    /// hidden 256, 4 layers, seq 128, batch 8.
    W1,
    /// hidden 512, 8 layers, seq 256, batch 8.
    W2,
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every weight, AdamW.
    Full,
    /// LoRA r 8, alpha 16 on q_proj and v_proj; base frozen; AdamW.
    Lora,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload.
    pub workload: Workload,
    /// Mode.
    pub mode: Mode,
    /// Measured steps (after warm-up).
    pub steps: usize,
    /// All parameters.
    pub params: usize,
    /// Trained parameters.
    pub trainable: usize,
    /// Median milliseconds per optimizer step.
    pub ms_per_step: f64,
    /// Tokens per second at the median step time.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

impl Workload {
    /// `(config, seq, batch)`.
    pub fn shape(self) -> (LlamaConfig, usize, usize) {
        let (hidden, inter, layers, heads, seq) = match self {
            Workload::W1 => (256, 688, 4, 4, 128),
            Workload::W2 => (512, 1376, 8, 8, 256),
        };
        let cfg = LlamaConfig {
            vocab_size: 256,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            max_position_embeddings: Some(seq),
        };
        (cfg, seq, 8)
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `warmup + steps` training steps and reports the median.
pub fn run(registry: &Registry, workload: Workload, mode: Mode, steps: usize, warmup: usize) -> Result<Report> {
    if steps == 0 {
        return Err(Error::msg("--steps must be > 0"));
    }
    let device = Device::Cpu;
    let (cfg, seq, batch) = workload.shape();
    let state = Rc::new(HostState::new(device.clone(), DType::F32, 0));
    let model = Llama::new(&cfg, 0, &device)?;
    let params: usize = model.weights().iter().map(|(_, w)| w.var().elem_count()).sum();
    let mut adapters = Adapters::none(model.sites().len());
    if mode == Mode::Lora {
        for (_, w) in model.weights() {
            w.set_trainable(false);
        }
        let lora = registry.new_method("lora", r#"{"targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16}"#, &state)?;
        adapters.attach(lora, model.sites())?;
    }
    let stage = registry.new_stage("causal_lm", "{}", &state)?;
    let opt = registry.new_optimizer("adamw", r#"{"lr": 0.001, "weight_decay": 0.0}"#, &state)?;
    let mut trainer = Trainer::new(state, Box::new(model), adapters, stage, opt)?;
    let trainable = trainer.params.iter().map(|p| p.var.elem_count()).sum();

    let mut rng = Rng::new(0);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let batch_t = Batch::tokens(Tensor::from_vec(ids, (batch, seq), &device)?);
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        trainer.train_step(&batch_t, 1e-3)?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    Ok(Report {
        workload,
        mode,
        steps,
        params,
        trainable,
        ms_per_step: med * 1e3,
        tokens_per_s: (batch * seq) as f64 / med,
        peak_rss_mib: peak_rss_mib(),
    })
}
