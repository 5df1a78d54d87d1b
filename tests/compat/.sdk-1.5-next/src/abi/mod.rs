//! The wire level: `#[sabi_trait]` traits and the root module, checked by abi_stable
//! when a library loads. Hosts use this module directly; plugin authors rarely need it.

mod host;
mod module;
mod plugin;

pub use host::{host_lacks, HostOps, HostOps_TO, OpResult};
pub use module::{PluginLib, PluginLibRef, PluginLib_Prefix};
pub use plugin::{
    plugin_lacks, CallResult, HostObj, HostRef, MethodAbi, MethodAbi_TO, MethodBox, OptimizerAbi, OptimizerAbi_TO,
    OptimizerBox, StageAbi, StageAbi_TO, StageBox,
};
