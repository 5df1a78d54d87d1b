//! # stagecraft-ia3 — IA3 for stagecraft
//!
//! One adaptation method, `ia3` (Liu et al., 2022, *Few-Shot Parameter-Efficient
//! Fine-Tuning is Better and Cheaper than In-Context Learning*,
//! <https://arxiv.org/abs/2205.05638>): a learned vector rescales the output of each
//! targeted linear layer (keys, values), or the input of each "feed-forward" one (the
//! MLP's down projection). Parameter names and shapes are PEFT's (`<site>.ia3_l`), and
//! the vectors merge into the weights, bias included.
//!
//! ```toml
//! adapters = [{ plugin = "ia3", targets = ["k_proj", "v_proj", "down_proj"], feedforward = ["down_proj"] }]
//! ```
//!
//! - [`config`]: the adapter table and its defaults.
//! - [`ia3`]: the forward pass, initialization and merge.

pub mod config;
pub mod ia3;

pub use config::Ia3Config;
pub use ia3::Ia3;

stagecraft_sdk::export_plugin! {
    id: ia3,
    methods: [Ia3],
    optimizers: [],
    stages: [],
}
