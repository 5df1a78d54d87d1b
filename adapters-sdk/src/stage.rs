//! Stage objectives: causal LM, completion, classification, distillation, ...

use crate::error::{Error, Result};
use crate::host::{Host, Tensor};
use crate::plugin::Plugin;
use crate::types::{Control, Metric, ModelInfo, NamedTensor, StepInfo};

/// Named tensors (model outputs or a batch) as a stage sees them.
#[derive(Clone, Copy)]
pub struct Named<'h> {
    items: &'h [NamedTensor],
    host: Host<'h>,
    what: &'static str,
}

impl<'h> Named<'h> {
    /// Wraps a slice (used by the export glue).
    pub fn new(items: &'h [NamedTensor], host: Host<'h>, what: &'static str) -> Self {
        Named { items, host, what }
    }
    /// The tensor called `name`, or an error naming what is missing and what is there.
    pub fn get(&self, name: &str) -> Result<Tensor<'h>> {
        self.opt(name).ok_or_else(|| {
            let have: Vec<&str> = self.items.iter().map(|n| n.name.as_str()).collect();
            Error(format!("{} has no `{name}` (it has: {})", self.what, have.join(", ")))
        })
    }
    /// The tensor called `name`, if present.
    pub fn opt(&self, name: &str) -> Option<Tensor<'h>> {
        self.items.iter().find(|n| n.name.as_str() == name).map(|n| self.host.tensor(n.tensor))
    }
    /// All names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|n| n.name.as_str())
    }
}

/// The loss of one batch, as a stage returns it.
pub struct Loss<'h> {
    /// Scalar to minimize.
    pub loss: Tensor<'h>,
    /// Per-example loss `[batch]` (for quantiles), if the objective has one.
    pub per_example: Option<Tensor<'h>>,
    /// Metric contributions.
    pub metrics: Vec<Metric>,
}

/// A stage objective: turns model outputs and a batch into a loss and metrics, and may
/// steer the stage from its hooks.
///
/// Batches carry `input_ids` (`[batch, seq]`, u32), `attention_mask` (`[batch, seq]`),
/// and, depending on the data, `labels` (`[batch, seq]`, i64, -100 where no loss) or
/// `class_labels` (`[batch]`). Model outputs carry what
/// [`required_outputs`](Self::required_outputs) asked for: `logits`
/// (`[batch, seq, vocab]`), `hidden` (`[batch, seq, hidden]`), `pooled` (`[batch, hidden]`).
///
/// # Lifecycle, in call order
/// 1. [`Plugin::new`] — once per stage, with the stage's objective config.
/// 2. [`init`](Self::init) — once, with the model's shape; create head parameters here.
/// 3. [`compute`](Self::compute) — for every training batch, then for every evaluation
///    batch ([`Host::is_training`] tells which).
/// 4. [`on_step_end`](Self::on_step_end) — after every optimizer step.
/// 5. [`on_eval_end`](Self::on_eval_end) — after every evaluation, with its metrics.
pub trait Stage: Plugin {
    /// Creates head parameters, if any.
    fn init(&mut self, _host: Host<'_>, _model: &ModelInfo) -> Result<()> {
        Ok(())
    }
    /// Model outputs this objective reads.
    fn required_outputs(&self) -> Vec<String> {
        vec!["logits".to_string()]
    }
    /// Loss and metrics for one batch.
    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>>;
    /// After each optimizer step: continue, stop or roll back.
    fn on_step_end(&mut self, _host: Host<'_>, _info: &StepInfo) -> Result<Control> {
        Ok(Control::CONTINUE)
    }
    /// After each evaluation.
    fn on_eval_end(&mut self, _host: Host<'_>, _metrics: &[Metric]) -> Result<Control> {
        Ok(Control::CONTINUE)
    }
}
