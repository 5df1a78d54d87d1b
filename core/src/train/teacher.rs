//! The frozen model a distillation objective learns from. An objective that lists
//! `teacher_logits` in `required_outputs` gets, next to the student's outputs, the
//! teacher's logits on the same batch (`[batch, seq, vocab]`, no gradient), computed in
//! evaluation mode (no dropout, adapters' included) whether the student trains or
//! evaluates.

use super::Batch;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model, Outputs};
use crate::plugin::HostState;
use candle_core::Tensor;
use std::rc::Rc;

/// The output name an objective lists to be given the teacher's logits.
pub const TEACHER_LOGITS: &str = "teacher_logits";

/// A model with its adapters, frozen, whose logits are an objective's input.
pub struct Teacher {
    /// Where it came from, for messages: a stage name or a model directory.
    pub source: String,
    model: Box<dyn Model>,
    adapters: Adapters,
    state: Rc<HostState>,
}

impl Teacher {
    /// Freezes `model` and `adapters` (no parameter of theirs ever trains) and keeps them.
    pub fn new(source: String, model: Box<dyn Model>, mut adapters: Adapters, state: Rc<HostState>) -> Self {
        for (_, w) in model.weights() {
            w.set_trainable(false);
        }
        (0..adapters.methods().len()).for_each(|k| adapters.set_frozen(k, true));
        Teacher { source, model, adapters, state }
    }

    /// The teacher's vocabulary size (its logits' last dimension).
    pub fn vocab(&self) -> usize {
        self.model.info().vocab
    }

    /// The teacher's logits on `batch`, in evaluation mode, detached.
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let training = self.state.is_training();
        self.state.set_training(false);
        let out =
            self.model.forward_outputs(&batch.input_ids, batch.attention_mask.as_ref(), &self.adapters, Outputs::ALL);
        self.state.set_training(training);
        let logits = out?.logits.ok_or_else(|| {
            Error::msg(format!("teacher `{}` has no language-model head: it gives no logits", self.source))
        })?;
        Ok(logits.detach())
    }
}
