//! The penalty of a stage's `regularize` ([`crate::config::Regularize`]): each held
//! value's anchor `θ₀` (its value when the stage started) and weight `w` (EWC: the
//! diagonal Fisher of the earlier stages' objectives; L2-SP: 1), and the gradient
//! `λ·w·(θ − θ₀)` of `λ/2·Σ w·(θ − θ₀)²` added to the step's gradients.
//!
//! The anchors and weights are computed once, when the stage starts, and saved beside
//! the run's checkpoints ([`Regularizer::save`]); a resumed stage loads them, so it is
//! held toward the same point with the same weights as the uninterrupted one.

use super::{forward_loss, Trainer};
use crate::config::{Regularize, RegularizeKind};
use crate::cpu_threads::ActiveWait;
use crate::data::{collate, Dataset};
use crate::error::{Context, Error, Result};
use crate::plugin::{ObjectiveInstance, TrainParam};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A stage's penalty toward its start.
pub struct Regularizer {
    lambda: f64,
    /// Parameter name → its anchor and, for EWC, its weights.
    held: HashMap<String, Held>,
}

struct Held {
    anchor: Tensor,
    weight: Option<Tensor>,
}

/// An earlier stage's objective and training data, for the Fisher estimate.
pub struct FisherSource<'a> {
    /// The stage's objective (as it ended).
    pub objective: &'a mut ObjectiveInstance,
    /// Its training data.
    pub data: &'a Dataset,
    /// Examples per batch (the stage's `batch_size`).
    pub batch_size: usize,
}

impl Regularizer {
    /// Holds the trainer's trainable values where they are now. `ewc` estimates each
    /// one's weight on `sources` (at least one needed); `l2sp` ignores them.
    pub fn at_start(cfg: &Regularize, trainer: &Trainer, sources: Vec<FisherSource<'_>>) -> Result<Self> {
        let weights = match cfg.kind {
            RegularizeKind::Ewc => Some(fisher_diagonal(trainer, sources, cfg.fisher_batches)?),
            RegularizeKind::L2sp => None,
        };
        let mut held = HashMap::new();
        for (k, p) in trainer.params().iter().enumerate() {
            // A copy: the optimizer updates the variable in place.
            let anchor = p.var.as_tensor().detach().copy()?;
            let weight = weights.as_ref().map(|w| w[k].clone());
            held.insert(p.name.clone(), Held { anchor, weight });
        }
        Ok(Regularizer { lambda: cfg.lambda, held })
    }

    /// Adds `λ·w·(θ − θ₀)` to the gradient of every held parameter in `params`
    /// (`grads[k]` is `params[k]`'s, `None` where it got none) and returns the penalty
    /// `λ/2·Σ w·(θ − θ₀)²`.
    pub fn add_gradients(&self, params: &[TrainParam], grads: &mut [Option<Tensor>]) -> Result<f64> {
        // Summed on the device, read once: one synchronization per step, not per parameter.
        let mut penalty: Option<Tensor> = None;
        for (p, g) in params.iter().zip(grads.iter_mut()) {
            let Some(h) = self.held.get(&p.name) else { continue };
            let diff = (p.var.as_tensor() - &h.anchor)?;
            let weighted = match &h.weight {
                Some(w) => (&diff * w)?,
                None => diff.clone(),
            };
            let term = (&weighted * &diff)?.sum_all()?.to_dtype(candle_core::DType::F64)?;
            penalty = Some(match penalty.take() {
                Some(sum) => (sum + term)?,
                None => term,
            });
            let pull = weighted.affine(self.lambda, 0.0)?;
            *g = Some(match g.take() {
                Some(g) => (g + pull)?,
                None => pull,
            });
        }
        let penalty = penalty.map(|t| t.to_scalar::<f64>()).transpose()?.unwrap_or(0.0);
        Ok(self.lambda / 2.0 * penalty)
    }

    /// Writes the anchors and weights to `path` (safetensors: `anchor.<name>`,
    /// `weight.<name>`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for (name, h) in &self.held {
            tensors.insert(format!("anchor.{name}"), h.anchor.clone());
            if let Some(w) = &h.weight {
                tensors.insert(format!("weight.{name}"), w.clone());
            }
        }
        let partial = path.with_extension("partial");
        candle_core::safetensors::save(&tensors, &partial)
            .and_then(|()| std::fs::rename(&partial, path).map_err(candle_core::Error::wrap))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The regularizer [`Self::save`] wrote for `trainer`'s parameters, refused when
    /// the file lacks one of them or holds another shape.
    pub fn load(cfg: &Regularize, trainer: &Trainer, path: &Path, device: &Device) -> Result<Self> {
        let mut stored = candle_core::safetensors::load(path, device)
            .with_context(|| format!("{}: reading the stage's regularization anchors", path.display()))?;
        let mut held = HashMap::new();
        for p in trainer.params() {
            let name = &p.name;
            let anchor = stored.remove(&format!("anchor.{name}")).ok_or_else(|| {
                Error::msg(format!("{}: no anchor for `{name}`, which trains in this stage", path.display()))
            })?;
            let weight = stored.remove(&format!("weight.{name}"));
            if cfg.kind == RegularizeKind::Ewc && weight.is_none() {
                return Err(Error::msg(format!("{}: no EWC weight for `{name}`", path.display())));
            }
            for t in std::iter::once(&anchor).chain(weight.as_ref()) {
                if t.dims() != p.var.dims() {
                    return Err(Error::msg(format!(
                        "{}: `{name}` is {:?} there but {:?} in the model",
                        path.display(),
                        t.dims(),
                        p.var.dims()
                    )));
                }
            }
            held.insert(name.clone(), Held { anchor, weight });
        }
        Ok(Regularizer { lambda: cfg.lambda, held })
    }
}

/// The diagonal Fisher of each trainable parameter: the mean over `batches` batches
/// of every source's training data (spread evenly over it) of the squared gradient of
/// that source's objective, in evaluation mode. Zero for a parameter no source's
/// loss reaches.
fn fisher_diagonal(trainer: &Trainer, sources: Vec<FisherSource<'_>>, batches: usize) -> Result<Vec<Tensor>> {
    if sources.is_empty() {
        return Err(Error::msg("regularize: EWC needs an earlier stage that trained to estimate its Fisher on"));
    }
    let state = trainer.state.clone();
    let device = state.device.clone();
    let params = trainer.params();
    let mut sums: Vec<Tensor> =
        params.iter().map(|p| p.var.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
    let mut count = 0usize;
    state.set_training(false);
    let _wait = ActiveWait::start(&device);
    let result = (|| -> Result<()> {
        for source in sources {
            let examples = &source.data.examples;
            let size = source.batch_size.clamp(1, examples.len());
            // First and last batch at the data's two ends, the others evenly between.
            let stride = if batches > 1 { (examples.len() - size) / (batches - 1) } else { 0 };
            for b in 0..batches {
                let start = (b * stride).min(examples.len() - size);
                let refs: Vec<_> = examples[start..start + size].iter().collect();
                let batch = collate(&refs, 0, &device)?;
                let loss = forward_loss(trainer.model.as_ref(), &trainer.adapters, source.objective, &batch)?;
                let grads = crate::kernels::backward(&loss.loss)?;
                for (sum, p) in sums.iter_mut().zip(params) {
                    if let Some(g) = grads.get(p.var.as_tensor()) {
                        *sum = (&*sum + g.sqr()?)?;
                    }
                }
                count += 1;
                state.end_step();
            }
        }
        Ok(())
    })();
    state.end_step();
    state.set_training(true);
    result.context("regularize: estimating the Fisher information on the earlier stages' data")?;
    let n = count.max(1) as f64;
    sums.into_iter().map(|s| s.affine(1.0 / n, 0.0).map_err(Error::from)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use stagecraft_sdk::TensorHandle;

    fn param(name: &str, var: &Var) -> TrainParam {
        TrainParam { name: name.into(), var: var.clone(), handle: TensorHandle(0), lr_mul: 1.0, decay_mul: 1.0 }
    }

    /// The added gradient and the penalty are the autograd gradient and value of
    /// `λ/2·Σ w·(θ − θ₀)²`, with and without weights, onto a gradient or none.
    #[test]
    fn the_pull_is_the_penalty_s_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let theta = Var::randn(0f32, 1.0, (3, 5), &dev)?;
        let anchor = Tensor::randn(0f32, 1.0, (3, 5), &dev)?;
        let weight = Tensor::rand(0f32, 2.0, (3, 5), &dev)?;
        let lambda = 0.7;
        for w in [Some(weight.clone()), None] {
            let kind = if w.is_some() { RegularizeKind::Ewc } else { RegularizeKind::L2sp };
            let held = Held { anchor: anchor.clone(), weight: w.clone() };
            let r = Regularizer { lambda, held: HashMap::from([("w".to_string(), held)]) };
            let diff = (theta.as_tensor() - &anchor)?;
            let weighted = match &w {
                Some(w) => (&diff * w)?,
                None => diff.clone(),
            };
            let expected = (weighted * &diff)?.sum_all()?.affine(lambda / 2.0, 0.0)?;
            let autograd = expected.backward()?;
            let want = autograd.get(theta.as_tensor()).expect("gradient");
            let base = Tensor::randn(0f32, 1.0, (3, 5), &dev)?;
            for start in [Some(base.clone()), None] {
                let mut grads = vec![start.clone()];
                let penalty = r.add_gradients(&[param("w", &theta)], &mut grads)?;
                let got = grads[0].take().expect("a gradient");
                let got = match &start {
                    Some(b) => (got - b)?,
                    None => got,
                };
                let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(err < 1e-5, "{kind}: gradient off by {err}");
                let value = expected.to_scalar::<f32>()? as f64;
                assert!((penalty - value).abs() < 1e-4 * value.abs().max(1.0), "{kind}: {penalty} vs {value}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_parameter_it_does_not_hold_is_left_alone() -> Result<()> {
        let dev = Device::Cpu;
        let other = Var::ones(4, candle_core::DType::F32, &dev)?;
        let r = Regularizer { lambda: 1.0, held: HashMap::new() };
        let mut grads = vec![None];
        assert_eq!(r.add_gradients(&[param("other", &other)], &mut grads)?, 0.0);
        assert!(grads[0].is_none());
        Ok(())
    }
}
