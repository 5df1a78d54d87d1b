//! # stagecraft-bottleneck — bottleneck adapters for stagecraft
//!
//! One adaptation method, `bottleneck`: a small two-layer network with a residual
//! connection, `h + up(act(down(h)))`, inserted into each transformer block — after
//! the attention and after the MLP sublayers (Houlsby et al., 2019,
//! <https://arxiv.org/abs/1902.00751>) or after the MLP only (Pfeiffer et al., 2021,
//! <https://arxiv.org/abs/2005.00247>). The up projection starts at zero, so a new
//! adapter is the identity. It attaches to the sublayer-output sites (roles
//! `attn_output` and `mlp_output`) of Llama and BERT alike; it cannot be merged.
//!
//! ```toml
//! adapters = [{ plugin = "bottleneck", variant = "houlsby", reduction_factor = 16 }]
//! ```
//!
//! - [`config`]: the adapter table and its defaults.
//! - [`adapter`]: the forward pass and initialization.

pub mod adapter;
pub mod config;

pub use adapter::Bottleneck;
pub use config::{Activation, BottleneckConfig, Variant};

stagecraft_sdk::export_plugin! {
    id: bottleneck,
    methods: [Bottleneck],
    optimizers: [],
    stages: [],
}
