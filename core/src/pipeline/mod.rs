//! The multi-stage pipeline: each stage trains from the previous stage's result, hands
//! its adapters and optimizer state over as configured, evaluates its own and every
//! earlier stage's eval set (the retention matrix), and stops on its exit criteria or a
//! forgetting gate.
//!
//! Everything lands in the run directory ([`RunDir`]): `config.toml` (resolved),
//! `data.json` (sources and sha256 of files), `plugins.json` (libraries, their SDK
//! versions and the sha256 of plugin files), `metrics.jsonl`, `events.jsonl`,
//! `resumes.jsonl`, `retention.json`, `report.html`, `checkpoints/<stage>/` at the end
//! of each stage and `checkpoints/resume/` at each evaluation (see [`Pipeline::resume`]).
//!
//! From `stagecraft run` to one optimizer step: [`Pipeline::new`] loads and checks
//! everything ([`check`]); [`Pipeline::run`] prepares each stage ([`handoff`], [`freeze`],
//! a [`Trainer`]), restores it when resuming ([`resume`]), trains it ([`stage`]: one
//! loop; the per-step rules are [`guard`], [`gate`] and [`early_stopping`]) and
//! finishes it (retention row, end event, end-of-stage checkpoint); the step itself is
//! [`Trainer::train_step_accum`].

mod adjust;
mod branch;
mod build;
mod check;
mod console;
mod early_stopping;
mod eval;
mod float_bits;
mod freeze;
mod gate;
mod guard;
mod handoff;
mod interrupt;
mod outcome;
mod plan;
mod plugin_record;
mod provenance;
mod records;
mod result;
mod resume;
mod rules;
mod run_dir;
mod score;
mod snapshot;
mod stage;
mod stage_objective;
mod tracking;

pub use adjust::fork_paused;
pub use branch::BranchPoint;
pub use eval::{evaluate, quantile, Metrics};
pub use interrupt::{Cause, Interrupt, Interruption, PausePoint, Signal};
pub use outcome::{AdapterRecord, StageEnd, StageResult, StageSummary};
pub use plugin_record::PluginChanges;
pub use records::ResumeRecord;
pub use result::{open_stage, run_config, OpenedStage};
pub use run_dir::RunDir;
pub(crate) use score::{main_metric, oriented, MAIN_SCORE};
pub use stage_objective::stage_objective;

/// The tokenizer a pipeline's `[model]` names (a run's tokenizer, for a run's
/// resolved config).
pub fn config_tokenizer(cfg: &PipelineConfig) -> Result<crate::data::Tokenizer> {
    build::tokenizer(&cfg.model, &cfg.base_dir())
}

/// The model a pipeline's `[model]` describes, on the CPU: loaded `from` its directory,
/// or, for a fresh model, its architecture with placeholder values (what `model sites
/// --config` lists; no values are computed).
pub fn config_model(cfg: &PipelineConfig) -> Result<Box<dyn crate::model::Model>> {
    let base = cfg.base_dir();
    let tokenizer = build::tokenizer(&cfg.model, &base)?;
    let cpu = candle_core::Device::Cpu;
    match &cfg.model.from {
        Some(_) => build::model(&cfg.model, tokenizer.vocab_size(), cfg.run.seed, &base, &cpu),
        None => build::architecture(&cfg.model, tokenizer.vocab_size(), &base)?.placeholder(&cpu),
    }
}

use crate::bail;
use crate::checkpoint::Checkpoint;
use crate::config::{OptimizerHandoff, PipelineConfig, StageConfig};
use crate::data::{Dataset, Mixture, Tokenizer};
use crate::error::{Context, Error, Result};
use crate::model::Adapters;
use crate::plugin::{HostState, Registry};
use crate::report::{write_html, EventKind, GateLine, ReportInput, RetentionMatrix};
use crate::rng::Rng;
use crate::train::{FisherSource, Regularizer, Trainer};
use candle_core::DType;
use eval::EvalSets;
use handoff::{Carried, Env};
use plugin_record::ResumePoint;
use records::{Records, RecordsMark};
use resume::{Position, ResumeMeta};
use rules::StageRules;
use stage::{Ended, StageContext, StageRun};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Warns about each pin in `[plugins.pins]` that names no library file the pipeline
/// loaded: a typo, or a plugin that is built into the binary (built-ins are not pinned).
fn warn_unused_pins(registry: &Registry) {
    for key in registry.unused_pins() {
        tracing::warn!(
            "[plugins.pins] \"{key}\" names no plugin library file this pipeline loaded (plugins built into the binary are not pinned)"
        );
    }
}

/// The exit code of `stagecraft run` when a retention gate stopped the pipeline.
pub const GATE_STOP_EXIT: u8 = 3;

/// How each stage ended, and the final retention matrix.
#[derive(Debug)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Each stage that ran, in order.
    pub stages: Vec<StageSummary>,
    /// Stages × eval sets, on each set's main score.
    pub retention: RetentionMatrix,
    /// Where a signal stopped the run (`None`: it ran to its end).
    pub interrupted: Option<Interruption>,
}

/// What a resume brings to [`Pipeline::open`].
struct Resuming {
    /// How much of the logs its checkpoint covers.
    mark: RecordsMark,
    /// Where the run goes on from.
    from: ResumePoint,
    /// Whether changed plugin library files are refused.
    plugins: PluginChanges,
    /// The first stage that never ran in this directory (a resume: none, the number of
    /// stages; a branch: the first after the stages taken from the other run).
    first_new_stage: usize,
}

/// A checkpoint to resume from.
struct Resume {
    ckpt: Checkpoint,
    meta: ResumeMeta,
    name: String,
}

/// How stage `i` starts, once prepared (one value per stage: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Start {
    /// It ended before the checkpoint being resumed from: nothing to train.
    Finished,
    /// It trains, from the trainer's step.
    Train { mixture: Mixture, rules: StageRules },
}

/// A pipeline being run.
pub struct Pipeline {
    cfg: PipelineConfig,
    registry: Registry,
    state: Rc<HostState>,
    vocab: usize,
    train_data: Vec<Arc<Dataset>>,
    sets: EvalSets,
    run_dir: RunDir,
    records: Records,
    resume: Option<Resume>,
    /// Where the current model came from and the adapters attached now, in order
    /// (their frozen flags are read when a stage ends).
    lineage: StageResult,
    /// Each finished stage's result, for stages that start `from` it.
    results: Vec<Option<StageResult>>,
    /// Each finished stage's final metrics on its own eval set.
    own_scores: BTreeMap<String, Metrics>,
    /// How each finished stage ended.
    ended: Vec<StageSummary>,
    /// Whether a signal asked the run to stop.
    interrupt: Interrupt,
}

/// The stream of the run's seed that data augmentation draws from (apart from every
/// other use of the seed).
const AUGMENT_STREAM: u64 = 0xA116_0E47;

/// Where each regularized stage's anchors and weights are kept (`<stage>.safetensors`).
const ANCHORS_DIR: &str = "anchors";

impl Pipeline {
    /// A new run in `run_dir` (created; refused when it holds a run already): loads
    /// every data set and checks every plugin config before any training.
    pub fn new(cfg: PipelineConfig, registry: Registry, run_dir: &Path, quiet: bool) -> Result<(Self, Tokenizer)> {
        Pipeline::in_dir(cfg, registry, RunDir::create(run_dir)?, quiet)
    }

    /// A new run in a run directory already made for it (see [`RunDir::create_unique`]).
    pub fn in_dir(cfg: PipelineConfig, registry: Registry, run_dir: RunDir, quiet: bool) -> Result<(Self, Tokenizer)> {
        let (p, tokenizer) = Pipeline::open(cfg, registry, run_dir, None, quiet)?;
        p.write_start_files()?;
        Ok((p, tokenizer))
    }

    /// What a new run records before it trains: `run.json`, `data.json`,
    /// `plugins.json`, and last `config.toml`, whose presence marks the directory as
    /// holding a run.
    fn write_start_files(&self) -> Result<()> {
        let resolved =
            toml::to_string(&self.cfg).map_err(|e| Error::msg(format!("cannot write the resolved config: {e}")))?;
        let source = std::fs::canonicalize(&self.cfg.source).unwrap_or_else(|_| self.cfg.source.clone());
        let base_dir = std::fs::canonicalize(self.cfg.base_dir()).unwrap_or_else(|_| self.cfg.base_dir());
        self.run_dir.write_json("run.json", &serde_json::json!({ "config_source": source, "base_dir": base_dir }))?;
        self.run_dir.write_json("data.json", &provenance::data_record(&self.train_data, self.sets.data()))?;
        self.run_dir.write_json("plugins.json", &plugin_record::record(&self.registry)?)?;
        self.run_dir.write(run_dir::CONFIG_FILE, resolved.as_bytes())
    }

    /// Reopens an interrupted (or finished) run: its resolved config, its newest good
    /// checkpoint, and its logs cut back to what that checkpoint covers. A run killed
    /// before its first checkpoint starts over. The data must be what the run started
    /// with (`data.json`).
    pub fn resume(run_dir: &Path, registry: Registry, quiet: bool) -> Result<(Self, Tokenizer)> {
        Pipeline::resume_with(run_dir, registry, quiet, PluginChanges::Refuse, &[])
    }

    /// [`Pipeline::resume`], where `plugins` says whether plugin library files whose
    /// sha256 differs from the one the run recorded in `plugins.json` are refused or
    /// used (the change recorded); see [`PluginChanges`]. `adjust` (`KEY=VALUE`, keys
    /// inside the stage) changes hyperparameters of the stage in progress from the
    /// checkpoint's step on: an `adjust` entry is added to the run's config.toml (see
    /// [`crate::config::Adjustment`]).
    pub fn resume_with(
        run_dir: &Path,
        registry: Registry,
        quiet: bool,
        plugins: PluginChanges,
        adjust: &[String],
    ) -> Result<(Self, Tokenizer)> {
        let dir = RunDir::reopen(run_dir)?;
        let mut cfg = run_config(run_dir)?;
        let found = resume::latest(run_dir, &check::resolve_device(&cfg.run.device)?)?;
        if !adjust.is_empty() {
            let at = found.as_ref().map(|(_, meta, _)| (meta.stage, meta.step, meta.stage_done));
            adjust::add(&mut cfg, at, adjust)
                .map_err(|e| Error::msg(format!("--adjust: {}: {e}", run_dir.display())))?;
        }
        let mark = found.as_ref().map_or(RecordsMark::default(), |(_, meta, _)| meta.records);
        let (stage, step) = found.as_ref().map_or((0, 0), |(_, meta, _)| (meta.stage, meta.step));
        let from = ResumePoint { stage: cfg.stages.get(stage).map(|s| s.name.clone()).unwrap_or_default(), step };
        let first_new_stage = cfg.stages.len();
        let resuming = Resuming { mark, from, plugins, first_new_stage };
        let (mut p, tokenizer) = Pipeline::open(cfg, registry, dir, Some(resuming), quiet)?;
        if !adjust.is_empty() {
            let resolved =
                toml::to_string(&p.cfg).map_err(|e| Error::msg(format!("cannot write the resolved config: {e}")))?;
            p.run_dir.write(run_dir::CONFIG_FILE, resolved.as_bytes())?;
        }
        match found {
            Some((ckpt, meta, name)) => {
                p.own_scores = meta.own_scores.clone();
                p.ended = meta.ended.clone();
                p.resume = Some(Resume { ckpt, meta, name });
            }
            None => {
                let first = p.cfg.stages.first().map(|s| s.name.clone()).unwrap_or_default();
                p.records.resumed(ResumeRecord { stage: first, step: 0, checkpoint: None })?;
            }
        }
        Ok((p, tokenizer))
    }

    /// Loads and checks everything, and opens the logs: a new run's (`resuming` is
    /// `None`), or a resumed run's cut back to where it goes on from once its data and
    /// plugin libraries are checked against `data.json` and `plugins.json`.
    fn open(
        cfg: PipelineConfig,
        mut registry: Registry,
        run_dir: RunDir,
        resuming: Option<Resuming>,
        quiet: bool,
    ) -> Result<(Self, Tokenizer)> {
        registry.set_trust(cfg.trust())?;
        let check::Loaded { device, tokenizer, train_data, eval_data, drift, .. } =
            check::load(&cfg, &registry, check::Depth::Run)?;
        warn_unused_pins(&registry);
        if let Some(r) = &resuming {
            provenance::check_same_data(&run_dir, &provenance::data_record(&train_data, &eval_data))?;
            plugin_record::check_on_resume(&run_dir, &registry, r.plugins, &r.from)?;
        }
        let state = Rc::new(HostState::new(device.clone(), DType::F32, cfg.run.seed));
        state.set_tokenizer(Rc::new(tokenizer.clone()));
        let first_new_stage = resuming.as_ref().map_or(0, |r| r.first_new_stage);
        let mark = resuming.map(|r| r.mark).unwrap_or_default();
        let mut records = Records::open(&run_dir, mark, quiet, &device, cfg.run.tensorboard)?;
        // Recorded once, when a stage is new to the run: a resumed run's log has them.
        for (s, d) in cfg.stages.iter().zip(&drift).skip(first_new_stage) {
            if let Some(d) = d.as_ref().filter(|d| d.result.flagged) {
                records.event(&s.name, 0, EventKind::Drift, d.describe())?;
            }
        }
        let n = cfg.stages.len();
        let p = Pipeline {
            sets: EvalSets::new(&cfg.stages, eval_data, state.clone()),
            vocab: tokenizer.vocab_size(),
            cfg,
            registry,
            state,
            train_data,
            run_dir,
            records,
            resume: None,
            lineage: StageResult::default(),
            results: vec![None; n],
            own_scores: BTreeMap::new(),
            ended: Vec::new(),
            interrupt: Interrupt::none(),
        };
        Ok((p, tokenizer))
    }

    /// Stops the run cleanly, before its next optimizer step, once `interrupt` is
    /// raised (see [`Interrupt::install`]); without it a run never stops early.
    pub fn stop_on(&mut self, interrupt: Interrupt) {
        self.interrupt = interrupt;
    }

    /// Runs every stage: prepare it, restore it when resuming, train it, finish it.
    /// A run stopped by its [`Interrupt`] returns early, with the stages that ended so
    /// far and [`RunSummary::interrupted`] set.
    pub fn run(mut self) -> Result<RunSummary> {
        let mut carried = self.first_model()?;
        for i in 0..self.cfg.stages.len() {
            let (mut trainer, mixture) = self.prepare(i, carried)?;
            if let Start::Train { mixture, rules } = self.restore(i, &mut trainer, mixture)? {
                match self.train(i, &mut trainer, mixture, rules)? {
                    Ended::Stage(end) => self.finish(i, &mut trainer, end)?,
                    Ended::Interrupted(at) => return self.write_reports(Some(at)),
                }
            }
            let (model, adapters, objective, optimizer) = trainer.into_parts();
            self.sets.keep_objective(i, objective);
            carried = Carried { model, adapters, optimizer: Some(optimizer) };
            if self.ended.last().is_some_and(|e| e.end == StageEnd::GateStop) {
                break;
            }
        }
        self.write_reports(None)
    }

    /// The model `[model]` describes, checked against every stage's adapters.
    fn first_model(&mut self) -> Result<Carried> {
        let model =
            build::model(&self.cfg.model, self.vocab, self.cfg.run.seed, &self.cfg.base_dir(), &self.state.device)?;
        self.state.register_model(model.as_ref());
        let tokenizer = self.state.tokenizer().ok_or_else(|| Error::msg("the pipeline has no tokenizer"))?;
        check::adapter_sites(&self.cfg, &self.registry, &self.state.device, model.as_ref(), tokenizer)?;
        Ok(Carried { adapters: Adapters::none(model.sites().len()), model, optimizer: None })
    }

    /// Stage `i`'s trainer (its model, adapters after the handoff, frozen weights,
    /// objective and optimizer) and data mixture, at its start.
    fn prepare(&mut self, i: usize, carried: Carried) -> Result<(Trainer, Mixture)> {
        let s = self.cfg.stages[i].clone();
        let env = Env {
            cfg: &self.cfg,
            registry: &self.registry,
            state: &self.state,
            run_dir: self.run_dir.path(),
            vocab: self.vocab,
        };
        let Carried { model, mut adapters, optimizer } =
            handoff::start_from(&env, i, carried, &self.results, &mut self.lineage)?;
        if i > 0 || !s.adapters.is_empty() {
            handoff::apply(&s, model.as_ref(), &mut adapters, &mut self.lineage, &env)?;
        }
        freeze::set_flags(model.as_ref(), &adapters, &s, 0);
        let mut objective = self.registry.new_objective(s.objective.name(), &s.objective.config_json(), &self.state)?;
        let teacher = handoff::teacher(&env, i, &self.results)?;
        if teacher.is_some() {
            self.state.register_model(model.as_ref());
        }
        handoff::check_teacher(&s, &objective, teacher.as_ref(), model.info().vocab)?;
        if let Some(t) = teacher {
            objective.set_teacher(t);
        }
        let optimizer = match (s.handoff.optimizer, optimizer) {
            (OptimizerHandoff::Carry, Some(o)) if o.core.plugin == s.optimizer.name => o,
            _ => self.registry.new_optimizer(&s.optimizer.name, &s.optimizer.config_json(), &self.state)?,
        };
        adapters.set_precision(self.cfg.run.precision);
        let mut trainer = Trainer::new(self.state.clone(), model, adapters, objective, optimizer)?;
        freeze::refresh(&mut trainer, &s)?;
        let mixture = Mixture::new(
            self.train_data[i].clone(),
            self.replay_sources(&s),
            self.cfg.run.seed.wrapping_add(i as u64),
            s.data.order,
        )?;
        Ok((trainer, mixture))
    }

    /// Earlier stages' training data replayed in stage `s`, with each one's share.
    fn replay_sources(&self, s: &StageConfig) -> Vec<(Arc<Dataset>, f64)> {
        s.data
            .replay
            .iter()
            .flat_map(|r| r.from.iter().map(move |f| (f, r.ratio / r.from.len() as f64)))
            .filter_map(|(f, ratio)| self.cfg.stage(f).map(|(k, _)| (self.train_data[k].clone(), ratio)))
            .collect()
    }

    /// How stage `i` starts: fresh, or — when resuming — finished before the checkpoint
    /// (only its structure is rebuilt) or with every value the checkpoint holds.
    fn restore(&mut self, i: usize, trainer: &mut Trainer, mixture: Mixture) -> Result<Start> {
        let s = self.cfg.stages[i].clone();
        let target = self.resume.as_ref().map(|r| r.meta.stage);
        if target.is_none_or(|t| t < i) {
            self.regularize(i, trainer, false)?;
            return Ok(Start::Train { rules: StageRules::new(&s, trainer)?, mixture });
        }
        if target.is_some_and(|t| t > i) {
            let steps = self.ended.get(i).map_or(0, |e| e.steps);
            freeze::apply(trainer, &s, steps.saturating_sub(1))?;
            stage::finished_optimizer(&self.registry, trainer, &s)?;
            self.results[i] = Some(self.structure(&trainer.adapters));
            return Ok(Start::Finished);
        }
        let Some(Resume { ckpt, meta, name }) = self.resume.take() else { return Ok(Start::Finished) };
        freeze::apply(trainer, &s, meta.step.saturating_sub(1))?;
        resume::load_values(&ckpt, trainer, self.sets.objectives(), i)?;
        self.state.rng.borrow_mut().set_state(meta.rng);
        trainer.step = meta.step;
        trainer.optimizer.updates = meta.optimizer_updates;
        if meta.stage_done {
            stage::finished_optimizer(&self.registry, trainer, &s)?;
            self.results[i] = meta.result;
            return Ok(Start::Finished);
        }
        let (Some(ms), Some(rules)) = (&meta.mixture, meta.rules) else {
            bail!("checkpoint `{name}`: no data or rule state for a stage in progress");
        };
        drop(mixture);
        let mixture = Mixture::restore(self.train_data[i].clone(), self.replay_sources(&s), ms)?;
        let rules = StageRules::load(&s, rules, &ckpt, trainer)?;
        self.regularize(i, trainer, true)?;
        self.records.resumed(ResumeRecord { stage: s.name.clone(), step: meta.step, checkpoint: Some(name) })?;
        Ok(Start::Train { mixture, rules })
    }

    /// Gives stage `i`'s trainer the stage's `regularize` penalty, if any: held toward
    /// the trainer's values as the stage starts (for EWC, weighted by the Fisher of the
    /// earlier stages' objectives on their training data), saved to
    /// `anchors/<stage>.safetensors`; or, `resuming` the stage, loaded from there.
    fn regularize(&mut self, i: usize, trainer: &mut Trainer, resuming: bool) -> Result<()> {
        let s = &self.cfg.stages[i];
        let Some(cfg) = s.regularize.clone() else { return Ok(()) };
        let dir = self.run_dir.join(ANCHORS_DIR);
        let path = dir.join(format!("{}.safetensors", s.name));
        let r = if resuming {
            Regularizer::load(&cfg, trainer, &path, &self.state.device)?
        } else {
            let wanted = |k: usize| cfg.from.is_empty() || cfg.from.contains(&self.cfg.stages[k].name);
            let sources = self.sets.objectives_mut()[..i]
                .iter_mut()
                .enumerate()
                .filter(|(k, _)| wanted(*k))
                .filter_map(|(k, o)| {
                    let objective = o.as_mut()?;
                    Some(FisherSource {
                        objective,
                        data: &self.train_data[k],
                        batch_size: self.cfg.stages[k].batch_size,
                    })
                })
                .collect();
            let r = Regularizer::at_start(&cfg, trainer, sources).with_context(|| format!("stage `{}`", s.name))?;
            std::fs::create_dir_all(&dir).map_err(crate::error::io(&dir))?;
            r.save(&path)?;
            r
        };
        trainer.set_regularizer(Some(r));
        Ok(())
    }

    fn train(&mut self, i: usize, trainer: &mut Trainer, mixture: Mixture, rules: StageRules) -> Result<Ended> {
        let ctx = StageContext {
            index: i,
            stages: &self.cfg.stages,
            sets: &mut self.sets,
            records: &mut self.records,
            own_scores: &self.own_scores,
            ended: &self.ended,
            run_dir: self.run_dir.path(),
            device: &self.state.device,
            interrupt: &self.interrupt,
            registry: &self.registry,
            save_every: self.cfg.stages[i].save_every.or(self.cfg.run.save_every),
            keep_last: usize::try_from(self.cfg.run.keep_last).unwrap_or(usize::MAX),
            augment_rng: Rng::new(self.cfg.run.seed).fork(AUGMENT_STREAM).fork(i as u64),
        };
        StageRun::new(ctx, trainer, mixture, rules)?.run()
    }

    /// Ends stage `i`: its retention row, its `end` event, then its end-of-stage
    /// checkpoint (which covers the event, so a resume never loses nor repeats it).
    fn finish(&mut self, i: usize, trainer: &mut Trainer, end: StageEnd) -> Result<()> {
        let name = self.cfg.stages[i].name.clone();
        // A stage that ran to its budget or exit rule was just evaluated in this state
        // (its own set and gated sets): those results are reused, not recomputed.
        let unchanged = matches!(end, StageEnd::Budget | StageEnd::Exit);
        for k in 0..=i {
            if let Some(m) = self.end_metrics(i, k, trainer, unchanged)? {
                if k == i {
                    self.own_scores.insert(name.clone(), m);
                }
            }
        }
        self.ended.push(StageSummary { stage: name.clone(), steps: trainer.step, end });
        self.records.event(
            &name,
            trainer.step,
            EventKind::End,
            format!("ended after {} steps by {end}", trainer.step),
        )?;
        let result = self.structure(&trainer.adapters);
        let meta = ResumeMeta::new(
            i,
            trainer,
            Position::End(result.clone()),
            &self.own_scores,
            &self.ended,
            self.records.mark()?,
        );
        resume::save(self.run_dir.path(), &name, trainer, self.sets.objectives(), &meta, BTreeMap::new())?;
        self.records.write_csv()?;
        self.results[i] = Some(result);
        Ok(())
    }

    /// Stage `k`'s eval set at the end of stage `i`: the evaluation logged at this step
    /// when `reuse` (the state has not changed since), else a new one, logged.
    fn end_metrics(&mut self, i: usize, k: usize, trainer: &mut Trainer, reuse: bool) -> Result<Option<Metrics>> {
        let (stage, set) = (&self.cfg.stages[i].name, &self.cfg.stages[k].name);
        let logged = self.records.rows().iter().rev().find(|r| {
            r.split == crate::report::Split::Eval
                && &r.stage == stage
                && r.step == trainer.step
                && r.set.as_ref() == Some(set)
        });
        if let (true, Some(row)) = (reuse, logged) {
            return Ok(Some(row.metrics.clone()));
        }
        let Some((m, examples)) = self.sets.evaluate(k, i, trainer)? else { return Ok(None) };
        self.records.eval(stage, trainer.step, set, &m, &examples)?;
        Ok(Some(m))
    }

    /// The lineage with the adapters' frozen flags now: what a later stage needs to
    /// start `from` this point.
    fn structure(&self, adapters: &Adapters) -> StageResult {
        let records = self
            .lineage
            .adapters
            .iter()
            .enumerate()
            .map(|(k, a)| AdapterRecord { frozen: adapters.is_frozen(k), ..a.clone() });
        StageResult {
            model_dir: self.lineage.model_dir.clone(),
            fresh: self.lineage.fresh.clone(),
            adapters: records.collect(),
        }
    }

    /// `retention.json` and `report.html`, from the logs (rewritten when an
    /// interrupted run goes on).
    fn write_reports(self, interrupted: Option<Interruption>) -> Result<RunSummary> {
        let retention = RetentionMatrix::from_rows_main(self.records.rows(), &score::MAIN_SCORE);
        retention.write_json(self.run_dir.path())?;
        self.records.write_csv()?;
        let gates: Vec<GateLine> = self
            .cfg
            .stages
            .iter()
            .flat_map(|s| s.gates.retention.iter().map(move |g| (&s.name, g)))
            .filter_map(|(stage, g)| score::gate_line(stage, g, self.own_scores.get(&g.stage)?))
            .collect();
        // The report shows the config even if it cannot be written as TOML again (it
        // was, into config.toml, when the run started).
        let config = toml::to_string(&self.cfg).unwrap_or_else(|e| format!("# cannot show the resolved config: {e}"));
        let file = match self.cfg.source.as_os_str().is_empty() {
            true => "none: the config was given as text (the built-in default pipeline, or a test)".to_string(),
            false => self.cfg.source.display().to_string(),
        };
        let details = serde_json::json!({ "config file": file, "seed": self.cfg.run.seed });
        let input = ReportInput {
            title: &self.cfg.run.name,
            rows: self.records.rows(),
            retention: Some(&retention),
            events: self.records.events(),
            gates: &gates,
            config_toml: Some(&config),
            details: Some(&details),
        };
        write_html(self.run_dir.path(), &input)?;
        Ok(RunSummary { run_dir: self.run_dir.path().to_path_buf(), stages: self.ended, retention, interrupted })
    }
}
