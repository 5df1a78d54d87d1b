//! # Write your first adaptation plugin
//!
//! From an empty folder to a pipeline that trains with your own adaptation method, in
//! eight steps. The method is a low-rank update of linear layers, `y' = y + s·x·Dᵀ·Uᵀ`
//! (the core of LoRA); the plugin is called `quickstart`. You need Rust 1.85 or newer
//! and a `stagecraft` binary (`cargo build --release` in a checkout of the stagecraft
//! repository gives `target/release/stagecraft`; below it is on the `PATH`).
//!
//! ## 1. Create the crate
//!
//! ```sh
//! stagecraft plugin new quickstart --kind method --sdk ../stagecraft/adapters-sdk
//! cd quickstart
//! ```
//!
//! writes everything this tutorial builds (`--kind optimizer` and `--kind objective`
//! write the other two kinds). `--sdk` is the SDK's folder in your checkout, relative
//! to the new crate; without `--sdk` the crate depends on the project's git repository.
//! To follow along by hand instead, `cargo new --lib quickstart` and write the files
//! below.
//!
//! ## 2. `Cargo.toml`
//!
//! A plugin is a `cdylib`: a shared library the host loads at run time. The `rlib`
//! lets `cargo test` link it.
//!
//! ```toml
//! [package]
//! name = "quickstart"
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
//! [dev-dependencies]
//! serde_json = "1"
//!
//! # This crate is its own workspace, even inside the folder of another one.
//! [workspace]
//! ```
//!
//! `stagecraft-sdk` is not on crates.io: depend on it by path (a checkout of the
//! repository) or by git, `stagecraft-sdk = { git = "https://github.com/stagecraft-ml/stagecraft" }`
//! (add `rev = "<commit>"` to pin it). Any SDK 1.x works with any 1.x host.
//!
//! ## 3. The config
//!
//! Each adapter in a pipeline is a TOML table: `plugin` names the plugin, every other
//! key is the plugin's config. The host sends the table as JSON and the SDK
//! deserializes it into your config type. Deny unknown fields (a typo is then an
//! error naming the key) and derive [`JsonSchema`](crate::JsonSchema) (`stagecraft
//! plugin inspect` shows the schema). Rules across fields go in a `validate` that
//! names the field at fault.
//!
//! ```
//! use serde::Deserialize;
//! use stagecraft_sdk::prelude::*;
//!
//! /// The adapter's table in a pipeline (every key but `plugin`).
//! #[derive(Debug, Clone, Deserialize, JsonSchema)]
//! #[schemars(crate = "stagecraft_sdk::schemars")]
//! #[serde(deny_unknown_fields)]
//! pub struct QuickstartConfig {
//!     /// Linear sites to adapt: names (`q_proj`), globs, `re:` regexes or roles.
//!     pub targets: Vec<String>,
//!     /// Rank of the update. Default 4; > 0.
//!     #[serde(default = "default_r")]
//!     pub r: usize,
//!     /// The update is scaled by `alpha / r`. Default 8.
//!     #[serde(default = "default_alpha")]
//!     pub alpha: f64,
//! }
//!
//! fn default_r() -> usize {
//!     4
//! }
//!
//! fn default_alpha() -> f64 {
//!     8.0
//! }
//!
//! impl QuickstartConfig {
//!     /// Checks every field; the error names the field at fault.
//!     pub fn validate(&self) -> Result<()> {
//!         if self.targets.is_empty() {
//!             bail!("targets must name at least one site pattern");
//!         }
//!         for t in &self.targets {
//!             validate_pattern(t)?;
//!         }
//!         if self.r == 0 {
//!             bail!("r must be > 0, got 0");
//!         }
//!         Ok(())
//!     }
//!
//!     /// The factor `s` the update is multiplied by.
//!     pub fn scaling(&self) -> f64 {
//!         self.alpha / self.r as f64
//!     }
//! }
//!
//! // What the crate's unit tests check: defaults, and errors that name the field.
//! let cfg: QuickstartConfig = serde_json::from_str(r#"{ "targets": ["q_proj"] }"#).unwrap();
//! cfg.validate().unwrap();
//! assert_eq!(cfg.scaling(), 2.0);
//! let zero: QuickstartConfig = serde_json::from_str(r#"{ "targets": ["q_proj"], "r": 0 }"#).unwrap();
//! assert_eq!(zero.validate().unwrap_err().0, "r must be > 0, got 0");
//! let typo = serde_json::from_str::<QuickstartConfig>(r#"{ "targets": ["q_proj"], "rank": 4 }"#);
//! assert!(typo.unwrap_err().to_string().contains("unknown field `rank`"));
//! ```
//!
//! ## 4. The plugin
//!
//! [`Plugin`](crate::Plugin) gives the name pipelines use, a description, a version
//! and the config type; `new` builds one instance per adapter in the config.
//! [`AdaptationMethod`](crate::AdaptationMethod) is called in this order (its docs
//! list the whole lifecycle):
//!
//! 1. `select_sites`, once, with every site of the model: pick the linear sites the
//!    targets match ([`select_sites`](crate::select_sites) does it, and errors on a
//!    pattern that matches nothing);
//! 2. `init_site`, once per picked site: create its trainable parameters with
//!    [`Host::new_param`](crate::Host::new_param) (`U` starts at zero, so a fresh
//!    adapter changes nothing);
//! 3. `forward`, at every forward pass, at each site: return the site's new output.
//!    Tensors are handles; every op runs in the host, on its device, under its autograd;
//! 4. `merge`/`unmerge`, when a pipeline folds the adapter into the base weights
//!    (`handoff = { adapters = "merge" }`); `merge_support` says up front that it can.
//!
//! [`export_plugin!`](crate::export_plugin) makes the crate a plugin library that
//! provides the plugin.
//!
//! ```
//! # use serde::Deserialize;
//! use stagecraft_sdk::prelude::*;
//! use std::collections::HashMap;
//! # #[derive(Debug, Clone, Deserialize, JsonSchema)]
//! # #[schemars(crate = "stagecraft_sdk::schemars")]
//! # #[serde(deny_unknown_fields)]
//! # pub struct QuickstartConfig {
//! #     pub targets: Vec<String>,
//! #     #[serde(default = "default_r")]
//! #     pub r: usize,
//! #     #[serde(default = "default_alpha")]
//! #     pub alpha: f64,
//! # }
//! # fn default_r() -> usize { 4 }
//! # fn default_alpha() -> f64 { 8.0 }
//! # impl QuickstartConfig {
//! #     pub fn validate(&self) -> Result<()> {
//! #         if self.r == 0 { bail!("r must be > 0, got 0"); }
//! #         Ok(())
//! #     }
//! #     pub fn scaling(&self) -> f64 { self.alpha / self.r as f64 }
//! # }
//!
//! /// The parameters of one attached site: `D` (`[r, in]`) and `U` (`[out, r]`).
//! #[derive(Debug, Clone, Copy)]
//! struct Factors {
//!     down: TensorHandle,
//!     up: TensorHandle,
//! }
//!
//! /// The adapter: one pair of factors per attached site.
//! pub struct Quickstart {
//!     cfg: QuickstartConfig,
//!     sites: HashMap<String, Factors>,
//! }
//!
//! impl Quickstart {
//!     fn factors(&self, site: &SiteInfo) -> Result<Factors> {
//!         match self.sites.get(site.name.as_str()) {
//!             Some(f) => Ok(*f),
//!             None => bail!("{}: site `{}` was not initialized", Self::NAME, site.name),
//!         }
//!     }
//!
//!     /// `s·U·D`, `[out, in]`: the update as a change of the base weight.
//!     fn delta_weight<'h>(&self, host: Host<'h>, f: Factors) -> Result<Tensor<'h>> {
//!         let product = host.tensor(f.up).matmul(&host.tensor(f.down))?;
//!         product.affine(self.cfg.scaling(), 0.0)
//!     }
//! }
//!
//! impl Plugin for Quickstart {
//!     const NAME: &'static str = "quickstart";
//!     const DESCRIPTION: &'static str = "a low-rank update of linear layers (LoRA-like)";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     type Config = QuickstartConfig;
//!
//!     fn new(cfg: QuickstartConfig, _host: Host<'_>) -> Result<Self> {
//!         cfg.validate()?;
//!         Ok(Quickstart { cfg, sites: HashMap::new() })
//!     }
//! }
//!
//! impl AdaptationMethod for Quickstart {
//!     fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
//!         select_sites(host, &self.cfg.targets, sites, &[SiteKind::LINEAR], Hooks::POST)
//!     }
//!
//!     fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
//!         let &[fan_in, fan_out] = site.dims.as_slice() else {
//!             bail!("{}: site `{}` has dims {:?}, expected [in, out]", Self::NAME, site.name, site.dims);
//!         };
//!         let r = self.cfg.r;
//!         let down_name = format!("{}.down", site.name);
//!         let down = host.new_param(&down_name, &[r, fan_in], Init::kaiming_uniform(fan_in))?;
//!         let up = host.new_param(&format!("{}.up", site.name), &[fan_out, r], Init::ZEROS)?;
//!         let factors = Factors { down: down.handle(), up: up.handle() };
//!         self.sites.insert(site.name.to_string(), factors);
//!         Ok(())
//!     }
//!
//!     fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
//!         let f = self.factors(site)?;
//!         // [.., in] x [in, r] x [r, out]: a 2-d right-hand side broadcasts over x's batch.
//!         let low = x.matmul(&host.tensor(f.down).t()?)?;
//!         let delta = low.matmul(&host.tensor(f.up).t()?)?.affine(self.cfg.scaling(), 0.0)?;
//!         y.add(&delta)
//!     }
//!
//!     fn merge_support(&self) -> MergeSupport {
//!         MergeSupport::YES
//!     }
//!
//!     fn merge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
//!         weight.add(&self.delta_weight(host, self.factors(site)?)?)
//!     }
//!
//!     fn unmerge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
//!         weight.sub(&self.delta_weight(host, self.factors(site)?)?)
//!     }
//! }
//!
//! stagecraft_sdk::export_plugin! {
//!     id: quickstart,
//!     methods: [Quickstart],
//!     optimizers: [],
//!     stages: [],
//! }
//! # fn main() {
//! #     assert_eq!(Quickstart::NAME, "quickstart");
//! # }
//! ```
//!
//! `forward` composes the update from `matmul`, `affine` and `add`: each is a graph
//! node with a full-size result. Hosts built against SDK 1.3 or later also have the
//! whole update as one op, `host.add_low_rank(&y, &x, &down, &up, scaling)` (on the
//! CPU two graph nodes and no full-size temporaries; the same values up to float
//! rounding). To keep the plugin loadable in older hosts, call it only when
//! `host.sdk_version() >= SdkVersion::new(1, 3, 0)` and keep the composition
//! otherwise, as the first-party LoRA does (`plugins/lora/src/lora.rs`).
//!
//! Since `forward` computes exactly `y + s·(x·Dᵀ)·Uᵀ`, the plugin can also declare it
//! (SDK 1.4): the host then computes the update inside its fused decoder layers
//! instead of calling `forward` at that site, with the factors' gradients as from
//! `forward` (on the CPU, no graph nodes and no full-size pass of its own: the
//! update's product joins the layer's). Hosts older than 1.4 never ask, and keep
//! calling `forward`:
//!
//! ```ignore
//! fn low_rank(&self, site: &SiteInfo) -> Option<LowRank> {
//!     let f = self.sites.get(site.name.as_str())?;
//!     Some(LowRank { a: f.down, b: f.up, scale: self.cfg.scaling() })
//! }
//! ```
//!
//! ## 5. Build and test
//!
//! ```sh
//! cargo test              # the config tests of step 3
//! cargo build --release   # target/release/libquickstart.so
//! ```
//!
//! ## 6. Inspect
//!
//! ```sh
//! stagecraft plugin inspect target/release/libquickstart.so
//! ```
//!
//! loads the library the way a pipeline would (first in a child process, so a crash
//! is one line) and prints its plugins, their config schemas (from the doc comments
//! of the config's fields), its sha256 and whether its SDK version is compatible
//! with the host's:
//!
//! ```text
//! library   quickstart
//! file      /home/you/quickstart/target/release/libquickstart.so
//! sha256    79e7ce8006a0cbaec0b1ffa654550ae57671ac7063f59f308afe429fd6f21586
//! sdk       1.4.0 (host 1.4.0)
//!
//! method quickstart 0.1.0
//!   a low-rank update of linear layers (LoRA-like)
//!   config schema:
//!     {
//!       "$schema": "https://json-schema.org/draft/2020-12/schema",
//!       "additionalProperties": false,
//!       "description": "The adapter's table in a pipeline (every key but `plugin`).",
//!       ...
//! ```
//!
//! ## 7. A pipeline
//!
//! `pipeline.toml` (written by `plugin new`) pretrains a tiny Llama on the built-in
//! synthetic arithmetic text, then adapts it to addition with your plugin on the
//! attention projections:
//!
//! ```toml
//! [run]
//! name = "quickstart"
//! seed = 7
//!
//! [model]
//! arch = "llama"
//! hidden_size = 32
//! num_layers = 2
//! num_heads = 2
//! tokenizer = "bytes"
//!
//! [plugins]
//! paths = ["target/release"]
//!
//! [[stages]]
//! name = "pretrain"
//! objective = "causal_lm"
//! data = { train = "synthetic:arith_text?n=400&digits=1", eval = "synthetic:arith_text?n=40&digits=1&seed=1" }
//! optimizer = { name = "adamw", lr = 3e-3, weight_decay = 0.0 }
//! max_steps = 20
//! batch_size = 16
//! seq_len = 32
//!
//! [[stages]]
//! name = "adapt"
//! objective = "completion"
//! data = { train = "synthetic:add?n=300&digits=1", eval = "synthetic:add?n=40&digits=1&seed=2" }
//! optimizer = { name = "adamw", lr = 5e-3, weight_decay = 0.0 }
//! adapters = [{ plugin = "quickstart", targets = ["q_proj", "v_proj"], r = 4, alpha = 8 }]
//! max_steps = 20
//! batch_size = 16
//! seq_len = 16
//! ```
//!
//! ## 8. Run
//!
//! The host finds plugin libraries in the folders of the pipeline's `[plugins] paths`
//! (relative to the pipeline file; the generated `pipeline.toml` names
//! `target/release`), of `STAGECRAFT_PLUGIN_PATH` (`:`-separated) and in `./plugins`:
//!
//! ```sh
//! stagecraft run pipeline.toml --check   # the plan, trains nothing
//! stagecraft run pipeline.toml
//! ```
//!
//! `--check` loads the plugin, checks its config and its targets against the model's
//! sites, and trains nothing. The run takes about a second: it trains both stages, your
//! adapter in the second, and writes `runs/quickstart/<time>/` (metrics, checkpoints
//! with your parameters under `<site>.down` and `<site>.up`, a report). It ends with:
//!
//! ```text
//! stage pretrain: 20 steps, ended by its step budget
//! stage adapt: 20 steps, ended by its step budget
//! main score   pretrain (loss)  adapt (exact_match)
//! pretrain              3.5420                    -
//! adapt       3.5451 (+0.0031)               0.0000
//! forgetting            0.0031               0.0000
//!
//! run directory: runs/quickstart/20261130-171237 (0.6s)
//! ```
//!
//! Twenty steps of a two-layer model check that everything works together; they are
//! not a result (exact match stays at 0). Scale `[model]` and `max_steps` up for one.
//!
//! ## Where next
//!
//! - A config error is yours to make clear: `stagecraft run` prints what `validate`
//!   returns, naming the plugin.
//! - [`Host`](crate::Host) and [`Tensor`](crate::Tensor) list the ops; ops added in
//!   a later SDK 1.x say "Since 1.x" (see the crate docs on versioning).
//! - `stagecraft plugin new NAME --kind optimizer` (SGD with momentum) and
//!   `--kind objective` (label-smoothed next-token cross-entropy) start the other two
//!   kinds; [`Optimizer`](crate::Optimizer) and [`Stage`](crate::Stage) document their
//!   lifecycles.
//! - The first-party plugins in the repository's `plugins/` folder are complete
//!   examples of each kind.
