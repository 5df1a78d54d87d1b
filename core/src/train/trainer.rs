//! One training stage's inner loop: forward (with adapter hooks) → the objective plugin's
//! loss → backward (summed over accumulated micro-batches) → global-norm clipping →
//! the optimizer plugin's update → release the step's temporaries.

use super::{Batch, TEACHER_LOGITS};
use crate::cpu_threads::ActiveWait;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model, Outputs};
use crate::plugin::{Entry, HostState, ObjectiveInstance, OptimizerInstance, StageLoss, TrainParam};
use candle_core::Tensor;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

/// What one step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The loss before the update (mean over the micro-batches).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The loss of the stage's own rows and of the replayed ones, when the batches mix
    /// in replay and the objective gives per-example losses.
    pub split: Option<LossSplit>,
    /// Where the step's time went.
    pub times: StepTimes,
    /// The stage's `regularize` penalty `λ/2·Σ w·(θ − θ₀)²` before the update, when it
    /// has one (not part of `loss`).
    pub penalty: Option<f64>,
}

/// A step's loss split by where its rows came from: the mean per-example loss of the
/// stage's own (task) rows and of the replayed rows, over all micro-batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSplit {
    /// The stage's own rows.
    pub task: f64,
    /// The replayed rows; `None` when the step drew none.
    pub replay: Option<f64>,
}

/// Sums per-example losses into task and replay parts, micro-batch by micro-batch.
#[derive(Debug, Default)]
struct SplitSums {
    task: (f64, usize),
    replay: (f64, usize),
    /// A mixed batch whose objective gave no per-example losses: no split.
    unknown: bool,
    mixed: bool,
}

impl SplitSums {
    fn add(&mut self, replay_from: Option<usize>, per_example: Option<&Tensor>) -> Result<()> {
        let Some(from) = replay_from else { return Ok(()) };
        self.mixed = true;
        let Some(per) = per_example else {
            self.unknown = true;
            return Ok(());
        };
        let per = per.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let from = from.min(per.len());
        self.task.0 += per[..from].iter().sum::<f64>();
        self.task.1 += from;
        self.replay.0 += per[from..].iter().sum::<f64>();
        self.replay.1 += per.len() - from;
        Ok(())
    }

    fn split(&self) -> Option<LossSplit> {
        let mean = |(sum, n): (f64, usize)| (n > 0).then(|| sum / n as f64);
        if !self.mixed || self.unknown {
            return None;
        }
        Some(LossSplit { task: mean(self.task)?, replay: mean(self.replay) })
    }
}

/// Wall time of a step's phases, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepTimes {
    /// Model forward and the objective's loss, all micro-batches.
    pub forward: f64,
    /// Backward and gradient accumulation.
    pub backward: f64,
    /// Gradient norm, clipping and the optimizer's update.
    pub update: f64,
}

/// Runs the model (with adapters) on a batch and the objective on its outputs: those
/// it lists in `required_outputs` that the model produces (only those are computed
/// where that saves work: no logits, no language-model head).
pub fn forward_loss(
    model: &dyn Model,
    adapters: &Adapters,
    objective: &mut ObjectiveInstance,
    batch: &Batch,
) -> Result<StageLoss> {
    let required = objective.required_outputs();
    let wanted = Outputs::named(required);
    let out = model.forward_outputs(&batch.input_ids, batch.attention_mask.as_ref(), adapters, wanted)?;
    let teacher_logits = match required.iter().any(|r| r == TEACHER_LOGITS) {
        true => Some(objective.teacher().ok_or_else(|| no_teacher(&objective.core.plugin))?.logits(batch)?),
        false => None,
    };
    let produced = [
        ("hidden", Some(&out.hidden)),
        ("logits", out.logits.as_ref()),
        ("pooled", out.pooled.as_ref()),
        (TEACHER_LOGITS, teacher_logits.as_ref()),
    ];
    let outputs: Vec<(&str, &Tensor)> = produced
        .into_iter()
        .filter_map(|(name, t)| Some((name, t?)))
        .filter(|(name, _)| required.iter().any(|r| r == name))
        .collect();
    objective.compute(&outputs, &batch.named())
}

/// The error for an objective that reads `teacher_logits` without a teacher.
pub(crate) fn no_teacher(objective: &str) -> Error {
    Error::msg(format!(
        "objective `{objective}` reads `{TEACHER_LOGITS}`: give its stage a `teacher` (an earlier stage or a model directory)"
    ))
}

/// A model, its adapters, an objective and an optimizer. The pipeline drives it;
/// outside the crate it is built with [`Trainer::new`] and stepped with
/// [`Trainer::train_step_accum`].
pub struct Trainer {
    /// Shared plugin state.
    pub(crate) state: Rc<HostState>,
    /// The model.
    pub(crate) model: Box<dyn Model>,
    /// Attached adaptation methods.
    pub(crate) adapters: Adapters,
    /// The objective.
    pub(crate) objective: ObjectiveInstance,
    /// The optimizer.
    pub(crate) optimizer: OptimizerInstance,
    /// What the optimizer updates, in a fixed order.
    pub(crate) params: Vec<TrainParam>,
    /// Optimizer steps taken.
    pub(crate) step: u64,
    /// Clip the global gradient norm to this.
    pub(crate) grad_clip: Option<f64>,
    /// The stage's pull toward its start (EWC, L2-SP).
    pub(crate) regularizer: Option<super::Regularizer>,
    weight_handles: HashMap<String, stagecraft_sdk::TensorHandle>,
}

impl Trainer {
    /// Collects the trainable parameters (trainable base weights, then adapter
    /// parameters, then objective parameters (heads)) and lets the optimizer create its state.
    pub fn new(
        state: Rc<HostState>,
        model: Box<dyn Model>,
        adapters: Adapters,
        mut objective: ObjectiveInstance,
        optimizer: OptimizerInstance,
    ) -> Result<Self> {
        objective.init(&model.info())?;
        let mut t = Trainer {
            state,
            model,
            adapters,
            objective,
            optimizer,
            params: Vec::new(),
            step: 0,
            grad_clip: None,
            regularizer: None,
            weight_handles: HashMap::new(),
        };
        t.refresh_params()?;
        Ok(t)
    }

    /// The model (with its current weights).
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// What the optimizer updates, in a fixed order (trainable base weights, then
    /// adapter parameters, then objective parameters).
    pub fn params(&self) -> &[TrainParam] {
        &self.params
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Clips the global gradient norm to `clip` from the next step on (`None`: never).
    pub fn set_grad_clip(&mut self, clip: Option<f64>) {
        self.grad_clip = clip;
    }

    /// Adds `r`'s gradient to every step's from the next step on (`None`: no penalty).
    pub fn set_regularizer(&mut self, r: Option<super::Regularizer>) {
        self.regularizer = r;
    }

    /// Collects the parameters again after the trainable set changed (unfreezing, a
    /// frozen or new adapter), keeping per-parameter multipliers, and lets the optimizer
    /// create state for the new ones.
    pub fn refresh_params(&mut self) -> Result<()> {
        let old: HashMap<String, (f64, f64)> =
            self.params.iter().map(|p| (p.name.clone(), (p.lr_mul, p.decay_mul))).collect();
        let mut params = Vec::new();
        for (name, w) in self.model.weights() {
            if w.is_trainable() {
                let handle = *self
                    .weight_handles
                    .entry(name.clone())
                    .or_insert_with(|| self.state.table.borrow_mut().insert(Entry::Param(w.var().clone())));
                params.push(TrainParam { name, var: w.var().clone(), handle, lr_mul: 1.0, decay_mul: 1.0 });
            }
        }
        for (k, m) in self.adapters.methods().iter().enumerate() {
            if self.adapters.is_frozen(k) {
                continue;
            }
            for p in m.params() {
                params.push(TrainParam {
                    name: m.core.qualified(&p.name),
                    var: p.var,
                    handle: p.handle,
                    lr_mul: 1.0,
                    decay_mul: 1.0,
                });
            }
        }
        for p in self.objective.params() {
            params.push(TrainParam {
                name: self.objective.core.qualified(&p.name),
                var: p.var,
                handle: p.handle,
                lr_mul: 1.0,
                decay_mul: 1.0,
            });
        }
        if params.is_empty() {
            return Err(Error::msg("nothing to train: every weight is frozen and no adapter has parameters"));
        }
        for p in params.iter_mut() {
            if let Some(&(l, d)) = old.get(&p.name) {
                p.lr_mul = l;
                p.decay_mul = d;
            }
        }
        self.optimizer.init(&params)?;
        self.params = params;
        Ok(())
    }

    /// Replaces the optimizer by `fresh` (the same plugin with another config): it
    /// creates its state for the current parameters, which then takes the old one's
    /// values buffer by buffer, and the update count carries over.
    pub(crate) fn replace_optimizer(&mut self, mut fresh: OptimizerInstance) -> Result<()> {
        fresh.init(&self.params)?;
        let old: HashMap<String, candle_core::Var> =
            self.optimizer.buffers().into_iter().map(|b| (b.name, b.var)).collect();
        let new = fresh.buffers();
        if new.len() != old.len() {
            return Err(Error::msg(format!(
                "optimizer `{}` keeps {} state buffers with the new config but {} with the old one",
                fresh.core.plugin,
                new.len(),
                old.len()
            )));
        }
        for b in &new {
            let Some(v) = old.get(&b.name) else {
                return Err(Error::msg(format!(
                    "optimizer `{}` has a state buffer `{}` with the new config that the old one did not have",
                    fresh.core.plugin, b.name
                )));
            };
            b.var.set(v.as_tensor())?;
        }
        fresh.updates = self.optimizer.updates;
        self.optimizer = fresh;
        Ok(())
    }

    /// Takes the trainer apart: model, adapters, objective, optimizer (for the next
    /// stage's handoff).
    pub fn into_parts(self) -> (Box<dyn Model>, Adapters, ObjectiveInstance, OptimizerInstance) {
        (self.model, self.adapters, self.objective, self.optimizer)
    }

    fn loss(&mut self, batch: &Batch) -> Result<StageLoss> {
        forward_loss(self.model.as_ref(), &self.adapters, &mut self.objective, batch)
    }

    /// One optimizer step on `batch` at learning rate `lr`.
    pub fn train_step(&mut self, batch: &Batch, lr: f64) -> Result<StepOutput> {
        self.train_step_accum(std::slice::from_ref(batch), lr)
    }

    /// One optimizer step over several micro-batches (gradient accumulation): the
    /// gradient is the mean of the micro-batches' gradients.
    pub fn train_step_accum(&mut self, micro: &[Batch], lr: f64) -> Result<StepOutput> {
        self.state.set_training(true);
        let _wait = ActiveWait::start(&self.state.device);
        let r = self.train_step_inner(micro, lr);
        self.state.end_step();
        r
    }

    fn train_step_inner(&mut self, micro: &[Batch], lr: f64) -> Result<StepOutput> {
        if micro.is_empty() {
            return Err(Error::msg("a step needs at least one batch"));
        }
        let scale = 1.0 / micro.len() as f64;
        let mut sum: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut loss_sum = 0.0;
        let mut split = SplitSums::default();
        let mut times = StepTimes::default();
        for batch in micro {
            let clock = Instant::now();
            let l = self.loss(batch)?;
            let loss = l.loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
            times.forward += clock.elapsed().as_secs_f64();
            if !loss.is_finite() {
                return Err(Error::NonFinite(format!("loss is {loss} at step {}", self.step + 1)));
            }
            loss_sum += loss;
            split.add(batch.replay_from, l.per_example.as_ref())?;
            let clock = Instant::now();
            let grads = crate::kernels::backward(&l.loss.affine(scale, 0.0)?)?;
            for (acc, p) in sum.iter_mut().zip(&self.params) {
                if let Some(g) = grads.get(p.var.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
            drop(grads);
            times.backward += clock.elapsed().as_secs_f64();
        }
        let clock = Instant::now();
        let penalty = self.regularizer.as_ref().map(|r| r.add_gradients(&self.params, &mut sum)).transpose()?;
        let grad_norm = crate::kernels::grad_norm::global_norm(sum.iter().flatten())?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite(format!("gradient norm is {grad_norm} at step {}", self.step + 1)));
        }
        if let Some(max) = self.grad_clip {
            if grad_norm > max {
                let f = max / (grad_norm + 1e-6);
                for g in sum.iter_mut().flatten() {
                    *g = g.affine(f, 0.0)?;
                }
            }
        }
        self.step += 1;
        let update = self.optimizer.updates + 1;
        self.optimizer.step(&self.params, &sum, lr, update)?;
        self.optimizer.updates = update;
        times.update = clock.elapsed().as_secs_f64();
        Ok(StepOutput { loss: loss_sum * scale, grad_norm, split: split.split(), times, penalty })
    }

    /// Loss and metrics on `batch` in evaluation mode (no update).
    pub fn eval_batch(&mut self, batch: &Batch) -> Result<(f64, Vec<stagecraft_sdk::Metric>)> {
        self.state.set_training(false);
        let r = self
            .loss(batch)
            .and_then(|l| Ok((l.loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64, l.metrics)));
        self.state.end_step();
        self.state.set_training(true);
        r
    }
}
