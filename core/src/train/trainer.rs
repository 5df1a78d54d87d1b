//! One training stage's inner loop: forward (with adapter hooks) → the stage plugin's
//! loss → backward → the optimizer plugin's update → release the step's temporaries.

use super::Batch;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{Entry, HostState, OptimizerInstance, StageInstance, StageLoss, TrainParam};
use candle_core::Tensor;
use std::rc::Rc;

/// What one step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The loss before the update.
    pub loss: f64,
}

/// A model, its adapters, a stage objective and an optimizer.
pub struct Trainer {
    /// Shared plugin state.
    pub state: Rc<HostState>,
    /// The model.
    pub model: Box<dyn Model>,
    /// Attached adaptation methods.
    pub adapters: Adapters,
    /// The objective.
    pub stage: StageInstance,
    /// The optimizer.
    pub optimizer: OptimizerInstance,
    /// What the optimizer updates, in a fixed order.
    pub params: Vec<TrainParam>,
    /// Optimizer steps taken.
    pub step: u64,
}

impl Trainer {
    /// Collects the trainable parameters (trainable base weights, then adapter
    /// parameters, then stage head parameters) and lets the optimizer create its state.
    pub fn new(state: Rc<HostState>, model: Box<dyn Model>, adapters: Adapters, mut stage: StageInstance, mut optimizer: OptimizerInstance) -> Result<Self> {
        stage.init(&model.info())?;
        let mut params = Vec::new();
        for (name, w) in model.weights() {
            if w.is_trainable() {
                let handle = state.table.borrow_mut().insert(Entry::Param(w.var().clone()));
                params.push(TrainParam { name, var: w.var().clone(), handle, lr_mul: 1.0, decay_mul: 1.0 });
            }
        }
        for m in adapters.methods() {
            for p in m.params() {
                params.push(TrainParam { name: p.name, var: p.var, handle: p.handle, lr_mul: 1.0, decay_mul: 1.0 });
            }
        }
        for p in stage.params() {
            params.push(TrainParam { name: p.name, var: p.var, handle: p.handle, lr_mul: 1.0, decay_mul: 1.0 });
        }
        if params.is_empty() {
            return Err(Error::msg("nothing to train: every weight is frozen and no adapter has parameters"));
        }
        optimizer.init(&params)?;
        Ok(Trainer { state, model, adapters, stage, optimizer, params, step: 0 })
    }

    fn loss(&mut self, batch: &Batch) -> Result<StageLoss> {
        let out = self.model.forward(&batch.input_ids, batch.attention_mask.as_ref(), &self.adapters)?;
        let mut outputs: Vec<(&str, &Tensor)> = vec![("hidden", &out.hidden)];
        if let Some(l) = &out.logits {
            outputs.push(("logits", l));
        }
        if let Some(p) = &out.pooled {
            outputs.push(("pooled", p));
        }
        self.stage.compute(&outputs, &batch.named())
    }

    /// One optimizer step on `batch` at learning rate `lr`.
    pub fn train_step(&mut self, batch: &Batch, lr: f64) -> Result<StepOutput> {
        self.state.set_training(true);
        let r = self.train_step_inner(batch, lr);
        self.state.end_step();
        r
    }

    fn train_step_inner(&mut self, batch: &Batch, lr: f64) -> Result<StepOutput> {
        let l = self.loss(batch)?;
        let loss = l.loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(Error::msg(format!("loss is {loss} at step {}", self.step + 1)));
        }
        let grads = l.loss.backward()?;
        let g: Vec<Option<Tensor>> = self.params.iter().map(|p| grads.get(p.var.as_tensor()).cloned()).collect();
        self.step += 1;
        self.optimizer.step(&self.params, &g, lr, self.step)?;
        Ok(StepOutput { loss })
    }

    /// Loss and metrics on `batch` in evaluation mode (no update).
    pub fn eval_batch(&mut self, batch: &Batch) -> Result<(f64, Vec<stagecraft_sdk::Metric>)> {
        self.state.set_training(false);
        let r = self.loss(batch).and_then(|l| Ok((l.loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64, l.metrics)));
        self.state.end_step();
        self.state.set_training(true);
        r
    }
}
