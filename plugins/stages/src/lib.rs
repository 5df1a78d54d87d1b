//! # stagecraft-stages — the standard stage objectives
//!
//! Four objectives, each turning model outputs and a batch into a loss and metrics:
//! - `causal_lm` ([`CausalLm`]): next-token cross-entropy over every real token;
//! - `completion` ([`Completion`]): the same over completion tokens only, plus
//!   `exact_match`;
//! - `classification` ([`Classification`]): a linear head on a pooled vector, with
//!   cross-entropy over `class_labels` and `accuracy`;
//! - `distill` ([`Distill`]): KL to a frozen teacher's temperature-scaled logits mixed
//!   with next-token cross-entropy (the stage names the `teacher`).
//!
//! ```toml
//! [[stages]]
//! objective = { plugin = "completion", label_smoothing = 0.1 }
//! ```
//!
//! - [`config`]: the objective tables and their defaults.
//! - [`next_token`]: the shifted cross-entropy both language-modeling stages use.
//! - [`pooling`]: how the classifier gets one vector per sequence.

pub mod causal_lm;
pub mod classification;
pub mod completion;
pub mod config;
pub mod distill;
pub mod next_token;
pub mod pooling;

pub use causal_lm::CausalLm;
pub use classification::Classification;
pub use completion::Completion;
pub use config::{ClassificationConfig, DistillConfig, LmConfig, Pooling};
pub use distill::Distill;

stagecraft_sdk::export_plugin! {
    id: stages,
    methods: [],
    optimizers: [],
    stages: [CausalLm, Completion, Classification, Distill],
}
