//! Scaled dot-product attention with an additive mask and grouped-query heads, fused,
//! writing its output straight in the layout the output projection reads.
//!
//! Shapes: queries `[b, h, s, d]`, keys and values `[b, kvh, kv, d]` (`h` a multiple
//! of `kvh`; query head `i` uses key/value head `i / (h / kvh)`), the additive mask
//! `[b, 1, s, kv]` ([`crate::model::layers::attention_mask`]); output `[b, s, h·d]`.
//!
//! The heads that share a key/value head are one matrix of `(h/kvh)·s` rows, so each
//! product is one batched GEMM over `b·kvh` groups and keys and values are never
//! repeated. Forward: `P = softmax(Q·Kᵀ·scale + mask)`, `O = P·V`. Backward recomputes
//! `P` (no probability tensor is kept between forward and backward) and computes
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP - rowsum(dP ∘ P))·scale`, `dQ = dS·K`,
//! `dK = dSᵀ·Q`, each only when that input needs a gradient. The sums over the query
//! heads of a group fall out of the grouped products.

use super::{applies, profile, read, rows_per_task, slice, tensor};
use crate::device::Precision;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, StorageRef, Tensor};
use rayon::prelude::*;

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
        let op =
            Attention { b, h, kvh, s, kv, d, scale: scale as f32, mask: mask.map(Tensor::contiguous).transpose()? };
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

struct Attention {
    b: usize,
    h: usize,
    kvh: usize,
    s: usize,
    kv: usize,
    d: usize,
    scale: f32,
    mask: Option<Tensor>,
}

impl Attention {
    /// Groups (`b·kvh`) and the rows of each (`(h/kvh)·s`).
    fn groups(&self) -> (usize, usize) {
        (self.b * self.kvh, self.h / self.kvh * self.s)
    }

    /// `P = softmax(Q·Kᵀ·scale + mask)`, `[groups, rows, kv]`.
    fn probabilities(&self, q: &CpuStorage, ql: &Layout, k: &CpuStorage, kl: &Layout) -> Result<Vec<f32>> {
        let (g, rows) = self.groups();
        let lhs = Layout::contiguous_with_offset((g, rows, self.d), ql.start_offset());
        let rhs = Layout::contiguous_with_offset((g, self.kv, self.d), kl.start_offset()).transpose(1, 2)?;
        let CpuStorage::F32(mut p) = q.matmul(k, (g, rows, self.kv, self.d), &lhs, &rhs)? else {
            bail!("attention: scores are not f32")
        };
        match &self.mask {
            Some(m) => read(m, |mask| {
                self.softmax(&mut p, Some(mask));
                Ok(())
            })?,
            None => self.softmax(&mut p, None),
        }
        Ok(p)
    }

    /// Row-wise `softmax(x·scale + mask)` in place; row `r` of group `gi` is query
    /// `r % s` of batch element `gi / kvh`.
    fn softmax(&self, p: &mut [f32], mask: Option<&[f32]>) {
        let (kv, s) = (self.kv, self.s);
        let rows_per_batch = self.h * s;
        let chunk = rows_per_task(p.len() / kv) * kv;
        p.par_chunks_mut(chunk).enumerate().for_each(|(task, block)| {
            for (k, row) in block.chunks_mut(kv).enumerate() {
                let r = task * (chunk / kv) + k;
                let mask_row = mask.map(|m| &m[((r / rows_per_batch) * s + r % s) * kv..][..kv]);
                let mut max = f32::NEG_INFINITY;
                for (j, x) in row.iter_mut().enumerate() {
                    *x = *x * self.scale + mask_row.map_or(0.0, |m| m[j]);
                    max = max.max(*x);
                }
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
        });
    }

    /// `[b, h, s, d]` rows → `[b, s, h, d]` (`forward = true`) or back.
    fn swap_heads(&self, src: &[f32], forward: bool) -> Vec<f32> {
        let (h, s, d) = (self.h, self.s, self.d);
        let mut out = vec![0f32; src.len()];
        let chunk = rows_per_task(src.len() / d) * d;
        out.par_chunks_mut(chunk).enumerate().for_each(|(task, rows)| {
            for (k, dst) in rows.chunks_mut(d).enumerate() {
                let row = task * (chunk / d) + k;
                let from = if forward {
                    // dst row (bi, si, hi) ← src row (bi, hi, si)
                    let (bi, si, hi) = (row / (s * h), row / h % s, row % h);
                    (bi * h + hi) * s + si
                } else {
                    // dst row (bi, hi, si) ← src row (bi, si, hi)
                    let (bi, hi, si) = (row / (h * s), row / s % h, row % s);
                    (bi * s + si) * h + hi
                };
                dst.copy_from_slice(&src[from * d..][..d]);
            }
        });
        out
    }
}

/// The CPU storage of a tensor (contiguous), as the products need it.
fn cpu(t: &Tensor) -> Result<(StorageRef<'_>, Layout)> {
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() || !matches!(&*storage, Storage::Cpu(_)) {
        bail!("attention: expected a contiguous CPU tensor")
    }
    let layout = layout.clone();
    Ok((storage, layout))
}

fn as_cpu(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("attention: expected a CPU tensor"),
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
            if !(ql.is_contiguous() && kl.is_contiguous() && vl.is_contiguous()) {
                bail!("attention: operands must be contiguous")
            }
            let (g, rows) = self.groups();
            let p = CpuStorage::F32(self.probabilities(q, ql, k, kl)?);
            let lhs = Layout::contiguous((g, rows, self.kv));
            let rhs = Layout::contiguous_with_offset((g, self.kv, self.d), vl.start_offset());
            let o = p.matmul(v, (g, rows, self.d, self.kv), &lhs, &rhs)?;
            let out = self.swap_heads(slice(&o, &Layout::contiguous((g, rows, self.d)))?, true);
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
            let (want_q, want_k, want_v) = (q.track_op(), k.track_op(), v.track_op());
            let (g, rows) = self.groups();
            let (kv, d) = (self.kv, self.d);
            let (qs, ql) = cpu(q)?;
            let (ks, kl) = cpu(k)?;
            let (vs, vl) = cpu(v)?;
            let (qs, ks, vs) = (as_cpu(&qs)?, as_cpu(&ks)?, as_cpu(&vs)?);
            let p = CpuStorage::F32(self.probabilities(qs, &ql, ks, &kl)?);
            let d_o = CpuStorage::F32(read(d_out, |d_out| Ok(self.swap_heads(d_out, false)))?);
            let (p_l, p_t) = (Layout::contiguous((g, rows, kv)), Layout::contiguous((g, rows, kv)).transpose(1, 2)?);
            let do_l = Layout::contiguous((g, rows, d));
            let dv = match want_v {
                true => Some(p.matmul(&d_o, (g, kv, d, rows), &p_t, &do_l)?),
                false => None,
            };
            let (mut dq, mut dk) = (None, None);
            if want_q || want_k {
                let v_t = Layout::contiguous_with_offset((g, kv, d), vl.start_offset()).transpose(1, 2)?;
                let CpuStorage::F32(mut ds) = d_o.matmul(vs, (g, rows, kv, d), &do_l, &v_t)? else {
                    bail!("attention: gradients are not f32")
                };
                softmax_backward(&mut ds, slice(&p, &p_l)?, kv, self.scale);
                let ds = CpuStorage::F32(ds);
                if want_q {
                    let k_l = Layout::contiguous_with_offset((g, kv, d), kl.start_offset());
                    dq = Some(ds.matmul(ks, (g, rows, d, kv), &p_l, &k_l)?);
                }
                if want_k {
                    let q_l = Layout::contiguous_with_offset((g, rows, d), ql.start_offset());
                    dk = Some(ds.matmul(qs, (g, kv, d, rows), &p_t, &q_l)?);
                }
            }
            let wrap = |s: Option<CpuStorage>, like: &Tensor| -> Result<Option<Tensor>> {
                match s {
                    Some(CpuStorage::F32(data)) => Ok(Some(tensor(data, like.dims())?)),
                    Some(_) => bail!("attention: gradients are not f32"),
                    None => Ok(None),
                }
            };
            Ok((wrap(dq, q)?, wrap(dk, k)?, wrap(dv, v)?))
        })
    }
}

/// `dS = P ∘ (dP - rowsum(dP ∘ P))·scale`, in place over `dP`.
fn softmax_backward(dp: &mut [f32], p: &[f32], kv: usize, scale: f32) {
    let chunk = rows_per_task(dp.len() / kv) * kv;
    dp.par_chunks_mut(chunk).zip(p.par_chunks(chunk)).for_each(|(dp, p)| {
        for (dp, p) in dp.chunks_mut(kv).zip(p.chunks(kv)) {
            let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
            dp.iter_mut().zip(p).for_each(|(x, p)| *x = p * (*x - dot) * scale);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use crate::model::layers::attention_mask;
    use candle_core::{DType, Device, Var};

    /// Grouped heads, padding and a key prefix: fused and composed agree on the
    /// output and on the gradients of queries, keys and values.
    #[test]
    fn matches_the_composed_attention_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, kvh, s, prefix, d) = (2, 4, 2, 5, 2, 8);
        let kv = s + prefix;
        let q = Var::randn(0f32, 1.0, (b, h, s, d), &dev)?;
        let k = Var::randn(0f32, 1.0, (b, kvh, kv, d), &dev)?;
        let v = Var::randn(0f32, 1.0, (b, kvh, kv, d), &dev)?;
        // The second row: its last two tokens are padding.
        let pad = Tensor::new(&[[1u32; 7], [1, 1, 1, 1, 1, 0, 0]], &dev)?.to_dtype(DType::F32)?;
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
