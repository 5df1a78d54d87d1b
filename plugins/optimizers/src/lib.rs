//! # stagecraft-optimizers — AdamW, SGD with momentum and Lion for stagecraft
//!
//! Three optimizers, each matching its PyTorch reference step for step:
//! `adamw` ([`AdamW`]), `sgd` ([`SgdMomentum`]) and `lion` ([`Lion`]). All state is kept
//! in host buffers named after the parameter (`exp_avg.<param>`), so it is saved in
//! checkpoints and a resumed run continues exactly. Each step uses the learning rate the
//! host passes per parameter (`ParamSlot::lr`, the schedule applied to the config's
//! `lr`) and scales weight decay by `ParamSlot::decay_mul`.
//!
//! ```toml
//! [[stages]]
//! optimizer = { plugin = "adamw", lr = 2e-4, weight_decay = 0.0 }
//! ```
//!
//! - [`config`]: the three config tables and their defaults.
//! - [`adamw`], [`sgd`], [`lion`]: one optimizer each.

pub mod adamw;
pub mod config;
pub mod lion;
pub mod sgd;
mod state;

pub use adamw::AdamW;
pub use config::{AdamWConfig, LionConfig, SgdConfig};
pub use lion::Lion;
pub use sgd::SgdMomentum;

stagecraft_sdk::export_plugin! {
    id: optimizers,
    methods: [],
    optimizers: [AdamW, SgdMomentum, Lion],
    stages: [],
}
