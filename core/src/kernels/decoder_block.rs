//! Llama's two residual blocks, each as one op, with `n(x)` the block's RMSNorm:
//! - [`attention_block`]: `x + attention(rope(n(x)·W_qᵀ), rope(n(x)·W_kᵀ), n(x)·W_vᵀ)·W_oᵀ`
//! - [`mlp_block`]: `x + (silu(n(x)·W_gateᵀ) · (n(x)·W_upᵀ))·W_downᵀ`
//!
//! Composed from the other fused ops a block is four (MLP) to six (attention) graph
//! nodes, and candle's backward gives every node that receives a gradient a zeroed
//! buffer and adds each contribution onto it: the normed input three times (the q, k
//! and v projections), the residual stream twice, every projection's output once.
//! As one op a block puts only `x` into the graph. Its weights go in detached and
//! their gradients are deposited ([`super::weight_grads`]); its backward runs the same
//! kernels in reverse order, sums the projections' input gradients in one product
//! ([`linear::input_grad`]) and adds the residual's gradient inside the norm's
//! backward. The inner steps are timed under the ops they replace (`linear.forward`,
//! `attention.backward`, ...) in `stagecraft bench --profile`.
//!
//! Keeps for backward: the normed input; the rotated heads (attention) or `gate`,
//! `up` and the product's input (MLP); the attention's output.
//!
//! The decoder uses a block where no adapter hooks any of its sites, nothing drops
//! out, and the precision is f32 (`model/llama.rs`). Where a fused op would not apply
//! (CUDA, bf16, fused ops off), where a weight is computed from other tensors (its
//! gradient has to flow on through the graph), or where `x` is constant but a weight
//! trains (candle would not call the op's backward), the block is the composition of
//! the separate ops, which is also the reference of the gradient tests.

use super::attention::{attention_rows, Attention};
use super::gated_mlp::{self, gated_mlp_in};
use super::linear::{self, linear, linear_onto, GradTerm};
use super::norm::{rms_backward, rms_forward, rms_norm, RmsGrads};
use super::weight_grads::WeightInput;
use super::{applies, profile, read, slice, tensor};
use crate::device::Precision;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Mutex, PoisonError};

/// The weights and settings of an attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionWeights<'a> {
    /// The RMSNorm's scale `[hidden]`.
    pub norm: &'a Tensor,
    /// The RMSNorm's epsilon.
    pub eps: f64,
    /// `[heads·head_dim, hidden]`.
    pub q: &'a Tensor,
    /// `[kv_heads·head_dim, hidden]`.
    pub k: &'a Tensor,
    /// `[kv_heads·head_dim, hidden]`.
    pub v: &'a Tensor,
    /// `[hidden, heads·head_dim]`.
    pub o: &'a Tensor,
    /// Query heads and key/value heads.
    pub heads: (usize, usize),
    /// RoPE's tables (`cos`, `sin`, `[seq, head_dim]`), if queries and keys rotate.
    pub rope: Option<(&'a Tensor, &'a Tensor)>,
    /// The additive mask `[b, 1, seq, seq]`.
    pub mask: Option<&'a Tensor>,
    /// The scores' scale.
    pub scale: f64,
}

/// The weights of an MLP block.
#[derive(Debug, Clone, Copy)]
pub struct MlpWeights<'a> {
    /// The RMSNorm's scale `[hidden]`.
    pub norm: &'a Tensor,
    /// The RMSNorm's epsilon.
    pub eps: f64,
    /// `[intermediate, hidden]`.
    pub gate: &'a Tensor,
    /// `[intermediate, hidden]`.
    pub up: &'a Tensor,
    /// `[hidden, intermediate]`.
    pub down: &'a Tensor,
}

/// `x + attention(...)·W_oᵀ` for `x` `[b, seq, hidden]` (see the module's docs).
pub fn attention_block(x: &Tensor, w: &AttentionWeights<'_>) -> Result<Tensor> {
    let (b, s, hidden) = x.dims3()?;
    let (h, kvh) = w.heads;
    let (q_out, _) = w.q.dims2()?;
    let (kv_out, _) = w.k.dims2()?;
    if h == 0 || kvh == 0 || !q_out.is_multiple_of(h) || h % kvh != 0 || kv_out != kvh * (q_out / h) {
        bail!("attention block: {q_out} query and {kv_out} key features do not split into {h} heads sharing {kvh}")
    }
    let d = q_out / h;
    check_weights(
        hidden,
        &[(w.q, q_out, hidden), (w.k, kv_out, hidden), (w.v, kv_out, hidden), (w.o, hidden, q_out)],
        w.norm,
    )?;
    let mut tensors = vec![x, w.norm, w.q, w.k, w.v, w.o];
    tensors.extend(w.mask);
    tensors.extend(w.rope.iter().flat_map(|(c, s)| [*c, *s]));
    let Some(params) = block_params(x, &[w.norm, w.q, w.k, w.v, w.o], &tensors)? else {
        return attention_composed(x, w);
    };
    let rotation = w.rope.map(|(c, s)| Ok::<_, candle_core::Error>((c.contiguous()?, s.contiguous()?))).transpose()?;
    let mask = w.mask.map(Tensor::contiguous).transpose()?;
    let attention = Attention::over_rows(b, s, w.heads, d, w.scale as f32, mask);
    let dims = AttentionDims { rows: b * s, hidden, q_out, kv_out };
    let op = AttentionBlock { dims, eps: w.eps as f32, params, attention, rotation, kept: Mutex::new(None) };
    x.contiguous()?.apply_op1(op)
}

/// [`attention_block`] composed of the separate fused ops.
pub fn attention_composed(x: &Tensor, w: &AttentionWeights<'_>) -> Result<Tensor> {
    let n = rms_norm(x, w.norm, w.eps)?;
    let (q, k, v) = (linear(&n, w.q)?, linear(&n, w.k)?, linear(&n, w.v)?);
    let heads = attention_rows(&q, &k, &v, w.heads, w.rope, w.mask, w.scale, Precision::Fp32)?;
    linear_onto(&heads, w.o, x)
}

/// `x + (silu(n(x)·W_gateᵀ) · (n(x)·W_upᵀ))·W_downᵀ` for `x` `[.., hidden]`.
pub fn mlp_block(x: &Tensor, w: &MlpWeights<'_>) -> Result<Tensor> {
    let Some(&hidden) = x.dims().last() else { bail!("mlp block of a scalar") };
    let (inter, _) = w.gate.dims2()?;
    check_weights(hidden, &[(w.gate, inter, hidden), (w.up, inter, hidden), (w.down, hidden, inter)], w.norm)?;
    let weights = [w.norm, w.gate, w.up, w.down];
    let tensors = [x, w.norm, w.gate, w.up, w.down];
    let Some(params) = block_params(x, &weights, &tensors)? else {
        return mlp_composed(x, w);
    };
    let dims = gated_mlp::Dims { rows: x.elem_count() / hidden, in_f: hidden, inter };
    x.contiguous()?.apply_op1(MlpBlock { dims, eps: w.eps as f32, params, kept: Mutex::new(None) })
}

/// [`mlp_block`] composed of the separate fused ops.
pub fn mlp_composed(x: &Tensor, w: &MlpWeights<'_>) -> Result<Tensor> {
    let n = rms_norm(x, w.norm, w.eps)?;
    linear_onto(&gated_mlp_in(&n, w.gate, w.up)?, w.down, x)
}

/// Refuses weights whose shapes do not fit (`(weight, rows, cols)`) and a norm that is
/// not `[hidden]`.
fn check_weights(hidden: usize, shapes: &[(&Tensor, usize, usize)], norm: &Tensor) -> Result<()> {
    if norm.dims() != [hidden] {
        bail!("block over {hidden} features got a norm of shape {:?}", norm.dims())
    }
    for (w, rows, cols) in shapes {
        if w.dims() != [*rows, *cols] {
            bail!("block over {hidden} features got a weight of shape {:?}, expected [{rows}, {cols}]", w.dims())
        }
    }
    Ok(())
}

/// A weight inside a block: the tensor to compute with (contiguous, detached when it
/// trains) and the variable its gradient is deposited for.
struct Param {
    data: Tensor,
    credit: Option<Tensor>,
}

/// The block's weights as [`Param`]s, or `None` where the block has to be composed:
/// a fused op does not apply to one of `tensors`, a weight is computed from others,
/// or `x` is constant while a weight trains.
fn block_params(x: &Tensor, weights: &[&Tensor], tensors: &[&Tensor]) -> Result<Option<Vec<Param>>> {
    if !tensors.iter().all(|t| applies(t)) || x.elem_count() == 0 {
        return Ok(None);
    }
    let mut params = Vec::with_capacity(weights.len());
    for w in weights {
        let input = WeightInput::new(w, true);
        if input.tensor.track_op() || (input.credit.is_some() && !x.track_op()) {
            return Ok(None);
        }
        params.push(Param { data: input.tensor.contiguous()?, credit: input.credit });
    }
    Ok(Some(params))
}

/// Runs `f` on the elements of contiguous CPU f32 tensors.
fn read_params<const N: usize, R>(params: [&Param; N], f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let held: Vec<_> = params.iter().map(|p| p.data.storage_and_layout()).collect();
    let mut slices = [&[][..]; N];
    for (s, (storage, layout)) in slices.iter_mut().zip(&held) {
        *s = match &**storage {
            Storage::Cpu(cpu) => slice(cpu, layout)?,
            other => bail!("block op expects CPU weights, got {:?}", other.device().location()),
        };
    }
    f(slices)
}

/// Deposits a weight gradient `[rows, cols]` for the param's variable (computed only
/// where it has one: see [`Param`]).
fn deposit(param: &Param, grad: Option<Vec<f32>>, dims: &[usize]) -> Result<()> {
    let grad = grad.map(|g| tensor(g, dims)).transpose()?;
    // A param with a credit deposits and gets `None` back; one without computes none.
    WeightInput::settle(&param.credit, grad);
    Ok(())
}

/// The gradient of the block's norm scale and its input's, the residual's `dy` added:
/// `(dx, d_norm)`.
fn norm_backward(x: &[f32], g: &[f32], dn: &[f32], dy: &[f32], eps: f32, norm: &Param) -> (Vec<f32>, Option<Vec<f32>>) {
    let want = RmsGrads { dx: true, dw: norm.credit.is_some(), plus: Some(dy) };
    let (dx, dg) = profile::time("rms_norm.backward", || rms_backward(x, g, dn, eps, want));
    (dx, want.dw.then_some(dg))
}

/// The sizes of an attention block: `rows` positions of `hidden` features, `q_out`
/// query and `kv_out` key (and value) features.
#[derive(Debug, Clone, Copy)]
struct AttentionDims {
    rows: usize,
    hidden: usize,
    q_out: usize,
    kv_out: usize,
}

/// What an attention block's forward keeps for backward.
struct AttentionKept {
    normed: Vec<f32>,
    heads: [Vec<f32>; 3],
    attended: Vec<f32>,
}

struct AttentionBlock {
    dims: AttentionDims,
    eps: f32,
    /// Norm, q, k, v, o.
    params: Vec<Param>,
    attention: Attention,
    rotation: Option<(Tensor, Tensor)>,
    kept: Mutex<Option<AttentionKept>>,
}

impl CustomOp1 for AttentionBlock {
    fn name(&self) -> &'static str {
        "attention_block"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(x, xl)?;
        let AttentionDims { rows: m, hidden, q_out, kv_out } = self.dims;
        let [n, q, k, v, o] = [0, 1, 2, 3, 4].map(|i| &self.params[i]);
        let (y, kept) = read_params([n, q, k, v, o], |[g, wq, wk, wv, wo]| {
            let normed = profile::time("rms_norm.forward", || rms_forward(x, g, self.eps));
            let (qs, ks, vs) = profile::time("linear.forward", || {
                let project = |w: &[f32], out: usize| linear::project(&normed, w, (m, hidden, out), None);
                Ok::<_, candle_core::Error>((project(wq, q_out)?, project(wk, kv_out)?, project(wv, kv_out)?))
            })?;
            let (attended, heads) = profile::time("attention.forward", || {
                self.attention.forward_rows(self.rotation.as_ref(), &qs, &ks, &vs)
            })?;
            let y = profile::time("linear.forward", || linear::project(&attended, wo, (m, q_out, hidden), Some(x)))?;
            Ok((y, AttentionKept { normed, heads, attended }))
        })?;
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let AttentionDims { rows: m, hidden, q_out, kv_out } = self.dims;
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(kept) = kept.as_ref() else { bail!("attention block: backward before forward") };
        let [n, q, k, v, o] = [0, 1, 2, 3, 4].map(|i| &self.params[i]);
        let dx = read_params([n, q, k, v, o], |[g, wq, wk, wv, wo]| {
            read(x, |xs| {
                read(dy, |dy| {
                    let d_attended = profile::time("linear.backward", || {
                        let grad =
                            o.credit.is_some().then(|| linear::weight_grad(dy, &kept.attended, m, q_out, hidden));
                        deposit(o, grad.transpose()?, &[hidden, q_out])?;
                        linear::input_grad(m, q_out, &[GradTerm { dy, w: wo, out: hidden }])
                    })?;
                    let (dq, dk, dv) = profile::time("attention.backward", || {
                        self.attention.backward_rows(self.rotation.as_ref(), &kept.heads, &d_attended)
                    })?;
                    let d_normed = profile::time("linear.backward", || {
                        for (p, d, out) in [(q, &dq, q_out), (k, &dk, kv_out), (v, &dv, kv_out)] {
                            let grad = p.credit.is_some().then(|| linear::weight_grad(d, &kept.normed, m, hidden, out));
                            deposit(p, grad.transpose()?, &[out, hidden])?;
                        }
                        let terms = [
                            GradTerm { dy: &dq, w: wq, out: q_out },
                            GradTerm { dy: &dk, w: wk, out: kv_out },
                            GradTerm { dy: &dv, w: wv, out: kv_out },
                        ];
                        linear::input_grad(m, hidden, &terms)
                    })?;
                    let (dx, dg) = norm_backward(xs, g, &d_normed, dy, self.eps, n);
                    deposit(n, dg, &[hidden])?;
                    Ok(dx)
                })
            })
        })?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

/// What an MLP block's forward keeps for backward.
struct MlpKept {
    normed: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// `silu(gate)·up`, the down projection's input.
    hidden: Vec<f32>,
}

struct MlpBlock {
    dims: gated_mlp::Dims,
    eps: f32,
    /// Norm, gate, up, down.
    params: Vec<Param>,
    kept: Mutex<Option<MlpKept>>,
}

impl CustomOp1 for MlpBlock {
    fn name(&self) -> &'static str {
        "mlp_block"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(x, xl)?;
        let gated_mlp::Dims { rows: m, in_f: width, inter } = self.dims;
        let [n, gate, up, down] = [0, 1, 2, 3].map(|i| &self.params[i]);
        let (y, kept) = read_params([n, gate, up, down], |[g, wg, wu, wd]| {
            let normed = profile::time("rms_norm.forward", || rms_forward(x, g, self.eps));
            let (hidden, gate, up) =
                profile::time("gated_mlp.forward", || gated_mlp::forward(&normed, wg, wu, self.dims))?;
            let y = profile::time("linear.forward", || linear::project(&hidden, wd, (m, inter, width), Some(x)))?;
            Ok((y, MlpKept { normed, gate, up, hidden }))
        })?;
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let gated_mlp::Dims { rows: m, in_f: width, inter } = self.dims;
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(kept) = kept.as_ref() else { bail!("mlp block: backward before forward") };
        let [n, gate, up, down] = [0, 1, 2, 3].map(|i| &self.params[i]);
        let dx = read_params([n, gate, up, down], |[g, wg, wu, wd]| {
            read(x, |xs| {
                read(dy, |dy| {
                    let d_hidden = profile::time("linear.backward", || {
                        let grad =
                            down.credit.is_some().then(|| linear::weight_grad(dy, &kept.hidden, m, inter, width));
                        deposit(down, grad.transpose()?, &[width, inter])?;
                        linear::input_grad(m, inter, &[GradTerm { dy, w: wd, out: width }])
                    })?;
                    let d_normed = profile::time("gated_mlp.backward", || {
                        let want = gated_mlp::Wanted {
                            dx: true,
                            d_gate_weight: gate.credit.is_some(),
                            d_up_weight: up.credit.is_some(),
                        };
                        let inputs = (&kept.normed[..], wg, wu);
                        let (dn, dwg, dwu) =
                            gated_mlp::backward(inputs, (&kept.gate, &kept.up), &d_hidden, self.dims, want)?;
                        deposit(gate, dwg, &[inter, width])?;
                        deposit(up, dwu, &[inter, width])?;
                        dn.ok_or_else(|| candle_core::Error::Msg("mlp block: no input gradient".into()))
                    })?;
                    let (dx, dg) = norm_backward(xs, g, &d_normed, dy, self.eps, n);
                    deposit(n, dg, &[width])?;
                    Ok(dx)
                })
            })
        })?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use crate::model::layers::attention_mask;
    use candle_core::{Device, Var};

    /// A block against its composition: the output, and the gradients of `x` and of
    /// every weight, under a random probe of the output.
    fn compare(
        x: &Var,
        vars: &[(&str, &Var)],
        fused: impl Fn() -> Result<Tensor>,
        composed: impl Fn() -> Result<Tensor>,
    ) -> Result<()> {
        let (yf, yc) = (fused()?, composed()?);
        assert!(rel_err(&yf, &yc)? <= 1e-5, "output: {}", rel_err(&yf, &yc)?);
        let probe = Tensor::randn(0f32, 1.0, yf.dims(), yf.device())?;
        let gf = crate::kernels::backward(&(yf * &probe)?.sum_all()?)?;
        let gc = crate::kernels::backward(&(yc * &probe)?.sum_all()?)?;
        for (name, v) in [("x", x)].iter().chain(vars) {
            let (f, c) = (gf.get(v).expect("fused grad"), gc.get(v).expect("composed grad"));
            assert!(rel_err(f, c)? <= 1e-5, "d{name}: {}", rel_err(f, c)?);
        }
        Ok(())
    }

    #[test]
    fn the_attention_block_matches_its_composition_with_every_gradient() -> Result<()> {
        let dev = Device::Cpu;
        // 4 query heads sharing 2 kv heads of 8; 70 positions: several query blocks.
        let (b, s, hidden, h, kvh, d) = (2, 70, 24, 4, 2, 8);
        let x = Var::randn(0f32, 1.0, (b, s, hidden), &dev)?;
        let norm = Var::randn(1f32, 0.2, hidden, &dev)?;
        let q = Var::randn(0f32, 0.3, (h * d, hidden), &dev)?;
        let k = Var::randn(0f32, 0.3, (kvh * d, hidden), &dev)?;
        let v = Var::randn(0f32, 0.3, (kvh * d, hidden), &dev)?;
        let o = Var::randn(0f32, 0.3, (hidden, h * d), &dev)?;
        let tables = crate::model::layers::Rope::new(d, 10_000.0)?.tables(0, s, candle_core::DType::F32, &dev)?;
        let (cos, sin) = tables.cos_sin();
        // The second sequence ends in 10 padding positions.
        let pad: Vec<f32> = (0..b * s).map(|i| if i >= 2 * s - 10 { 0.0 } else { 1.0 }).collect();
        let pad = Tensor::from_vec(pad, (b, s), &dev)?;
        for (mask, rope) in [(attention_mask(Some(&pad), b, s, s, true, &dev)?, true), (None, false)] {
            let w = AttentionWeights {
                norm: &norm,
                eps: 1e-5,
                q: &q,
                k: &k,
                v: &v,
                o: &o,
                heads: (h, kvh),
                rope: rope.then_some((cos, sin)),
                mask: mask.as_ref(),
                scale: 1.0 / (d as f64).sqrt(),
            };
            let vars = [("norm", &norm), ("q", &q), ("k", &k), ("v", &v), ("o", &o)];
            compare(&x, &vars, || attention_block(&x, &w), || attention_composed(&x, &w))?;
        }
        Ok(())
    }

    #[test]
    fn the_mlp_block_matches_its_composition_with_every_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (hidden, inter) = (24, 40);
        let x = Var::randn(0f32, 1.0, (3, 45, hidden), &dev)?;
        let norm = Var::randn(1f32, 0.2, hidden, &dev)?;
        let gate = Var::randn(0f32, 0.3, (inter, hidden), &dev)?;
        let up = Var::randn(0f32, 0.3, (inter, hidden), &dev)?;
        let down = Var::randn(0f32, 0.3, (hidden, inter), &dev)?;
        let w = MlpWeights { norm: &norm, eps: 1e-5, gate: &gate, up: &up, down: &down };
        let vars = [("norm", &norm), ("gate", &gate), ("up", &up), ("down", &down)];
        compare(&x, &vars, || mlp_block(&x, &w), || mlp_composed(&x, &w))
    }

    #[test]
    fn frozen_weights_get_no_gradient_and_the_input_still_does() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 9, 16), &dev)?;
        let norm = Tensor::ones(16, candle_core::DType::F32, &dev)?;
        let gate = Tensor::randn(0f32, 0.3, (24, 16), &dev)?;
        let up = Tensor::randn(0f32, 0.3, (24, 16), &dev)?;
        let down = Var::randn(0f32, 0.3, (16, 24), &dev)?; // the only trained weight
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &up, down: &down };
        let gf = crate::kernels::backward(&mlp_block(&x, &w)?.sum_all()?)?;
        let gc = crate::kernels::backward(&mlp_composed(&x, &w)?.sum_all()?)?;
        assert!(gf.get(&gate).is_none() && gf.get(&up).is_none() && gf.get(&norm).is_none());
        for v in [x.as_tensor(), down.as_tensor()] {
            let e = rel_err(gf.get(v).expect("fused grad"), gc.get(v).expect("composed grad"))?;
            assert!(e <= 1e-5, "relative error {e}");
        }
        Ok(())
    }

    #[test]
    fn a_constant_input_with_trained_weights_is_composed_and_keeps_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 16), &dev)?; // constant: the op alone would see no gradient
        let norm = Var::ones(16, candle_core::DType::F32, &dev)?;
        let gate = Var::randn(0f32, 0.3, (24, 16), &dev)?;
        let up = Var::randn(0f32, 0.3, (24, 16), &dev)?;
        let down = Var::randn(0f32, 0.3, (16, 24), &dev)?;
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &up, down: &down };
        let grads = crate::kernels::backward(&mlp_block(&x, &w)?.sum_all()?)?;
        for v in [&norm, &gate, &up, &down] {
            assert!(grads.get(v).is_some());
        }
        Ok(())
    }

    #[test]
    fn weights_of_the_wrong_shape_are_refused() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 16), &dev)?;
        let norm = Tensor::ones(16, candle_core::DType::F32, &dev)?;
        let gate = Tensor::randn(0f32, 0.3, (24, 16), &dev)?;
        let down = Tensor::randn(0f32, 0.3, (24, 16), &dev)?; // should be [16, 24]
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &gate, down: &down };
        let err = mlp_block(&x, &w).expect_err("transposed down projection");
        assert!(err.to_string().contains("expected [16, 24]"), "{err}");
        Ok(())
    }
}
