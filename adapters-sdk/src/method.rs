//! Adaptation methods: LoRA, IA3, DoRA, prompt tuning, bottleneck adapters, ...

use crate::bail;
use crate::error::Result;
use crate::host::{Host, Tensor};
use crate::plugin::Plugin;
use crate::types::{Attachment, LowRank, MergeSupport, SiteInfo};

/// An adaptation method: attaches to named sites of a frozen model and changes what
/// they compute through its own trainable parameters.
///
/// # Lifecycle, in call order
/// 1. [`Plugin::new`] — once per adapter in the config, with that adapter's config.
/// 2. [`select_sites`](Self::select_sites) — once, with every site of the model. Return
///    the sites to attach to and the hooks wanted there. A target pattern that matches
///    nothing should be an error naming the pattern.
/// 3. [`init_site`](Self::init_site) — once per attached site, in model order: create the
///    site's parameters with [`Host::new_param`]. (When an adapter is loaded from disk,
///    the host overwrites their values afterwards, matching by name.)
/// 4. [`merge_support`](Self::merge_support) — before the first training step, only
///    when a later stage's handoff merges this adapter (`handoff.adapters = "merge"`):
///    `NO` refuses the pipeline; `UNKNOWN` makes the host try [`merge`](Self::merge) on
///    copies of the weights (a trial merge; nothing changes).
/// 5. At every model forward pass, training and evaluation alike
///    ([`Host::is_training`] tells which):
///    1. [`begin_forward`](Self::begin_forward) — once, before any site: compute here
///       what every site of the pass shares (prefix tuning's reparameterization MLP);
///    2. [`kv_prefix_len`](Self::kv_prefix_len) — once, to place the real tokens'
///       positions after any key/value prefix;
///    3. [`forward_pre`](Self::forward_pre) / [`forward`](Self::forward) — at each
///       attached site, in model order, for the hooks asked for.
/// 6. [`merge`](Self::merge), then [`merge_bias`](Self::merge_bias) where the site has
///    a bias — once per attached linear site, when the adapter is folded into the base
///    weights: a `merge` handoff, `stagecraft export --format merged`, `stagecraft
///    merge`. The adapter is detached afterwards and not called again.
///
/// [`unmerge`](Self::unmerge) and [`unmerge_bias`](Self::unmerge_bias) are not called by
/// any pipeline or command; they serve Rust code that drives the host directly (the
/// host's `MethodInstance::unmerge`).
///
/// Parameters are named locally and PEFT-style: `<site>.lora_A.weight`, which is the
/// adapter file's key without the `base_model.model.` prefix. Several instances of one
/// plugin may be attached at once (two LoRA adapters on the same site): the host keeps
/// each instance's parameters, buffers and optimizer state apart, so local names never
/// collide.
///
/// The host calls every method through `&self` except the setup ones: state that
/// [`begin_forward`](Self::begin_forward) computes for the sites of one pass goes in a
/// `RefCell`. The tensors it holds are temporaries, valid until the end of the step.
pub trait AdaptationMethod: Plugin {
    /// Picks sites from `sites` (every site of the model, in model order); the indices
    /// in the returned [`Attachment`]s refer to this slice.
    fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>>;

    /// Creates the parameters for one attached site.
    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()>;

    /// Post-hook: the site computed `y` from `x`; return what it should output instead.
    /// The shape must be `y`'s (except along `seq` for input-embeds and attention k/v sites).
    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>>;

    /// Pre-hook (linear sites): transform the input before the base layer sees it.
    /// Called only where [`Attachment::hooks`] includes [`Hooks::PRE`](crate::Hooks::PRE).
    fn forward_pre<'h>(&self, _host: Host<'h>, _site: &SiteInfo, x: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(x)
    }

    /// The base weight with this adapter folded in (`W + ΔW` for LoRA).
    fn merge<'h>(&self, _host: Host<'h>, site: &SiteInfo, _weight: Tensor<'h>) -> Result<Tensor<'h>> {
        bail!("adaptation method `{}` cannot be merged into `{}`", Self::NAME, site.name)
    }

    /// The inverse of [`merge`](Self::merge).
    fn unmerge<'h>(&self, _host: Host<'h>, site: &SiteInfo, _weight: Tensor<'h>) -> Result<Tensor<'h>> {
        bail!("adaptation method `{}` cannot be unmerged from `{}`", Self::NAME, site.name)
    }

    /// Whether [`merge`](Self::merge) works for this instance. Say
    /// [`MergeSupport::YES`] when you implement `merge`, [`MergeSupport::NO`] when the
    /// method cannot be folded into weights; the default, `UNKNOWN`, makes the host try
    /// a merge on a scratch model before training. (Since 1.1.)
    fn merge_support(&self) -> MergeSupport {
        MergeSupport::UNKNOWN
    }

    /// The base bias with this adapter folded in. The default keeps the bias as it is,
    /// which is right for methods that add to the output (LoRA); a method that scales
    /// the output (IA3) scales the bias too. (Since 1.1.)
    fn merge_bias<'h>(&self, _host: Host<'h>, _site: &SiteInfo, bias: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(bias)
    }

    /// The inverse of [`merge_bias`](Self::merge_bias). (Since 1.1.)
    fn unmerge_bias<'h>(&self, _host: Host<'h>, _site: &SiteInfo, bias: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(bias)
    }

    /// Called at the start of every model forward pass, before any site hook. (Since 1.1.)
    fn begin_forward(&self, _host: Host<'_>) -> Result<()> {
        Ok(())
    }

    /// Key/value positions this instance prepends at every attention key/value site
    /// (prefix tuning's `num_virtual_tokens`): real tokens then take positions after
    /// them, as after a cache of that length. The default is 0. (Since 1.1.)
    fn kv_prefix_len(&self) -> usize {
        0
    }

    /// Declares that at `site` (a linear site this instance post-hooks)
    /// [`forward`](Self::forward) returns exactly `y + scale·(x·Aᵀ)·Bᵀ`, `A` and `B`
    /// being two of this instance's parameters ([`LowRank`]). The host may then compute
    /// the update itself, inside the fused kernels of the layer, instead of calling
    /// `forward` at that site; the values agree up to float rounding, and `A` and `B`
    /// get their gradients as from `forward`. Asked once per attached site, right after
    /// [`init_site`](Self::init_site): declare only what holds for the instance's whole
    /// life (LoRA declares its update unless it drops its input out or is DoRA). The
    /// default declares nothing, and `forward` is always called. (Since 1.4.)
    fn low_rank(&self, _site: &SiteInfo) -> Option<LowRank> {
        None
    }
}
