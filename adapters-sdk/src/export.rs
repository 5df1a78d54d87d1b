//! The glue [`export_plugin!`](crate::export_plugin) expands to: adapters from the
//! author traits to the ABI traits, with every entry point behind `catch_unwind`.
//!
//! A panic must never cross `extern "C"` (it aborts the process), so each call into
//! plugin code runs in [`guard`], which turns a panic into an error naming the plugin
//! and the method.

use crate::abi::{
    CallResult, HostRef, MethodAbi, MethodAbi_TO, MethodBox, OptimizerAbi, OptimizerAbi_TO, OptimizerBox, PluginLibRef,
    StageAbi, StageAbi_TO, StageBox,
};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::method::AdaptationMethod;
use crate::optimizer::Optimizer;
use crate::plugin::Plugin;
use crate::stage::{Named, Stage};
use crate::types::{
    Attachment, Control, LossOutput, LowRank, MergeSupport, Metric, ModelInfo, NamedTensor, ParamSlot, PluginInfo,
    PluginKind, SiteInfo, StepInfo, TensorHandle,
};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RString, RVec},
};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a panic said: its `&str` or `String` payload (the host words its own panics
/// with it too).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// Runs plugin code, turning an error or a panic into the ABI's error value.
pub fn guard<T>(plugin: &str, method: &str, f: impl FnOnce() -> Result<T>) -> CallResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(RString::from(e.0)),
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            RResult::RErr(RString::from(format!("plugin `{plugin}` panicked in `{method}`: {msg}")))
        }
    }
}

/// Parses a plugin's JSON config, naming the plugin in the error.
pub fn parse_config<P: Plugin>(config: &str) -> Result<P::Config> {
    let text = if config.trim().is_empty() { "{}" } else { config };
    serde_json::from_str(text).map_err(|e| Error(format!("config of plugin `{}`: {e}", P::NAME)))
}

/// The manifest entry of one plugin.
pub fn info<P: Plugin>(kind: PluginKind) -> PluginInfo {
    let schema = schemars::schema_for!(P::Config);
    PluginInfo {
        name: P::NAME.into(),
        kind,
        version: P::VERSION.into(),
        description: P::DESCRIPTION.into(),
        config_schema: serde_json::to_string(&schema).unwrap_or_default().into(),
    }
}

/// Checks a registered name: lowercase snake_case.
pub const fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

// ---- adaptation methods ---------------------------------------------------------

struct MethodAdapter<M> {
    inner: M,
    sites: Vec<SiteInfo>,
}

impl<M> MethodAdapter<M> {
    fn site(&self, i: u32) -> Result<&SiteInfo> {
        self.sites.get(i as usize).ok_or_else(|| Error(format!("no site with index {i}")))
    }
}

impl<M: AdaptationMethod> MethodAbi for MethodAdapter<M> {
    fn select_sites(&mut self, host: HostRef<'_>, sites: RSlice<'_, SiteInfo>) -> CallResult<RVec<Attachment>> {
        guard(M::NAME, "select_sites", || {
            self.sites = sites.to_vec();
            let picked = self.inner.select_sites(Host::new(host), &self.sites)?;
            for a in &picked {
                if a.site as usize >= self.sites.len() {
                    return Err(Error(format!("selected site index {} of {}", a.site, self.sites.len())));
                }
            }
            Ok(picked.into())
        })
    }
    fn init_site(&mut self, host: HostRef<'_>, site: u32) -> CallResult<()> {
        guard(M::NAME, "init_site", || {
            let info = self.site(site)?.clone();
            self.inner.init_site(Host::new(host), &info)
        })
    }
    fn forward(
        &self,
        host: HostRef<'_>,
        site: u32,
        pre: bool,
        input: TensorHandle,
        output: TensorHandle,
    ) -> CallResult<TensorHandle> {
        guard(M::NAME, if pre { "forward_pre" } else { "forward" }, || {
            let h = Host::new(host);
            let info = self.site(site)?;
            let out = if pre {
                self.inner.forward_pre(h, info, h.tensor(input))?
            } else {
                self.inner.forward(h, info, h.tensor(input), h.tensor(output))?
            };
            Ok(out.handle())
        })
    }
    fn merge(&self, host: HostRef<'_>, site: u32, weight: TensorHandle) -> CallResult<TensorHandle> {
        guard(M::NAME, "merge", || {
            let h = Host::new(host);
            Ok(self.inner.merge(h, self.site(site)?, h.tensor(weight))?.handle())
        })
    }
    fn unmerge(&self, host: HostRef<'_>, site: u32, weight: TensorHandle) -> CallResult<TensorHandle> {
        guard(M::NAME, "unmerge", || {
            let h = Host::new(host);
            Ok(self.inner.unmerge(h, self.site(site)?, h.tensor(weight))?.handle())
        })
    }
    fn merge_support(&self) -> MergeSupport {
        match guard(M::NAME, "merge_support", || Ok(self.inner.merge_support())) {
            RResult::ROk(m) => m,
            RResult::RErr(_) => MergeSupport::UNKNOWN,
        }
    }
    fn merge_bias(&self, host: HostRef<'_>, site: u32, bias: TensorHandle) -> CallResult<TensorHandle> {
        guard(M::NAME, "merge_bias", || {
            let h = Host::new(host);
            Ok(self.inner.merge_bias(h, self.site(site)?, h.tensor(bias))?.handle())
        })
    }
    fn unmerge_bias(&self, host: HostRef<'_>, site: u32, bias: TensorHandle) -> CallResult<TensorHandle> {
        guard(M::NAME, "unmerge_bias", || {
            let h = Host::new(host);
            Ok(self.inner.unmerge_bias(h, self.site(site)?, h.tensor(bias))?.handle())
        })
    }
    fn begin_forward(&self, host: HostRef<'_>) -> CallResult<()> {
        guard(M::NAME, "begin_forward", || self.inner.begin_forward(Host::new(host)))
    }
    fn kv_prefix_len(&self) -> u32 {
        match guard(M::NAME, "kv_prefix_len", || Ok(self.inner.kv_prefix_len())) {
            RResult::ROk(n) => u32::try_from(n).unwrap_or(u32::MAX),
            RResult::RErr(_) => 0,
        }
    }
    fn low_rank(&self, site: u32) -> ROption<LowRank> {
        // A plugin that fails here declares nothing: the host calls `forward`, which
        // reports the failure where it matters.
        match guard(M::NAME, "low_rank", || Ok(self.inner.low_rank(self.site(site)?))) {
            RResult::ROk(declared) => declared.into(),
            RResult::RErr(_) => ROption::RNone,
        }
    }
}

/// Builds an adaptation method instance from its JSON config.
pub fn new_method<M: AdaptationMethod>(config: &str, host: HostRef<'_>) -> Result<MethodBox> {
    let cfg = parse_config::<M>(config)?;
    let inner = M::new(cfg, Host::new(host))?;
    Ok(MethodAbi_TO::from_value(MethodAdapter { inner, sites: Vec::new() }, TD_Opaque))
}

// ---- optimizers -----------------------------------------------------------------

struct OptimizerAdapter<O>(O);

impl<O: Optimizer> OptimizerAbi for OptimizerAdapter<O> {
    fn init(&mut self, host: HostRef<'_>, params: RSlice<'_, ParamSlot>) -> CallResult<()> {
        guard(O::NAME, "init", || self.0.init(Host::new(host), params.as_slice()))
    }
    fn step(&mut self, host: HostRef<'_>, params: RSlice<'_, ParamSlot>, step: u64) -> CallResult<()> {
        guard(O::NAME, "step", || self.0.step(Host::new(host), params.as_slice(), step))
    }
}

/// Builds an optimizer instance from its JSON config.
pub fn new_optimizer<O: Optimizer>(config: &str, host: HostRef<'_>) -> Result<OptimizerBox> {
    let cfg = parse_config::<O>(config)?;
    let inner = O::new(cfg, Host::new(host))?;
    Ok(OptimizerAbi_TO::from_value(OptimizerAdapter(inner), TD_Opaque))
}

// ---- stages ---------------------------------------------------------------------

struct StageAdapter<S>(S);

impl<S: Stage> StageAbi for StageAdapter<S> {
    fn init(&mut self, host: HostRef<'_>, model: &ModelInfo) -> CallResult<()> {
        guard(S::NAME, "init", || self.0.init(Host::new(host), model))
    }
    fn required_outputs(&self) -> RVec<RString> {
        match guard(S::NAME, "required_outputs", || Ok(self.0.required_outputs())) {
            RResult::ROk(v) => v.into_iter().map(RString::from).collect(),
            RResult::RErr(_) => RVec::new(),
        }
    }
    fn compute(
        &mut self,
        host: HostRef<'_>,
        outputs: RSlice<'_, NamedTensor>,
        batch: RSlice<'_, NamedTensor>,
    ) -> CallResult<LossOutput> {
        guard(S::NAME, "compute", || {
            let h = Host::new(host);
            let out = Named::new(outputs.as_slice(), h, "model output");
            let b = Named::new(batch.as_slice(), h, "batch");
            let loss = self.0.compute(h, out, b)?;
            Ok(LossOutput {
                loss: loss.loss.handle(),
                per_example: loss.per_example.map_or(TensorHandle::NONE, |t| t.handle()),
                metrics: loss.metrics.into(),
            })
        })
    }
    fn on_step_end(&mut self, host: HostRef<'_>, info: &StepInfo) -> CallResult<Control> {
        guard(S::NAME, "on_step_end", || self.0.on_step_end(Host::new(host), info))
    }
    fn on_eval_end(&mut self, host: HostRef<'_>, metrics: RSlice<'_, Metric>) -> CallResult<Control> {
        guard(S::NAME, "on_eval_end", || self.0.on_eval_end(Host::new(host), metrics.as_slice()))
    }
}

/// Builds a stage instance from its JSON config.
pub fn new_stage<S: Stage>(config: &str, host: HostRef<'_>) -> Result<StageBox> {
    let cfg = parse_config::<S>(config)?;
    let inner = S::new(cfg, Host::new(host))?;
    Ok(StageAbi_TO::from_value(StageAdapter(inner), TD_Opaque))
}

/// The first line of a library's plugin manifest.
///
/// [`export_plugin!`](crate::export_plugin) exports, besides the library header, a
/// data-only static `stagecraft_manifest_<id>`: this line, then one line
/// `<kind> <name>` per plugin (`method lora`). A host reads it from the file's bytes to
/// learn which plugins a library provides without loading it (running none of its
/// code), so it opens only the libraries a pipeline names.
pub const MANIFEST_HEADER: &str = "stagecraft-manifest 1\n";

/// Prefix of the symbol of a library's manifest: `stagecraft_manifest_<id>`.
pub const MANIFEST_SYMBOL_PREFIX: &str = "stagecraft_manifest_";

/// The total length of `parts` (the size of the manifest static).
pub const fn manifest_len(parts: &[&str]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

/// `parts` one after the other, as the bytes of the manifest static; `N` must be
/// [`manifest_len`] of `parts` (checked at compile time).
pub const fn manifest_bytes<const N: usize>(parts: &[&str]) -> [u8; N] {
    assert!(manifest_len(parts) == N, "manifest length");
    let mut out = [0u8; N];
    let (mut i, mut at) = (0, 0);
    while i < parts.len() {
        let b = parts[i].as_bytes();
        let mut j = 0;
        while j < b.len() {
            out[at] = b[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// A plugin library compiled into the host (rather than loaded from a `.so`).
///
/// [`export_plugin!`](crate::export_plugin) submits one per library; a host that links
/// the library's crate finds it with `inventory::iter::<BuiltinLibrary>`.
pub struct BuiltinLibrary {
    /// The library id given to `export_plugin!`.
    pub id: &'static str,
    /// Its root module.
    pub lib: fn() -> PluginLibRef,
}

inventory::collect!(BuiltinLibrary);

/// The error for a name the library does not provide.
pub fn unknown(lib: &str, kind: &str, name: &str, have: &[&str]) -> Error {
    Error(format!(
        "library `{lib}` has no {kind} named `{name}` (it has: {})",
        if have.is_empty() { "none".to_string() } else { have.join(", ") }
    ))
}

/// Exports a plugin library: its root module for loading as a `.so`, and a
/// [`BuiltinLibrary`] entry for hosts that link it statically.
///
/// ```ignore
/// stagecraft_sdk::export_plugin! {
///     id: my_methods,             // unique library id (snake_case)
///     methods: [MyLora],          // types implementing AdaptationMethod
///     optimizers: [],             // types implementing Optimizer
///     stages: [],                 // types implementing Stage
/// }
/// ```
///
/// The `.so` exports two symbols: `stagecraft_plugin_<id>`, an abi_stable library header
/// that the host checks for layout compatibility before it runs any plugin code, and
/// `stagecraft_manifest_<id>`, the names and kinds of its plugins as plain bytes (see
/// [`MANIFEST_HEADER`](crate::export::MANIFEST_HEADER)), which the host reads without
/// loading the library.
#[macro_export]
macro_rules! export_plugin {
    (
        id: $id:ident,
        methods: [$($m:ty),* $(,)?],
        optimizers: [$($o:ty),* $(,)?],
        stages: [$($s:ty),* $(,)?] $(,)?
    ) => {
        #[doc(hidden)]
        #[allow(missing_docs)]
        // The library header is an exported static built by an unsafe constructor.
        #[allow(unsafe_code)]
        pub mod __stagecraft_plugin {
            #[allow(unused_imports)]
            use super::*;
            use $crate::abi::{CallResult, HostRef, MethodBox, OptimizerBox, PluginLib, PluginLibRef, StageBox};
            use $crate::reexports::abi_stable::{
                library::{CheckTypeLayout, LibHeader, RootModuleResult},
                prefix_type::PrefixTypeTrait,
                std_types::{RStr, RVec},
            };
            use $crate::{Plugin as _, PluginInfo, PluginKind};

            const _: () = {
                $( assert!($crate::export::valid_name(<$m as $crate::Plugin>::NAME), "plugin names are lowercase snake_case"); )*
                $( assert!($crate::export::valid_name(<$o as $crate::Plugin>::NAME), "plugin names are lowercase snake_case"); )*
                $( assert!($crate::export::valid_name(<$s as $crate::Plugin>::NAME), "plugin names are lowercase snake_case"); )*
            };

            extern "C" fn sdk_version() -> $crate::SdkVersion {
                $crate::SDK_VERSION
            }

            extern "C" fn manifest() -> RVec<PluginInfo> {
                let r = $crate::export::guard(stringify!($id), "manifest", || {
                    #[allow(unused_mut)]
                    let mut v: Vec<PluginInfo> = Vec::new();
                    $( v.push($crate::export::info::<$m>(PluginKind::METHOD)); )*
                    $( v.push($crate::export::info::<$o>(PluginKind::OPTIMIZER)); )*
                    $( v.push($crate::export::info::<$s>(PluginKind::STAGE)); )*
                    Ok(v)
                });
                r.map(RVec::from).unwrap_or_default()
            }

            extern "C" fn new_method(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> CallResult<MethodBox> {
                $crate::export::guard(stringify!($id), "new_method", || {
                    $( if name.as_str() == <$m as $crate::Plugin>::NAME {
                        return $crate::export::new_method::<$m>(config.as_str(), host);
                    } )*
                    Err($crate::export::unknown(stringify!($id), "adaptation method", name.as_str(), &[$(<$m as $crate::Plugin>::NAME),*]))
                })
            }

            extern "C" fn new_optimizer(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> CallResult<OptimizerBox> {
                $crate::export::guard(stringify!($id), "new_optimizer", || {
                    $( if name.as_str() == <$o as $crate::Plugin>::NAME {
                        return $crate::export::new_optimizer::<$o>(config.as_str(), host);
                    } )*
                    Err($crate::export::unknown(stringify!($id), "optimizer", name.as_str(), &[$(<$o as $crate::Plugin>::NAME),*]))
                })
            }

            extern "C" fn new_stage(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> CallResult<StageBox> {
                $crate::export::guard(stringify!($id), "new_stage", || {
                    $( if name.as_str() == <$s as $crate::Plugin>::NAME {
                        return $crate::export::new_stage::<$s>(config.as_str(), host);
                    } )*
                    Err($crate::export::unknown(stringify!($id), "stage", name.as_str(), &[$(<$s as $crate::Plugin>::NAME),*]))
                })
            }

            /// The library's root module.
            pub fn plugin_lib() -> PluginLibRef {
                static LIB: ::std::sync::OnceLock<PluginLibRef> = ::std::sync::OnceLock::new();
                *LIB.get_or_init(|| {
                    PluginLib { sdk_version, manifest, new_method, new_optimizer, new_stage }.leak_into_prefix()
                })
            }

            extern "C" fn root_module_loader() -> RootModuleResult {
                $crate::reexports::abi_stable::library::__call_root_module_loader(plugin_lib)
            }

            /// The library header the host looks up (one per library, named by its id,
            /// so several plugin crates can be linked into one host binary).
            #[unsafe(export_name = concat!("stagecraft_plugin_", stringify!($id)))]
            pub static LIB_HEADER: LibHeader = {
                // SAFETY: `root_module_loader` returns the root module of type `PluginLibRef`,
                // the type named here, which is what `from_constructor` requires.
                unsafe { LibHeader::from_constructor::<PluginLibRef>(root_module_loader, CheckTypeLayout::Yes) }
            };

            const MANIFEST_PARTS: &[&str] = &[
                $crate::export::MANIFEST_HEADER,
                $( "method ", <$m as $crate::Plugin>::NAME, "\n", )*
                $( "optimizer ", <$o as $crate::Plugin>::NAME, "\n", )*
                $( "stage ", <$s as $crate::Plugin>::NAME, "\n", )*
            ];

            /// The names and kinds of the library's plugins, as data: the host reads
            /// them from the file without loading it.
            #[unsafe(export_name = concat!("stagecraft_manifest_", stringify!($id)))]
            pub static MANIFEST: [u8; $crate::export::manifest_len(MANIFEST_PARTS)] =
                $crate::export::manifest_bytes(MANIFEST_PARTS);

            $crate::reexports::inventory::submit! {
                $crate::export::BuiltinLibrary { id: stringify!($id), lib: plugin_lib }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_bytes_are_the_parts_in_order() {
        const PARTS: &[&str] = &[MANIFEST_HEADER, "method ", "lora", "\n", "stage ", "causal_lm", "\n"];
        static BYTES: [u8; manifest_len(PARTS)] = manifest_bytes(PARTS);
        assert_eq!(std::str::from_utf8(&BYTES), Ok("stagecraft-manifest 1\nmethod lora\nstage causal_lm\n"));
    }
}
