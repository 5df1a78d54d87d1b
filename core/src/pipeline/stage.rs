//! Running one stage: batches from its data mixture, the schedule, evaluation, exit
//! criteria, the retention gate and the anomaly guard.

use super::eval::{evaluate, Metrics};
use super::resume::ResumeMeta;
use super::snapshot::Snapshot;
use super::Pipeline;
use crate::config::{GateAction, StageConfig};
use crate::data::{collate, Mixture};
use crate::error::{Error, Result};
use crate::report::MetricRow;
use crate::train::{lr_at, Trainer};

/// The anomaly guard's state, carried across a resume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// LR multiplier from recoveries.
    pub lr_scale: f64,
    /// Recoveries so far.
    pub recoveries: u32,
    /// Running mean of the training loss.
    pub running: Option<f64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { lr_scale: 1.0, recoveries: 0, running: None }
    }
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

/// The score a gate watches on an earlier stage's eval set (higher is better).
fn gate_score(m: &Metrics, metric: Option<&str>) -> Option<f64> {
    if let Some(name) = metric {
        return m.get(name).map(|v| if crate::report::lower_is_better(name) { -v } else { *v });
    }
    ["exact_match", "accuracy", "token_accuracy"].iter().find_map(|k| m.get(*k).copied()).or_else(|| m.get("loss").map(|l| -l))
}

impl Pipeline {
    /// Evaluates an earlier stage `k`'s eval set with that stage's objective.
    pub(super) fn eval_set(&mut self, trainer: &Trainer, k: usize) -> Result<Option<Metrics>> {
        let Some(data) = self.eval_data[k].clone() else { return Ok(None) };
        let bs = self.cfg.stages[k].batch_size;
        let obj = self.objectives[k].as_mut().ok_or_else(|| Error::msg(format!("stage `{}` has not run yet", self.cfg.stages[k].name)))?;
        Ok(Some(evaluate(trainer.model.as_ref(), &trainer.adapters, obj, &self.state, &data, bs, &self.device)?))
    }

    /// Evaluates the running stage's own eval set.
    pub(super) fn eval_own(&mut self, trainer: &mut Trainer) -> Result<Option<Metrics>> {
        let k = self.current;
        let Some(data) = self.eval_data[k].clone() else { return Ok(None) };
        let bs = self.cfg.stages[k].batch_size;
        let m = evaluate(trainer.model.as_ref(), &trainer.adapters, &mut trainer.stage, &self.state, &data, bs, &self.device)?;
        Ok(Some(m))
    }

    fn log_eval(&mut self, stage: &str, step: u64, set: &str, m: &Metrics) -> Result<()> {
        self.log.append(&MetricRow::eval(stage, step, set, m.clone()))?;
        self.rows.push(MetricRow::eval(stage, step, set, m.clone()));
        Ok(())
    }

    /// Trains stage `self.current` to its end, from `trainer.step` (non-zero on resume).
    pub(super) fn train_stage(&mut self, trainer: &mut Trainer, mixture: &mut Mixture, progress: Progress) -> Result<StageEnd> {
        let s: StageConfig = self.cfg.stages[self.current].clone();
        let per_epoch = mixture.primary().len().div_ceil(s.batch_size * s.grad_accum) as u64;
        let total = match (s.max_steps, s.epochs) {
            (Some(m), Some(e)) => m.min(per_epoch * e as u64),
            (Some(m), None) => m,
            (None, Some(e)) => per_epoch * e as u64,
            (None, None) => return Err(Error::msg(format!("stage `{}`: no step budget", s.name))),
        };
        trainer.grad_clip = s.grad_clip;
        let Progress { mut lr_scale, mut recoveries, mut running } = progress;
        let mut last_good = Snapshot::take(trainer)?;
        let mut best: Option<(f64, Snapshot)> = None;
        let mut since_best = 0u32;
        let mut passing: Option<Snapshot> = None;
        while trainer.step < total {
            let step = trainer.step + 1;
            self.apply_unfreeze(trainer, &s, step)?;
            let mut micro = Vec::with_capacity(s.grad_accum);
            for _ in 0..s.grad_accum {
                let ex = mixture.next_batch(s.batch_size)?;
                micro.push(collate(&ex, 0, &self.device)?);
            }
            let lr = lr_at(&s.schedule, s.optimizer.lr, step, total) * lr_scale;
            let out = trainer.train_step_accum(&micro, lr);
            let spike = match (&out, running) {
                (Ok(o), Some(mean)) => o.loss > s.anomaly.spike_factor * mean && step > 10,
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
                    Ok(o) => format!("loss spike {:.4} > {} x running mean {:.4}", o.loss, s.anomaly.spike_factor, running.unwrap_or(0.0)),
                };
                if recoveries >= s.anomaly.max_recoveries {
                    return Err(Error::msg(format!("stage `{}` step {step}: {why}; gave up after {recoveries} recoveries", s.name)));
                }
                recoveries += 1;
                lr_scale *= s.anomaly.lr_scale;
                last_good.restore(trainer)?;
                trainer.step = last_good.step;
                tracing::warn!("stage `{}` step {step}: {why}; restored step {} and scaled the LR to x{lr_scale}", s.name, last_good.step);
                self.log.append(&MetricRow::train(&s.name, step, f64::NAN, lr, None))?;
                continue;
            }
            let o = out?;
            running = Some(running.map_or(o.loss, |m| 0.9 * m + 0.1 * o.loss));
            let row = MetricRow::train(&s.name, trainer.step, o.loss, lr, Some(o.grad_norm));
            self.log.append(&row)?;
            self.rows.push(row);
            self.progress(&s.name, trainer.step, total, o.loss);
            if trainer.step % 10 == 0 {
                last_good = Snapshot::take(trainer)?;
            }
            let eval_now = s.eval_every.is_some_and(|e| trainer.step % e == 0) || trainer.step == total;
            if !eval_now {
                continue;
            }
            if let Some(end) = self.evaluate_and_decide(trainer, &s, &mut best, &mut since_best, &mut passing)? {
                return Ok(end);
            }
            if trainer.step < total {
                let meta = ResumeMeta {
                    stage: self.current,
                    stage_done: false,
                    step: trainer.step,
                    rng: self.state.rng.borrow().state(),
                    mixture: Some(mixture.state()),
                    lr_scale,
                    recoveries,
                    running_bits: running.map(f64::to_bits),
                    own_scores: self.own_scores.clone(),
                    rows: self.rows.len(),
                };
                super::resume::save(&self.run_dir, "resume", trainer, &self.objectives, self.current, &meta)?;
            }
        }
        Ok(StageEnd::Budget)
    }

    fn evaluate_and_decide(&mut self, trainer: &mut Trainer, s: &StageConfig, best: &mut Option<(f64, Snapshot)>, since_best: &mut u32, passing: &mut Option<Snapshot>) -> Result<Option<StageEnd>> {
        let step = trainer.step;
        let own = self.eval_own(trainer)?;
        if let Some(m) = &own {
            self.log_eval(&s.name, step, &s.name, m)?;
        }
        if let Some(g) = &s.gates.retention {
            let (k, _) = self.cfg.stage(&g.stage).ok_or_else(|| Error::msg(format!("no stage `{}`", g.stage)))?;
            if let Some(m) = self.eval_set(trainer, k)? {
                self.log_eval(&s.name, step, &g.stage, &m)?;
                let now = gate_score(&m, g.metric.as_deref());
                let base = self.own_scores.get(&g.stage).and_then(|b| gate_score(b, g.metric.as_deref()));
                if let (Some(now), Some(base)) = (now, base) {
                    if base - now > g.max_drop {
                        tracing::warn!("stage `{}` step {step}: retention gate on `{}` failed (drop {:.4} > {})", s.name, g.stage, base - now, g.max_drop);
                        return Ok(Some(match g.on_fail {
                            GateAction::Stop => StageEnd::GateStop,
                            GateAction::Rollback => {
                                if let Some(p) = passing.as_ref() {
                                    p.restore(trainer)?;
                                } else {
                                    self.stage_start.as_ref().ok_or_else(|| Error::msg("no start snapshot"))?.restore(trainer)?;
                                }
                                StageEnd::GateRollback
                            }
                        }));
                    }
                    *passing = Some(Snapshot::take(trainer)?);
                }
            }
        }
        let Some(exit) = &s.exit else { return Ok(None) };
        let value = match exit.metric.split_once('.') {
            Some(("train", _)) => self.rows.iter().rev().find(|r| r.stage == s.name).and_then(|r| r.loss),
            Some((_, name)) => own.as_ref().and_then(|m| m.get(name).copied()),
            None => None,
        };
        let Some(v) = value else { return Ok(None) };
        if exit.below.is_some_and(|t| v < t) || exit.above.is_some_and(|t| v > t) {
            return Ok(Some(StageEnd::Exit));
        }
        if let Some(patience) = exit.patience {
            let score = if crate::report::lower_is_better(exit.metric.rsplit('.').next().unwrap_or("")) { -v } else { v };
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                *best = Some((score, Snapshot::take(trainer)?));
                *since_best = 0;
            } else {
                *since_best += 1;
                if *since_best >= patience {
                    if let Some((_, snap)) = best.as_ref() {
                        snap.restore(trainer)?;
                    }
                    return Ok(Some(StageEnd::Patience));
                }
            }
        }
        Ok(None)
    }
}
