//! Scaled dot-product attention with an additive mask and grouped-query heads, fused,
//! writing its output straight in the layout the output projection reads.
//!
//! Shapes: queries `[b, h, s, d]`, keys and values `[b, kvh, kv, d]` (`h` a multiple
//! of `kvh`; query head `i` uses key/value head `i / (h / kvh)`), the additive mask
//! `[b, 1, s, kv]` ([`crate::model::layers::attention_mask`]); output `[b, s, h·d]`.
//!
//! Each head's products run on one thread (`kernels/gemm.rs`), heads and blocks of
//! queries in parallel; keys and values are never repeated for grouped heads.
//! Forward: `P = softmax(Q·Kᵀ·scale + mask)`, `O = P·V`, written into the output's
//! rows; `P` lives only in a per-task buffer of `rows × kv`. Backward recomputes `P`
//! (no probability tensor is kept between forward and backward) and computes
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP - rowsum(dP ∘ P))·scale`, `dQ = dS·K`,
//! `dK = dSᵀ·Q`, one task per key/value group, summing its query heads' `dK` and `dV`
//! in head order. Only the gradients some input needs are returned.
//!
//! Keys that the mask hides from every query of a block (under a causal mask, the keys
//! after the block's last query; right padding) are left out of that block's products:
//! their probabilities are exactly 0, so leaving them out changes no value and halves
//! a causal head's work. Backward runs over fixed blocks of [`QUERY_BLOCK`] queries, so
//! its sums do not depend on the number of threads.

use super::exp::exp;
use super::gemm::{self, View};
use super::rope::{self, from_heads, rope_heads, split_heads, to_heads};
use super::{applies, profile, read, slice, tensor};
use super::{lanes, simd};
use crate::device::Precision;
use crate::model::layers::MASK_VALUE;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Mutex, PoisonError};

/// Queries per block in backward (a fixed size: the order of the sums into dK and dV
/// depends on it), and about the most per forward task.
const QUERY_BLOCK: usize = 64;

/// `softmax(q·kᵀ·scale + mask)·v`, output `[b, s, h·d]`; the products in `precision`.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    precision: Precision,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (kb, kvh, kv, kd) = k.dims4()?;
    if v.dims() != k.dims() || kb != b || kd != d {
        bail!("attention: queries {:?}, keys {:?}, values {:?} do not fit", q.dims(), k.dims(), v.dims())
    }
    if kvh == 0 || h % kvh != 0 {
        bail!("{h} query heads cannot share {kvh} kv heads")
    }
    if let Some(m) = mask {
        if m.dims() != [b, 1, s, kv] {
            bail!("attention mask is {:?}, expected [{b}, 1, {s}, {kv}]", m.dims())
        }
    }
    let fused = applies(q) && applies(k) && applies(v) && precision == Precision::Fp32;
    if fused && mask.is_none_or(applies) {
        let mask = mask.map(Tensor::contiguous).transpose()?;
        let op = Attention { b, h, kvh, s, kv, d, scale: scale as f32, mask, rows: None };
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    attention_heads_composed(q, k, v, mask, scale, precision)
}

/// [`attention_heads`] from candle primitives (the reference; CUDA and bf16).
pub fn attention_heads_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    precision: Precision,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let o = crate::model::layers::attention(q, k, v, mask, scale, precision)?;
    o.transpose(1, 2)?.reshape((b, s, h * d))
}

/// [`attention_heads`] from the projections' outputs: queries `[b, s, h·d]`, keys and
/// values `[b, s, kvh·d]` (as many keys as queries), queries and keys rotated by `rope`
/// (tables `cos`, `sin` `[s, d]`, see [`super::rope`]). Output `[b, s, h·d]`.
///
/// Fused, the split into heads and the rotation happen inside the op, whose backward
/// returns the gradients in the projections' layout: one graph node where the split
/// and rotations took three more, each with a zeroed gradient buffer and an addition
/// in backward.
#[allow(clippy::too_many_arguments)] // the attention's operands and settings
pub fn attention_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (h, kvh): (usize, usize),
    rope: Option<(&Tensor, &Tensor)>,
    mask: Option<&Tensor>,
    scale: f64,
    precision: Precision,
) -> Result<Tensor> {
    let (b, s, width) = q.dims3()?;
    if h == 0 || kvh == 0 || !width.is_multiple_of(h) || h % kvh != 0 {
        bail!("attention: {width} query features in {h} heads sharing {kvh} kv heads")
    }
    let d = width / h;
    if k.dims() != [b, s, kvh * d] || v.dims() != k.dims() {
        bail!("attention: queries {:?}, keys {:?}, values {:?} do not fit", q.dims(), k.dims(), v.dims())
    }
    if let Some((cos, sin)) = rope {
        if cos.dims() != [s, d] || sin.dims() != [s, d] || !d.is_multiple_of(2) {
            bail!("rope tables are {:?} and {:?}, for heads of {d} at {s} positions", cos.dims(), sin.dims())
        }
    }
    if let Some(m) = mask {
        if m.dims() != [b, 1, s, s] {
            bail!("attention mask is {:?}, expected [{b}, 1, {s}, {s}]", m.dims())
        }
    }
    let tables_apply = rope.is_none_or(|(c, si)| applies(c) && applies(si));
    let fused = applies(q) && applies(k) && applies(v) && precision == Precision::Fp32 && tables_apply;
    if fused && mask.is_none_or(applies) {
        let rotation =
            rope.map(|(c, si)| Ok::<_, candle_core::Error>((c.contiguous()?, si.contiguous()?))).transpose()?;
        let rows = Some(RowInputs { rotation, heads: Mutex::new(None) });
        let mask = mask.map(Tensor::contiguous).transpose()?;
        let op = Attention { b, h, kvh, s, kv: s, d, scale: scale as f32, mask, rows };
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    let (q, k) = match rope {
        Some((cos, sin)) => (rope_heads(q, h, cos, sin)?, rope_heads(k, kvh, cos, sin)?),
        None => (split_heads(q, h)?, split_heads(k, kvh)?),
    };
    attention_heads(&q, &k, &split_heads(v, kvh)?, mask, scale, precision)
}

pub(super) struct Attention {
    b: usize,
    h: usize,
    kvh: usize,
    s: usize,
    kv: usize,
    d: usize,
    scale: f32,
    mask: Option<Tensor>,
    /// Set when the op's inputs are the projections' outputs ([`attention_rows`]).
    rows: Option<RowInputs>,
}

/// How [`attention_rows`]'s inputs become heads, and the heads, kept for backward.
struct RowInputs {
    /// Queries and keys are rotated by these tables (`cos`, `sin`).
    rotation: Option<(Tensor, Tensor)>,
    /// Queries `[b, h, s, d]`, keys and values `[b, kvh, s, d]`, from forward.
    heads: Mutex<Option<[Vec<f32>; 3]>>,
}

/// The operands of one head: its queries `[s, d]` and its group's keys and values
/// `[kv, d]`.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl Attention {
    /// Query heads per key/value head.
    fn rep(&self) -> usize {
        self.h / self.kvh
    }

    /// Query head `hi` of batch element `bi`, from queries `[b, h, s, d]` and keys and
    /// values `[b, kvh, kv, d]`.
    fn head<'a>(&self, q: &'a [f32], k: &'a [f32], v: &'a [f32], bi: usize, hi: usize) -> Head<'a> {
        let (s, kv, d) = (self.s, self.kv, self.d);
        let g = bi * self.kvh + hi / self.rep();
        Head {
            q: &q[(bi * self.h + hi) * s * d..][..s * d],
            k: &k[g * kv * d..][..kv * d],
            v: &v[g * kv * d..][..kv * d],
        }
    }

    /// How many leading keys queries `q0..q0 + rows` of batch element `bi` can see:
    /// every later key is masked for all of them (all `kv` without a mask, or when a
    /// query sees nothing, which the composition spreads over every key).
    fn visible_keys(&self, mask: Option<&[f32]>, bi: usize, q0: usize, rows: usize) -> usize {
        let Some(mask) = mask else { return self.kv };
        let mut keys = 0;
        for r in q0..q0 + rows {
            let row = &mask[(bi * self.s + r) * self.kv..][..self.kv];
            match row.iter().rposition(|&m| m != MASK_VALUE) {
                Some(last) => keys = keys.max(last + 1),
                None => return self.kv,
            }
        }
        keys
    }

    /// `p = softmax(q·kᵀ·scale + mask)` for queries `q0..q0 + rows` of a head of batch
    /// element `bi` against its first `keys` keys (all others masked for these
    /// queries, see [`Self::visible_keys`]); `p` is `[rows, keys]`.
    fn probabilities(
        &self,
        p: &mut [f32],
        head: &Head<'_>,
        bi: usize,
        q0: usize,
        keys: usize,
        mask: Option<&[f32]>,
    ) -> Result<()> {
        let d = self.d;
        let rows = p.len() / keys;
        let q = View::rows(&head.q[q0 * d..], rows, d, d);
        gemm::matmul(p, keys, q, View::rows(head.k, keys, d, d).t(), false)?;
        simd::vectorized(
            #[inline(always)]
            || self.softmax_rows(p, bi, q0, keys, mask),
        );
        Ok(())
    }

    /// Scales, masks and normalizes `p`'s rows of `keys` scores in place (see
    /// [`Self::probabilities`]).
    #[inline(always)]
    fn softmax_rows(&self, p: &mut [f32], bi: usize, q0: usize, keys: usize, mask: Option<&[f32]>) {
        let kv = self.kv;
        for (r, row) in p.chunks_mut(keys).enumerate() {
            match mask {
                Some(m) => {
                    let mask_row = &m[(bi * self.s + q0 + r) * kv..][..keys];
                    row.iter_mut().zip(mask_row).for_each(|(x, m)| *x = *x * self.scale + m);
                }
                None => row.iter_mut().for_each(|x| *x *= self.scale),
            }
            // A masked score (`MASK_VALUE` added) is below every visible one by ~3.4e38:
            // its exponential is exactly 0, as in the composition. A row with nothing
            // visible has its maximum among the masked scores, as there too.
            let max = lanes::max(row);
            row.iter_mut().for_each(|x| *x = exp(*x - max));
            let inv = 1.0 / lanes::sum(row);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    /// Queries per forward task: a divisor of `s`, small enough that the `b·s/rows`
    /// tasks keep every thread busy and that a causal block leaves out the keys after
    /// it (at most about [`QUERY_BLOCK`]).
    fn query_block(&self) -> usize {
        let per_batch = (4 * rayon::current_num_threads()).div_ceil(self.b).max(1);
        let mut rows = self.s.div_ceil(per_batch).clamp(1, QUERY_BLOCK);
        while !self.s.is_multiple_of(rows) {
            rows += 1;
        }
        rows
    }

    /// Runs `f` with the mask's elements (`[b, 1, s, kv]`), if any.
    fn with_mask<R>(&self, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
        match &self.mask {
            Some(m) => read(m, |m| f(Some(m))),
            None => f(None),
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        profile::time("attention.forward", || {
            let (q, k, v) = (slice(q, ql)?, slice(k, kl)?, slice(v, vl)?);
            let out = match &self.rows {
                None => self.forward_heads(q, k, v)?,
                Some(rows) => {
                    let (out, heads) = self.forward_rows(rows.rotation.as_ref(), q, k, v)?;
                    *rows.heads.lock().unwrap_or_else(PoisonError::into_inner) = Some(heads);
                    out
                }
            };
            Ok((CpuStorage::F32(out), Shape::from((self.b, self.s, self.h * self.d))))
        })
    }

    #[allow(clippy::type_complexity)] // the trait's signature
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::time("attention.backward", || {
            let (dq, dk, dv) = match &self.rows {
                None => read(q, |q| read(k, |k| read(v, |v| read(d_out, |d_o| self.backward_heads(q, k, v, d_o))))),
                Some(rows) => {
                    let kept = rows.heads.lock().unwrap_or_else(PoisonError::into_inner);
                    let Some(heads) = kept.as_ref() else { bail!("attention: backward before forward") };
                    read(d_out, |d_o| self.backward_rows(rows.rotation.as_ref(), heads, d_o))
                }
            }?;
            let wrap = |want: bool, data: Vec<f32>, like: &Tensor| match want {
                true => tensor(data, like.dims()).map(Some),
                false => Ok(None),
            };
            Ok((wrap(q.track_op(), dq, q)?, wrap(k.track_op(), dk, k)?, wrap(v.track_op(), dv, v)?))
        })
    }
}

impl Attention {
    /// The op for [`attention_rows`]'s operands on slices, for an op that computes
    /// attention inside it: `b` sequences of `s` positions, `h` query heads sharing
    /// `kvh` key/value heads of `d` features, an additive mask `[b, 1, s, s]`.
    pub(super) fn over_rows(
        b: usize,
        s: usize,
        (h, kvh): (usize, usize),
        d: usize,
        scale: f32,
        mask: Option<Tensor>,
    ) -> Self {
        Attention { b, h, kvh, s, kv: s, d, scale, mask, rows: None }
    }

    /// The output `[b, s, h·d]` from the projections' outputs (queries `[b, s, h·d]`,
    /// keys and values `[b, s, kvh·d]`), rotated by `rotation` (`cos`, `sin`); with the
    /// heads `[q, k, v]` (rotated, in the heads' layout) that [`Self::backward_rows`]
    /// takes.
    pub(super) fn forward_rows(
        &self,
        rotation: Option<&(Tensor, Tensor)>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, [Vec<f32>; 3])> {
        let (b, s, d) = (self.b, self.s, self.d);
        let [qh, kh] = rope::with_tables(rotation, |t| {
            Ok([to_heads(q, (b, s, self.h, d), t), to_heads(k, (b, s, self.kvh, d), t)])
        })?;
        let vh = to_heads(v, (b, s, self.kvh, d), None);
        let out = self.forward_heads(&qh, &kh, &vh)?;
        Ok((out, [qh, kh, vh]))
    }

    /// `(dQ, dK, dV)` in the projections' layout, from [`Self::forward_rows`]'s heads
    /// and the output's gradient `d_out` `[b, s, h·d]`.
    #[allow(clippy::type_complexity)]
    pub(super) fn backward_rows(
        &self,
        rotation: Option<&(Tensor, Tensor)>,
        [qh, kh, vh]: &[Vec<f32>; 3],
        d_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (dq, dk, dv) = self.backward_heads(qh, kh, vh, d_out)?;
        let (b, s, d) = (self.b, self.s, self.d);
        rope::with_tables(rotation, |t| {
            let dq = from_heads(&dq, (b, s, self.h, d), t);
            let dk = from_heads(&dk, (b, s, self.kvh, d), t);
            Ok((dq, dk, from_heads(&dv, (b, s, self.kvh, d), None)))
        })
    }

    /// The output `[b, s, h·d]` from queries `[b, h, s, d]` and keys and values
    /// `[b, kvh, kv, d]`.
    fn forward_heads(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let (h, s, d) = (self.h, self.s, self.d);
        let mut out = vec![0f32; self.b * s * h * d];
        let rows = self.query_block();
        // Each task: `rows` queries of one batch element, every head; writes its rows
        // of the output `[b, s, h·d]`.
        self.with_mask(|mask| {
            out.par_chunks_mut(rows * h * d).enumerate().try_for_each(|(task, out)| {
                let (bi, q0) = (task * rows / s, task * rows % s);
                let keys = self.visible_keys(mask, bi, q0, rows);
                let mut p = vec![0f32; rows * keys];
                for hi in 0..h {
                    let head = self.head(q, k, v, bi, hi);
                    self.probabilities(&mut p, &head, bi, q0, keys, mask)?;
                    let probs = View::rows(&p, rows, keys, keys);
                    gemm::matmul(&mut out[hi * d..], h * d, probs, View::rows(head.v, keys, d, d), false)?;
                }
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// `(dQ, dK, dV)` in the heads' layout for the output gradient `d_out` `[b, s, h·d]`.
    #[allow(clippy::type_complexity)]
    fn backward_heads(&self, q: &[f32], k: &[f32], v: &[f32], d_out: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (h, s, kv, d, rep) = (self.h, self.s, self.kv, self.d, self.rep());
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        self.with_mask(|mask| {
            // Each task: one key/value group of one batch element, its `rep` query heads
            // one after the other and each head's query blocks in order (so the sums
            // into dK and dV, which start at zero, keep one order).
            let chunks = dq.par_chunks_mut(rep * s * d).zip(dk.par_chunks_mut(kv * d)).zip(dv.par_chunks_mut(kv * d));
            chunks.enumerate().try_for_each(|(g, ((dq, dk), dv))| {
                let bi = g / self.kvh;
                let block = QUERY_BLOCK.min(s);
                let mut p = vec![0f32; block * kv];
                let mut ds = vec![0f32; block * kv];
                for (ri, dq) in dq.chunks_mut(s * d).enumerate() {
                    let hi = g % self.kvh * rep + ri;
                    let head = self.head(q, k, v, bi, hi);
                    for (q0, dq) in (0..s).step_by(block).zip(dq.chunks_mut(block * d)) {
                        let rows = dq.len() / d;
                        let keys = self.visible_keys(mask, bi, q0, rows);
                        let (p, ds) = (&mut p[..rows * keys], &mut ds[..rows * keys]);
                        self.probabilities(p, &head, bi, q0, keys, mask)?;
                        let d_o = View::rows(&d_out[((bi * s + q0) * h + hi) * d..], rows, d, h * d);
                        let probs = View::rows(p, rows, keys, keys);
                        let (k_vis, v_vis) = (View::rows(head.k, keys, d, d), View::rows(head.v, keys, d, d));
                        gemm::matmul(dv, d, probs.t(), d_o, true)?;
                        gemm::matmul(ds, keys, d_o, v_vis.t(), false)?;
                        softmax_backward(ds, p, keys, self.scale);
                        let d_s = View::rows(ds, rows, keys, keys);
                        gemm::matmul(dq, d, d_s, k_vis, false)?;
                        let q_block = View::rows(&head.q[q0 * d..], rows, d, d);
                        gemm::matmul(dk, d, d_s.t(), q_block, true)?;
                    }
                }
                Ok(())
            })
        })?;
        Ok((dq, dk, dv))
    }
}

/// `dS = P ∘ (dP - rowsum(dP ∘ P))·scale`, in place over `dP`.
fn softmax_backward(dp: &mut [f32], p: &[f32], kv: usize, scale: f32) {
    simd::vectorized(
        #[inline(always)]
        || {
            for (dp, p) in dp.chunks_mut(kv).zip(p.chunks(kv)) {
                let dot = lanes::dot(dp, p);
                dp.iter_mut().zip(p).for_each(|(x, p)| *x = p * (*x - dot) * scale);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use crate::model::layers::attention_mask;
    use candle_core::{Device, Var};

    /// Grouped heads, padding and a key prefix: fused and composed agree on the
    /// output and on the gradients of queries, keys and values.
    #[test]
    fn matches_the_composed_attention_and_its_gradients() -> Result<()> {
        // Short sequences (one block of queries) and long ones (several blocks in
        // backward, whose later keys are left out of the earlier blocks).
        for (s, prefix) in [(5, 2), (2 * QUERY_BLOCK + 7, 3)] {
            compare_with_composed(s, prefix)?;
        }
        Ok(())
    }

    fn compare_with_composed(s: usize, prefix: usize) -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, kvh, d) = (2, 4, 2, 8);
        let kv = s + prefix;
        let q = Var::randn(0f32, 1.0, (b, h, s, d), &dev)?;
        let k = Var::randn(0f32, 1.0, (b, kvh, kv, d), &dev)?;
        let v = Var::randn(0f32, 1.0, (b, kvh, kv, d), &dev)?;
        // The second row: its last two tokens are padding.
        let pad: Vec<f32> = (0..b * kv).map(|i| if i >= 2 * kv - 2 { 0.0 } else { 1.0 }).collect();
        let pad = Tensor::from_vec(pad, (b, kv), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (b, s, h * d), &dev)?;
        for mask in [None, attention_mask(Some(&pad), b, s, kv, true, &dev)?] {
            let scale = 1.0 / (d as f64).sqrt();
            let yf = attention_heads(&q, &k, &v, mask.as_ref(), scale, Precision::Fp32)?;
            let yc = attention_heads_composed(&q, &k, &v, mask.as_ref(), scale, Precision::Fp32)?;
            assert!(rel_err(&yf, &yc)? <= 1e-5, "forward {}", rel_err(&yf, &yc)?);
            let gf = (yf * &probe)?.sum_all()?.backward()?;
            let gc = (yc * &probe)?.sum_all()?.backward()?;
            for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                let e = rel_err(gf.get(var).expect("fused grad"), gc.get(var).expect("composed grad"))?;
                assert!(e <= 1e-5, "d{name}: relative error {e}");
            }
        }
        Ok(())
    }

    /// From the projections' layout, with and without the rotation, grouped heads and
    /// padding: fused and composed (split, rotation and attention from candle
    /// primitives) agree on the output and the projections' gradients.
    #[test]
    fn rows_match_the_composed_split_rotation_and_attention() -> Result<()> {
        let dev = Device::Cpu;
        for s in [6, QUERY_BLOCK + 9] {
            let (b, h, kvh, d) = (2, 4, 2, 8);
            let q = Var::randn(0f32, 1.0, (b, s, h * d), &dev)?;
            let k = Var::randn(0f32, 1.0, (b, s, kvh * d), &dev)?;
            let v = Var::randn(0f32, 1.0, (b, s, kvh * d), &dev)?;
            let tables = crate::model::layers::Rope::new(d, 10_000.0)?.tables(0, s, candle_core::DType::F32, &dev)?;
            let (cos, sin) = tables.cos_sin();
            let pad: Vec<f32> = (0..b * s).map(|i| if i >= 2 * s - 2 { 0.0 } else { 1.0 }).collect();
            let pad = Tensor::from_vec(pad, (b, s), &dev)?;
            let probe = Tensor::randn(0f32, 1.0, (b, s, h * d), &dev)?;
            for mask in [None, attention_mask(Some(&pad), b, s, s, true, &dev)?] {
                for rope in [Some((cos, sin)), None] {
                    let scale = 1.0 / (d as f64).sqrt();
                    let yf = attention_rows(&q, &k, &v, (h, kvh), rope, mask.as_ref(), scale, Precision::Fp32)?;
                    let (qh, kh) = match rope {
                        Some((c, si)) => {
                            (rope::rope_heads_composed(&q, h, c, si)?, rope::rope_heads_composed(&k, kvh, c, si)?)
                        }
                        None => (rope::split_heads_composed(&q, h)?, rope::split_heads_composed(&k, kvh)?),
                    };
                    let vh = rope::split_heads_composed(&v, kvh)?;
                    let yc = attention_heads_composed(&qh, &kh, &vh, mask.as_ref(), scale, Precision::Fp32)?;
                    let what = format!("s {s}, rotated {}, masked {}", rope.is_some(), mask.is_some());
                    assert!(rel_err(&yf, &yc)? <= 1e-5, "{what}: forward {}", rel_err(&yf, &yc)?);
                    let gf = (yf * &probe)?.sum_all()?.backward()?;
                    let gc = (yc * &probe)?.sum_all()?.backward()?;
                    for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                        let e = rel_err(gf.get(var).expect("fused grad"), gc.get(var).expect("composed grad"))?;
                        assert!(e <= 1e-5, "{what}: d{name}: relative error {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// A block of causal queries sees the prefix and the keys up to its last query; a
    /// padded key at the end is hidden from all; a query that sees nothing needs all.
    #[test]
    fn blocks_leave_out_the_keys_no_query_sees() -> Result<()> {
        let dev = Device::Cpu;
        let (s, prefix) = (10, 2);
        let kv = s + prefix;
        let pad = Tensor::from_vec([[1f32; 12], [1f32; 12]].concat(), (2, kv), &dev)?;
        let op = |mask: Tensor| Attention { b: 2, h: 1, kvh: 1, s, kv, d: 4, scale: 1.0, mask: Some(mask), rows: None };
        let causal = op(attention_mask(Some(&pad), 2, s, kv, true, &dev)?.expect("a causal mask"));
        causal.with_mask(|m| {
            assert_eq!(causal.visible_keys(m, 0, 0, 3), prefix + 3);
            assert_eq!(causal.visible_keys(m, 1, 4, 6), kv);
            Ok(())
        })?;
        let mut hidden = vec![0f32; 2 * s * kv];
        (0..2 * s).for_each(|r| hidden[r * kv + kv - 1] = MASK_VALUE); // the last key, for everyone
        (0..kv).for_each(|j| hidden[(s + 5) * kv + j] = MASK_VALUE); // batch 1, query 5 sees nothing
        let masked = op(Tensor::from_vec(hidden, (2, 1, s, kv), &dev)?);
        masked.with_mask(|m| {
            assert_eq!(masked.visible_keys(m, 0, 0, s), kv - 1);
            assert_eq!(masked.visible_keys(m, 1, 4, 2), kv);
            Ok(())
        })
    }

    #[test]
    fn frozen_keys_and_values_get_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let q = Var::randn(0f32, 1.0, (1, 2, 3, 4), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 1, 3, 4), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, 1, 3, 4), &dev)?;
        let y = attention_heads(&q, &k, &v, None, 0.5, Precision::Fp32)?;
        let g = y.sum_all()?.backward()?;
        assert!(g.get(&q).is_some() && g.get(&k).is_none() && g.get(&v).is_none());
        Ok(())
    }
}
