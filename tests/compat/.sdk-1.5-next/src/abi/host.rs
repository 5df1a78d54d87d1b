//! The host op table: everything a plugin can do to a tensor.
//!
//! The host implements this trait on candle; every op runs on the device of its inputs
//! and is recorded by autograd, so gradients flow through plugin code exactly as
//! through the same math written directly in candle. Shapes are `usize` dims in
//! row-major order. Binary element-wise ops broadcast like NumPy. Every op returns an
//! error (never panics) on a bad handle, a shape mismatch or an unknown code.
//!
//! | group | ops |
//! |---|---|
//! | meta | `sdk_version`, `log`, `is_training`, `seed` |
//! | queries | `shape`, `dtype`, `to_vec_f32` |
//! | creation | `new_param`, `new_buffer`, `from_f32`, `full`, `arange` |
//! | element-wise | `add`, `sub`, `mul`, `div`, `maximum`, `minimum`, `affine`, `powf`, `clamp`, `unary`, `compare`, `where_cond`, `cast` |
//! | linear algebra | `matmul` |
//! | reductions | `sum`, `mean`, `max`, `min`, `argmax` |
//! | shape | `reshape`, `transpose`, `permute`, `narrow`, `cat`, `index_select`, `gather`, `broadcast_as` |
//! | nn | `softmax`, `log_softmax`, `dropout`, `cross_entropy` |
//! | state | `detach`, `assign` |
//! | appended in 1.0 (optional) | `site_weight`, `release` |
//! | appended in 1.1 (optional) | `logsumexp`, `model_info`, `site_role`, `from_i64`, `encode` |
//! | appended in 1.2 (optional) | `adamw_step` |
//! | appended in 1.3 (optional) | `add_low_rank` |
//!
//! What each method family needs: LoRA / rsLoRA (`add_low_rank`, `dropout`,
//! `new_param`; on a host older than 1.3, `matmul`, `transpose`, `affine` and `add`); DoRA (+ `site_weight`, `sqr`, `sum`, `sqrt`, `detach`, `div`);
//! IA3 (`mul`, `new_param`); prompt / prefix tuning (`cat`, `broadcast_as`, `reshape`,
//! `index_select`, `model_info`; `from_i64`, `encode` and `site_weight` to start from
//! the vocabulary); bottleneck adapters (`matmul`, `unary` activations, `add`); AdamW
//! (`new_buffer`, `adamw_step`; on a host older than 1.2, the same update from
//! `affine`, `add`, `sqr`, `sqrt`, `div`, `sub` and `assign`); SGD-momentum / Lion
//! (`new_buffer`, `assign`, `affine`, `add`, `sub`, `mul`, `sign`); causal-LM /
//! completion / classification losses (`cross_entropy`, `log_softmax`, `gather`,
//! `compare`, `argmax`, `narrow`); distillation (`softmax`, `log_softmax`, `detach`,
//! `sum`, `mean`).

use crate::types::{AdamWStep, CmpOp, DType, Init, LogLevel, ModelSpec, SiteRole, TensorHandle, UnaryOp};
use crate::version::SdkVersion;
use abi_stable::{
    sabi_trait,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};

/// What an op returns across the ABI.
pub type OpResult<T = TensorHandle> = RResult<T, RString>;

/// The host op table (see the module docs for the list).
///
/// Versioning: the methods up to `assign` (marked `#[sabi(last_prefix_field)]`) are the
/// prefix every 1.x host has. Methods after it are appended ops, each with a default
/// body that answers "host lacks op X": a plugin built against a newer SDK that calls
/// an op an older host does not have gets that error instead of undefined behaviour.
/// New ops are only ever appended at the very end.
#[sabi_trait]
pub trait HostOps {
    // ---- meta -----------------------------------------------------------------

    /// The SDK version the host was built against.
    fn sdk_version(&self) -> SdkVersion;
    /// Writes a line to the run log, tagged with the calling plugin's name.
    fn log(&self, level: LogLevel, msg: RStr<'_>);
    /// Whether the model is in training mode (dropout active) or evaluation mode.
    fn is_training(&self) -> bool;
    /// The run's seed (for plugins that derive their own deterministic choices).
    fn seed(&self) -> u64;

    // ---- queries --------------------------------------------------------------

    /// Dims of `t`.
    fn shape(&self, t: TensorHandle) -> OpResult<RVec<usize>>;
    /// Element type of `t`.
    fn dtype(&self, t: TensorHandle) -> OpResult<DType>;
    /// All elements of `t` as f32, row-major (a host→plugin copy: use it for scalars
    /// and metrics, not in the hot path).
    fn to_vec_f32(&self, t: TensorHandle) -> OpResult<RVec<f32>>;

    // ---- creation -------------------------------------------------------------

    /// Creates a trainable parameter owned by the host, on the model's device and in the
    /// model's float dtype. `name` is local to the plugin instance (`<site>.lora_A.weight`);
    /// the host saves and loads it under that name. Lives until the instance is dropped.
    fn new_param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> OpResult;
    /// Creates a persistent non-trainable tensor (optimizer state, running statistics).
    /// Buffers are saved in checkpoints under `name` and restored on resume, so state
    /// kept in buffers resumes exactly. Creating a buffer whose name already exists
    /// returns the existing one.
    fn new_buffer(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> OpResult;
    /// A temporary f32 tensor from data, on the model's device.
    #[allow(clippy::wrong_self_convention)] // a method of the host, named in SDK 1.0
    fn from_f32(&self, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> OpResult;
    /// A temporary tensor of `shape` filled with `value`.
    fn full(&self, shape: RSlice<'_, usize>, value: f64, dtype: DType) -> OpResult;
    /// `[start, start+1, .., end-1]` as a 1-d tensor.
    fn arange(&self, start: i64, end: i64, dtype: DType) -> OpResult;

    // ---- element-wise ---------------------------------------------------------

    /// `a + b` (broadcasting).
    fn add(&self, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// `a - b` (broadcasting).
    fn sub(&self, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// `a * b` (broadcasting).
    fn mul(&self, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// `a / b` (broadcasting).
    fn div(&self, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// Element-wise maximum (broadcasting).
    fn maximum(&self, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// Element-wise minimum (broadcasting).
    fn minimum(&self, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// `x * mul + add`.
    fn affine(&self, x: TensorHandle, mul: f64, add: f64) -> OpResult;
    /// `x ^ e`.
    fn powf(&self, x: TensorHandle, e: f64) -> OpResult;
    /// `x` clamped to `[lo, hi]`.
    fn clamp(&self, x: TensorHandle, lo: f64, hi: f64) -> OpResult;
    /// An element-wise function (see [`UnaryOp`]).
    fn unary(&self, op: UnaryOp, x: TensorHandle) -> OpResult;
    /// Element-wise comparison (broadcasting) giving a `u8` mask.
    fn compare(&self, op: CmpOp, a: TensorHandle, b: TensorHandle) -> OpResult;
    /// `mask ? on_true : on_false` element-wise (broadcasting).
    fn where_cond(&self, mask: TensorHandle, on_true: TensorHandle, on_false: TensorHandle) -> OpResult;
    /// `x` converted to `dtype`.
    fn cast(&self, x: TensorHandle, dtype: DType) -> OpResult;

    // ---- linear algebra -------------------------------------------------------

    /// Matrix product over the last two dims; leading dims broadcast
    /// (`[.., m, k] × [.., k, n] → [.., m, n]`, or `[.., m, k] × [k, n]`).
    fn matmul(&self, a: TensorHandle, b: TensorHandle) -> OpResult;

    // ---- reductions -----------------------------------------------------------

    /// Sum over `dims` (all dims when empty).
    fn sum(&self, x: TensorHandle, dims: RSlice<'_, usize>, keepdim: bool) -> OpResult;
    /// Mean over `dims` (all dims when empty).
    fn mean(&self, x: TensorHandle, dims: RSlice<'_, usize>, keepdim: bool) -> OpResult;
    /// Maximum along `dim`.
    fn max(&self, x: TensorHandle, dim: usize, keepdim: bool) -> OpResult;
    /// Minimum along `dim`.
    fn min(&self, x: TensorHandle, dim: usize, keepdim: bool) -> OpResult;
    /// Index of the maximum along `dim` (`u32`).
    fn argmax(&self, x: TensorHandle, dim: usize, keepdim: bool) -> OpResult;

    // ---- shape ----------------------------------------------------------------

    /// Same elements, new dims (element count must match).
    fn reshape(&self, x: TensorHandle, shape: RSlice<'_, usize>) -> OpResult;
    /// Swaps two dims.
    fn transpose(&self, x: TensorHandle, d0: usize, d1: usize) -> OpResult;
    /// Reorders dims.
    fn permute(&self, x: TensorHandle, dims: RSlice<'_, usize>) -> OpResult;
    /// `len` elements along `dim` starting at `start`.
    fn narrow(&self, x: TensorHandle, dim: usize, start: usize, len: usize) -> OpResult;
    /// Concatenation along `dim`.
    fn cat(&self, xs: RSlice<'_, TensorHandle>, dim: usize) -> OpResult;
    /// Rows of `x` along `dim` picked by the 1-d integer tensor `ids`.
    fn index_select(&self, x: TensorHandle, ids: TensorHandle, dim: usize) -> OpResult;
    /// `out[i][j] = x[i][ids[i][j]]` along `dim` (`ids` has `x`'s rank).
    fn gather(&self, x: TensorHandle, ids: TensorHandle, dim: usize) -> OpResult;
    /// `x` broadcast to `shape`.
    fn broadcast_as(&self, x: TensorHandle, shape: RSlice<'_, usize>) -> OpResult;

    // ---- nn -------------------------------------------------------------------

    /// Softmax along `dim` (differentiable).
    fn softmax(&self, x: TensorHandle, dim: usize) -> OpResult;
    /// Log-softmax along `dim` (differentiable).
    fn log_softmax(&self, x: TensorHandle, dim: usize) -> OpResult;
    /// Inverted dropout with drop probability `p` in training mode; identity in
    /// evaluation mode. Masks come from the host's seeded generator (reproducible, and
    /// resumed exactly).
    fn dropout(&self, x: TensorHandle, p: f64) -> OpResult;
    /// Cross-entropy per row: `logits [n, classes]`, integer `targets [n]`; rows whose
    /// target equals `ignore_index` get loss 0. Returns `[n]` (reduce it yourself).
    fn cross_entropy(&self, logits: TensorHandle, targets: TensorHandle, ignore_index: i64) -> OpResult;

    // ---- state ----------------------------------------------------------------

    /// `x` cut from the autograd graph.
    fn detach(&self, x: TensorHandle) -> OpResult;
    /// Overwrites the value of a parameter or buffer `dst` with `src` (same shape),
    /// without recording autograd. This is how optimizers update parameters. An instance
    /// may assign to its own parameters and buffers, and an optimizer, during `step`,
    /// to the parameters it is given; anything else is refused.
    // Fields up to and including this one are the SDK 1.0 prefix: every 1.x host has them.
    #[sabi(last_prefix_field)]
    fn assign(&self, dst: TensorHandle, src: TensorHandle) -> OpResult<()>;

    // ---- appended ops ----------------------------------------------------------
    // Everything below is optional at the ABI level: a plugin may meet a host whose
    // table ends earlier, and then gets the default body's "host lacks op" error.
    // New ops go at the very end, always with such a default body.

    /// A frozen tensor of a site's base layer: `"weight"` (`[out, in]` for linear sites)
    /// or `"bias"`. (Since 1.0, optional.)
    fn site_weight(&self, site: RStr<'_>, tensor: RStr<'_>) -> OpResult {
        let _ = (site, tensor);
        host_lacks("site_weight", self.sdk_version())
    }
    /// Releases a temporary before the end of the step (temporaries are released at
    /// every step's end anyway). Params and buffers cannot be released. (Since 1.0,
    /// optional.)
    fn release(&self, t: TensorHandle) -> OpResult<()> {
        let _ = t;
        host_lacks("release", self.sdk_version())
    }

    // ---- appended in 1.1 -------------------------------------------------------

    /// `log(sum(exp(x)))` along `dim`, computed stably (differentiable). (Since 1.1,
    /// optional.)
    fn logsumexp(&self, x: TensorHandle, dim: usize) -> OpResult {
        let _ = (x, dim);
        host_lacks("logsumexp", self.sdk_version())
    }
    /// The shape of the model the calling instance works on: sizes, heads, layers.
    /// (Since 1.1, optional.)
    fn model_info(&self) -> OpResult<ModelSpec> {
        host_lacks("model_info", self.sdk_version())
    }
    /// The role of a site (`attn_q`, `mlp_down`, ...), the same across architectures.
    /// (Since 1.1, optional.)
    fn site_role(&self, site: RStr<'_>) -> OpResult<SiteRole> {
        let _ = site;
        host_lacks("site_role", self.sdk_version())
    }
    /// A temporary `i64` tensor from data (token ids, labels: exact beyond 2^24, where
    /// `from_f32` is not). (Since 1.1, optional.)
    #[allow(clippy::wrong_self_convention)] // a method of the host, like `from_f32`
    fn from_i64(&self, data: RSlice<'_, i64>, shape: RSlice<'_, usize>) -> OpResult {
        let _ = (data, shape);
        host_lacks("from_i64", self.sdk_version())
    }
    /// Token ids of `text` with the run's tokenizer, special tokens added as Hugging
    /// Face tokenizers do by default (what PEFT's `prompt_tuning_init_text` uses), e.g.
    /// to initialise prompt embeddings from a text. (Since 1.1, optional.)
    fn encode(&self, text: RStr<'_>) -> OpResult<RVec<u32>> {
        let _ = text;
        host_lacks("encode", self.sdk_version())
    }

    // ---- appended in 1.2 -------------------------------------------------------

    /// One AdamW update of a parameter, in place: the moments `exp_avg` (`m`) and
    /// `exp_avg_sq` (`v`) and then the parameter `param` are overwritten as
    /// [`AdamWStep`] describes, from the gradient `grad`, without recording autograd.
    ///
    /// The result is the same, to the bit, as the update written with this table's
    /// element-wise ops in this order and `assign`ed (each `affine(a, b)` is `x·a + b`
    /// with `a` and `b` rounded to the tensors' dtype; `c1`, `c2` are the bias
    /// corrections of [`AdamWStep::bias_corrections`]):
    /// ```text
    /// m' = affine(m, β1, 0) + affine(g, 1-β1, 0)
    /// v' = affine(v, β2, 0) + affine(sqr(g), 1-β2, 0)
    /// p' = affine(p, 1 - lr·weight_decay, 0)
    ///      - affine(affine(m', c1, 0) / affine(sqrt(affine(v', c2, 0)), 1, eps), lr, 0)
    /// ```
    /// but in one pass over memory with no temporaries where the host can (f32 on the
    /// CPU). The four tensors must have the same shape and float dtype and be distinct
    /// tensors; `param`, `exp_avg` and `exp_avg_sq` must be parameters or buffers the
    /// caller may write, as for [`assign`](Self::assign). On error nothing is written.
    /// (Since 1.2, optional: check [`sdk_version`](Self::sdk_version) ≥ 1.2 before
    /// calling, and update with the ops above on an older host.)
    fn adamw_step(
        &self,
        param: TensorHandle,
        grad: TensorHandle,
        exp_avg: TensorHandle,
        exp_avg_sq: TensorHandle,
        hp: AdamWStep,
    ) -> OpResult<()> {
        let _ = (param, grad, exp_avg, exp_avg_sq, hp);
        host_lacks("adamw_step", self.sdk_version())
    }

    // ---- appended in 1.3 -------------------------------------------------------

    /// `y + scale·(x·Aᵀ)·Bᵀ` for `x [.., in]`, `a [r, in]`, `b [out, r]` and
    /// `y [.., out]`: a low-rank update (LoRA's) added onto a layer's output,
    /// differentiable in all four tensors. The same values as the composition
    /// `add(y, affine(matmul(matmul(x, transpose(a)), transpose(b)), scale, 0))` up to
    /// float rounding (the host may apply the scale to `x·Aᵀ` before the second
    /// product), without its full-size temporaries where the host can (f32 on the
    /// CPU). (Since 1.3, optional: check [`sdk_version`](Self::sdk_version) ≥ 1.3
    /// before calling, and use the composition on an older host.)
    fn add_low_rank(&self, y: TensorHandle, x: TensorHandle, a: TensorHandle, b: TensorHandle, scale: f64) -> OpResult {
        let _ = (y, x, a, b, scale);
        host_lacks("add_low_rank", self.sdk_version())
    }

    // ---- appended in 1.5 -------------------------------------------------------

    /// Cumulative sum along `dim`. (Since 1.5, optional.)
    fn cumsum(&self, x: TensorHandle, dim: usize) -> OpResult {
        let _ = (x, dim);
        host_lacks("cumsum", self.sdk_version())
    }
}

/// The error a default body returns for an op the host was built without.
// Runs in the plugin (the default body is the plugin's code), so `SDK_VERSION` is the
// plugin's SDK.
pub fn host_lacks<T>(op: &str, host: SdkVersion) -> OpResult<T> {
    RResult::RErr(RString::from(format!(
        "host lacks op `{op}` (host built against stagecraft-sdk {host}, plugin against {}): upgrade the host",
        crate::SDK_VERSION
    )))
}
