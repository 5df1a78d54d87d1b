//! Running one stage: batches from its data mixture, the schedule, evaluation, exit
//! criteria, the retention gate and the anomaly guard.

use super::eval::{evaluate, Metrics};
use super::resume::ResumeMeta;
use super::snapshot::Snapshot;
use super::Pipeline;
use crate::checkpoint::Checkpoint;
use crate::config::{GateAction, StageConfig};
use crate::data::{collate, Example, Mixture};
use crate::error::{Error, Result};
use crate::report::MetricRow;
use crate::train::{lr_at, Trainer};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A stage's bookkeeping besides the trainer: the anomaly guard, early stopping and
/// the retention gate. It goes into every resume checkpoint (floats as bits, so a
/// resumed run decides exactly as an uninterrupted one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// LR multiplier from recoveries.
    #[serde(with = "bits")]
    pub lr_scale: f64,
    /// Recoveries so far.
    pub recoveries: u32,
    /// Running mean of the training loss.
    #[serde(with = "opt_bits")]
    pub running: Option<f64>,
    /// Early stopping: the best score so far and evaluations since it.
    #[serde(with = "opt_bits")]
    pub best: Option<f64>,
    /// Evaluations without improvement.
    pub since_best: u32,
    /// The retention gate: the best own score among evaluations that passed it (the
    /// stage start counts as passing, with score -inf).
    #[serde(with = "opt_bits")]
    pub passing: Option<f64>,
    /// Failing evaluations in a row.
    pub gate_fails: u32,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            lr_scale: 1.0,
            recoveries: 0,
            running: None,
            best: None,
            since_best: 0,
            passing: None,
            gate_fails: 0,
        }
    }
}

mod bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

mod opt_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&v.to_bits()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(f64::from_bits))
    }
}

/// The states a stage may go back to: the last good one (anomaly guard, every 10
/// steps), the best one (early stopping) and the best one that passed the retention
/// gate. Saved with each resume checkpoint.
pub struct Marks {
    /// Where the anomaly guard restores to.
    pub last_good: Snapshot,
    /// Early stopping's best.
    pub best: Option<Snapshot>,
    /// The best state that passed the retention gate.
    pub passing: Option<Snapshot>,
}

impl Marks {
    /// Every snapshot's tensors, named for a checkpoint.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (role, snap) in
            [("last_good", Some(&self.last_good)), ("best", self.best.as_ref()), ("passing", self.passing.as_ref())]
        {
            if let Some(snap) = snap {
                out.extend(snap.tensors(role));
            }
        }
        out
    }

    /// The snapshots a checkpoint holds (`progress` says which exist).
    pub fn load(ckpt: &Checkpoint, steps: &MarkSteps, progress: &Progress, trainer: &Trainer) -> Result<Marks> {
        let [lg, b, p] = steps.updates;
        let last_good = Snapshot::load(ckpt, "last_good", steps.last_good, lg, trainer)?;
        let best = progress.best.map(|_| Snapshot::load(ckpt, "best", steps.best, b, trainer)).transpose()?;
        let passing =
            progress.passing.map(|_| Snapshot::load(ckpt, "passing", steps.passing, p, trainer)).transpose()?;
        Ok(Marks { last_good, best, passing })
    }

    /// The steps the snapshots were taken at.
    pub fn steps(&self) -> MarkSteps {
        let of = |s: Option<&Snapshot>| s.map_or((0, 0), |s| (s.step, s.updates()));
        let (lg, b, p) = (of(Some(&self.last_good)), of(self.best.as_ref()), of(self.passing.as_ref()));
        MarkSteps { last_good: lg.0, best: b.0, passing: p.0, updates: [lg.1, b.1, p.1] }
    }
}

/// The steps of a [`Marks`]' snapshots, for the checkpoint meta.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MarkSteps {
    /// Of `last_good`.
    pub last_good: u64,
    /// Of `best`.
    pub best: u64,
    /// Of `passing`.
    pub passing: u64,
    /// The optimizer's update counts at the three.
    pub updates: [u64; 3],
}

/// Why a stage ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StageEnd {
    /// Reached `max_steps` / `epochs`.
    Budget,
    /// The exit metric crossed its threshold.
    Exit,
    /// Patience ran out (best checkpoint restored).
    Patience,
    /// The retention gate failed and rolled back.
    GateRollback,
    /// The retention gate failed and stops the pipeline.
    GateStop,
}

impl std::fmt::Display for StageEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageEnd::Budget => "its step budget",
            StageEnd::Exit => "its exit criterion",
            StageEnd::Patience => "patience (best checkpoint restored)",
            StageEnd::GateRollback => "the retention gate (rolled back to the best state that passed)",
            StageEnd::GateStop => "the retention gate (pipeline stopped)",
        })
    }
}

/// The score a gate watches on an earlier stage's eval set (higher is better).
fn gate_score(m: &Metrics, metric: Option<&str>) -> Option<f64> {
    if let Some(name) = metric {
        return m.get(name).map(|v| if crate::report::lower_is_better(name) { -v } else { *v });
    }
    ["exact_match", "accuracy", "token_accuracy"]
        .iter()
        .find_map(|k| m.get(*k).copied())
        .or_else(|| m.get("loss").map(|l| -l))
}

impl Pipeline {
    /// Evaluates an earlier stage `k`'s eval set with that stage's objective.
    pub(super) fn eval_set(&mut self, trainer: &Trainer, k: usize) -> Result<Option<Metrics>> {
        let Some(data) = self.eval_data[k].clone() else { return Ok(None) };
        let bs = self.cfg.stages[k].batch_size;
        let (running, set) = (&self.cfg.stages[self.current].name, &self.cfg.stages[k].name);
        let obj = self.objectives[k].as_mut().ok_or_else(|| Error::msg(format!("stage `{set}` has not run yet")))?;
        let m = evaluate(trainer.model.as_ref(), &trainer.adapters, obj, &self.state, &data, bs, &self.device)
            .map_err(|e| Error::msg(format!("stage `{running}`: evaluating the eval set of stage `{set}`: {e}")))?;
        Ok(Some(m))
    }

    /// Evaluates the running stage's own eval set.
    pub(super) fn eval_own(&mut self, trainer: &mut Trainer) -> Result<Option<Metrics>> {
        let k = self.current;
        let Some(data) = self.eval_data[k].clone() else { return Ok(None) };
        let bs = self.cfg.stages[k].batch_size;
        let m = evaluate(
            trainer.model.as_ref(),
            &trainer.adapters,
            &mut trainer.stage,
            &self.state,
            &data,
            bs,
            &self.device,
        )
        .map_err(|e| Error::msg(format!("stage `{}`: evaluating its eval set: {e}", self.cfg.stages[k].name)))?;
        Ok(Some(m))
    }

    pub(super) fn log_eval(&mut self, stage: &str, step: u64, set: &str, m: &Metrics) -> Result<()> {
        self.log.append(&MetricRow::eval(stage, step, set, m.clone()))?;
        self.rows.push(MetricRow::eval(stage, step, set, m.clone()));
        Ok(())
    }

    /// Trains stage `self.current` to its end, from `trainer.step` (non-zero on resume,
    /// where `marks` come from the checkpoint).
    pub(super) fn train_stage(
        &mut self,
        trainer: &mut Trainer,
        mixture: &mut Mixture,
        mut progress: Progress,
        marks: Option<Marks>,
    ) -> Result<StageEnd> {
        let s: StageConfig = self.cfg.stages[self.current].clone();
        let total = s
            .total_steps(mixture.primary().len())
            .ok_or_else(|| Error::msg(format!("stage `{}`: no step budget", s.name)))?;
        trainer.grad_clip = s.grad_clip;
        trainer.adapters.set_dropout(s.train.dropout, trainer.state.clone());
        let mut marks = match marks {
            Some(m) => m,
            None => {
                // A gated stage's start passes by definition: the rollback target until
                // an evaluation passes with a better score.
                let passing = if s.gates.retention.is_empty() {
                    None
                } else {
                    progress.passing = Some(f64::NEG_INFINITY);
                    Some(Snapshot::take(trainer)?)
                };
                Marks { last_good: Snapshot::take(trainer)?, best: None, passing }
            }
        };
        self.console.stage_start(&s.name, trainer.step, total);
        while trainer.step < total {
            let step = trainer.step + 1;
            self.apply_unfreeze(trainer, &s, step)?;
            let mut micro = Vec::with_capacity(s.grad_accum);
            for _ in 0..s.grad_accum {
                // Replayed rows keep their own stage's length limit: cut them to this one's.
                let ex: Vec<_> = mixture.next_batch(s.batch_size)?.into_iter().map(|e| e.cut(s.seq_len)).collect();
                let rows: Vec<&Example> = ex.iter().map(|e| e.as_ref()).collect();
                micro.push(collate(&rows, 0, &self.device)?);
            }
            let lr = lr_at(&s.schedule, s.optimizer.lr, step, total) * progress.lr_scale;
            let out = trainer.train_step_accum(&micro, lr);
            let spike = match (&out, progress.running) {
                (Ok(o), Some(mean)) => {
                    step > 10 && o.loss > s.anomaly.spike_factor * mean && o.loss - mean > s.anomaly.spike_margin
                }
                _ => false,
            };
            if let Err(e) = &out {
                if !matches!(e, Error::NonFinite(_)) {
                    return Err(Error::msg(format!("stage `{}` step {step}: {e}", s.name)));
                }
            }
            if out.is_err() || spike {
                let why = match &out {
                    Err(e) => e.to_string(),
                    Ok(o) => format!(
                        "loss spike {:.4} > {} x running mean {:.4}",
                        o.loss,
                        s.anomaly.spike_factor,
                        progress.running.unwrap_or(0.0)
                    ),
                };
                if progress.recoveries >= s.anomaly.max_recoveries {
                    return Err(Error::msg(format!(
                        "stage `{}` step {step}: {why}; gave up after {} recoveries",
                        s.name, progress.recoveries
                    )));
                }
                progress.recoveries += 1;
                progress.lr_scale *= s.anomaly.lr_scale;
                marks.last_good.restore(trainer)?;
                trainer.step = marks.last_good.step;
                self.event(
                    &s.name,
                    step,
                    "anomaly",
                    format!(
                        "{why}; restored step {} and scaled the LR to x{}",
                        marks.last_good.step, progress.lr_scale
                    ),
                    true,
                )?;
                // The rejected step stays in the log: NaN for a non-finite loss, else the spike.
                self.log.append(&MetricRow::train(
                    &s.name,
                    step,
                    out.as_ref().map_or(f64::NAN, |o| o.loss),
                    lr,
                    None,
                ))?;
                continue;
            }
            let o = out?;
            progress.running = Some(progress.running.map_or(o.loss, |m| 0.9 * m + 0.1 * o.loss));
            let row = MetricRow::train(&s.name, trainer.step, o.loss, lr, Some(o.grad_norm));
            self.log.append(&row)?;
            self.rows.push(row);
            self.console.step(&s.name, trainer.step, total, o.loss);
            if trainer.step % 10 == 0 {
                marks.last_good = Snapshot::take(trainer)?;
            }
            let eval_now = s.eval_every.is_some_and(|e| trainer.step % e == 0) || trainer.step == total;
            if !eval_now {
                continue;
            }
            if let Some(end) = self.evaluate_and_decide(trainer, &s, total, &mut progress, &mut marks)? {
                self.console.stage_end();
                return Ok(end);
            }
            if trainer.step < total {
                let meta = ResumeMeta {
                    stage: self.current,
                    stage_done: false,
                    step: trainer.step,
                    rng: self.state.rng.borrow().state(),
                    mixture: Some(mixture.state()),
                    progress: progress.clone(),
                    optimizer_updates: trainer.optimizer.updates,
                    marks: marks.steps(),
                    own_scores: self.own_scores.clone(),
                    rows: self.rows.len(),
                    result: None,
                };
                super::resume::save(
                    &self.run_dir,
                    "resume",
                    trainer,
                    &self.objectives,
                    self.current,
                    &meta,
                    marks.tensors(),
                )?;
            }
        }
        self.console.stage_end();
        Ok(StageEnd::Budget)
    }

    /// The stage's own score on an evaluation (higher is better): its exit metric when
    /// it has one, else what a gate would read.
    fn own_score(s: &StageConfig, own: Option<&Metrics>) -> Option<f64> {
        let own = own?;
        match s.exit.as_ref().and_then(|e| e.metric.strip_prefix("eval.")) {
            Some(name) => gate_score(own, Some(name)),
            None => gate_score(own, None),
        }
    }

    fn evaluate_and_decide(
        &mut self,
        trainer: &mut Trainer,
        s: &StageConfig,
        total: u64,
        progress: &mut Progress,
        marks: &mut Marks,
    ) -> Result<Option<StageEnd>> {
        let step = trainer.step;
        let own = self.eval_own(trainer)?;
        if let Some(m) = &own {
            self.log_eval(&s.name, step, &s.name, m)?;
            self.console.eval(&s.name, step, &s.name, m);
        }
        // Every gate's watched set is evaluated; `failing` holds (stage, drop, max_drop,
        // patience, action) of the gates that fail.
        let mut failing = Vec::new();
        for g in &s.gates.retention {
            let (k, _) = self.cfg.stage(&g.stage).ok_or_else(|| Error::msg(format!("no stage `{}`", g.stage)))?;
            let Some(m) = self.eval_set(trainer, k)? else { continue };
            self.log_eval(&s.name, step, &g.stage, &m)?;
            self.console.eval(&s.name, step, &g.stage, &m);
            let now = gate_score(&m, g.metric.as_deref());
            let base = self.own_scores.get(&g.stage).and_then(|b| gate_score(b, g.metric.as_deref()));
            if let (Some(now), Some(base)) = (now, base) {
                if base - now > g.max_drop {
                    failing.push((g.stage.clone(), base - now, g.max_drop, g.patience, g.on_fail));
                }
            }
        }
        let gate_failing = !failing.is_empty();
        if gate_failing {
            progress.gate_fails += 1;
            let patience = failing.iter().map(|f| f.3).min().unwrap_or(0);
            let what = failing
                .iter()
                .map(|(stage, drop, max, _, _)| format!("`{stage}` (drop {drop:.4} > {max})"))
                .collect::<Vec<_>>()
                .join(", ");
            if progress.gate_fails <= patience && step < total {
                self.event(
                    &s.name,
                    step,
                    "gate",
                    format!("retention gate failing on {what}, {}/{patience} tolerated", progress.gate_fails),
                    true,
                )?;
            } else {
                let stop = failing.iter().any(|f| f.4 == GateAction::Stop);
                let back = marks.passing.as_ref().map_or(0, |p| p.step);
                let action = if stop {
                    "stopping the pipeline".to_string()
                } else {
                    format!("rolled back to step {back}, the best state that passed")
                };
                self.event(
                    &s.name,
                    step,
                    if stop { "stop" } else { "rollback" },
                    format!("retention gate failed on {what}; {action}"),
                    true,
                )?;
                if stop {
                    return Ok(Some(StageEnd::GateStop));
                }
                marks
                    .passing
                    .as_ref()
                    .ok_or_else(|| Error::msg(format!("stage `{}`: no state to roll back to", s.name)))?
                    .restore(trainer)?;
                return Ok(Some(StageEnd::GateRollback));
            }
        } else if !s.gates.retention.is_empty() {
            progress.gate_fails = 0;
            let score = Self::own_score(s, own.as_ref()).unwrap_or(f64::NEG_INFINITY);
            if progress.passing.is_none_or(|b| score >= b) {
                progress.passing = Some(score);
                marks.passing = Some(Snapshot::take(trainer)?);
            }
        }
        let Some(exit) = &s.exit else { return Ok(None) };
        let value = match exit.metric.split_once('.') {
            Some(("train", _)) => self.rows.iter().rev().find(|r| r.stage == s.name).and_then(|r| r.loss),
            Some((_, name)) => own.as_ref().and_then(|m| m.get(name).copied()),
            None => None,
        };
        let Some(v) = value else { return Ok(None) };
        if !gate_failing && (exit.below.is_some_and(|t| v < t) || exit.above.is_some_and(|t| v > t)) {
            return Ok(Some(StageEnd::Exit));
        }
        if let Some(patience) = exit.patience {
            let score =
                if crate::report::lower_is_better(exit.metric.rsplit('.').next().unwrap_or("")) { -v } else { v };
            if progress.best.is_none_or(|b| score > b) {
                progress.best = Some(score);
                progress.since_best = 0;
                marks.best = Some(Snapshot::take(trainer)?);
            } else {
                progress.since_best += 1;
                if progress.since_best >= patience {
                    if let Some(snap) = marks.best.as_ref() {
                        snap.restore(trainer)?;
                        self.event(
                            &s.name,
                            step,
                            "patience",
                            format!(
                                "no improvement of {} in {patience} evaluations; restored the best state (step {})",
                                exit.metric, snap.step
                            ),
                            false,
                        )?;
                    }
                    return Ok(Some(StageEnd::Patience));
                }
            }
        }
        Ok(None)
    }
}
