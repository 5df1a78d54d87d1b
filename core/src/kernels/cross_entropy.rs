//! Per-row softmax cross-entropy over the vocabulary, with ignored rows, fused.
//!
//! `loss_i = logsumexp(x_i) - x_i[t_i]` for logits `x [n, c]` and integer targets
//! `t [n]`; rows whose target is `ignore_index` get 0. Backward:
//! `dx_ij = g_i·(softmax(x_i)_j - [j = t_i])`, 0 on ignored rows. The composition
//! (log-softmax, gather, mask) keeps the whole log-probability matrix for backward; the
//! fused op keeps only the logits it was given.

use super::exp::exp;
use super::{applies, profile, read, rows_per_task, slice, tensor};
use crate::model::layers::log_softmax;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per-row cross-entropy `[n]` of `logits [n, c]` against integer `targets [n]`; rows
/// whose target is `ignore_index` get 0. A target outside `0..c` (other than
/// `ignore_index`) is an error.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if targets.dims() != [n] {
        bail!("targets must be [{n}], got {:?}", targets.dims())
    }
    if !applies(logits) {
        return cross_entropy_composed(logits, targets, ignore_index);
    }
    let targets = targets.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some(bad) = targets.iter().find(|&&t| t != ignore_index && !(0..c as i64).contains(&t)) {
        bail!("target {bad} is outside the {c} classes")
    }
    let targets = targets.into_iter().map(|t| (t != ignore_index).then_some(t as usize)).collect();
    logits.contiguous()?.apply_op1(CrossEntropy { classes: c, targets })
}

/// [`cross_entropy`] from candle primitives (the reference; CUDA and bf16).
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
    let t = targets.to_dtype(DType::I64)?;
    let valid = t.ne(ignore_index)?;
    let safe = valid.where_cond(&t, &t.zeros_like()?)?;
    let logp = log_softmax(logits, 1)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    picked.neg()?.mul(&valid.to_dtype(logits.dtype())?)
}

struct CrossEntropy {
    classes: usize,
    /// Each row's target class, `None` where ignored.
    targets: Vec<Option<usize>>,
}

/// Maximum and `ln Σ exp(x - max)` of one row.
fn shifted_lse(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|&x| exp(x - max)).sum::<f32>().ln())
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        profile::time("cross_entropy.forward", || {
            let (x, c) = (slice(x, xl)?, self.classes);
            let loss: Vec<f32> = x
                .par_chunks(c)
                .zip(&self.targets)
                .map(|(row, t)| match t {
                    Some(t) => {
                        let (max, lse) = shifted_lse(row);
                        -((row[*t] - max) - lse)
                    }
                    None => 0.0,
                })
                .collect();
            Ok((CpuStorage::F32(loss), Shape::from(self.targets.len())))
        })
    }

    fn bwd(&self, x: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        profile::time("cross_entropy.backward", || {
            let c = self.classes;
            let dx = read(x, |x| {
                read(g, |g| {
                    let mut dx = vec![0f32; x.len()];
                    let rows = rows_per_task(self.targets.len());
                    dx.par_chunks_mut(rows * c).enumerate().for_each(|(task, block)| {
                        for (k, d) in block.chunks_mut(c).enumerate() {
                            let i = task * rows + k;
                            let Some(t) = self.targets[i] else { continue };
                            let row = &x[i * c..][..c];
                            let (max, lse) = shifted_lse(row);
                            let inv = 1.0 / lse.exp();
                            for (d, x) in d.iter_mut().zip(row) {
                                *d = g[i] * (exp(x - max) * inv);
                            }
                            d[t] -= g[i];
                        }
                    });
                    Ok(dx)
                })
            })?;
            Ok(Some(tensor(dx, x.dims())?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rel_err;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_loss_and_its_gradient_with_ignored_rows() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 3.0, (6, 50), &dev)?;
        let t = Tensor::new(&[3i64, -100, 49, 0, -100, 17], &dev)?;
        let probe = Tensor::new(&[0.5f32, 2.0, -1.0, 1.5, 3.0, 0.25], &dev)?;
        let (lf, lc) = (cross_entropy(&x, &t, -100)?, cross_entropy_composed(&x, &t, -100)?);
        assert!(rel_err(&lf, &lc)? <= 1e-6, "{}", rel_err(&lf, &lc)?);
        assert_eq!(lf.to_vec1::<f32>()?[1], 0.0);
        let gf = (lf * &probe)?.sum_all()?.backward()?;
        let gc = (lc * &probe)?.sum_all()?.backward()?;
        let e = rel_err(gf.get(&x).expect("fused grad"), gc.get(&x).expect("composed grad"))?;
        assert!(e <= 1e-5, "relative error {e}");
        Ok(())
    }

    #[test]
    fn a_target_outside_the_classes_is_refused() -> Result<()> {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[1i64, 4], &Device::Cpu)?;
        let e = cross_entropy(&x, &t, -100).expect_err("class 4 of 4");
        assert!(e.to_string().contains("target 4 is outside the 4 classes"), "{e}");
        Ok(())
    }
}
