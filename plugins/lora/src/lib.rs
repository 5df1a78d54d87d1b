//! # stagecraft-lora — LoRA for stagecraft
//!
//! One adaptation method, `lora`: a trainable low-rank update `ΔW = B·A`, scaled by
//! `alpha / r` (or `alpha / √r` with rsLoRA), added to every targeted linear layer of a
//! frozen model (Hu et al., 2021, <https://arxiv.org/abs/2106.09685>), optionally
//! weight-decomposed (DoRA). Parameter names and shapes follow PEFT, ranks and alphas
//! can differ per site, and the adapter can be merged into the base weights.
//!
//! ```toml
//! adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 16, alpha = 32 }]
//! ```
//!
//! - [`config`]: the adapter table and its defaults.
//! - [`lora`]: the forward pass, initialization, merge and unmerge.
//! - [`dora`]: DoRA's magnitude and direction (`use_dora = true`).

pub mod config;
pub mod dora;
pub mod lora;

pub use config::{LoraConfig, LoraInit};
pub use lora::Lora;

stagecraft_sdk::export_plugin! {
    id: lora,
    methods: [Lora],
    optimizers: [],
    stages: [],
}
