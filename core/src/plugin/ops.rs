//! The host op table on candle: [`HostCtx`] implements the SDK's `HostOps`.
//!
//! Each op resolves its handles, runs the candle op (on the inputs' device, recorded
//! by autograd), stores the result as a temporary and returns its handle; `assign` and
//! `adamw_step` (the fused AdamW update, in `adamw.rs`) write parameters and buffers
//! instead, without autograd. Each op runs inside `catch_unwind`: a panic in candle
//! becomes an error for the plugin, never an abort across `extern "C"`. Softmax and
//! friends are written with differentiable candle ops, not candle's fused kernels,
//! which have no backward.

use super::cross_entropy;
use super::state::{HostState, InstanceStore};
use crate::bail;
use crate::error::{Error, Result};
use crate::model::layers::{log_softmax, logsumexp, softmax};
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use candle_core::{DType, Shape, Tensor};
use stagecraft_sdk::abi::{HostOps, OpResult};
use stagecraft_sdk::{
    AdamWStep, CmpOp, Init, LogLevel, ModelSpec, SdkVersion, SiteRole, TensorHandle, UnaryOp, SDK_VERSION,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

/// The op table as one plugin instance sees it.
pub struct HostCtx {
    /// Shared run state.
    pub state: Rc<HostState>,
    /// The calling instance's params and buffers.
    pub store: Rc<InstanceStore>,
    /// The calling plugin's name (for logs).
    pub owner: String,
}

/// SDK dtype → candle dtype.
pub fn to_candle_dtype(d: stagecraft_sdk::DType) -> Result<DType> {
    use stagecraft_sdk::DType as S;
    Ok(match d {
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        S::U8 => DType::U8,
        other => return Err(Error::msg(format!("host does not know dtype {other:?}"))),
    })
}

/// candle dtype → SDK dtype.
pub fn from_candle_dtype(d: DType) -> Result<stagecraft_sdk::DType> {
    use stagecraft_sdk::DType as S;
    Ok(match d {
        DType::F32 => S::F32,
        DType::F64 => S::F64,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::U32 => S::U32,
        DType::I64 => S::I64,
        DType::U8 => S::U8,
        other => return Err(Error::msg(format!("dtype {other:?} cannot cross the plugin ABI"))),
    })
}

/// Runs `f`, catching errors and panics, naming the op.
fn guarded<T>(op: &str, f: impl FnOnce() -> Result<T>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(format!("op `{op}`: {e}").into()),
        Err(p) => RResult::RErr(
            format!("op `{op}`: host panicked: {}", stagecraft_sdk::export::panic_message(p.as_ref())).into(),
        ),
    }
}

/// The `matmul` host op. `[.., m, k] × [k, n]` (a batch of rows against one matrix, as
/// adapters multiply activations by their weights) is one product over all rows
/// ([`crate::kernels::linear`], fused on CPU); other shapes broadcast.
fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if b.rank() == 2 && a.rank() > 2 && a.dims().last() == Some(&b.dim(0)?) {
        return crate::kernels::linear::linear(a, &b.t()?);
    }
    a.broadcast_matmul(b)
}

fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    Ok(match op {
        UnaryOp::NEG => x.neg()?,
        UnaryOp::EXP => x.exp()?,
        UnaryOp::LOG => x.log()?,
        UnaryOp::SQRT => x.sqrt()?,
        UnaryOp::SQR => x.sqr()?,
        UnaryOp::ABS => x.abs()?,
        UnaryOp::RECIP => x.recip()?,
        UnaryOp::TANH => x.tanh()?,
        // 1 / (1 + e^-x) from differentiable ops.
        UnaryOp::SIGMOID => (x.neg()?.exp()? + 1.0)?.recip()?,
        UnaryOp::RELU => x.relu()?,
        UnaryOp::GELU => x.gelu_erf()?,
        UnaryOp::GELU_TANH => x.gelu()?,
        UnaryOp::SILU => x.silu()?,
        UnaryOp::SIGN => x.sign()?,
        UnaryOp::SIN => x.sin()?,
        UnaryOp::COS => x.cos()?,
        UnaryOp::RSQRT => x.sqrt()?.recip()?,
        other => return Err(Error::msg(format!("host does not know unary op {other:?} (code {})", other.0))),
    })
}

fn broadcast3(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let s = a.shape().broadcast_shape_binary_op(b.shape(), "where_cond")?;
    let s = s.broadcast_shape_binary_op(c.shape(), "where_cond")?;
    Ok((a.broadcast_as(&s)?, b.broadcast_as(&s)?, c.broadcast_as(&s)?))
}

fn reduce_dims(x: &Tensor, dims: &[usize]) -> Vec<usize> {
    if dims.is_empty() {
        (0..x.rank()).collect()
    } else {
        dims.to_vec()
    }
}

impl HostCtx {
    fn t(&self, h: TensorHandle) -> Result<Tensor> {
        self.state.get(h)
    }

    /// Runs a tensor-producing op and returns the result as a temporary.
    fn op(&self, name: &str, f: impl FnOnce() -> Result<Tensor>) -> OpResult {
        guarded(name, || Ok(self.state.temp(f()?)))
    }

    fn binary(
        &self,
        name: &str,
        a: TensorHandle,
        b: TensorHandle,
        f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> OpResult {
        self.op(name, || Ok(f(&self.t(a)?, &self.t(b)?)?))
    }
}

impl HostOps for HostCtx {
    fn sdk_version(&self) -> SdkVersion {
        SDK_VERSION
    }

    fn log(&self, level: LogLevel, msg: RStr<'_>) {
        let owner = &self.owner;
        match level {
            LogLevel::DEBUG => tracing::debug!(plugin = %owner, "{msg}"),
            LogLevel::WARN => tracing::warn!(plugin = %owner, "{msg}"),
            LogLevel::ERROR => tracing::error!(plugin = %owner, "{msg}"),
            _ => tracing::info!(plugin = %owner, "{msg}"),
        }
    }

    fn is_training(&self) -> bool {
        self.state.is_training()
    }

    fn seed(&self) -> u64 {
        self.state.seed()
    }

    fn shape(&self, t: TensorHandle) -> OpResult<RVec<usize>> {
        guarded("shape", || Ok(self.t(t)?.dims().to_vec().into()))
    }

    fn dtype(&self, t: TensorHandle) -> OpResult<stagecraft_sdk::DType> {
        guarded("dtype", || from_candle_dtype(self.t(t)?.dtype()))
    }

    fn to_vec_f32(&self, t: TensorHandle) -> OpResult<RVec<f32>> {
        guarded("to_vec_f32", || Ok(self.t(t)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into()))
    }

    fn new_param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> OpResult {
        guarded("new_param", || self.store.new_param(&self.state, name.as_str(), shape.as_slice(), init))
    }

    fn new_buffer(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> OpResult {
        guarded("new_buffer", || self.store.new_buffer(&self.state, name.as_str(), shape.as_slice(), init))
    }

    fn from_f32(&self, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> OpResult {
        self.op("from_f32", || {
            let n: usize = shape.iter().product();
            if n != data.len() {
                bail!("{} values for shape {:?}", data.len(), shape.as_slice());
            }
            Ok(Tensor::from_slice(data.as_slice(), shape.as_slice(), &self.state.device)?)
        })
    }

    fn full(&self, shape: RSlice<'_, usize>, value: f64, dtype: stagecraft_sdk::DType) -> OpResult {
        self.op("full", || {
            let shape = Shape::from(shape.to_vec());
            let dev = &self.state.device;
            Ok(match to_candle_dtype(dtype)? {
                DType::U32 => Tensor::full(value as u32, shape, dev)?,
                DType::I64 => Tensor::full(value as i64, shape, dev)?,
                DType::U8 => Tensor::full(value as u8, shape, dev)?,
                DType::F64 => Tensor::full(value, shape, dev)?,
                other => Tensor::full(value as f32, shape, dev)?.to_dtype(other)?,
            })
        })
    }

    fn arange(&self, start: i64, end: i64, dtype: stagecraft_sdk::DType) -> OpResult {
        self.op("arange", || Ok(Tensor::arange(start, end, &self.state.device)?.to_dtype(to_candle_dtype(dtype)?)?))
    }

    fn add(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("add", a, b, Tensor::broadcast_add)
    }
    fn sub(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("sub", a, b, Tensor::broadcast_sub)
    }
    fn mul(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("mul", a, b, Tensor::broadcast_mul)
    }
    fn div(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("div", a, b, Tensor::broadcast_div)
    }
    fn maximum(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("maximum", a, b, Tensor::broadcast_maximum)
    }
    fn minimum(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("minimum", a, b, Tensor::broadcast_minimum)
    }

    fn affine(&self, x: TensorHandle, mul: f64, add: f64) -> OpResult {
        self.op("affine", || Ok(self.t(x)?.affine(mul, add)?))
    }
    fn powf(&self, x: TensorHandle, e: f64) -> OpResult {
        self.op("powf", || Ok(self.t(x)?.powf(e)?))
    }
    fn clamp(&self, x: TensorHandle, lo: f64, hi: f64) -> OpResult {
        self.op("clamp", || Ok(self.t(x)?.clamp(lo, hi)?))
    }
    fn unary(&self, op: UnaryOp, x: TensorHandle) -> OpResult {
        self.op("unary", || unary(op, &self.t(x)?))
    }
    fn compare(&self, op: CmpOp, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.op("compare", || {
            let (a, b) = (self.t(a)?, self.t(b)?);
            Ok(match op {
                CmpOp::EQ => a.broadcast_eq(&b)?,
                CmpOp::NE => a.broadcast_ne(&b)?,
                CmpOp::LT => a.broadcast_lt(&b)?,
                CmpOp::LE => a.broadcast_le(&b)?,
                CmpOp::GT => a.broadcast_gt(&b)?,
                CmpOp::GE => a.broadcast_ge(&b)?,
                other => return Err(Error::msg(format!("host does not know comparison {other:?}"))),
            })
        })
    }
    fn where_cond(&self, mask: TensorHandle, on_true: TensorHandle, on_false: TensorHandle) -> OpResult {
        self.op("where_cond", || {
            let (m, a, b) = broadcast3(&self.t(mask)?, &self.t(on_true)?, &self.t(on_false)?)?;
            Ok(m.where_cond(&a, &b)?)
        })
    }
    fn cast(&self, x: TensorHandle, dtype: stagecraft_sdk::DType) -> OpResult {
        self.op("cast", || Ok(self.t(x)?.to_dtype(to_candle_dtype(dtype)?)?))
    }

    fn matmul(&self, a: TensorHandle, b: TensorHandle) -> OpResult {
        self.binary("matmul", a, b, matmul)
    }

    fn sum(&self, x: TensorHandle, dims: RSlice<'_, usize>, keepdim: bool) -> OpResult {
        self.op("sum", || {
            let x = self.t(x)?;
            let d = reduce_dims(&x, dims.as_slice());
            Ok(if keepdim { x.sum_keepdim(d)? } else { x.sum(d)? })
        })
    }
    fn mean(&self, x: TensorHandle, dims: RSlice<'_, usize>, keepdim: bool) -> OpResult {
        self.op("mean", || {
            let x = self.t(x)?;
            let d = reduce_dims(&x, dims.as_slice());
            Ok(if keepdim { x.mean_keepdim(d)? } else { x.mean(d)? })
        })
    }
    fn max(&self, x: TensorHandle, dim: usize, keepdim: bool) -> OpResult {
        self.op("max", || {
            let x = self.t(x)?;
            Ok(if keepdim { x.max_keepdim(dim)? } else { x.max(dim)? })
        })
    }
    fn min(&self, x: TensorHandle, dim: usize, keepdim: bool) -> OpResult {
        self.op("min", || {
            let x = self.t(x)?;
            Ok(if keepdim { x.min_keepdim(dim)? } else { x.min(dim)? })
        })
    }
    fn argmax(&self, x: TensorHandle, dim: usize, keepdim: bool) -> OpResult {
        self.op("argmax", || {
            let x = self.t(x)?;
            Ok(if keepdim { x.argmax_keepdim(dim)? } else { x.argmax(dim)? })
        })
    }

    fn reshape(&self, x: TensorHandle, shape: RSlice<'_, usize>) -> OpResult {
        self.op("reshape", || Ok(self.t(x)?.reshape(shape.to_vec())?))
    }
    fn transpose(&self, x: TensorHandle, d0: usize, d1: usize) -> OpResult {
        self.op("transpose", || Ok(self.t(x)?.transpose(d0, d1)?))
    }
    fn permute(&self, x: TensorHandle, dims: RSlice<'_, usize>) -> OpResult {
        self.op("permute", || Ok(self.t(x)?.permute(dims.to_vec())?))
    }
    fn narrow(&self, x: TensorHandle, dim: usize, start: usize, len: usize) -> OpResult {
        self.op("narrow", || Ok(self.t(x)?.narrow(dim, start, len)?))
    }
    fn cat(&self, xs: RSlice<'_, TensorHandle>, dim: usize) -> OpResult {
        self.op("cat", || {
            let ts = xs.iter().map(|h| self.t(*h)).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&ts, dim)?)
        })
    }
    fn index_select(&self, x: TensorHandle, ids: TensorHandle, dim: usize) -> OpResult {
        self.op("index_select", || Ok(self.t(x)?.index_select(&self.t(ids)?, dim)?))
    }
    fn gather(&self, x: TensorHandle, ids: TensorHandle, dim: usize) -> OpResult {
        self.op("gather", || Ok(self.t(x)?.contiguous()?.gather(&self.t(ids)?.contiguous()?, dim)?))
    }
    fn broadcast_as(&self, x: TensorHandle, shape: RSlice<'_, usize>) -> OpResult {
        self.op("broadcast_as", || Ok(self.t(x)?.broadcast_as(shape.to_vec())?))
    }

    fn softmax(&self, x: TensorHandle, dim: usize) -> OpResult {
        self.op("softmax", || Ok(softmax(&self.t(x)?, dim)?))
    }
    fn log_softmax(&self, x: TensorHandle, dim: usize) -> OpResult {
        self.op("log_softmax", || Ok(log_softmax(&self.t(x)?, dim)?))
    }
    fn dropout(&self, x: TensorHandle, p: f64) -> OpResult {
        self.op("dropout", || self.state.dropout(&self.t(x)?, p))
    }
    fn cross_entropy(&self, logits: TensorHandle, targets: TensorHandle, ignore_index: i64) -> OpResult {
        self.op("cross_entropy", || Ok(cross_entropy(&self.t(logits)?, &self.t(targets)?, ignore_index)?))
    }

    fn detach(&self, x: TensorHandle) -> OpResult {
        self.op("detach", || Ok(self.t(x)?.detach()))
    }
    fn assign(&self, dst: TensorHandle, src: TensorHandle) -> OpResult<()> {
        guarded("assign", || {
            if !self.store.may_write(dst) {
                bail!("plugin `{}` may only assign to its own parameters and buffers (and an optimizer to the parameters it is given), not to {:#x}", self.owner, dst.0);
            }
            let src = self.t(src)?;
            let table = self.state.table.borrow();
            match table.entry(dst)? {
                super::table::Entry::Param(v) | super::table::Entry::Buffer(v) => {
                    if v.dims() != src.dims() {
                        bail!("shape {:?} cannot be assigned to {:?}", src.dims(), v.dims());
                    }
                    Ok(v.set(&src.to_dtype(v.dtype())?.detach())?)
                }
                super::table::Entry::Temp(_) => {
                    Err(Error::msg("assign target must be a parameter or buffer, not a temporary"))
                }
            }
        })
    }
    fn site_weight(&self, site: RStr<'_>, tensor: RStr<'_>) -> OpResult {
        // Base tensors are frozen inputs to the plugin: no gradient flows back into them.
        self.op("site_weight", || Ok(self.state.site_tensor(site.as_str(), tensor.as_str())?.detach()))
    }
    fn release(&self, t: TensorHandle) -> OpResult<()> {
        guarded("release", || self.state.table.borrow_mut().release_temp(t))
    }
    fn logsumexp(&self, x: TensorHandle, dim: usize) -> OpResult {
        self.op("logsumexp", || Ok(logsumexp(&self.t(x)?, dim)?))
    }
    fn model_info(&self) -> OpResult<ModelSpec> {
        guarded("model_info", || self.state.model_spec())
    }
    fn site_role(&self, site: RStr<'_>) -> OpResult<SiteRole> {
        guarded("site_role", || self.state.site_role(site.as_str()))
    }
    fn from_i64(&self, data: RSlice<'_, i64>, shape: RSlice<'_, usize>) -> OpResult {
        self.op("from_i64", || {
            let n: usize = shape.iter().product();
            if n != data.len() {
                bail!("{} values for shape {:?}", data.len(), shape.as_slice());
            }
            Ok(Tensor::from_slice(data.as_slice(), shape.as_slice(), &self.state.device)?)
        })
    }
    fn encode(&self, text: RStr<'_>) -> OpResult<RVec<u32>> {
        guarded("encode", || Ok(self.state.encode(text.as_str())?.into()))
    }
    fn adamw_step(
        &self,
        param: TensorHandle,
        grad: TensorHandle,
        exp_avg: TensorHandle,
        exp_avg_sq: TensorHandle,
        hp: AdamWStep,
    ) -> OpResult<()> {
        guarded("adamw_step", || {
            // The write rules of `assign`, for each of the three tensors written.
            let target = |h: TensorHandle, what: &str| -> Result<candle_core::Var> {
                if !self.store.may_write(h) {
                    bail!("plugin `{}` may only update its own parameters and buffers (and an optimizer the parameters it is given), not {what} {:#x}", self.owner, h.0);
                }
                match self.state.table.borrow().entry(h)? {
                    super::table::Entry::Param(v) | super::table::Entry::Buffer(v) => Ok(v.clone()),
                    super::table::Entry::Temp(_) => bail!("{what} must be a parameter or buffer, not a temporary"),
                }
            };
            let (p, m, v) = (target(param, "param")?, target(exp_avg, "exp_avg")?, target(exp_avg_sq, "exp_avg_sq")?);
            super::adamw::adamw_step(&p, &self.t(grad)?, &m, &v, &hp)
        })
    }
    fn add_low_rank(&self, y: TensorHandle, x: TensorHandle, a: TensorHandle, b: TensorHandle, scale: f64) -> OpResult {
        self.op("add_low_rank", || {
            let (y, x, a, b) = (self.t(y)?, self.t(x)?, self.t(a)?, self.t(b)?);
            Ok(crate::kernels::linear::add_low_rank(&y, &x, &a, &b, scale)?)
        })
    }
}
