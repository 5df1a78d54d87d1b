//! The host op `adamw_step` (SDK 1.2): one AdamW update of one parameter, in place.
//!
//! The update is the one the first-party AdamW plugin writes with element-wise host ops
//! (`affine`, `add`, `sqr`, `sqrt`, `div`, `sub`, then `assign` ×3), and gives the same
//! bits: the same f32 operations in the same order, each `affine(a, b)` being candle's
//! `x * (a as f32) + (b as f32)`. Op by op, that update makes about fifteen full-size
//! temporaries per parameter; here f32 tensors on the CPU are updated in one parallel
//! pass over memory with no allocation ([`fused_cpu`]). Other dtypes and devices run the
//! same ops as candle tensor ops and copy the results in ([`composed`]).
//!
//! In place without `unsafe`: candle's in-place custom ops lend the `&mut` storage of
//! the tensor they are called on, and nest. The op on `m` calls an op on `v` from inside
//! its `cpu_fwd`, which calls one on `p` (with `g` as a source), so the innermost op
//! holds all four slices. The four tensors are checked to be distinct first, since a
//! nested op on a storage already locked would wait forever.

use crate::bail;
use crate::error::Result;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use stagecraft_sdk::AdamWStep;
use std::cell::Cell;

/// Elements per parallel task: 64 KiB of each of the four tensors.
const CHUNK: usize = 1 << 14;

/// Applies one AdamW update: `m`, `v`, then `p` are overwritten from `g`. Shapes,
/// dtypes, devices and distinctness are checked before anything is written.
pub(crate) fn adamw_step(p: &Var, g: &Tensor, m: &Var, v: &Var, hp: &AdamWStep) -> Result<()> {
    if hp.step == 0 {
        bail!("step counts from 1, got 0");
    }
    let named = [("param", p.as_tensor()), ("grad", g), ("exp_avg", m.as_tensor()), ("exp_avg_sq", v.as_tensor())];
    if named.iter().any(|(_, t)| t.dims() != p.dims()) {
        let shapes: Vec<String> = named.iter().map(|(n, t)| format!("{n} {:?}", t.dims())).collect();
        bail!("shapes differ: {}", shapes.join(", "));
    }
    if named.iter().any(|(_, t)| t.dtype() != p.dtype()) || !p.dtype().is_float() {
        let dtypes: Vec<String> = named.iter().map(|(n, t)| format!("{n} {:?}", t.dtype())).collect();
        bail!("needs four tensors of one float dtype, got {}", dtypes.join(", "));
    }
    if named.iter().any(|(_, t)| !t.device().same_device(p.device())) {
        bail!("param, grad, exp_avg and exp_avg_sq must be on one device");
    }
    let ids: Vec<(&str, usize)> = named.iter().map(|(n, t)| (*n, storage_id(t))).collect();
    for (i, (a, id)) in ids.iter().enumerate() {
        if let Some((b, _)) = ids[i + 1..].iter().find(|(_, other)| other == id) {
            bail!("{a} and {b} share memory: they must be four distinct tensors");
        }
    }
    if p.elem_count() == 0 {
        return Ok(());
    }
    let vars_contiguous = [p, m, v].iter().all(|t| t.layout().contiguous_offsets().is_some());
    if p.device().is_cpu() && p.dtype() == candle_core::DType::F32 && vars_contiguous {
        let g = g.contiguous()?; // a copy only for a strided gradient
        return fused_cpu(p.as_tensor(), &g, m.as_tensor(), v.as_tensor(), Coeffs::new(hp));
    }
    // Other dtypes (bf16, f16, f64) and devices: correct, with temporaries. A CUDA kernel
    // (one launch per parameter, through `InplaceOp1::cuda_fwd` as on the CPU) belongs
    // here, behind the same op.
    composed(p, g, m, v, hp)
}

/// Which storage a tensor uses (tensors that share one have the same id).
fn storage_id(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    std::ptr::from_ref(&*storage).addr()
}

/// The update with candle ops, in the op-by-op order, then copied into the variables.
fn composed(p: &Var, g: &Tensor, m: &Var, v: &Var, hp: &AdamWStep) -> Result<()> {
    let (scale_m, scale_v) = hp.bias_corrections();
    let (pt, gt, mt, vt) = (p.as_tensor().detach(), g.detach(), m.as_tensor().detach(), v.as_tensor().detach());
    let next_m = mt.affine(hp.beta1, 0.0)?.add(&gt.affine(1.0 - hp.beta1, 0.0)?)?;
    let next_v = vt.affine(hp.beta2, 0.0)?.add(&gt.sqr()?.affine(1.0 - hp.beta2, 0.0)?)?;
    let m_hat = next_m.affine(scale_m, 0.0)?;
    let v_hat = next_v.affine(scale_v, 0.0)?;
    let decayed = pt.affine(1.0 - hp.lr * hp.weight_decay, 0.0)?;
    let update = m_hat.div(&v_hat.sqrt()?.affine(1.0, hp.eps)?)?.affine(hp.lr, 0.0)?;
    let next_p = decayed.sub(&update)?;
    m.set(&next_m)?;
    v.set(&next_v)?;
    p.set(&next_p)?;
    Ok(())
}

/// The update's f32 constants, rounded as candle's `affine` rounds its arguments.
#[derive(Debug, Clone, Copy)]
struct Coeffs {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    eps: f32,
    lr: f32,
}

impl Coeffs {
    fn new(hp: &AdamWStep) -> Self {
        let (scale_m, scale_v) = hp.bias_corrections();
        Coeffs {
            beta1: hp.beta1 as f32,
            one_minus_beta1: (1.0 - hp.beta1) as f32,
            beta2: hp.beta2 as f32,
            one_minus_beta2: (1.0 - hp.beta2) as f32,
            scale_m: scale_m as f32,
            scale_v: scale_v as f32,
            decay: (1.0 - hp.lr * hp.weight_decay) as f32,
            eps: hp.eps as f32,
            lr: hp.lr as f32,
        }
    }
}

/// The update of one run of elements. Each line is one op of the op-by-op update, in
/// its order; `x * a + 0.0` is `affine(a, 0)` (the `+ 0.0` turns -0 into +0 as candle
/// does), and `affine(1, eps)` is `x + eps` exactly.
fn update(c: Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let next_m = (*m * c.beta1 + 0.0) + (g * c.one_minus_beta1 + 0.0);
        let next_v = (*v * c.beta2 + 0.0) + ((g * g) * c.one_minus_beta2 + 0.0);
        let m_hat = next_m * c.scale_m + 0.0;
        let v_hat = next_v * c.scale_v + 0.0;
        let decayed = *p * c.decay + 0.0;
        let denom = v_hat.sqrt() + c.eps;
        let step = (m_hat / denom) * c.lr + 0.0;
        *m = next_m;
        *v = next_v;
        *p = decayed - step;
    }
}

/// The update of f32 CPU tensors in place, in parallel chunks. `g` must be contiguous.
fn fused_cpu(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: Coeffs) -> Result<()> {
    Ok(m.inplace_op1(&OnM { v, p, g, c })?)
}

/// The elements of an f32 CPU storage that a contiguous layout covers.
fn slice_mut<'s>(s: &'s mut CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'s mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("adamw_step: {what} is not contiguous") };
    match s {
        CpuStorage::F32(data) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("adamw_step: {what} is not f32"),
    }
}

/// Step 1: lends `m`'s storage, then runs [`OnV`] on `v`.
struct OnM<'a> {
    v: &'a Tensor,
    p: &'a Tensor,
    g: &'a Tensor,
    c: Coeffs,
}

impl InplaceOp1 for OnM<'_> {
    fn name(&self) -> &'static str {
        "adamw_step"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let m = slice_mut(storage, layout, "exp_avg")?;
        self.v.inplace_op1(&OnV { m: Cell::new(Some(m)), p: self.p, g: self.g, c: self.c })
    }
}

/// Step 2: lends `v`'s storage, then runs [`OnP`] on `p` with `g`.
struct OnV<'a, 'm> {
    m: Cell<Option<&'m mut [f32]>>,
    p: &'a Tensor,
    g: &'a Tensor,
    c: Coeffs,
}

impl InplaceOp1 for OnV<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw_step"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let v = slice_mut(storage, layout, "exp_avg_sq")?;
        let Some(m) = self.m.take() else { candle_core::bail!("adamw_step: exp_avg lent twice") };
        self.p.inplace_op2(self.g, &OnP { m: Cell::new(Some(m)), v: Cell::new(Some(v)), c: self.c })
    }
}

/// Step 3: with `p`'s storage and `g`, all four are at hand: the update itself.
struct OnP<'m> {
    m: Cell<Option<&'m mut [f32]>>,
    v: Cell<Option<&'m mut [f32]>>,
    c: Coeffs,
}

impl InplaceOp2 for OnP<'_> {
    fn name(&self) -> &'static str {
        "adamw_step"
    }
    fn cpu_fwd(&self, ps: &mut CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let p = slice_mut(ps, pl, "param")?;
        let g = match (gs, gl.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => &data[start..end],
            _ => candle_core::bail!("adamw_step: grad must be contiguous f32"),
        };
        let (Some(m), Some(v)) = (self.m.take(), self.v.take()) else {
            candle_core::bail!("adamw_step: state lent twice")
        };
        if [g.len(), m.len(), v.len()] != [p.len(); 3] {
            candle_core::bail!("adamw_step: element counts differ");
        }
        let c = self.c;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| update(c, p, g, m, v));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn var(data: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(data, &Device::Cpu).expect("tensor")).expect("var")
    }

    fn hp(step: u64) -> AdamWStep {
        AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().expect("flat").to_vec1::<f32>().expect("f32").iter().map(|x| x.to_bits()).collect()
    }

    /// Random-ish values with signed zeros, tiny and large magnitudes.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                match i % 97 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => 1e-30,
                    _ => (x as f32 / u32::MAX as f32 - 0.5) * if i % 7 == 0 { 100.0 } else { 1.0 },
                }
            })
            .collect()
    }

    #[test]
    fn the_fused_update_matches_the_composed_update_to_the_bit() {
        // More than one chunk, and not a multiple of it.
        let n = 3 * CHUNK + 123;
        let (p0, m0, v0) = (values(n, 1), values(n, 2), values(n, 3).iter().map(|x| x.abs()).collect::<Vec<_>>());
        let (fp, fm, fv) = (var(&p0), var(&m0), var(&v0));
        let (cp, cm, cv) = (var(&p0), var(&m0), var(&v0));
        for step in 1..=4 {
            let g = Tensor::new(values(n, 10 + step as u32).as_slice(), &Device::Cpu).expect("g");
            let hp = AdamWStep { weight_decay: 0.03 * 0.5, ..hp(step) };
            adamw_step(&fp, &g, &fm, &fv, &hp).expect("fused");
            composed(&cp, &g, &cm, &cv, &hp).expect("composed");
            for (a, b) in [(&fp, &cp), (&fm, &cm), (&fv, &cv)] {
                assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "step {step}");
            }
        }
        assert_ne!(bits(fp.as_tensor()), bits(var(&p0).as_tensor()), "the parameter moved");
    }

    #[test]
    fn other_dtypes_take_the_composed_path() {
        let to = |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::BF16).expect("bf16")).expect("var");
        let (p, m, v) = (to(&var(&[1.0, -2.0])), to(&var(&[0.0, 0.0])), to(&var(&[0.0, 0.0])));
        let g = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).expect("g").to_dtype(DType::BF16).expect("bf16");
        adamw_step(&p, &g, &m, &v, &hp(1)).expect("bf16 step");
        let p = p.as_tensor().to_dtype(DType::F32).expect("f32").to_vec1::<f32>().expect("vec");
        // The first step moves each element by about lr against the gradient's sign.
        assert!((p[0] - 0.99).abs() < 0.01 && (p[1] + 1.99).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn mismatches_and_aliases_are_refused_before_anything_is_written() {
        let (p, m, v) = (var(&[1.0, 2.0]), var(&[0.0, 0.0]), var(&[0.0, 0.0]));
        let before = bits(p.as_tensor());
        let g = Tensor::new(&[1f32, 1.0, 1.0], &Device::Cpu).expect("g");
        let e = adamw_step(&p, &g, &m, &v, &hp(1)).expect_err("shape").to_string();
        assert!(e.contains("shapes differ: param [2], grad [3], exp_avg [2], exp_avg_sq [2]"), "{e}");
        let g = Tensor::new(&[1f64, 1.0], &Device::Cpu).expect("g");
        let e = adamw_step(&p, &g, &m, &v, &hp(1)).expect_err("dtype").to_string();
        assert!(e.contains("one float dtype") && e.contains("grad F64"), "{e}");
        let g = Tensor::new(&[1f32, 1.0], &Device::Cpu).expect("g");
        let e = adamw_step(&p, &g, &m, &m, &hp(1)).expect_err("alias").to_string();
        assert!(e.contains("exp_avg and exp_avg_sq share memory"), "{e}");
        let e = adamw_step(&p, &p.as_tensor().detach(), &m, &v, &hp(1)).expect_err("alias").to_string();
        assert!(e.contains("param and grad share memory"), "{e}");
        let e = adamw_step(&p, &g, &m, &v, &hp(0)).expect_err("step 0").to_string();
        assert!(e.contains("step counts from 1"), "{e}");
        assert_eq!(bits(p.as_tensor()), before);
        assert_eq!(bits(m.as_tensor()), [0, 0]);
    }

    #[test]
    fn a_strided_gradient_is_read_in_order() {
        let var2 = |data: [[f32; 2]; 2]| Var::new(&data, &Device::Cpu).expect("var");
        let (p, m, v) = (var2([[1.0, 2.0], [3.0, 4.0]]), var2([[0.0; 2]; 2]), var2([[0.0; 2]; 2]));
        let (cp, cm, cv) = (var2([[1.0, 2.0], [3.0, 4.0]]), var2([[0.0; 2]; 2]), var2([[0.0; 2]; 2]));
        let g = Tensor::new(&[[1f32, -2.0], [3.0, -4.0]], &Device::Cpu).expect("g").t().expect("t");
        assert!(!g.is_contiguous());
        adamw_step(&p, &g, &m, &v, &hp(1)).expect("fused");
        composed(&cp, &g, &cm, &cv, &hp(1)).expect("composed");
        for (a, b) in [(&p, &cp), (&m, &cm), (&v, &cv)] {
            assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()));
        }
    }
}
