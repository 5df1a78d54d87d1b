//! Training one stage, step by step: batches from its data mixture, the learning-rate
//! schedule, the anomaly guard, the objective's hooks, evaluations, the retention
//! gate, the exit rule and early stopping, and a resume checkpoint after each
//! evaluation, every `save_every` steps (`resume-<stage>-step<N>`, the newest
//! `keep_last` kept) and when a signal stops the run (see [`super::interrupt`]).
//!
//! After every accepted optimizer step the objective's `on_step_end` runs; after every
//! evaluation of the stage's own set (each `eval_every` and the last step), its
//! `on_eval_end`. Their `Control`: `STOP` ends the stage with its current state,
//! `ROLLBACK` restores the best state the stage saw (see [`super::early_stopping`]) and
//! ends it. The retention gate and the exit rule decide first at an evaluation.

use super::console::{BarEnd, StepLine};
use super::early_stopping::Patience;
use super::eval::{EvalSets, Metrics};
use super::freeze;
use super::gate::{GateFailure, GateVerdict};
use super::interrupt::{Cause, Interrupt, Interruption};
use super::outcome::{StageEnd, StageSummary};
use super::records::Records;
use super::resume::{self, Position, ResumeMeta, RESUME_CHECKPOINT};
use super::rules::StageRules;
use super::score::{lower_is_better, oriented};
use crate::checkpoint;
use crate::config::{StageConfig, STEP_CHECKPOINT_PREFIX};
use crate::data::{augment, collate, Example, Mixture};
use crate::error::{Context, Error, Result};
use crate::report::{EventKind, MetricRow, Split};
use crate::rng::Rng;
use crate::train::{lr_at, Batch, StepOutput, Trainer};
use candle_core::Device;
use stagecraft_sdk::{Control, Metric, StepInfo};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// What a stage reads and writes besides its trainer.
pub(crate) struct StageContext<'a> {
    /// The stage's index.
    pub index: usize,
    /// Every stage's config (`stages[index]` is this one's).
    pub stages: &'a [StageConfig],
    /// Every stage's eval set.
    pub sets: &'a mut EvalSets,
    /// The run's logs.
    pub records: &'a mut Records,
    /// Each finished stage's own final metrics (what gates compare with).
    pub own_scores: &'a BTreeMap<String, Metrics>,
    /// How earlier stages ended (for the checkpoints' meta).
    pub ended: &'a [StageSummary],
    /// The run directory (checkpoints go under it).
    pub run_dir: &'a Path,
    /// Where batches go.
    pub device: &'a Device,
    /// Whether a signal asked the run to stop, and where it pauses.
    pub interrupt: &'a Interrupt,
    /// The plugins (an adjustment of the optimizer's config rebuilds it).
    pub registry: &'a crate::plugin::Registry,
    /// Every how many steps a `save_every` checkpoint is written (`None`: never), and
    /// how many of them are kept.
    pub save_every: Option<u64>,
    /// How many `save_every` checkpoints are kept.
    pub keep_last: usize,
    /// The stage's augmentation randomness, forked by step and row (no state: a
    /// resumed stage draws what the uninterrupted one did).
    pub augment_rng: Rng,
}

/// How training a stage stopped.
pub(crate) enum Ended {
    /// The stage ended.
    Stage(StageEnd),
    /// A signal or the pause point stopped the run; a resume checkpoint was written.
    Interrupted(Interruption),
}

/// A stage being trained.
pub(crate) struct StageRun<'a> {
    ctx: StageContext<'a>,
    s: &'a StageConfig,
    trainer: &'a mut Trainer,
    mixture: Mixture,
    rules: StageRules,
    total: u64,
    /// The stage's config with the adjustments made so far (what its learning rate,
    /// dropout and optimizer follow).
    current: StageConfig,
    /// The steps the stage had taken when this process took it up.
    first_step: u64,
}

impl<'a> StageRun<'a> {
    /// Stage `ctx.index`, from the trainer's step on (non-zero on resume).
    pub fn new(ctx: StageContext<'a>, trainer: &'a mut Trainer, mixture: Mixture, rules: StageRules) -> Result<Self> {
        let s = &ctx.stages[ctx.index];
        let total = s
            .total_steps(mixture.primary().len())
            .ok_or_else(|| Error::msg(format!("stage `{}`: no step budget", s.name)))?;
        trainer.grad_clip = s.grad_clip;
        // Resumed after step n: the adjustments made before it (one made after step n
        // itself is made, with its event, before the next step, as it was the first time).
        let current = match trainer.step {
            0 => s.clone(),
            n => s.adjusted(n - 1)?,
        };
        replace_optimizer(ctx.registry, trainer, s, &current)?;
        trainer.adapters.set_dropout(current.train.dropout, trainer.state.clone());
        let first_step = trainer.step;
        Ok(StageRun { ctx, s, trainer, mixture, rules, total, current, first_step })
    }

    /// Trains to the stage's end, or until a signal stops the run.
    pub fn run(mut self) -> Result<Ended> {
        let replay = self.s.data.replay.is_some();
        self.ctx.records.console().stage_start(&self.s.name, self.trainer.step, self.total, replay);
        let end = self.steps();
        let why = match &end {
            Ok(Ended::Stage(e)) => BarEnd::Stage(e),
            Ok(Ended::Interrupted(i)) => BarEnd::Interrupted(i.cause),
            Err(_) => BarEnd::Failed,
        };
        self.ctx.records.console().stage_end(self.trainer.step, why);
        end
    }

    fn steps(&mut self) -> Result<Ended> {
        if self.total == 0 {
            // `max_steps = 0`: the pipeline evaluates every set when the stage finishes.
            return Ok(Ended::Stage(StageEnd::EvalOnly));
        }
        while self.trainer.step < self.total {
            let done = self.trainer.step;
            if let Some(cause) = self.ctx.interrupt.due(&self.s.name, done) {
                return self.interrupted(cause).map(Ended::Interrupted);
            }
            if let Some(a) = self.s.adjust.iter().find(|a| a.after_step == done) {
                self.adjust(a)?;
            }
            if freeze::releases_after(self.s, done) {
                freeze::apply(self.trainer, self.s, done)?;
            }
            let step = done + 1;
            let lr = lr_at(&self.s.schedule, self.current.optimizer.lr, step, self.total) * self.rules.guard.lr_scale();
            let started = std::time::Instant::now();
            let (batches, tokens) = self.batches()?;
            let out = self.trainer.train_step_accum(&batches, lr);
            let tokens_per_s = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            if let Some(why) = self.rules.guard.rejects(step, &out) {
                self.recover(step, lr, why, out.ok())?;
                continue;
            }
            let out = out.with_context(|| format!("stage `{}` step {step}", self.s.name))?;
            let info = StepInfo { step, loss: out.loss, lr, grad_norm: out.grad_norm };
            self.record_step(out, lr, tokens, tokens_per_s)?;
            let control = self.trainer.objective.on_step_end(&info)?;
            if let Some(end) = self.obey(control, "on_step_end")? {
                return Ok(Ended::Stage(end));
            }
            let eval_due = self.eval_due();
            if eval_due {
                if let Some(end) = self.evaluate_and_decide()? {
                    return Ok(Ended::Stage(end));
                }
            }
            if self.trainer.step >= self.total {
                continue;
            }
            // One checkpoint per step: a `save_every` one stands for the rolling one.
            if self.save_due() {
                self.save_step_checkpoint()?;
            } else if eval_due {
                self.checkpoint(RESUME_CHECKPOINT)?;
            }
        }
        Ok(Ended::Stage(StageEnd::Budget))
    }

    fn save_due(&self) -> bool {
        self.ctx.save_every.is_some_and(|e| self.trainer.step.is_multiple_of(e))
    }

    /// The `save_every` checkpoint of this step, then all but the newest `keep_last`
    /// of them are deleted (this one is durable by then).
    fn save_step_checkpoint(&mut self) -> Result<()> {
        let name = format!("{STEP_CHECKPOINT_PREFIX}{}-step{}", self.s.name, self.trainer.step);
        self.checkpoint(&name)?;
        checkpoint::prune_prefixed(&self.ctx.run_dir.join("checkpoints"), STEP_CHECKPOINT_PREFIX, self.ctx.keep_last)?;
        Ok(())
    }

    /// Makes adjustment `a` before the next step: the optimizer rebuilt when its
    /// config changes, the dropout set, and an `adjust` event.
    fn adjust(&mut self, a: &crate::config::Adjustment) -> Result<()> {
        let next = self.s.adjusted(a.after_step)?;
        replace_optimizer(self.ctx.registry, self.trainer, &self.current, &next)?;
        self.trainer.adapters.set_dropout(next.train.dropout, self.trainer.state.clone());
        self.current = next;
        let message = format!("hyperparameters adjusted {}", a.describe());
        self.ctx.records.event(&self.s.name, a.after_step, EventKind::Adjust, message)
    }

    /// Stops the stage before its next step: the `interrupt` event, then the rolling
    /// resume checkpoint, which covers the event (a resume keeps it, once).
    /// A run resumed at its pause point stops there again as it is: the checkpoint it
    /// resumed from is that step's.
    fn interrupted(&mut self, cause: Cause) -> Result<Interruption> {
        let step = self.trainer.step;
        if !(cause == Cause::Pause && step == self.first_step && step > 0) {
            let message = format!("{}; saved checkpoint `{RESUME_CHECKPOINT}`", cause.describe());
            self.ctx.records.event(&self.s.name, step, EventKind::Interrupt, message)?;
            self.checkpoint(RESUME_CHECKPOINT)?;
        }
        Ok(Interruption {
            cause,
            stage: self.s.name.clone(),
            step,
            checkpoint: self.ctx.run_dir.join("checkpoints").join(RESUME_CHECKPOINT),
        })
    }

    /// The next step's micro-batches (the stage's own rows augmented where it asks,
    /// replayed rows cut to its length limit) and how many tokens they hold, padding
    /// left out.
    fn batches(&mut self) -> Result<(Vec<Batch>, u64)> {
        let s = self.s;
        let mut tokens = 0;
        let replay_from = self.mixture.replay_from(s.batch_size)?;
        let own = replay_from.unwrap_or(s.batch_size);
        let step = self.trainer.step + 1;
        let batches = (0..s.grad_accum)
            .map(|micro| {
                let mut ex: Vec<_> =
                    self.mixture.next_batch(s.batch_size)?.into_iter().map(|e| e.cut(s.seq_len)).collect();
                if !s.augment.is_empty() {
                    for (row, e) in ex.iter_mut().enumerate().take(own) {
                        let mut rng = self.ctx.augment_rng.fork(step).fork((micro * s.batch_size + row) as u64);
                        *e = Cow::Owned(augment(e, &s.augment, &mut rng));
                    }
                }
                let rows: Vec<&Example> = ex.iter().map(|e| e.as_ref()).collect();
                tokens += rows.iter().map(|r| r.ids.len() as u64).sum::<u64>();
                Ok(Batch { replay_from, ..collate(&rows, 0, self.ctx.device)? })
            })
            .collect::<Result<_>>()?;
        Ok((batches, tokens))
    }

    /// Undoes rejected step `step`; it stays in the log (NaN for a non-finite loss).
    fn recover(&mut self, step: u64, lr: f64, why: String, out: Option<StepOutput>) -> Result<()> {
        let r = self
            .rules
            .guard
            .recover(why, self.trainer)
            .with_context(|| format!("stage `{}` step {step}", self.s.name))?;
        let message = format!("{}; restored step {} and scaled the LR to x{}", r.why, r.restored, r.lr_scale);
        self.ctx.records.event(&self.s.name, step, EventKind::Anomaly, message)?;
        let loss = out.map_or(f64::NAN, |o| o.loss);
        self.ctx.records.train(MetricRow::train(&self.s.name, step, loss, lr, None))
    }

    fn record_step(&mut self, out: StepOutput, lr: f64, tokens: u64, tokens_per_s: f64) -> Result<()> {
        let step = self.trainer.step;
        let mut row = MetricRow::train(&self.s.name, step, out.loss, lr, Some(out.grad_norm));
        if let Some(split) = out.split {
            row.task_loss = Some(split.task);
            row.replay_loss = split.replay;
        }
        row.penalty = out.penalty;
        row.tokens_per_s = Some(tokens_per_s.round());
        self.ctx.records.train(row)?;
        self.ctx.records.console().step(StepLine { step, loss: out.loss, lr, tokens });
        self.rules.guard.accept(out.loss, self.trainer)
    }

    fn eval_due(&self) -> bool {
        let step = self.trainer.step;
        self.s.eval_every.is_some_and(|e| step.is_multiple_of(e)) || step == self.total
    }

    /// Evaluates the stage's own set (and tells the objective) and every gated set, and
    /// applies the gate, the exit rule, early stopping and the objective's decision,
    /// in that order.
    fn evaluate_and_decide(&mut self) -> Result<Option<StageEnd>> {
        let own = self.evaluate(self.ctx.index)?;
        let control = match &own {
            Some(m) => self.trainer.objective.on_eval_end(&hook_metrics(m))?,
            None => Control::CONTINUE,
        };
        let failures = self.gate_failures()?;
        let failing = !failures.is_empty();
        if let Some(end) = self.apply_gate(failures, own.as_ref())? {
            return Ok(Some(end));
        }
        if let Some(end) = self.exit_or_patience(own.as_ref(), failing)? {
            return Ok(Some(end));
        }
        self.obey(control, "on_eval_end")
    }

    /// What an objective's `control` from `hook` does to the stage.
    fn obey(&mut self, control: Control, hook: &str) -> Result<Option<StageEnd>> {
        let step = self.trainer.step;
        let objective = self.s.objective.name();
        let (message, end) = match control {
            Control::CONTINUE => return Ok(None),
            Control::STOP => (format!("objective `{objective}` stopped the stage from {hook}"), StageEnd::ObjectiveStop),
            Control::ROLLBACK => {
                let best = match self.rules.early_stopping.as_ref() {
                    Some(b) => b.restore_best(self.trainer)?,
                    None => None,
                };
                let restored = match best {
                    Some(at) => format!("restored the best state (step {at})"),
                    None => "no evaluated state to go back to, kept the current one".to_string(),
                };
                (format!("objective `{objective}` rolled the stage back from {hook}: {restored}"), StageEnd::ObjectiveRollback)
            }
            Control(other) => {
                return Err(Error::msg(format!(
                    "stage `{}` step {step}: objective `{objective}` returned control {other} from {hook}; this host knows \
                     CONTINUE (0), STOP (1) and ROLLBACK (2)",
                    self.s.name
                )))
            }
        };
        self.ctx.records.event(&self.s.name, step, EventKind::Objective, message)?;
        Ok(Some(end))
    }

    /// Evaluates stage `k`'s set and logs it.
    fn evaluate(&mut self, k: usize) -> Result<Option<Metrics>> {
        let Some((m, examples)) = self.ctx.sets.evaluate(k, self.ctx.index, self.trainer)? else { return Ok(None) };
        let set = &self.ctx.stages[k].name;
        self.ctx.records.eval(&self.s.name, self.trainer.step, set, &m, &examples)?;
        self.ctx.records.console().eval(&self.s.name, self.trainer.step, set, &m);
        Ok(Some(m))
    }

    /// Every gated set that dropped more than its gate allows.
    fn gate_failures(&mut self) -> Result<Vec<GateFailure>> {
        let mut failures = Vec::new();
        for g in &self.s.gates.retention {
            let k = self
                .ctx
                .stages
                .iter()
                .position(|s| s.name == g.stage)
                .ok_or_else(|| Error::msg(format!("no stage `{}`", g.stage)))?;
            let Some(now) = self.evaluate(k)? else { continue };
            let base = self.ctx.own_scores.get(&g.stage).and_then(|b| oriented(b, g.metric.as_deref()));
            if let (Some(now), Some(base)) = (oriented(&now, g.metric.as_deref()), base) {
                if base - now > g.max_drop {
                    let f = GateFailure {
                        stage: g.stage.clone(),
                        drop: base - now,
                        max_drop: g.max_drop,
                        patience: g.patience,
                        action: g.on_fail,
                    };
                    failures.push(f);
                }
            }
        }
        Ok(failures)
    }

    fn apply_gate(&mut self, failures: Vec<GateFailure>, own: Option<&Metrics>) -> Result<Option<StageEnd>> {
        let Some(gate) = self.rules.gate.as_mut() else { return Ok(None) };
        let step = self.trainer.step;
        let exit_metric = self.s.exit.as_ref().and_then(|e| e.metric.strip_prefix("eval."));
        let own = own.and_then(|m| oriented(m, exit_metric)).unwrap_or(f64::NEG_INFINITY);
        let (kind, message, end) = match gate.decide(failures, own, step >= self.total, self.trainer)? {
            GateVerdict::Pass => return Ok(None),
            GateVerdict::Tolerated { failures, count, patience } => {
                let what = GateVerdict::describe(&failures);
                (EventKind::Gate, format!("retention gate failing on {what}, {count}/{patience} tolerated"), None)
            }
            GateVerdict::RolledBack { failures, to } => {
                let what = GateVerdict::describe(&failures);
                let message =
                    format!("retention gate failed on {what}; rolled back to step {to}, the best state that passed");
                (EventKind::Rollback, message, Some(StageEnd::GateRollback))
            }
            GateVerdict::Stop { failures } => {
                let what = GateVerdict::describe(&failures);
                (
                    EventKind::Stop,
                    format!("retention gate failed on {what}; stopping the pipeline"),
                    Some(StageEnd::GateStop),
                )
            }
        };
        self.ctx.records.event(&self.s.name, step, kind, message)?;
        Ok(end)
    }

    /// The exit rule, then the best state and early stopping (scored by the exit
    /// metric, else by the stage's main score).
    fn exit_or_patience(&mut self, own: Option<&Metrics>, gate_failing: bool) -> Result<Option<StageEnd>> {
        let Some(exit) = &self.s.exit else {
            let Some(score) = own.and_then(|m| oriented(m, None)) else { return Ok(None) };
            if let Some(best) = self.rules.early_stopping.as_mut() {
                best.observe(score, self.trainer)?;
            }
            return Ok(None);
        };
        let value = match exit.metric.split_once('.') {
            Some(("train", _)) => self
                .ctx
                .records
                .rows()
                .iter()
                .rev()
                .find(|r| r.split == Split::Train && r.stage == self.s.name)
                .and_then(|r| r.loss),
            Some((_, name)) => own.and_then(|m| m.get(name).copied()),
            None => None,
        };
        let Some(v) = value else { return Ok(None) };
        if !gate_failing && (exit.below.is_some_and(|t| v < t) || exit.above.is_some_and(|t| v > t)) {
            return Ok(Some(StageEnd::Exit));
        }
        let Some(early) = self.rules.early_stopping.as_mut() else { return Ok(None) };
        let score = if lower_is_better(exit.metric.rsplit('.').next().unwrap_or("")) { -v } else { v };
        let Patience::Exhausted { best } = early.observe(score, self.trainer)? else { return Ok(None) };
        let patience = exit.patience.unwrap_or(0);
        let message = format!(
            "no improvement of {} in {patience} evaluations; restored the best state (step {best})",
            exit.metric
        );
        self.ctx.records.event(&self.s.name, self.trainer.step, EventKind::Patience, message)?;
        Ok(Some(StageEnd::Patience))
    }

    /// Resume checkpoint `name` (the rolling one after an evaluation or on a signal, a
    /// `save_every` one), taken between steps.
    fn checkpoint(&mut self, name: &str) -> Result<()> {
        let at = Position::Within { mixture: self.mixture.state(), rules: self.rules.state() };
        let meta = ResumeMeta::new(
            self.ctx.index,
            self.trainer,
            at,
            self.ctx.own_scores,
            self.ctx.ended,
            self.ctx.records.mark()?,
        );
        resume::save(self.ctx.run_dir, name, self.trainer, self.ctx.sets.objectives(), &meta, self.rules.tensors())
    }
}

/// Gives the optimizer of stage `s`, which ended before the checkpoint a run resumes
/// from, the config the stage's adjustments left it with, as the stage ended with it in
/// the run (a later stage may carry the optimizer over).
pub(crate) fn finished_optimizer(
    registry: &crate::plugin::Registry,
    trainer: &mut Trainer,
    s: &StageConfig,
) -> Result<()> {
    match s.adjust.is_empty() {
        true => Ok(()),
        false => replace_optimizer(registry, trainer, s, &s.adjusted(u64::MAX)?),
    }
}

/// Rebuilds the trainer's optimizer when its config in `to` differs from that in
/// `from` (the same plugin: its state carries over).
fn replace_optimizer(
    registry: &crate::plugin::Registry,
    trainer: &mut Trainer,
    from: &StageConfig,
    to: &StageConfig,
) -> Result<()> {
    if from.optimizer == to.optimizer {
        return Ok(());
    }
    let o = &to.optimizer;
    let fresh = registry.new_optimizer(&o.name, &o.config_json(), &trainer.state)?;
    trainer.replace_optimizer(fresh).with_context(|| format!("stage `{}`: adjusting the optimizer", to.name))
}

/// An evaluation's metrics as the objective's `on_eval_end` gets them: each final value
/// as `sum` with `count` 1.
fn hook_metrics(m: &Metrics) -> Vec<Metric> {
    m.iter().map(|(name, value)| Metric::new(name, *value, 1.0)).collect()
}
