//! # stagecraft-sdk — write stagecraft plugins
//!
//! A plugin is a shared library (`.so`) that provides adaptation methods (LoRA, IA3,
//! ...), optimizers (AdamW, Lion, ...) or stage objectives (causal LM, classification,
//! ...). The host loads it, checks its ABI, and calls it with a table of tensor ops.
//! Plugins never link candle: they hold opaque [`TensorHandle`]s and ask the host to
//! compute, so every op runs on the host's device and is recorded by its autograd, and
//! a plugin keeps working when the host upgrades candle.
//!
//! New here? [`tutorial`] goes from an empty folder to a pipeline that trains with
//! your own adaptation method, and `stagecraft plugin new NAME --kind
//! method|optimizer|objective` writes a working crate of each kind to start from.
//!
//! ## Depending on the SDK
//!
//! `stagecraft-sdk` is not published on crates.io. Depend on it by path, from a
//! checkout of the stagecraft repository, or by git:
//!
//! ```toml
//! [dependencies]
//! # A checkout of the repository (relative paths are from your crate's folder):
//! stagecraft-sdk = { path = "../stagecraft/adapters-sdk" }
//! # or, instead, the repository itself (add `rev = "<commit>"` to pin it):
//! # stagecraft-sdk = { git = "https://github.com/stagecraft-ml/stagecraft" }
//! ```
//!
//! The `adapters-sdk` folder is a self-contained crate: a copy of it outside the
//! repository works as a path dependency too.
//!
//! ## A complete plugin
//!
//! `Cargo.toml`:
//! ```toml
//! [package]
//! name = "my-scale"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! stagecraft-sdk = { path = "../stagecraft/adapters-sdk" }
//! serde = { version = "1", features = ["derive"] }
//!
//! # Its own workspace, even inside another workspace's folder.
//! [workspace]
//! ```
//!
//! `src/lib.rs` — a learned per-channel scale on linear outputs (IA3-like):
//! ```
//! use serde::Deserialize;
//! use stagecraft_sdk::prelude::*;
//!
//! #[derive(Debug, Clone, Deserialize, JsonSchema)]
//! #[schemars(crate = "stagecraft_sdk::schemars")]
//! #[serde(deny_unknown_fields)]
//! pub struct ScaleConfig {
//!     /// Site patterns to attach to (PEFT `target_modules` style).
//!     pub targets: Vec<String>,
//! }
//!
//! pub struct Scale {
//!     cfg: ScaleConfig,
//!     params: std::collections::HashMap<String, TensorHandle>,
//! }
//!
//! impl Plugin for Scale {
//!     const NAME: &'static str = "scale";
//!     const DESCRIPTION: &'static str = "learned per-channel scale on linear outputs";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     type Config = ScaleConfig;
//!     fn new(cfg: ScaleConfig, _host: Host<'_>) -> Result<Self> {
//!         for t in &cfg.targets { validate_pattern(t)?; }
//!         Ok(Scale { cfg, params: Default::default() })
//!     }
//! }
//!
//! impl AdaptationMethod for Scale {
//!     fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
//!         // Names (`q_proj`), globs, `re:` regexes or roles (`role:attn_q`).
//!         select_sites(host, &self.cfg.targets, sites, &[SiteKind::LINEAR], Hooks::POST)
//!     }
//!     fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
//!         let out = site.dims[1];
//!         let p = host.new_param(&format!("{}.scale", site.name), &[out], Init::ONES)?;
//!         self.params.insert(site.name.to_string(), p.handle());
//!         Ok(())
//!     }
//!     fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
//!         y.mul(&host.tensor(self.params[site.name.as_str()]))
//!     }
//!     // A scale on the output folds into the weight's rows and the bias.
//!     fn merge_support(&self) -> MergeSupport {
//!         MergeSupport::YES
//!     }
//!     fn merge<'h>(&self, host: Host<'h>, site: &SiteInfo, w: Tensor<'h>) -> Result<Tensor<'h>> {
//!         let s = host.tensor(self.params[site.name.as_str()]);
//!         w.mul(&s.reshape(&[site.dims[1], 1])?)
//!     }
//!     fn merge_bias<'h>(&self, host: Host<'h>, site: &SiteInfo, b: Tensor<'h>) -> Result<Tensor<'h>> {
//!         b.mul(&host.tensor(self.params[site.name.as_str()]))
//!     }
//! }
//!
//! stagecraft_sdk::export_plugin! {
//!     id: my_scale,
//!     methods: [Scale],
//!     optimizers: [],
//!     stages: [],
//! }
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release`, put `target/release/libmy_scale.so` in a
//! directory on `STAGECRAFT_PLUGIN_PATH` (or in `./plugins`), check it with
//! `stagecraft plugin inspect libmy_scale.so`, and use it in a pipeline:
//! `adapters = [{ plugin = "scale", targets = ["q_proj"] }]`.
//!
//! ## The pieces
//! - [`tutorial`]: write your first adaptation plugin, step by step.
//! - [`Plugin`]: name, version, config type; one per plugin.
//! - [`AdaptationMethod`], [`Optimizer`], [`Stage`]: the three kinds. Each trait's docs
//!   list its lifecycle in call order.
//! - [`Host`] and [`Tensor`]: the op table, with candle-like methods. The full op list
//!   and what each method family uses is in [`abi::HostOps`].
//! - [`export_plugin!`]: the one macro that makes a crate a plugin library.
//!
//! ## Rules the host enforces
//! - Handles are checked: a temporary used after the step that made it, or a made-up
//!   handle, is an error, never undefined behaviour.
//! - A panic in your code becomes an error naming your plugin and the method; the host
//!   keeps running.
//! - An adaptation method's output must have the shape of the site's output.
//! - Plugins log through [`Host::log`]: a `.so` has its own copy of `tracing`'s
//!   dispatcher, so `tracing` macros in a plugin go nowhere.
//!
//! ## Versioning
//! The SDK is semver'd by ABI: any host and plugin of the same major version work
//! together. A minor version only appends ops to [`abi::HostOps`] and methods to the
//! plugin traits, after the `#[sabi(last_prefix_field)]` item, each with a default body:
//! a plugin built against an older 1.x loads in a newer host (the host checks layouts
//! with the roles swapped, see the loader), and a plugin calling an op its host lacks
//! gets "host lacks op `x`" instead of a crash. To use an appended op and still run on
//! older hosts, compare [`Host::sdk_version`] with the version that appended it (each
//! appended op's docs say "Since 1.x") and keep a path without it: the first-party
//! AdamW calls `adamw_step` (1.2) where the host has it, and the same update op by op
//! where it does not; the first-party LoRA likewise with `add_low_rank` (1.3).
//!
//! The host reads the names and kinds of a library's plugins from a data-only manifest
//! that [`export_plugin!`] writes into the `.so` (see
//! [`export::MANIFEST_HEADER`]), and loads the library only when a pipeline uses one of
//! them.
//!
//! Loading a `.so` runs its code: load only plugins you trust, and pin their sha256 in
//! configs you share.

// abi_stable's `#[sabi_trait]` and `StableAbi` derives expand to unsafe code.
#[allow(unsafe_code, non_local_definitions)]
pub mod abi;
mod error;
pub mod export;
mod host;
mod method;
mod optimizer;
mod plugin;
mod stage;
mod targets;
pub mod tutorial;
// `StableAbi` derives expand to unsafe code.
#[allow(unsafe_code)]
mod types;
#[allow(unsafe_code)]
mod version;

pub use error::{from_abi, to_abi, AbiResult, Error, Result};
pub use host::{Host, Tensor};
pub use method::AdaptationMethod;
pub use optimizer::Optimizer;
pub use plugin::Plugin;
pub use stage::{Loss, Named, Stage};
pub use targets::{select_linear_sites, select_sites, site_matches, target_matches, validate_pattern};
pub use types::{
    AdamWStep, Attachment, CmpOp, Control, DType, Hooks, Init, InitKind, LogLevel, LossOutput, LowRank, MergeSupport,
    Metric, ModelInfo, ModelSpec, NamedTensor, ParamSlot, PluginInfo, PluginKind, SiteInfo, SiteKind, SiteRole,
    StepInfo, TensorHandle, UnaryOp,
};
pub use version::{SdkVersion, SDK_VERSION};

/// The JSON Schema derive plugins use for their configs.
pub use schemars;
pub use schemars::JsonSchema;

/// Crates the export macro expands to; not part of the API.
#[doc(hidden)]
pub mod reexports {
    pub use abi_stable;
    pub use inventory;
}

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        bail, select_linear_sites, select_sites, site_matches, target_matches, validate_pattern, AdamWStep,
        AdaptationMethod, Attachment, CmpOp, Control, DType, Error, Hooks, Host, Init, JsonSchema, LogLevel, Loss,
        LowRank, MergeSupport, Metric, ModelInfo, ModelSpec, Named, Optimizer, ParamSlot, Plugin, Result, SdkVersion,
        SiteInfo, SiteKind, SiteRole, Stage, StepInfo, Tensor, TensorHandle,
    };
}
