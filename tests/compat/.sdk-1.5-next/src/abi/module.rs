//! The root module: the one value a plugin library exports.

use super::plugin::{CallResult, HostRef, MethodBox, OptimizerBox, StageBox};
use crate::types::PluginInfo;
use crate::version::SdkVersion;
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RStr, RVec},
    StableAbi,
};

/// The function table of a plugin library. Built by [`export_plugin!`](crate::export_plugin).
///
/// `#[sabi(kind(Prefix))]` makes this a prefix type: a later SDK may append fields, and
/// a host reads only the fields the library actually has.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLibRef)))]
// A field missing from an older library is reported as an error by the accessor's
// caller, never read out of bounds.
#[sabi(missing_field(option))]
pub struct PluginLib {
    /// The SDK version the library was built against.
    pub sdk_version: extern "C" fn() -> SdkVersion,
    /// The plugins this library provides.
    pub manifest: extern "C" fn() -> RVec<PluginInfo>,
    /// Instantiates the adaptation method `name` from a JSON config.
    pub new_method: extern "C" fn(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> CallResult<MethodBox>,
    /// Instantiates the optimizer `name` from a JSON config.
    pub new_optimizer: extern "C" fn(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> CallResult<OptimizerBox>,
    /// Instantiates the stage objective `name` from a JSON config.
    // Fields up to and including this one are the SDK 1.0 layout; every 1.x library has
    // them. New fields go below, and hosts must treat them as optional.
    #[sabi(last_prefix_field)]
    pub new_stage: extern "C" fn(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> CallResult<StageBox>,
}

impl RootModule for PluginLibRef {
    declare_root_module_statics! {PluginLibRef}
    const BASE_NAME: &'static str = "stagecraft_plugin";
    const NAME: &'static str = "stagecraft plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
