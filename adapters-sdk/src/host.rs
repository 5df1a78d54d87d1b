//! The plugin-side view of the host: [`Host`] and [`Tensor`].
//!
//! [`Tensor`] is a handle plus the host it belongs to, with candle-like methods, so
//! plugin math reads like the math:
//!
//! ```ignore
//! // LoRA: y + (dropout(x) · Aᵀ · Bᵀ) · scale
//! let delta = x.dropout(p)?.matmul(&a.t()?)?.matmul(&b.t()?)?.affine(scale, 0.0)?;
//! y.add(&delta)
//! ```
//!
//! Every method is one call into the host op table ([`crate::abi::HostOps`]); errors come
//! back as [`crate::Error`] with the host's message (bad handle, shape mismatch, ...).

use crate::abi::HostObj;
use crate::error::{from_abi, Result};
use crate::types::{AdamWStep, CmpOp, DType, Init, LogLevel, ModelSpec, SiteInfo, SiteRole, TensorHandle, UnaryOp};
use crate::version::SdkVersion;
use abi_stable::std_types::{RSlice, RStr};

/// The host, as passed to every plugin call. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    ops: &'a HostObj,
}

/// A tensor owned by the host. Cheap to copy; valid until the end of the current step
/// (temporaries) or for the instance's life (params and buffers).
#[derive(Clone, Copy)]
pub struct Tensor<'h> {
    handle: TensorHandle,
    host: Host<'h>,
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:#x})", self.handle.0)
    }
}

macro_rules! binary {
    ($($(#[$m:meta])* $name:ident),*) => {$(
        $(#[$m])*
        pub fn $name(&self, other: &Tensor<'h>) -> Result<Tensor<'h>> {
            self.host.wrap(self.host.ops.$name(self.handle, other.handle))
        }
    )*};
}

macro_rules! unary {
    ($($(#[$m:meta])* $name:ident => $op:ident),*) => {$(
        $(#[$m])*
        pub fn $name(&self) -> Result<Tensor<'h>> {
            self.host.wrap(self.host.ops.unary(UnaryOp::$op, self.handle))
        }
    )*};
}

impl<'h> Host<'h> {
    /// Wraps the raw op table (used by the export glue; plugins receive a `Host`).
    pub fn new(ops: &'h HostObj) -> Self {
        Host { ops }
    }

    /// The raw op table, for ops this wrapper does not cover.
    pub fn raw(&self) -> &'h HostObj {
        self.ops
    }

    /// A [`Tensor`] for a handle (one you stored, e.g. a parameter).
    pub fn tensor(&self, handle: TensorHandle) -> Tensor<'h> {
        Tensor { handle, host: *self }
    }

    fn wrap(&self, r: crate::abi::OpResult) -> Result<Tensor<'h>> {
        Ok(self.tensor(from_abi(r)?))
    }

    /// The SDK version the host was built against.
    pub fn sdk_version(&self) -> SdkVersion {
        self.ops.sdk_version()
    }
    /// Logs a line through the host (plugins have no logger of their own).
    pub fn log(&self, level: LogLevel, msg: &str) {
        self.ops.log(level, RStr::from(msg))
    }
    /// Whether the model is training (dropout active).
    pub fn is_training(&self) -> bool {
        self.ops.is_training()
    }
    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.ops.seed()
    }

    /// A new trainable parameter (see [`crate::abi::HostOps::new_param`]).
    pub fn new_param(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor<'h>> {
        self.wrap(self.ops.new_param(name.into(), RSlice::from_slice(shape), init))
    }
    /// A persistent non-trainable tensor saved in checkpoints (optimizer state).
    pub fn new_buffer(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor<'h>> {
        self.wrap(self.ops.new_buffer(name.into(), RSlice::from_slice(shape), init))
    }
    /// A temporary f32 tensor from data.
    pub fn from_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor<'h>> {
        self.wrap(self.ops.from_f32(RSlice::from_slice(data), RSlice::from_slice(shape)))
    }
    /// A temporary tensor filled with `value`.
    pub fn full(&self, shape: &[usize], value: f64, dtype: DType) -> Result<Tensor<'h>> {
        self.wrap(self.ops.full(RSlice::from_slice(shape), value, dtype))
    }
    /// A scalar f32 tensor (shape `[]`).
    pub fn scalar(&self, value: f64) -> Result<Tensor<'h>> {
        self.full(&[], value, DType::F32)
    }
    /// `[start, end)` as a 1-d tensor.
    pub fn arange(&self, start: i64, end: i64, dtype: DType) -> Result<Tensor<'h>> {
        self.wrap(self.ops.arange(start, end, dtype))
    }
    /// Concatenation along `dim`.
    pub fn cat(&self, xs: &[Tensor<'h>], dim: usize) -> Result<Tensor<'h>> {
        let hs: Vec<TensorHandle> = xs.iter().map(|t| t.handle).collect();
        self.wrap(self.ops.cat(RSlice::from_slice(&hs), dim))
    }
    /// `mask ? on_true : on_false`.
    pub fn where_cond(&self, mask: &Tensor<'h>, on_true: &Tensor<'h>, on_false: &Tensor<'h>) -> Result<Tensor<'h>> {
        self.wrap(self.ops.where_cond(mask.handle, on_true.handle, on_false.handle))
    }
    /// A frozen tensor of a site's base layer (`"weight"` or `"bias"`).
    pub fn site_weight(&self, site: &str, tensor: &str) -> Result<Tensor<'h>> {
        self.wrap(self.ops.site_weight(site.into(), tensor.into()))
    }
    /// Overwrites a parameter or buffer (no autograd): the optimizer's update.
    pub fn assign(&self, dst: &Tensor<'h>, src: &Tensor<'h>) -> Result<()> {
        from_abi(self.ops.assign(dst.handle, src.handle))
    }
    /// The model's shape: sizes, heads, layers. (Since 1.1.)
    pub fn model_info(&self) -> Result<ModelSpec> {
        from_abi(self.ops.model_info())
    }
    /// A site's role, the same across architectures. (Since 1.1.)
    pub fn site_role(&self, site: &SiteInfo) -> Result<SiteRole> {
        from_abi(self.ops.site_role(site.name.as_str().into()))
    }
    /// A temporary `i64` tensor from data (exact for any id). (Since 1.1.)
    pub fn from_i64(&self, data: &[i64], shape: &[usize]) -> Result<Tensor<'h>> {
        self.wrap(self.ops.from_i64(RSlice::from_slice(data), RSlice::from_slice(shape)))
    }
    /// Token ids of `text` with the run's tokenizer. (Since 1.1.)
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(from_abi(self.ops.encode(text.into()))?.into_vec())
    }
    /// One AdamW update in place: overwrites the moments `exp_avg` and `exp_avg_sq`
    /// and the parameter `param` from `grad`, as [`AdamWStep`] describes. One call and
    /// no temporaries, where the same update written with element-wise ops and
    /// [`assign`](Self::assign) makes a dozen full-size temporaries; the results are
    /// the same to the bit. The formula, and what the host checks (shapes, dtypes,
    /// write permission), are in [`crate::abi::HostOps::adamw_step`]. (Since 1.2: a
    /// host built against an older SDK answers "host lacks op `adamw_step`", so check
    /// `host.sdk_version() >= SdkVersion::new(1, 2, 0)` and keep the op-by-op update
    /// for older hosts.)
    pub fn adamw_step(
        &self,
        param: &Tensor<'h>,
        grad: &Tensor<'h>,
        exp_avg: &Tensor<'h>,
        exp_avg_sq: &Tensor<'h>,
        hp: AdamWStep,
    ) -> Result<()> {
        from_abi(self.ops.adamw_step(param.handle, grad.handle, exp_avg.handle, exp_avg_sq.handle, hp))
    }
    /// `y + scale·(x·Aᵀ)·Bᵀ` for `x [.., in]`, `a [r, in]`, `b [out, r]`, `y [.., out]`:
    /// a low-rank update added onto a layer's output, differentiable in all four. One
    /// call where the composition (two products, the scale, the sum) makes full-size
    /// temporaries; the values agree up to float rounding
    /// ([`crate::abi::HostOps::add_low_rank`]). (Since 1.3: a host built against an
    /// older SDK answers "host lacks op `add_low_rank`", so check
    /// `host.sdk_version() >= SdkVersion::new(1, 3, 0)` and keep the composition for
    /// older hosts, as the first-party LoRA does.)
    pub fn add_low_rank(
        &self,
        y: &Tensor<'h>,
        x: &Tensor<'h>,
        a: &Tensor<'h>,
        b: &Tensor<'h>,
        scale: f64,
    ) -> Result<Tensor<'h>> {
        self.wrap(self.ops.add_low_rank(y.handle, x.handle, a.handle, b.handle, scale))
    }
}

impl<'h> Tensor<'h> {
    /// The raw handle (to store in your plugin's state).
    pub fn handle(&self) -> TensorHandle {
        self.handle
    }
    /// The host this tensor belongs to.
    pub fn host(&self) -> Host<'h> {
        self.host
    }
    fn wrap(&self, r: crate::abi::OpResult) -> Result<Tensor<'h>> {
        self.host.wrap(r)
    }

    /// Dims.
    pub fn shape(&self) -> Result<Vec<usize>> {
        Ok(from_abi(self.host.ops.shape(self.handle))?.into_vec())
    }
    /// Size of dim `d`.
    pub fn dim(&self, d: usize) -> Result<usize> {
        let s = self.shape()?;
        s.get(d).copied().ok_or_else(|| crate::Error(format!("dim {d} out of range for shape {s:?}")))
    }
    /// Number of dims.
    pub fn rank(&self) -> Result<usize> {
        Ok(self.shape()?.len())
    }
    /// Element type.
    pub fn dtype(&self) -> Result<DType> {
        from_abi(self.host.ops.dtype(self.handle))
    }
    /// All elements as f32 (copies; for scalars and metrics).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(from_abi(self.host.ops.to_vec_f32(self.handle))?.into_vec())
    }
    /// The single element of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        let v = self.to_vec_f32()?;
        match v.as_slice() {
            [x] => Ok(*x as f64),
            _ => Err(crate::Error(format!("expected one element, found {}", v.len()))),
        }
    }

    binary!(
        /// `self + other` (broadcasting).
        add,
        /// `self - other` (broadcasting).
        sub,
        /// `self * other` (broadcasting).
        mul,
        /// `self / other` (broadcasting).
        div,
        /// Element-wise maximum.
        maximum,
        /// Element-wise minimum.
        minimum,
        /// Matrix product over the last two dims.
        matmul
    );

    unary!(
        /// `-x`
        neg => NEG,
        /// `e^x`
        exp => EXP,
        /// `ln x`
        log => LOG,
        /// `√x`
        sqrt => SQRT,
        /// `1/√x`
        rsqrt => RSQRT,
        /// `x²`
        sqr => SQR,
        /// `|x|`
        abs => ABS,
        /// `1/x`
        recip => RECIP,
        /// `tanh x`
        tanh => TANH,
        /// `σ(x)`
        sigmoid => SIGMOID,
        /// `max(x, 0)`
        relu => RELU,
        /// GELU (erf form).
        gelu => GELU,
        /// GELU (tanh approximation).
        gelu_tanh => GELU_TANH,
        /// `x·σ(x)`
        silu => SILU,
        /// -1, 0 or 1.
        sign => SIGN
    );

    /// Any [`UnaryOp`] by code.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.unary(op, self.handle))
    }
    /// `self * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.affine(self.handle, mul, add))
    }
    /// `self ^ e`.
    pub fn powf(&self, e: f64) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.powf(self.handle, e))
    }
    /// Clamped to `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.clamp(self.handle, lo, hi))
    }
    /// Element-wise comparison, a `u8` mask.
    pub fn compare(&self, op: CmpOp, other: &Tensor<'h>) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.compare(op, self.handle, other.handle))
    }
    /// Converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.cast(self.handle, dtype))
    }
    /// Sum over `dims` (all when empty).
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.sum(self.handle, RSlice::from_slice(dims), keepdim))
    }
    /// Mean over `dims` (all when empty).
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.mean(self.handle, RSlice::from_slice(dims), keepdim))
    }
    /// Sum of all elements (a scalar).
    pub fn sum_all(&self) -> Result<Tensor<'h>> {
        self.sum(&[], false)
    }
    /// Mean of all elements (a scalar).
    pub fn mean_all(&self) -> Result<Tensor<'h>> {
        self.mean(&[], false)
    }
    /// Maximum along `dim`.
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.max(self.handle, dim, keepdim))
    }
    /// Minimum along `dim`.
    pub fn min(&self, dim: usize, keepdim: bool) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.min(self.handle, dim, keepdim))
    }
    /// Index of the maximum along `dim` (`u32`).
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.argmax(self.handle, dim, keepdim))
    }
    /// New dims, same elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.reshape(self.handle, RSlice::from_slice(shape)))
    }
    /// Swaps dims `d0` and `d1`.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.transpose(self.handle, d0, d1))
    }
    /// Swaps the last two dims.
    pub fn t(&self) -> Result<Tensor<'h>> {
        let r = self.rank()?;
        if r < 2 {
            return Err(crate::Error(format!("t() needs at least 2 dims, tensor has {r}")));
        }
        self.transpose(r - 2, r - 1)
    }
    /// Reorders dims.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.permute(self.handle, RSlice::from_slice(dims)))
    }
    /// A slice of `len` along `dim` from `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.narrow(self.handle, dim, start, len))
    }
    /// Rows along `dim` picked by `ids`.
    pub fn index_select(&self, ids: &Tensor<'h>, dim: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.index_select(self.handle, ids.handle, dim))
    }
    /// Gathers along `dim` by `ids`.
    pub fn gather(&self, ids: &Tensor<'h>, dim: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.gather(self.handle, ids.handle, dim))
    }
    /// Broadcast to `shape`.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.broadcast_as(self.handle, RSlice::from_slice(shape)))
    }
    /// Softmax along `dim`.
    pub fn softmax(&self, dim: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.softmax(self.handle, dim))
    }
    /// Log-softmax along `dim`.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.log_softmax(self.handle, dim))
    }
    /// Dropout with probability `p` (identity in evaluation mode).
    pub fn dropout(&self, p: f64) -> Result<Tensor<'h>> {
        if p == 0.0 {
            return Ok(*self);
        }
        self.wrap(self.host.ops.dropout(self.handle, p))
    }
    /// Per-row cross-entropy of logits `[n, classes]` against `targets [n]`.
    pub fn cross_entropy(&self, targets: &Tensor<'h>, ignore_index: i64) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.cross_entropy(self.handle, targets.handle, ignore_index))
    }
    /// `log(sum(exp(self)))` along `dim` (the dim is removed). (Since 1.1.)
    pub fn logsumexp(&self, dim: usize) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.logsumexp(self.handle, dim))
    }
    /// Cut from the autograd graph.
    pub fn detach(&self) -> Result<Tensor<'h>> {
        self.wrap(self.host.ops.detach(self.handle))
    }
    /// Releases this temporary now rather than at the end of the step.
    pub fn release(self) -> Result<()> {
        from_abi(self.host.ops.release(self.handle))
    }
}
