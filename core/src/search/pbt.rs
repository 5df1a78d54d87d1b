//! Population-based training (`mode = "pbt"`; Jaderberg et al. 2017, as Ray Tune runs
//! it): a stage's `trials` members train together, interval by interval. Each
//! generation every member trains `interval` steps of the stage (a `stagecraft run`
//! that pauses there, `--pause-at STAGE:STEP`), and is scored on the stage's own eval
//! set at that step. Then the members are ranked: each of the worst `quantile`
//! (exploit) takes the state of one of the best `quantile` — a copy of its paused run
//! directory — and (explore) perturbs that member's values: with probability `resample`
//! a fresh draw from the key's distribution, else the value times `perturb[0]` or
//! `perturb[1]` (clipped to the range; a choice moves to a neighbouring value). The
//! others go on with their own state and values. Only keys that can change while a
//! stage trains are perturbed (`optimizer.*`, `train.dropout`: see
//! [`crate::config::Adjustment`]); the others are drawn for the first generation and
//! inherited with the state.
//!
//! A member's new values go into its run's config as an `adjust` entry at the step it
//! took them, so a member's config is its whole schedule: the best member's config is
//! the stage's best result (`best.toml` runs it again as it ran), and later stages
//! branch from its run. Records: one line per member and generation in `trials.jsonl`
//! (`number` the member, `generation`, `parent` the member whose state it went on
//! from). A killed search goes on as in the sampling mode: finished segments are read
//! back, a segment that was running resumes, and the decisions are seeded by stage and
//! generation.

use super::space::{current_value, KeyValue, Param, Settings, StageSpace};
use super::tpe::{self, Dim, SamplerKind};
use super::trial::{self, Status};
use super::{Search, TrialRecord};
use crate::config::{Adjustment, PipelineConfig, StageConfig};
use crate::error::{io, Result};
use crate::pipeline::BranchPoint;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::Value;

/// The stream of the search's RNG that population-based training draws from.
const PBT_STREAM: u64 = 0x0070_6274;
/// Marks a member's run directory as completely made (copied and adjusted).
const READY_FILE: &str = ".pbt-ready";

/// `pbt = { interval = 50, quantile = 0.25, perturb = [0.8, 1.2], resample = 0.25 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbtSettings {
    /// Steps between decisions (a multiple of the stage's `eval_every`; default:
    /// `eval_every`).
    #[serde(default)]
    pub interval: Option<u64>,
    /// The share of the population that exploits (the worst) and that is copied (the
    /// best): `max(1, ⌊quantile·trials⌋)` members each.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// The factors a perturbed value is multiplied by, one of the two at random.
    #[serde(default = "default_perturb")]
    pub perturb: [f64; 2],
    /// The probability that a perturbed key is drawn afresh from its distribution.
    #[serde(default = "default_resample")]
    pub resample: f64,
}

fn default_quantile() -> f64 {
    0.25
}
fn default_perturb() -> [f64; 2] {
    [0.8, 1.2]
}
fn default_resample() -> f64 {
    0.25
}

impl Default for PbtSettings {
    fn default() -> Self {
        PbtSettings {
            interval: None,
            quantile: default_quantile(),
            perturb: default_perturb(),
            resample: default_resample(),
        }
    }
}

impl PbtSettings {
    /// The settings make sense for a population of `population`.
    pub fn check(&self, population: usize) -> std::result::Result<(), String> {
        if population < 2 {
            return Err(format!("mode = \"pbt\" needs a population: search.trials = {population}, give at least 2"));
        }
        if !(self.quantile > 0.0 && self.quantile <= 0.5) {
            return Err(format!("search.pbt.quantile = {}: must be in (0, 0.5]", self.quantile));
        }
        if !self.perturb.iter().all(|f| f.is_finite() && *f > 0.0) {
            return Err(format!("search.pbt.perturb = {:?}: factors must be > 0", self.perturb));
        }
        if !(0.0..=1.0).contains(&self.resample) {
            return Err(format!("search.pbt.resample = {}: must be in [0, 1]", self.resample));
        }
        if self.interval == Some(0) {
            return Err("search.pbt.interval = 0: must be > 0".into());
        }
        Ok(())
    }

    /// The interval in stage `s`: the setting, or its `eval_every`.
    fn interval(&self, s: &StageConfig) -> Option<u64> {
        self.interval.or(s.eval_every)
    }

    /// How many members exploit (and how many are copied from).
    fn share(&self, population: usize) -> usize {
        ((self.quantile * population as f64).floor() as usize).max(1)
    }
}

/// A tuned stage fits population-based training: a step budget, evaluations the
/// intervals end on, and a key that can change while it trains.
pub(super) fn check_stage(
    settings: &Settings,
    cfg: &PipelineConfig,
    space: &StageSpace,
) -> std::result::Result<(), String> {
    let s = &cfg.stages[space.index];
    let Some(total) = s.max_steps else {
        return Err("population-based training needs the stage's `max_steps`".into());
    };
    let Some(every) = s.eval_every else {
        return Err("population-based training scores members at evaluations: give the stage `eval_every`".into());
    };
    let interval = settings.pbt.interval.unwrap_or(every);
    if !interval.is_multiple_of(every) {
        return Err(format!("search.pbt.interval = {interval} is not a multiple of the stage's eval_every ({every})"));
    }
    if interval >= total {
        return Err(format!(
            "search.pbt.interval = {interval}: the stage has {total} steps, so there is nothing to decide"
        ));
    }
    if !space.params.iter().any(|p| Adjustment::is_adjustable(&p.key)) {
        return Err(format!(
            "population-based training perturbs keys that can change while a stage trains ({}); none is tuned here",
            crate::config::ADJUSTABLE
        ));
    }
    Ok(())
}

/// How a member starts a generation.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// The first generation: a new run of the stage with these values.
    Fresh(Vec<KeyValue>),
    /// From the paused run of member `from` (itself, or a better one it copies), with
    /// these values; `changes` are the `KEY=VALUE` adjustments from that member's.
    Continue { from: usize, source: PathBuf, values: Vec<KeyValue>, changes: Vec<String> },
    /// Nothing more to train: it finished the stage early, or failed with no one to
    /// copy from.
    Done,
}

/// The score a member is ranked by: its last evaluation's, if it is still training
/// or finished; none when it failed or a gate stopped it.
fn standing(r: &TrialRecord) -> f64 {
    match r.status {
        Status::Paused | Status::Complete => r.score.unwrap_or(f64::NEG_INFINITY),
        _ => f64::NEG_INFINITY,
    }
}

/// Exploit and explore: how each member starts the next generation, given how each
/// ended the last (`members[k]` is member `k`'s latest record).
fn next_generation(
    members: &[TrialRecord],
    dir: &Path,
    params: &[Param],
    settings: &PbtSettings,
    rng: &mut Rng,
) -> Vec<Start> {
    let mut ranked: Vec<usize> = (0..members.len()).collect();
    ranked.sort_by(|&a, &b| standing(&members[b]).total_cmp(&standing(&members[a])).then(a.cmp(&b)));
    let share = settings.share(members.len());
    let donors: Vec<usize> =
        ranked.iter().copied().filter(|&k| members[k].status == Status::Paused).take(share).collect();
    let bottom = &ranked[ranked.len() - share..];
    let mut starts = Vec::with_capacity(members.len());
    for (k, m) in members.iter().enumerate() {
        let pick = (!donors.is_empty()).then(|| donors[rng.below(donors.len() as u64) as usize]);
        let donor = pick.filter(|&j| bottom.contains(&k) && standing(&members[j]) > standing(m));
        starts.push(match (donor, m.status) {
            (Some(j), _) => {
                let (values, changes) = explore(&members[j].values, params, settings, rng);
                Start::Continue { from: j, source: dir.join(&members[j].run_dir), values, changes }
            }
            (None, Status::Paused) => {
                Start::Continue { from: k, source: dir.join(&m.run_dir), values: m.values.clone(), changes: Vec::new() }
            }
            (None, _) => Start::Done,
        });
    }
    starts
}

/// A donor's values perturbed (only the keys that can change while the stage trains),
/// and the `KEY=VALUE` changes that makes.
fn explore(
    values: &[KeyValue],
    params: &[Param],
    settings: &PbtSettings,
    rng: &mut Rng,
) -> (Vec<KeyValue>, Vec<String>) {
    let mut out = Vec::with_capacity(values.len());
    let mut changes = Vec::new();
    for p in params {
        let old = values.iter().find(|kv| kv.key == p.key).and_then(|kv| kv.value.clone());
        let new = match Adjustment::is_adjustable(&p.key) {
            true => Some(perturb(p, old.as_ref(), settings, rng)),
            false => old.clone(),
        };
        if new != old {
            if let Some(v) = &new {
                changes.push(format!("{}={v}", p.key));
            }
        }
        out.push(KeyValue { key: p.key.clone(), value: new });
    }
    (out, changes)
}

/// One key's explored value: a fresh draw with probability `resample` (or when it had
/// none), else a factor's product clipped to the range, or a neighbouring choice.
fn perturb(p: &Param, old: Option<&Value>, settings: &PbtSettings, rng: &mut Rng) -> Value {
    let resample = rng.uniform() < settings.resample;
    let up = rng.uniform() < 0.5;
    let x = old.and_then(|v| p.coordinate(v));
    let Some(x) = x.filter(|_| !resample) else {
        let fresh = tpe::suggest(SamplerKind::Random, &[p.dim], &[], rng);
        return p.value(fresh[0]);
    };
    let factor = settings.perturb[usize::from(up)];
    let y = match p.dim {
        Dim::Real { lo, hi, .. } => (x * factor).clamp(lo, hi),
        Dim::Int { lo, hi, .. } => (x * factor).round().clamp(lo as f64, hi as f64),
        Dim::Choice { n } => match up {
            true => (x + 1.0).min(n as f64 - 1.0),
            false => (x - 1.0).max(0.0),
        },
    };
    p.value(y)
}

/// The `--set` overrides that give stage `stage` the config of the member whose run
/// is `run`: its first values and its `adjust` schedule.
pub(super) fn overrides(stage: &StageSpace, run: &Path) -> Result<Vec<String>> {
    let cfg = crate::pipeline::run_config(run)?;
    let s = &cfg.stages[stage.index];
    let mut out: Vec<String> = stage
        .params
        .iter()
        .filter_map(|p| Some(format!("stages.{}.{}={}", stage.stage, p.key, current_value(&cfg, stage.index, &p.key)?)))
        .collect();
    if !s.adjust.is_empty() {
        let list =
            Value::try_from(&s.adjust).map_err(|e| crate::error::Error::msg(format!("{}: {e}", run.display())))?;
        out.push(format!("stages.{}.adjust={list}", stage.stage));
    }
    Ok(out)
}

impl Search {
    /// Trains stage `stage`'s population generation by generation; `false` when the
    /// step budget stopped it.
    pub(super) fn run_stage_pbt(
        &mut self,
        stage: &StageSpace,
        chosen: &[String],
        from: Option<&BranchPoint>,
    ) -> Result<bool> {
        let base = PipelineConfig::from_file(&self.opts.pipeline, chosen)?;
        let s = &base.stages[stage.index];
        let settings = self.space.settings.pbt.clone();
        let (Some(total), Some(interval)) = (s.max_steps, settings.interval(s)) else {
            crate::bail!("stage `{}`: population-based training needs max_steps and eval_every", stage.stage)
        };
        let generations = total.div_ceil(interval) as usize;
        let rng = Rng::new(self.space.settings.seed).fork(PBT_STREAM).fork(stage.index as u64);
        let mut members: Vec<TrialRecord> = Vec::new();
        for g in 0..generations {
            let end = (g as u64 + 1) * interval;
            let pause = (end < total).then_some(end);
            let starts = match g {
                0 => {
                    (0..self.trials_per_stage).map(|k| Start::Fresh(self.first_values(stage, &base, &rng, k))).collect()
                }
                _ => next_generation(&members, &self.opts.dir, &stage.params, &settings, &mut rng.fork(g as u64)),
            };
            let mut next = Vec::with_capacity(starts.len());
            for (k, start) in starts.into_iter().enumerate() {
                let done =
                    self.records.iter().find(|r| r.stage == stage.stage && r.number == k && r.generation == Some(g));
                if let Some(r) = done {
                    next.push(r.clone());
                    continue;
                }
                if start == Start::Done {
                    next.push(members[k].clone());
                    continue;
                }
                if self.budget_left() == Some(0) {
                    self.say(&format!("search: the step budget ({} steps) is spent", self.steps_spent));
                    return Ok(false);
                }
                let at = Segment { member: k, generation: g, first_step: g as u64 * interval, pause };
                let record = self.run_member(stage, at, start, chosen, from)?;
                self.say(&super::describe(&record));
                self.steps_spent += record.steps;
                let mut log = crate::report::Jsonl::open(&self.opts.dir.join(super::TRIALS_FILE))?;
                log.append(&record)?;
                log.sync()?;
                self.records.push(record.clone());
                next.push(record);
            }
            members = next;
        }
        Ok(true)
    }

    /// Member `k`'s values in the first generation: the pipeline's for member 0, a
    /// random draw for the others.
    fn first_values(&self, stage: &StageSpace, base: &PipelineConfig, rng: &Rng, k: usize) -> Vec<KeyValue> {
        if k == 0 {
            let value = |p: &Param| current_value(base, stage.index, &p.key);
            return stage.params.iter().map(|p| KeyValue { key: p.key.clone(), value: value(p) }).collect();
        }
        let x = tpe::suggest(SamplerKind::Random, &stage.dims(), &[], &mut rng.fork(k as u64));
        stage.params.iter().zip(x).map(|(p, x)| KeyValue { key: p.key.clone(), value: Some(p.value(x)) }).collect()
    }

    /// Trains one member through one generation: a new run, or a copy of a paused one
    /// with its adjustments, resumed; it pauses at the generation's end unless that is
    /// the stage's.
    fn run_member(
        &self,
        stage: &StageSpace,
        at: Segment,
        start: Start,
        chosen: &[String],
        from: Option<&BranchPoint>,
    ) -> Result<TrialRecord> {
        let name = format!("{}-m{:02}-g{}", stage.stage, at.member, at.generation);
        let run_dir = Path::new("trials").join(&name);
        let dir = self.opts.dir.join(&run_dir);
        // A process an earlier, killed search started here is waited for first.
        self.wait_until_free(&dir);
        let (values, parent, mut cmd) = match start {
            Start::Fresh(values) if dir.join("config.toml").is_file() => (values, None, self.resume_command(&dir)),
            Start::Fresh(values) => {
                let cmd = self.run_command(chosen, &stage.overrides(&values), &stage.stage, from, &dir);
                (values, None, cmd)
            }
            Start::Continue { from, source, values, changes } => {
                if !dir.join(READY_FILE).is_file() {
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
                    }
                    crate::pipeline::fork_paused(&source, &dir, &changes)?;
                    std::fs::write(dir.join(READY_FILE), b"").map_err(io(&dir))?;
                }
                (values, Some(from), self.resume_command(&dir))
            }
            Start::Done => crate::bail!("member {} has nothing left to train", at.member),
        };
        if let Some(p) = at.pause {
            cmd.arg("--pause-at").arg(format!("{}:{p}", stage.stage));
        }
        let command: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let t = std::time::Instant::now();
        let log = self.opts.dir.join("trials").join(format!("{name}.log"));
        std::fs::create_dir_all(self.opts.dir.join("trials")).map_err(io(&self.opts.dir))?;
        let out = trial::run(&mut cmd, &dir, &stage.stage, None, &mut |_, _| true, &log)?;
        let ended = dir.join("checkpoints").join(&stage.stage).is_dir();
        let status = match out.status {
            Status::Complete if !ended => Status::Paused,
            s => s,
        };
        Ok(TrialRecord {
            stage: stage.stage.clone(),
            number: at.member,
            values,
            status,
            metric: out.metric.as_ref().map(|(m, _)| m.clone()),
            value: out.metric.map(|(_, v)| v),
            score: out.score,
            steps: out.steps.saturating_sub(at.first_step),
            rungs: Vec::new(),
            seconds: t.elapsed().as_secs_f64(),
            run_dir,
            command,
            error: out.error,
            generation: Some(at.generation),
            parent,
        })
    }
}

/// Where one member's run of one generation lies.
#[derive(Debug, Clone, Copy)]
struct Segment {
    member: usize,
    generation: usize,
    /// The stage's steps when it starts.
    first_step: u64,
    /// Where it pauses (`None`: it runs to the stage's end).
    pause: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(number: usize, status: Status, score: f64) -> TrialRecord {
        TrialRecord {
            stage: "s".into(),
            number,
            values: vec![KeyValue {
                key: "optimizer.lr".into(),
                value: Some(Value::Float(1e-3 * (number + 1) as f64)),
            }],
            status,
            metric: Some("loss".into()),
            value: Some(-score),
            score: Some(score),
            steps: 10,
            rungs: Vec::new(),
            seconds: 0.0,
            run_dir: PathBuf::from(format!("trials/s-m{number:02}-g0")),
            command: Vec::new(),
            error: None,
            generation: Some(0),
            parent: None,
        }
    }

    fn lr() -> Vec<Param> {
        vec![Param {
            key: "optimizer.lr".into(),
            dim: Dim::Real { lo: 1e-4, hi: 1e-2, log: true },
            choices: Vec::new(),
        }]
    }

    #[test]
    fn the_worst_quarter_copies_one_of_the_best_and_perturbs_its_values() {
        let members: Vec<TrialRecord> =
            [0.5, 0.9, 0.1, 0.7].iter().enumerate().map(|(k, s)| record(k, Status::Paused, *s)).collect();
        let settings = PbtSettings { resample: 0.0, ..PbtSettings::default() };
        let starts = next_generation(&members, Path::new("d"), &lr(), &settings, &mut Rng::new(1));
        // One of four exploits (member 2, the worst) from the best (member 1).
        let Start::Continue { from, source, values, changes } = &starts[2] else { panic!("{:?}", starts[2]) };
        assert_eq!((*from, source.as_path()), (1, Path::new("d/trials/s-m01-g0")));
        let v = values[0].value.as_ref().and_then(Value::as_float).expect("a float");
        assert!((v - 2e-3 * 0.8).abs() < 1e-12 || (v - 2e-3 * 1.2).abs() < 1e-12, "{v}");
        assert_eq!(changes, &[format!("optimizer.lr={v}")]);
        for k in [0, 1, 3] {
            let Start::Continue { from, changes, .. } = &starts[k] else { panic!() };
            assert_eq!((*from, changes.len()), (k, 0), "member {k} goes on with its own state");
        }
    }

    #[test]
    fn failed_members_are_replaced_and_finished_ones_wait() {
        let mut members: Vec<TrialRecord> =
            [0.5, 0.9, 0.1, 0.7].iter().enumerate().map(|(k, s)| record(k, Status::Paused, *s)).collect();
        members[3].status = Status::Failed;
        members[0].status = Status::Complete;
        let starts = next_generation(&members, Path::new("d"), &lr(), &PbtSettings::default(), &mut Rng::new(2));
        assert!(matches!(starts[3], Start::Continue { from: 1, .. }), "{:?}", starts[3]);
        assert_eq!(starts[0], Start::Done, "ended the stage early");
        assert!(matches!(starts[2], Start::Continue { from: 2, .. }), "not among the worst once 3 failed");
    }

    #[test]
    fn a_members_overrides_give_the_pipeline_the_members_stage_with_its_schedule() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::error::Error::msg(e.to_string()))?;
        let pipeline = dir.path().join("p.toml");
        let text = "[run]\nname = \"p\"\n[model]\narch = \"llama\"\nhidden_size = 16\nnum_layers = 1\nnum_heads = 2\n\
            [[stages]]\nname = \"s\"\nobjective = \"causal_lm\"\ndata = { train = \"synthetic:arith_text?n=8\" }\n\
            optimizer = { lr = 3e-3 }\nmax_steps = 6\neval_every = 2\n";
        std::fs::write(&pipeline, text).map_err(io(&pipeline))?;
        let schedule =
            r#"stages.s.adjust=[{ after_step = 2, "optimizer.lr" = 0.01 }, { after_step = 4, "train.dropout" = 0.1 }]"#;
        let member = PipelineConfig::from_file(&pipeline, &["stages.s.optimizer.lr=0.02".into(), schedule.into()])?;
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).map_err(io(&run))?;
        let resolved = toml::to_string(&member).map_err(|e| crate::error::Error::msg(e.to_string()))?;
        std::fs::write(run.join("config.toml"), resolved).map_err(io(&run))?;
        let space = StageSpace { stage: "s".into(), index: 0, params: lr() };
        let again = PipelineConfig::from_file(&pipeline, &overrides(&space, &run)?)?;
        assert_eq!(again.stages[0], member.stages[0]);
        assert_eq!(again.stages[0].adjust.len(), 2);
        Ok(())
    }

    #[test]
    fn perturbed_values_stay_in_their_range_and_choices_move_by_one() {
        let settings = PbtSettings { resample: 0.0, ..PbtSettings::default() };
        let p = &lr()[0];
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let v = perturb(p, Some(&Value::Float(1e-2)), &settings, &mut rng).as_float().expect("a float");
            assert!((1e-4..=1e-2).contains(&v), "{v}");
        }
        let c = Param {
            key: "train.dropout".into(),
            dim: Dim::Choice { n: 3 },
            choices: vec![Value::Float(0.0), Value::Float(0.1), Value::Float(0.2)],
        };
        for _ in 0..20 {
            let v = perturb(&c, Some(&Value::Float(0.1)), &settings, &mut rng);
            assert!(v == Value::Float(0.0) || v == Value::Float(0.2), "{v}");
        }
        let keep = Param { key: "adapters.0.r".into(), dim: Dim::Choice { n: 2 }, choices: vec![4.into(), 8.into()] };
        let values = vec![KeyValue { key: "adapters.0.r".into(), value: Some(8.into()) }];
        let (out, changes) = explore(&values, &[keep], &settings, &mut rng);
        assert_eq!((out, changes.len()), (values, 0), "a key that cannot change while training is inherited");
    }
}
