//! # stagecraft-prompt-tuning — soft prompts for stagecraft
//!
//! Two adaptation methods that leave every weight alone and learn extra positions:
//! - `prompt_tuning` (Lester et al., 2021, <https://arxiv.org/abs/2104.08691>):
//!   learned embeddings of virtual tokens prepended to the input embeddings;
//! - `prefix_tuning` (Li & Liang, 2021, <https://arxiv.org/abs/2101.00190>): learned
//!   keys and values prepended at every attention layer, optionally produced by a
//!   small MLP (the reparameterization), which runs once per forward pass.
//!
//! Names and shapes follow PEFT (`prompt_embeddings`), so trained prompts export to
//! PEFT directories. The host takes care of the rest: it extends the attention mask
//! over the virtual positions, shifts real tokens' positions after a prefix as a
//! key/value cache would, and drops virtual positions from the outputs, so every
//! objective sees one position per input token.
//!
//! ```toml
//! adapters = [{ plugin = "prompt_tuning", num_virtual_tokens = 8, init = "text", init_text = "Add the numbers:" }]
//! adapters = [{ plugin = "prefix_tuning", num_virtual_tokens = 8, prefix_projection = true }]
//! ```
//!
//! - [`config`]: both adapter tables and their defaults.
//! - [`prompt`]: prompt tuning.
//! - [`prefix`]: prefix tuning.

pub mod config;
pub mod prefix;
pub mod prompt;

pub use config::{PrefixTuningConfig, PromptInit, PromptTuningConfig};
pub use prefix::PrefixTuning;
pub use prompt::PromptTuning;

stagecraft_sdk::export_plugin! {
    id: prompt_tuning,
    methods: [PromptTuning, PrefixTuning],
    optimizers: [],
    stages: [],
}
