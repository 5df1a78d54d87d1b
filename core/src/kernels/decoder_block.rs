//! Llama's two residual blocks, each as one op, with `n(x)` the block's RMSNorm:
//! - [`attention_block`]: `x + attention(rope(n(x)·W_qᵀ), rope(n(x)·W_kᵀ), n(x)·W_vᵀ)·W_oᵀ`
//! - [`mlp_block`]: `x + (silu(n(x)·W_gateᵀ) · (n(x)·W_upᵀ))·W_downᵀ`
//!
//! Each projection `h·Wᵀ` may carry low-rank updates `scale·(h·Aᵀ)·Bᵀ` ([`LowRank`]):
//! the adapters that declare their update this way (LoRA, through the SDK's
//! `low_rank`) run inside the block, their `u = scale·h·Aᵀ` (`m × r`) computed first
//! and `u·Bᵀ` summed into the projection's GEMM calls. Backward deposits `dB = dyᵀ·u`
//! and `dA = dtᵀ·h` with `dt = scale·dy·B`, and adds `dt·A` to the input gradient's
//! sum of products.
//!
//! Composed from the other fused ops a block is four (MLP) to six (attention) graph
//! nodes, two more per low-rank update, and candle's backward gives every node that
//! receives a gradient a zeroed buffer and adds each contribution onto it: the normed
//! input three times (the q, k and v projections), the residual stream twice, every
//! projection's output once. As one op a block puts only `x` into the graph. Its
//! weights go in detached and their gradients are deposited ([`super::weight_grads`]);
//! its backward runs the same kernels in reverse order, sums the projections' input
//! gradients in one product ([`linear::input_grad`]) and adds the residual's gradient
//! inside the norm's backward. The inner steps are timed under the ops they replace
//! (`linear.forward`, `attention.backward`, ...) in `stagecraft bench --profile`.
//!
//! Keeps for backward: the normed input; the rotated heads (attention) or `gate`,
//! `up` and the product's input (MLP); the attention's output; each update's `u`.
//!
//! The decoder uses a block where no adapter hooks any of its sites other than by a
//! low-rank update, nothing drops out, and the precision is f32 (`model/llama.rs`).
//! Where a fused op would not apply (CUDA, bf16, fused ops off), where a weight is
//! computed from other tensors (its gradient has to flow on through the graph), or
//! where `x` is constant but a weight trains (candle would not call the op's
//! backward), the block is the composition of the separate ops, which is also the
//! reference of the gradient tests.

use super::attention::{attention_rows, Attention};
use super::gated_mlp::{self, gated_mlp_in};
use super::gemm::View;
use super::linear::{self, linear, linear_onto, GradTerm, LowRank};
use super::norm::{rms_backward, rms_forward, rms_norm, RmsGrads};
use super::swiglu::{self, swiglu};
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
    /// Low-rank updates of the q, k, v and o projections, in that order (none: empty).
    pub updates: [&'a [LowRank]; 4],
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
    /// Low-rank updates of the gate, up and down projections, in that order.
    pub updates: [&'a [LowRank]; 3],
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
    let shapes = [(w.q, q_out, hidden), (w.k, kv_out, hidden), (w.v, kv_out, hidden), (w.o, hidden, q_out)];
    check_weights(hidden, &shapes, w.norm)?;
    let mut tensors = vec![x, w.norm, w.q, w.k, w.v, w.o];
    tensors.extend(w.mask);
    tensors.extend(w.rope.iter().flat_map(|(c, s)| [*c, *s]));
    let Some(params) = block_params(x, &[w.norm, w.q, w.k, w.v, w.o], &tensors)? else {
        return attention_composed(x, w);
    };
    let Some(terms) = block_terms(x, &w.updates, &shapes)? else {
        return attention_composed(x, w);
    };
    let rotation = w.rope.map(|(c, s)| Ok::<_, candle_core::Error>((c.contiguous()?, s.contiguous()?))).transpose()?;
    let mask = w.mask.map(Tensor::contiguous).transpose()?;
    let attention = Attention::over_rows(b, s, w.heads, d, w.scale as f32, mask);
    let dims = AttentionDims { rows: b * s, hidden, q_out, kv_out };
    let op = AttentionBlock { dims, eps: w.eps as f32, params, terms, attention, rotation, kept: Mutex::new(None) };
    x.contiguous()?.apply_op1(op)
}

/// [`attention_block`] composed of the separate fused ops.
pub fn attention_composed(x: &Tensor, w: &AttentionWeights<'_>) -> Result<Tensor> {
    let n = rms_norm(x, w.norm, w.eps)?;
    let [uq, uk, uv, uo] = w.updates;
    let (q, k, v) = (projection(&n, w.q, uq)?, projection(&n, w.k, uk)?, projection(&n, w.v, uv)?);
    let heads = attention_rows(&q, &k, &v, w.heads, w.rope, w.mask, w.scale, Precision::Fp32)?;
    with_updates(linear_onto(&heads, w.o, x)?, &heads, uo)
}

/// `x + (silu(n(x)·W_gateᵀ) · (n(x)·W_upᵀ))·W_downᵀ` for `x` `[.., hidden]`.
pub fn mlp_block(x: &Tensor, w: &MlpWeights<'_>) -> Result<Tensor> {
    let Some(&hidden) = x.dims().last() else { bail!("mlp block of a scalar") };
    let (inter, _) = w.gate.dims2()?;
    let shapes = [(w.gate, inter, hidden), (w.up, inter, hidden), (w.down, hidden, inter)];
    check_weights(hidden, &shapes, w.norm)?;
    let weights = [w.norm, w.gate, w.up, w.down];
    let tensors = [x, w.norm, w.gate, w.up, w.down];
    let Some(params) = block_params(x, &weights, &tensors)? else {
        return mlp_composed(x, w);
    };
    let Some(terms) = block_terms(x, &w.updates, &shapes)? else {
        return mlp_composed(x, w);
    };
    let dims = gated_mlp::Dims { rows: x.elem_count() / hidden, in_f: hidden, inter };
    x.contiguous()?.apply_op1(MlpBlock { dims, eps: w.eps as f32, params, terms, kept: Mutex::new(None) })
}

/// [`mlp_block`] composed of the separate fused ops.
pub fn mlp_composed(x: &Tensor, w: &MlpWeights<'_>) -> Result<Tensor> {
    let n = rms_norm(x, w.norm, w.eps)?;
    let [ug, uu, ud] = w.updates;
    let m = match ug.is_empty() && uu.is_empty() {
        true => gated_mlp_in(&n, w.gate, w.up)?,
        false => swiglu(&projection(&n, w.gate, ug)?, &projection(&n, w.up, uu)?)?,
    };
    with_updates(linear_onto(&m, w.down, x)?, &m, ud)
}

/// `x·Wᵀ` with the updates added, composed.
fn projection(x: &Tensor, w: &Tensor, updates: &[LowRank]) -> Result<Tensor> {
    with_updates(linear(x, w)?, x, updates)
}

/// `y + Σ scale·(x·Aᵀ)·Bᵀ` over `updates`, one [`linear::add_low_rank`] each.
fn with_updates(y: Tensor, x: &Tensor, updates: &[LowRank]) -> Result<Tensor> {
    updates.iter().try_fold(y, |y, u| u.add_to(&y, x))
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

/// Whether a weight taken as `input` lets the block run as one op: not computed from
/// other tensors, and not trained while `x` is constant.
fn fusable(x: &Tensor, input: &WeightInput) -> bool {
    !input.tensor.track_op() && (input.credit.is_none() || x.track_op())
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
        if !fusable(x, &input) {
            return Ok(None);
        }
        params.push(Param { data: input.tensor.contiguous()?, credit: input.credit });
    }
    Ok(Some(params))
}

/// A low-rank update inside a block: its factors' elements (copies: each has only `r`
/// rows or columns), the variables their gradients are deposited for, rank and scale.
struct Term {
    /// `A`, `r × in`.
    a: Vec<f32>,
    /// `B`, `out × r`.
    b: Vec<f32>,
    credit_a: Option<Tensor>,
    credit_b: Option<Tensor>,
    rank: usize,
    scale: f32,
}

/// Each projection's updates as [`Term`]s (`shapes`: each projection's weight and its
/// `[out, in]`), or `None` where the block has to be composed, on [`block_params`]'
/// terms. Factors of the wrong shape are refused.
fn block_terms(
    x: &Tensor,
    updates: &[&[LowRank]],
    shapes: &[(&Tensor, usize, usize)],
) -> Result<Option<Vec<Vec<Term>>>> {
    let mut all = Vec::with_capacity(updates.len());
    for (list, &(_, out_f, in_f)) in updates.iter().zip(shapes) {
        let mut terms = Vec::with_capacity(list.len());
        for u in *list {
            let rank = u.rank(in_f, out_f)?;
            let (a, b) = (WeightInput::new(&u.a, true), WeightInput::new(&u.b, true));
            if !(applies(&u.a) && applies(&u.b) && fusable(x, &a) && fusable(x, &b)) {
                return Ok(None);
            }
            let elements = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            let (credit_a, credit_b) = (a.credit, b.credit);
            let scale = u.scale as f32;
            terms.push(Term { a: elements(&a.tensor)?, b: elements(&b.tensor)?, credit_a, credit_b, rank, scale });
        }
        all.push(terms);
    }
    Ok(Some(all))
}

/// Each term's `u = scale·h·Aᵀ` (`m × r`) for the projection's input `h` (`m × in_f`).
fn narrow_inputs(h: &[f32], terms: &[Term], m: usize, in_f: usize) -> Result<Vec<Vec<f32>>> {
    let narrow = |t: &Term| {
        let mut u = linear::project(h, &t.a, (m, in_f, t.rank), None)?;
        u.iter_mut().for_each(|v| *v *= t.scale);
        Ok(u)
    };
    terms.iter().map(narrow).collect()
}

/// The products `u·Bᵀ` (`m × out_f`) of the terms, for the projection's GEMM calls.
fn update_products<'a>(terms: &'a [Term], narrow: &'a [Vec<f32>], m: usize, out_f: usize) -> Vec<(View<'a>, View<'a>)> {
    let product = |(t, u): (&'a Term, &'a Vec<f32>)| {
        (View::rows(u, m, t.rank, t.rank), View::rows(&t.b, out_f, t.rank, t.rank).t())
    };
    terms.iter().zip(narrow).map(product).collect()
}

/// `h·Wᵀ + Σ u·Bᵀ` (added onto `onto` when given) for `h` `m × in_f`, and each term's
/// `u` (kept for backward).
fn project(
    h: &[f32],
    w: &[f32],
    terms: &[Term],
    (m, in_f, out_f): (usize, usize, usize),
    onto: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let narrow = narrow_inputs(h, terms, m, in_f)?;
    let y = linear::project_plus(h, w, (m, in_f, out_f), &update_products(terms, &narrow, m, out_f), onto)?;
    Ok((y, narrow))
}

/// Deposits the gradients of a projection's updates (`dB = dyᵀ·u`, `dA = dtᵀ·h` with
/// `dt = scale·dy·B`) where they train, for the projection's output gradient `dy`
/// (`m × out_f`) and input `h`; returns each `dt` (`m × r`).
fn updates_backward(
    terms: &[Term],
    narrow: &[Vec<f32>],
    h: &[f32],
    dy: &[f32],
    (m, in_f, out_f): (usize, usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let backward = |(t, u): (&Term, &Vec<f32>)| {
        let db = t.credit_b.is_some().then(|| linear::weight_grad(dy, u, m, t.rank, out_f)).transpose()?;
        settle(&t.credit_b, db, &[out_f, t.rank])?;
        let mut dt = linear::input_grad(m, t.rank, &[GradTerm { dy, w: &t.b, out: out_f }])?;
        dt.iter_mut().for_each(|v| *v *= t.scale);
        let da = t.credit_a.is_some().then(|| linear::weight_grad(&dt, h, m, in_f, t.rank)).transpose()?;
        settle(&t.credit_a, da, &[t.rank, in_f])?;
        Ok(dt)
    };
    terms.iter().zip(narrow).map(backward).collect()
}

/// The updates' shares `dt·A` of the input gradient, as terms of its product.
fn update_grad_terms<'a>(terms: &'a [Term], dts: &'a [Vec<f32>]) -> impl Iterator<Item = GradTerm<'a>> {
    terms.iter().zip(dts).map(|(t, dt)| GradTerm { dy: dt, w: &t.a, out: t.rank })
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

/// Deposits a gradient of shape `dims` for `credit`'s variable (computed only where
/// there is one: see [`Param`]).
fn settle(credit: &Option<Tensor>, grad: Option<Vec<f32>>, dims: &[usize]) -> Result<()> {
    let grad = grad.map(|g| tensor(g, dims)).transpose()?;
    // A credited gradient is deposited and `None` comes back; without a credit none
    // was computed.
    WeightInput::settle(credit, grad);
    Ok(())
}

/// Deposits a weight gradient `[rows, cols]` for the param's variable.
fn deposit(param: &Param, grad: Option<Vec<f32>>, dims: &[usize]) -> Result<()> {
    settle(&param.credit, grad, dims)
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
    /// Each update's `u`, per projection (q, k, v, o).
    narrow: [Vec<Vec<f32>>; 4],
}

struct AttentionBlock {
    dims: AttentionDims,
    eps: f32,
    /// Norm, q, k, v, o.
    params: Vec<Param>,
    /// The updates of q, k, v, o.
    terms: Vec<Vec<Term>>,
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
        let [tq, tk, tv, to] = [0, 1, 2, 3].map(|i| &self.terms[i][..]);
        let (y, kept) = read_params([n, q, k, v, o], |[g, wq, wk, wv, wo]| {
            let normed = profile::time("rms_norm.forward", || rms_forward(x, g, self.eps));
            let ((qs, nq), (ks, nk), (vs, nv)) = profile::time("linear.forward", || {
                let project = |w: &[f32], t: &[Term], out: usize| project(&normed, w, t, (m, hidden, out), None);
                Ok::<_, candle_core::Error>((
                    project(wq, tq, q_out)?,
                    project(wk, tk, kv_out)?,
                    project(wv, tv, kv_out)?,
                ))
            })?;
            let (attended, heads) = profile::time("attention.forward", || {
                self.attention.forward_rows(self.rotation.as_ref(), &qs, &ks, &vs)
            })?;
            let (y, no) = profile::time("linear.forward", || project(&attended, wo, to, (m, q_out, hidden), Some(x)))?;
            Ok((y, AttentionKept { normed, heads, attended, narrow: [nq, nk, nv, no] }))
        })?;
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let AttentionDims { rows: m, hidden, q_out, kv_out } = self.dims;
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(kept) = kept.as_ref() else { bail!("attention block: backward before forward") };
        let [n, q, k, v, o] = [0, 1, 2, 3, 4].map(|i| &self.params[i]);
        let [tq, tk, tv, to] = [0, 1, 2, 3].map(|i| &self.terms[i][..]);
        let dx = read_params([n, q, k, v, o], |[g, wq, wk, wv, wo]| {
            read(x, |xs| {
                read(dy, |dy| {
                    let d_attended = profile::time("linear.backward", || {
                        let grad =
                            o.credit.is_some().then(|| linear::weight_grad(dy, &kept.attended, m, q_out, hidden));
                        deposit(o, grad.transpose()?, &[hidden, q_out])?;
                        let dts = updates_backward(to, &kept.narrow[3], &kept.attended, dy, (m, q_out, hidden))?;
                        let terms: Vec<_> = [GradTerm { dy, w: wo, out: hidden }]
                            .into_iter()
                            .chain(update_grad_terms(to, &dts))
                            .collect();
                        linear::input_grad(m, q_out, &terms)
                    })?;
                    let (dq, dk, dv) = profile::time("attention.backward", || {
                        self.attention.backward_rows(self.rotation.as_ref(), &kept.heads, &d_attended)
                    })?;
                    let d_normed = profile::time("linear.backward", || {
                        let projections = [(q, tq, &dq, q_out, 0), (k, tk, &dk, kv_out, 1), (v, tv, &dv, kv_out, 2)];
                        let mut dts = Vec::with_capacity(3);
                        for (p, t, d, out, i) in projections {
                            let grad = p.credit.is_some().then(|| linear::weight_grad(d, &kept.normed, m, hidden, out));
                            deposit(p, grad.transpose()?, &[out, hidden])?;
                            dts.push(updates_backward(t, &kept.narrow[i], &kept.normed, d, (m, hidden, out))?);
                        }
                        let terms: Vec<_> = [
                            GradTerm { dy: &dq, w: wq, out: q_out },
                            GradTerm { dy: &dk, w: wk, out: kv_out },
                            GradTerm { dy: &dv, w: wv, out: kv_out },
                        ]
                        .into_iter()
                        .chain([tq, tk, tv].into_iter().zip(&dts).flat_map(|(t, d)| update_grad_terms(t, d)))
                        .collect();
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
    /// Each update's `u`, per projection (gate, up, down).
    narrow: [Vec<Vec<f32>>; 3],
}

struct MlpBlock {
    dims: gated_mlp::Dims,
    eps: f32,
    /// Norm, gate, up, down.
    params: Vec<Param>,
    /// The updates of gate, up, down.
    terms: Vec<Vec<Term>>,
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
        let [tg, tu, td] = [0, 1, 2].map(|i| &self.terms[i][..]);
        let (y, kept) = read_params([n, gate, up, down], |[g, wg, wu, wd]| {
            let normed = profile::time("rms_norm.forward", || rms_forward(x, g, self.eps));
            let (hidden, gate, up, ng, nu) = profile::time("gated_mlp.forward", || {
                let (ng, nu) = (narrow_inputs(&normed, tg, m, width)?, narrow_inputs(&normed, tu, m, width)?);
                let extra = [update_products(tg, &ng, m, inter), update_products(tu, &nu, m, inter)];
                let (hidden, gate, up) = gated_mlp::forward_plus(&normed, wg, wu, self.dims, [&extra[0], &extra[1]])?;
                Ok::<_, candle_core::Error>((hidden, gate, up, ng, nu))
            })?;
            let (y, nd) = profile::time("linear.forward", || project(&hidden, wd, td, (m, inter, width), Some(x)))?;
            Ok((y, MlpKept { normed, gate, up, hidden, narrow: [ng, nu, nd] }))
        })?;
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let gated_mlp::Dims { rows: m, in_f: width, inter } = self.dims;
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(kept) = kept.as_ref() else { bail!("mlp block: backward before forward") };
        let [n, gate, up, down] = [0, 1, 2, 3].map(|i| &self.params[i]);
        let [tg, tu, td] = [0, 1, 2].map(|i| &self.terms[i][..]);
        let dx = read_params([n, gate, up, down], |[g, wg, wu, wd]| {
            read(x, |xs| {
                read(dy, |dy| {
                    let d_hidden = profile::time("linear.backward", || {
                        let grad =
                            down.credit.is_some().then(|| linear::weight_grad(dy, &kept.hidden, m, inter, width));
                        deposit(down, grad.transpose()?, &[width, inter])?;
                        let dts = updates_backward(td, &kept.narrow[2], &kept.hidden, dy, (m, inter, width))?;
                        let terms: Vec<_> = [GradTerm { dy, w: wd, out: width }]
                            .into_iter()
                            .chain(update_grad_terms(td, &dts))
                            .collect();
                        linear::input_grad(m, inter, &terms)
                    })?;
                    let d_normed = profile::time("gated_mlp.backward", || {
                        let (dg, du) = swiglu::backward(&kept.gate, &kept.up, &d_hidden, true, true);
                        let mut dts = Vec::with_capacity(2);
                        for (p, t, d, i) in [(gate, tg, &dg, 0), (up, tu, &du, 1)] {
                            let grad =
                                p.credit.is_some().then(|| linear::weight_grad(d, &kept.normed, m, width, inter));
                            deposit(p, grad.transpose()?, &[inter, width])?;
                            dts.push(updates_backward(t, &kept.narrow[i], &kept.normed, d, (m, width, inter))?);
                        }
                        let terms: Vec<_> =
                            [GradTerm { dy: &dg, w: wg, out: inter }, GradTerm { dy: &du, w: wu, out: inter }]
                                .into_iter()
                                .chain([tg, tu].into_iter().zip(&dts).flat_map(|(t, d)| update_grad_terms(t, d)))
                                .collect();
                        linear::input_grad(m, width, &terms)
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
                updates: [&[], &[], &[], &[]],
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
        let w = MlpWeights { norm: &norm, eps: 1e-5, gate: &gate, up: &up, down: &down, updates: [&[], &[], &[]] };
        let vars = [("norm", &norm), ("gate", &gate), ("up", &up), ("down", &down)];
        compare(&x, &vars, || mlp_block(&x, &w), || mlp_composed(&x, &w))
    }

    /// A trainable low-rank update `scale·(x·Aᵀ)·Bᵀ` of an `[out, in]` projection, with
    /// its factors (B not zero, so that every gradient is).
    fn update(rank: usize, out: usize, in_f: usize, scale: f64) -> Result<(LowRank, [Var; 2])> {
        let a = Var::randn(0f32, 0.3, (rank, in_f), &Device::Cpu)?;
        let b = Var::randn(0f32, 0.3, (out, rank), &Device::Cpu)?;
        Ok((LowRank { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale }, [a, b]))
    }

    #[test]
    fn the_attention_block_with_low_rank_updates_matches_its_composition() -> Result<()> {
        let dev = Device::Cpu;
        let (b, s, hidden, h, kvh, d) = (2, 70, 24, 4, 2, 8);
        let x = Var::randn(0f32, 1.0, (b, s, hidden), &dev)?;
        let norm = Var::randn(1f32, 0.2, hidden, &dev)?;
        let q = Var::randn(0f32, 0.3, (h * d, hidden), &dev)?;
        let k = Tensor::randn(0f32, 0.3, (kvh * d, hidden), &dev)?; // frozen, as under LoRA
        let v = Tensor::randn(0f32, 0.3, (kvh * d, hidden), &dev)?;
        let o = Tensor::randn(0f32, 0.3, (hidden, h * d), &dev)?;
        // Two updates on q (two adapters on one site), one on v and one on o, none on k.
        let (q1, q1v) = update(4, h * d, hidden, 2.0)?;
        let (q2, q2v) = update(2, h * d, hidden, 0.5)?;
        let (uv, uvv) = update(3, kvh * d, hidden, 1.5)?;
        let (uo, uov) = update(4, hidden, h * d, 0.7)?;
        let (qs, vs, os) = ([q1, q2], [uv], [uo]);
        let tables = crate::model::layers::Rope::new(d, 10_000.0)?.tables(0, s, candle_core::DType::F32, &dev)?;
        let pad: Vec<f32> = (0..b * s).map(|i| if i >= 2 * s - 10 { 0.0 } else { 1.0 }).collect();
        let mask = attention_mask(Some(&Tensor::from_vec(pad, (b, s), &dev)?), b, s, s, true, &dev)?;
        let w = AttentionWeights {
            norm: &norm,
            eps: 1e-5,
            q: &q,
            k: &k,
            v: &v,
            o: &o,
            updates: [&qs, &[], &vs, &os],
            heads: (h, kvh),
            rope: Some(tables.cos_sin()),
            mask: mask.as_ref(),
            scale: 1.0 / (d as f64).sqrt(),
        };
        let factors = [("q1.A", &q1v[0]), ("q1.B", &q1v[1]), ("q2.A", &q2v[0]), ("q2.B", &q2v[1])];
        let more = [("v.A", &uvv[0]), ("v.B", &uvv[1]), ("o.A", &uov[0]), ("o.B", &uov[1])];
        let vars: Vec<_> = [("norm", &norm), ("q", &q)].into_iter().chain(factors).chain(more).collect();
        compare(&x, &vars, || attention_block(&x, &w), || attention_composed(&x, &w))
    }

    #[test]
    fn the_mlp_block_with_low_rank_updates_matches_its_composition() -> Result<()> {
        let dev = Device::Cpu;
        let (hidden, inter) = (24, 40);
        let x = Var::randn(0f32, 1.0, (3, 45, hidden), &dev)?;
        let norm = Tensor::randn(1f32, 0.2, hidden, &dev)?;
        let gate = Tensor::randn(0f32, 0.3, (inter, hidden), &dev)?;
        let up = Tensor::randn(0f32, 0.3, (inter, hidden), &dev)?;
        let down = Tensor::randn(0f32, 0.3, (hidden, inter), &dev)?;
        let (ug, ugv) = update(4, inter, hidden, 2.0)?;
        let (uu, uuv) = update(8, inter, hidden, 0.25)?;
        let (ud, udv) = update(4, hidden, inter, 1.0)?;
        let (gs, us, ds) = ([ug], [uu], [ud]);
        let w = MlpWeights { norm: &norm, eps: 1e-5, gate: &gate, up: &up, down: &down, updates: [&gs, &us, &ds] };
        let vars = [
            ("gate.A", &ugv[0]),
            ("gate.B", &ugv[1]),
            ("up.A", &uuv[0]),
            ("up.B", &uuv[1]),
            ("down.A", &udv[0]),
            ("down.B", &udv[1]),
        ];
        compare(&x, &vars, || mlp_block(&x, &w), || mlp_composed(&x, &w))?;
        // Only the down projection updated: gate and up stay one fused product.
        let w = MlpWeights { updates: [&[], &[], &ds], ..w };
        compare(&x, &vars[4..], || mlp_block(&x, &w), || mlp_composed(&x, &w))
    }

    #[test]
    fn frozen_factors_get_no_gradient_and_factors_of_the_wrong_shape_are_refused() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 9, 16), &dev)?;
        let norm = Tensor::ones(16, candle_core::DType::F32, &dev)?;
        let gate = Tensor::randn(0f32, 0.3, (24, 16), &dev)?;
        let down = Tensor::randn(0f32, 0.3, (16, 24), &dev)?;
        let frozen = LowRank {
            a: Tensor::randn(0f32, 0.3, (4, 24), &dev)?,
            b: Tensor::randn(0f32, 0.3, (16, 4), &dev)?,
            scale: 2.0,
        };
        let ds = [frozen.clone()];
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &gate, down: &down, updates: [&[], &[], &ds] };
        let gf = crate::kernels::backward(&mlp_block(&x, &w)?.sum_all()?)?;
        let gc = crate::kernels::backward(&mlp_composed(&x, &w)?.sum_all()?)?;
        assert!(gf.get(&frozen.a).is_none() && gf.get(&frozen.b).is_none());
        let e = rel_err(gf.get(&x).expect("fused grad"), gc.get(&x).expect("composed grad"))?;
        assert!(e <= 1e-5, "relative error {e}");
        let swapped = [LowRank { a: frozen.b.clone(), b: frozen.a.clone(), scale: 2.0 }];
        let w = MlpWeights { updates: [&[], &[], &swapped], ..w };
        let err = mlp_block(&x, &w).expect_err("factors of the wrong shape");
        assert!(err.to_string().contains("expected [r, 24] and [16, r]"), "{err}");
        Ok(())
    }

    #[test]
    fn frozen_weights_get_no_gradient_and_the_input_still_does() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 9, 16), &dev)?;
        let norm = Tensor::ones(16, candle_core::DType::F32, &dev)?;
        let gate = Tensor::randn(0f32, 0.3, (24, 16), &dev)?;
        let up = Tensor::randn(0f32, 0.3, (24, 16), &dev)?;
        let down = Var::randn(0f32, 0.3, (16, 24), &dev)?; // the only trained weight
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &up, down: &down, updates: [&[], &[], &[]] };
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
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &up, down: &down, updates: [&[], &[], &[]] };
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
        let w = MlpWeights { norm: &norm, eps: 1e-6, gate: &gate, up: &gate, down: &down, updates: [&[], &[], &[]] };
        let err = mlp_block(&x, &w).expect_err("transposed down projection");
        assert!(err.to_string().contains("expected [16, 24]"), "{err}");
        Ok(())
    }
}
