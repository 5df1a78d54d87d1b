//! The three plugin traits as they cross the ABI.
//!
//! Plugin authors do not implement these: they implement the friendlier Rust traits
//! [`AdaptationMethod`](crate::AdaptationMethod), [`Optimizer`](crate::Optimizer) and
//! [`Stage`](crate::Stage), and [`export_plugin!`](crate::export_plugin) wraps them
//! into these objects (catching panics at every entry point). The host calls these.
//!
//! Versioning: as for [`HostOps`](super::HostOps), the methods up to the
//! `#[sabi(last_prefix_field)]` one are the prefix every 1.x plugin has; the methods
//! after it are optional, each with a default body (a "plugin lacks X" error, or a
//! neutral answer), so a newer host can drive a plugin built against an older SDK 1.x.
//! The default bodies run in the host, on the plugin's behalf.

use super::host::HostOps_TO;
use crate::types::{
    Attachment, Control, LossOutput, LowRank, MergeSupport, Metric, ModelInfo, NamedTensor, ParamSlot, SiteInfo, StepInfo,
    TensorHandle,
};
use abi_stable::{
    sabi_trait,
    std_types::{RArc, RBox, ROption, RResult, RSlice, RString, RVec},
};

/// The host op table object. The host keeps one per plugin instance (so it knows who
/// is calling) and lends it to every call.
pub type HostObj = HostOps_TO<'static, RArc<()>>;

/// The host op table as a plugin receives it on every call.
pub type HostRef<'a> = &'a HostObj;

/// What a plugin entry point returns across the ABI.
pub type CallResult<T> = RResult<T, RString>;

/// An adaptation method instance (one per adapter in a config).
#[sabi_trait]
pub trait MethodAbi {
    /// Chooses sites from the model's list (see [`crate::AdaptationMethod::select_sites`]).
    fn select_sites(&mut self, host: HostRef<'_>, sites: RSlice<'_, SiteInfo>) -> CallResult<RVec<Attachment>>;
    /// Creates the parameters for one attached site.
    fn init_site(&mut self, host: HostRef<'_>, site: u32) -> CallResult<()>;
    /// Runs a hook at a site: `output` is [`TensorHandle::NONE`] for a pre-hook.
    // The SDK 1.0 prefix ends here; methods below are optional (default bodies).
    #[sabi(last_prefix_field)]
    fn forward(
        &self,
        host: HostRef<'_>,
        site: u32,
        pre: bool,
        input: TensorHandle,
        output: TensorHandle,
    ) -> CallResult<TensorHandle>;
    /// The merged weight of a linear site given its base weight.
    fn merge(&self, host: HostRef<'_>, site: u32, weight: TensorHandle) -> CallResult<TensorHandle> {
        let _ = (host, site, weight);
        plugin_lacks("merge")
    }
    /// The inverse of `merge`.
    fn unmerge(&self, host: HostRef<'_>, site: u32, weight: TensorHandle) -> CallResult<TensorHandle> {
        let _ = (host, site, weight);
        plugin_lacks("unmerge")
    }
    // ---- appended in 1.1 ----
    /// Whether `merge` can fold this instance into the base weights. A plugin without
    /// it does not say. (Since 1.1.)
    fn merge_support(&self) -> MergeSupport {
        MergeSupport::UNKNOWN
    }
    /// The merged bias of a linear site given its base bias. A plugin without it leaves
    /// the bias as it is (what LoRA-like methods need). (Since 1.1.)
    fn merge_bias(&self, host: HostRef<'_>, site: u32, bias: TensorHandle) -> CallResult<TensorHandle> {
        let _ = (host, site);
        RResult::ROk(bias)
    }
    /// The inverse of `merge_bias`. (Since 1.1.)
    fn unmerge_bias(&self, host: HostRef<'_>, site: u32, bias: TensorHandle) -> CallResult<TensorHandle> {
        let _ = (host, site);
        RResult::ROk(bias)
    }
    /// Called once at the start of every model forward pass, before any site hook.
    /// A plugin without it does nothing. (Since 1.1.)
    fn begin_forward(&self, host: HostRef<'_>) -> CallResult<()> {
        let _ = host;
        RResult::ROk(())
    }
    /// How many key/value positions this instance prepends at attention key/value
    /// sites (prefix tuning). Real tokens then take positions after them, as they
    /// would after a cache of that length. A plugin without it prepends none. (Since 1.1.)
    fn kv_prefix_len(&self) -> u32 {
        0
    }
    // ---- appended in 1.4 ----
    /// What the instance adds at one of its post-hooked linear sites, when that is a
    /// low-rank update: the host may then compute it instead of calling `forward`
    /// there. A plugin without it declares none. (Since 1.4.)
    fn low_rank(&self, site: u32) -> ROption<LowRank> {
        let _ = site;
        ROption::RNone
    }
}

/// An optimizer instance (one per stage).
#[sabi_trait]
pub trait OptimizerAbi {
    /// Creates state buffers for these parameters.
    fn init(&mut self, host: HostRef<'_>, params: RSlice<'_, ParamSlot>) -> CallResult<()>;
    /// Applies one update.
    // The SDK 1.0 prefix ends here.
    #[sabi(last_prefix_field)]
    fn step(&mut self, host: HostRef<'_>, params: RSlice<'_, ParamSlot>, step: u64) -> CallResult<()>;
}

/// A stage objective instance (one per stage).
#[sabi_trait]
pub trait StageAbi {
    /// Learns the model's shape; may create parameters (a classification head).
    fn init(&mut self, host: HostRef<'_>, model: &ModelInfo) -> CallResult<()>;
    /// Which model outputs the objective reads (`logits`, `hidden`, `pooled`).
    fn required_outputs(&self) -> RVec<RString>;
    /// Loss and metrics for one batch (training and evaluation alike).
    fn compute(
        &mut self,
        host: HostRef<'_>,
        outputs: RSlice<'_, NamedTensor>,
        batch: RSlice<'_, NamedTensor>,
    ) -> CallResult<LossOutput>;
    /// After each optimizer step.
    // The SDK 1.0 prefix ends here; methods below are optional (default bodies).
    #[sabi(last_prefix_field)]
    fn on_step_end(&mut self, host: HostRef<'_>, info: &StepInfo) -> CallResult<Control>;
    /// After each evaluation, with the aggregated metrics. A plugin without it
    /// continues.
    fn on_eval_end(&mut self, host: HostRef<'_>, metrics: RSlice<'_, Metric>) -> CallResult<Control> {
        let _ = (host, metrics);
        RResult::ROk(Control::CONTINUE)
    }
}

/// An owned adaptation method instance.
pub type MethodBox = MethodAbi_TO<'static, RBox<()>>;
/// An owned optimizer instance.
pub type OptimizerBox = OptimizerAbi_TO<'static, RBox<()>>;
/// An owned stage instance.
pub type StageBox = StageAbi_TO<'static, RBox<()>>;

/// The error a default body returns for a method the plugin was built without.
pub fn plugin_lacks<T>(method: &str) -> CallResult<T> {
    RResult::RErr(RString::from(format!(
        "plugin lacks `{method}`: it was built against an stagecraft-sdk 1.x that predates it; rebuild it against stagecraft-sdk {}",
        crate::SDK_VERSION
    )))
}
