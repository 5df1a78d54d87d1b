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
/// `class_labels` (`[batch]`). Model outputs are those
/// [`required_outputs`](Self::required_outputs) lists that the model produces, and no
/// others: `logits` (`[batch, seq, vocab]`, language models), `hidden`
/// (`[batch, seq, hidden]`, every model), `pooled` (`[batch, hidden]`, encoders with a
/// pooler), and `teacher_logits` (`[batch, seq, vocab]`: the logits of the frozen model
/// the stage names as its `teacher` on the same batch, computed in evaluation mode,
/// without gradient; listing it without a `teacher`, or a `teacher` for an objective
/// that does not list it, is refused before training). A model does not compute
/// `logits` for an objective that does not list them.
///
/// # Lifecycle, in call order
/// One instance per stage; the host calls, on that instance:
/// 1. [`Plugin::new`] — once, with the stage's objective config.
/// 2. [`required_outputs`](Self::required_outputs) — once, right after `new`.
/// 3. [`init`](Self::init) — once, with the model's shape; create head parameters here.
/// 4. For every optimizer step: [`compute`](Self::compute) for each micro-batch
///    ([`Host::is_training`] is true), then, once the step is taken and accepted (a
///    step the anomaly guard rejects is undone and gets no call),
///    [`on_step_end`](Self::on_step_end) with the stage's step (1, 2, ...).
/// 5. At each evaluation of the stage's own eval set (every `eval_every` steps and
///    after the last step): `compute` for each eval batch (`is_training` false), then
///    [`on_eval_end`](Self::on_eval_end) with the evaluation's metrics. Evaluations of
///    other stages' sets (retention gates) use those stages' objectives and call no
///    hook here.
/// 6. When the stage has ended: `compute` for its end-of-stage evaluation, and for later
///    stages' retention gates on this stage's set; no more hooks.
///
/// The [`Control`] a hook returns: `CONTINUE` goes on; `STOP` ends the stage with its
/// current state (the pipeline goes on with the next stage); `ROLLBACK` restores the
/// stage's best evaluated state (by its exit metric, else its main score: `exact_match`,
/// `accuracy` or `loss`, in that order) and ends it, or keeps the current state when
/// nothing was evaluated yet. At an evaluation, the retention gate and the exit rule
/// decide first; another value is an error.
pub trait Stage: Plugin {
    /// Creates head parameters, if any.
    fn init(&mut self, _host: Host<'_>, _model: &ModelInfo) -> Result<()> {
        Ok(())
    }
    /// Outputs this objective reads (`logits`, `hidden`, `pooled`, `teacher_logits`); it
    /// is given only these. Asked once, after `new`.
    fn required_outputs(&self) -> Vec<String> {
        vec!["logits".to_string()]
    }
    /// Loss and metrics for one batch.
    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>>;
    /// After each accepted optimizer step: continue, stop or roll back.
    fn on_step_end(&mut self, _host: Host<'_>, _info: &StepInfo) -> Result<Control> {
        Ok(Control::CONTINUE)
    }
    /// After each evaluation of the stage's own set, with its metrics (each a final
    /// value: `sum` is the value, `count` is 1): continue, stop or roll back.
    fn on_eval_end(&mut self, _host: Host<'_>, _metrics: &[Metric]) -> Result<Control> {
        Ok(Control::CONTINUE)
    }
}
