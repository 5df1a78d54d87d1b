//! stagecraft-core: the host runtime.
//!
//! - [`adapter`]: PEFT adapter directories, merging adapters into the base.
//! - [`export`]: a finished stage as PEFT adapter directories or a merged Hugging
//!   Face directory.
//! - [`device`]: CPU or CUDA devices, and the precision models compute in.
//! - [`data`]: tokenizers, data sources (files, synthetic tasks), sampling, replay
//!   mixtures, collation.
//! - [`config`]: the pipeline config.
//! - [`drift`]: two-sample tests of whether new data differs from a reference
//!   (token JS divergence, length KS, label χ², hidden-state MMD).
//! - [`plugin`]: the op table plugins call, the handle table, loading `.so` plugins,
//!   the registry of built-in and loaded plugins.
//! - [`kernels`]: fused CPU ops with hand-written backward passes (attention, norms,
//!   RoPE, SwiGLU, linear, cross-entropy) and their profiler.
//! - [`model`]: models whose linears, embeddings and block outputs are named sites
//!   where adaptation plugins attach.
//! - [`train`]: the training step (forward with adapters → stage loss → backward →
//!   optimizer plugin).

pub mod adapter;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod cpu_threads;
pub mod data;
pub mod device;
pub mod drift;
pub mod error;
pub mod export;
pub mod generate;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod report;
pub mod rng;
pub mod search;
pub mod train;

pub use error::{Error, Result};

// Link the first-party plugin crates so their `export_plugin!` entries reach the
// built-in registry through `inventory`.
#[cfg(feature = "builtin-plugins")]
extern crate stagecraft_bottleneck as _;
#[cfg(feature = "builtin-plugins")]
extern crate stagecraft_ia3 as _;
#[cfg(feature = "builtin-plugins")]
extern crate stagecraft_lora as _;
#[cfg(feature = "builtin-plugins")]
extern crate stagecraft_optimizers as _;
#[cfg(feature = "builtin-plugins")]
extern crate stagecraft_prompt_tuning as _;
#[cfg(feature = "builtin-plugins")]
extern crate stagecraft_stages as _;
