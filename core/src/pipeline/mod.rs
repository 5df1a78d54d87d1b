//! The multi-stage pipeline: each stage trains from the previous stage's result, hands
//! its adapters and optimizer state over as configured, evaluates its own and every
//! earlier stage's eval set (the retention matrix), and stops on its exit criteria or a
//! forgetting gate.
//!
//! Everything lands in the run directory: `config.toml` (resolved), `data.json`
//! (sources and sha256 of files), `plugins.json` (libraries, their SDK versions and the
//! sha256 of plugin files), `metrics.jsonl`, `events.jsonl`, `retention.json`, `report.html`,
//! `checkpoints/<stage>/` at the end of each stage and `checkpoints/resume/` at each
//! evaluation (see [`Pipeline::resume`]).

mod build;
mod console;
mod eval;
mod plan;
mod result;
mod resume;
mod snapshot;
mod stage;

pub use eval::{evaluate, quantile, Metrics};
pub use result::{open_stage, run_config, AdapterRecord, OpenedStage, StageResult};
pub use resume::ResumeMeta;
pub use snapshot::Snapshot;
pub use stage::{MarkSteps, Marks, Progress, StageEnd};

use crate::adapter::{combine_lora, merge_into_base, Combine, LoraInput};
use crate::checkpoint::Checkpoint;
use crate::config::{AdapterHandoff, OptimizerHandoff, PipelineConfig, StageConfig};
use crate::data::{Dataset, Mixture, Order, Tokenizer};
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, OptimizerInstance, Registry, StageInstance};
use crate::report::{write_html, Event, EventLog, MetricRow, MetricsLog, RetentionMatrix, Split};
use crate::train::{decays, lr_multiplier, module_matches, Trainer};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// How each stage ended, and the final retention matrix.
#[derive(Debug)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// `(stage, steps, end)` per stage that ran.
    pub stages: Vec<(String, u64, StageEnd)>,
    /// Stages × eval sets, on each set's main score.
    pub retention: RetentionMatrix,
}

/// A pipeline being run.
pub struct Pipeline {
    cfg: PipelineConfig,
    registry: Registry,
    device: Device,
    state: Rc<HostState>,
    train_data: Vec<Arc<Dataset>>,
    eval_data: Vec<Option<Arc<Dataset>>>,
    objectives: Vec<Option<StageInstance>>,
    own_scores: BTreeMap<String, Metrics>,
    current: usize,
    run_dir: PathBuf,
    log: MetricsLog,
    rows: Vec<MetricRow>,
    events: EventLog,
    event_rows: Vec<Event>,
    console: console::Console,
    resume: Option<(Checkpoint, ResumeMeta)>,
    /// The adapters attached now, in order (their frozen flags are read when a stage
    /// ends).
    lineage: Vec<AdapterRecord>,
    /// The Hugging Face directory the current model came from (`None`: `[model]`).
    model_dir: Option<PathBuf>,
    /// Each finished stage's result, for stages that start `from` it.
    ended: Vec<Option<StageResult>>,
    vocab: usize,
}

pub(crate) fn resolve_device(spec: &str) -> Result<Device> {
    crate::device::resolve_device(spec).map_err(|e| Error::msg(format!("run.device: {e}")))
}

impl Pipeline {
    /// Loads every data set and checks every plugin config before any training.
    pub fn new(cfg: PipelineConfig, registry: Registry, run_dir: &Path, quiet: bool) -> Result<(Self, Tokenizer)> {
        let plan::Loaded { device, tokenizer, train_data, eval_data } = plan::load(&cfg, &registry)?;
        let state = Rc::new(HostState::new(device.clone(), DType::F32, cfg.run.seed));
        state.set_tokenizer(Rc::new(tokenizer.clone()));
        std::fs::create_dir_all(run_dir).map_err(|e| Error::Io { path: run_dir.to_path_buf(), source: e })?;
        let resolved =
            toml::to_string(&cfg).map_err(|e| Error::msg(format!("cannot write the resolved config: {e}")))?;
        std::fs::write(run_dir.join("config.toml"), resolved)
            .map_err(|e| Error::Io { path: run_dir.join("config.toml"), source: e })?;
        let data_json: Vec<_> = train_data
            .iter()
            .chain(eval_data.iter().flatten())
            .map(|d| serde_json::json!({"source": d.name, "examples": d.len(), "sha256": d.sha256}))
            .collect();
        std::fs::write(run_dir.join("data.json"), serde_json::to_string_pretty(&data_json).unwrap_or_default())
            .map_err(|e| Error::Io { path: run_dir.join("data.json"), source: e })?;
        let source = std::fs::canonicalize(&cfg.source).unwrap_or_else(|_| cfg.source.clone());
        let run_json = serde_json::json!({ "config_source": source, "base_dir": std::fs::canonicalize(cfg.base_dir()).unwrap_or_else(|_| cfg.base_dir()) });
        std::fs::write(run_dir.join("run.json"), serde_json::to_string_pretty(&run_json).unwrap_or_default())
            .map_err(|e| Error::Io { path: run_dir.join("run.json"), source: e })?;
        let plugins: Vec<_> = registry
            .libraries()
            .iter()
            .map(|l| {
                let sha256 = match &l.source {
                    crate::plugin::Source::File { path } => crate::plugin::loader::sha256_file(path).ok(),
                    crate::plugin::Source::Builtin => None,
                };
                let names: Vec<&str> = l.plugins.iter().map(|p| p.name.as_str()).collect();
                serde_json::json!({ "library": l.id, "source": l.source.to_string(), "sdk": l.sdk.to_string(), "plugins": names, "sha256": sha256 })
            })
            .collect();
        std::fs::write(run_dir.join("plugins.json"), serde_json::to_string_pretty(&plugins).unwrap_or_default())
            .map_err(|e| Error::Io { path: run_dir.join("plugins.json"), source: e })?;
        let log = MetricsLog::open(run_dir)?;
        let events = EventLog::open(run_dir)?;
        let n = cfg.stages.len();
        let p = Pipeline {
            cfg,
            registry,
            device,
            state,
            train_data,
            eval_data,
            objectives: (0..n).map(|_| None).collect(),
            own_scores: BTreeMap::new(),
            current: 0,
            run_dir: run_dir.to_path_buf(),
            log,
            rows: Vec::new(),
            events,
            event_rows: Vec::new(),
            console: console::Console::new(quiet),
            resume: None,
            lineage: Vec::new(),
            model_dir: None,
            ended: (0..n).map(|_| None).collect(),
            vocab: tokenizer.vocab_size(),
        };
        Ok((p, tokenizer))
    }

    /// Reopens an interrupted run: its resolved config, its newest good checkpoint, and
    /// its metrics up to that checkpoint.
    pub fn resume(run_dir: &Path, registry: Registry, quiet: bool) -> Result<(Self, Tokenizer)> {
        let cfg = run_config(run_dir)?;
        let (ckpt, meta) = resume::latest(run_dir, &resolve_device(&cfg.run.device)?)?;
        let metrics = run_dir.join("metrics.jsonl");
        let mut rows = if metrics.exists() { crate::report::MetricsLog::read(&metrics)? } else { Vec::new() };
        rows.truncate(meta.rows);
        let text: String = rows.iter().filter_map(|r| serde_json::to_string(r).ok()).map(|l| l + "\n").collect();
        std::fs::write(&metrics, text).map_err(|e| Error::Io { path: metrics.clone(), source: e })?;
        let (mut p, tok) = Pipeline::new(cfg, registry, run_dir, quiet)?;
        p.rows = rows;
        p.event_rows = EventLog::read(p.events.path())?;
        p.own_scores = meta.own_scores.clone();
        p.resume = Some((ckpt, meta));
        Ok((p, tok))
    }

    /// Freezes base weights for stage `s`: its `train.freeze` patterns, or every base
    /// weight when the stage trains adapters and names no patterns.
    fn freeze(&self, model: &dyn Model, s: &StageConfig, adapters_train: bool) {
        for (name, w) in model.weights() {
            let frozen = if s.train.freeze.is_empty() {
                adapters_train
            } else {
                s.train.freeze.iter().any(|p| module_matches(p, &name))
            };
            let unfrozen_now =
                s.train.unfreeze.iter().any(|u| u.at_step == 0 && u.modules.iter().any(|p| module_matches(p, &name)));
            w.set_trainable(!frozen || unfrozen_now);
        }
    }

    fn apply_unfreeze(&mut self, trainer: &mut Trainer, s: &StageConfig, step: u64) -> Result<()> {
        let due: Vec<&String> = s
            .train
            .unfreeze
            .iter()
            .filter(|u| u.at_step + 1 == step && u.at_step > 0)
            .flat_map(|u| &u.modules)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        for (name, w) in trainer.model.weights() {
            if due.iter().any(|p| module_matches(p, &name)) {
                w.set_trainable(true);
            }
        }
        self.set_lr_multipliers(trainer, s)
    }

    fn set_lr_multipliers(&self, trainer: &mut Trainer, s: &StageConfig) -> Result<()> {
        trainer.refresh_params()?;
        let layers = trainer.model.info().num_layers;
        for p in trainer.params.iter_mut() {
            p.lr_mul = lr_multiplier(&p.name, layers, s.train.layer_lr_decay);
            p.decay_mul = if decays(p.var.dims()) { 1.0 } else { 0.0 };
        }
        Ok(())
    }

    fn handoff(&mut self, model: &dyn Model, adapters: &mut Adapters, s: &StageConfig) -> Result<()> {
        match s.handoff.adapters {
            AdapterHandoff::Merge => {
                merge_into_base(model, adapters)?;
                self.lineage.clear();
            }
            AdapterHandoff::Drop => {
                drop(adapters.take());
                self.lineage.clear();
            }
            AdapterHandoff::Stack => (0..adapters.methods().len()).for_each(|k| adapters.set_frozen(k, true)),
            AdapterHandoff::Continue => (0..adapters.methods().len()).for_each(|k| adapters.set_frozen(k, false)),
            AdapterHandoff::Combine => self.combine(model, adapters, s)?,
        }
        for a in &s.adapters {
            let m = self.registry.new_method(&a.plugin, &a.config_json(), &self.state)?;
            adapters
                .attach(m, model.sites())
                .map_err(|e| Error::msg(format!("stage `{}`: adapter `{}`: {e}", s.name, a.plugin)))?;
            self.lineage.push(AdapterRecord { plugin: a.plugin.clone(), config: a.config_json(), frozen: false });
        }
        Ok(())
    }

    /// Replaces the attached LoRA adapters by their combination (see
    /// [`combine_lora`]), which keeps training.
    fn combine(&mut self, model: &dyn Model, adapters: &mut Adapters, s: &StageConfig) -> Result<()> {
        let c = s
            .handoff
            .combine
            .clone()
            .ok_or_else(|| Error::msg(format!("stage `{}`: handoff `combine` without `combine`", s.name)))?;
        let how = match c.rank {
            Some(rank) if c.method == "svd" => Combine::Svd { rank },
            _ => Combine::Cat,
        };
        let n = adapters.methods().len();
        let weights = if c.weights.is_empty() { vec![1.0; n] } else { c.weights.clone() };
        if weights.len() != n {
            return Err(Error::msg(format!(
                "stage `{}`: handoff.combine.weights has {} values for the {n} adapters attached",
                s.name,
                weights.len()
            )));
        }
        let configs = self
            .lineage
            .iter()
            .map(|a| serde_json::from_str(&a.config).map_err(|e| Error::msg(format!("adapter `{}`: {e}", a.plugin))))
            .collect::<Result<Vec<serde_json::Value>>>()?;
        let inputs: Vec<LoraInput> = adapters
            .methods()
            .iter()
            .zip(&configs)
            .zip(&weights)
            .map(|((method, config), &weight)| LoraInput { method, config, weight })
            .collect();
        let combined = combine_lora(&inputs, how, &self.registry, &self.state, model)
            .map_err(|e| Error::msg(format!("stage `{}`: handoff `combine`: {e}", s.name)))?;
        drop(adapters.take());
        let k = adapters.adopt(combined.method, model.sites())?;
        adapters.set_frozen(k, false);
        self.lineage =
            vec![AdapterRecord { plugin: "lora".into(), config: combined.config.to_string(), frozen: false }];
        Ok(())
    }

    /// Stage `k`'s result, for a stage that starts `from` it: a fresh model with the
    /// adapters stage `k` ended with, every value read from its end-of-stage checkpoint.
    fn branch(&mut self, k: usize) -> Result<(Box<dyn Model>, Adapters)> {
        let name = self.cfg.stages[k].name.clone();
        let ended = self.ended[k].clone().ok_or_else(|| Error::msg(format!("stage `{name}` has not run yet")))?;
        let (model, adapters) = result::rebuild(&ended, &self.cfg, self.vocab, &self.registry, &self.state)?;
        let path = self.run_dir.join("checkpoints").join(&name);
        let ckpt = crate::checkpoint::load(&path, &self.device)?;
        resume::load_result(&ckpt, model.as_ref(), &adapters)?;
        self.lineage = ended.adapters;
        self.model_dir = ended.model_dir;
        Ok((model, adapters))
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

    /// Records an event in `events.jsonl` and the report, and shows it: as a warning
    /// (recoveries, gates) or, without `--quiet`, as a notice.
    pub(super) fn event(&mut self, stage: &str, step: u64, kind: &str, message: String, warn: bool) -> Result<()> {
        let line = format!("stage `{stage}` step {step}: {message}");
        if warn {
            self.console.warn(&line);
        } else {
            self.console.info(&line);
        }
        let e = Event::new(stage, step, kind, &message);
        self.events.append(&e)?;
        self.event_rows.push(e);
        Ok(())
    }

    /// Stage `k`'s eval set at the end of the running stage: the evaluation logged at
    /// this step when `reuse` (the state has not changed since), else a new one, logged.
    fn end_metrics(&mut self, trainer: &mut Trainer, k: usize, reuse: bool) -> Result<Option<Metrics>> {
        let (stage, set) = (self.cfg.stages[self.current].name.clone(), self.cfg.stages[k].name.clone());
        let logged = self.rows.iter().rev().find(|r| {
            r.split == Split::Eval && r.stage == stage && r.step == trainer.step && r.set.as_ref() == Some(&set)
        });
        if let (true, Some(row)) = (reuse, logged) {
            return Ok(Some(row.metrics.clone()));
        }
        let m = if k == self.current { self.eval_own(trainer)? } else { self.eval_set(trainer, k)? };
        if let Some(m) = &m {
            self.log_eval(&stage, trainer.step, &set, m)?;
        }
        Ok(m)
    }

    /// Where the current model came from and the attached adapters with their frozen
    /// flags: what a later stage needs to start `from` this point.
    fn structure(&self, adapters: &Adapters) -> StageResult {
        let records = self
            .lineage
            .iter()
            .enumerate()
            .map(|(k, a)| AdapterRecord { frozen: adapters.is_frozen(k), ..a.clone() })
            .collect();
        StageResult { model_dir: self.model_dir.clone(), adapters: records }
    }

    /// Takes a finished stage's trainer apart: keeps its objective (for evaluating its
    /// eval set later) and hands the rest to the next stage.
    fn absorb(&mut self, trainer: Trainer, i: usize) -> (Box<dyn Model>, Adapters, Option<OptimizerInstance>) {
        let (m, a, obj, o) = trainer.into_parts();
        self.objectives[i] = Some(obj);
        (m, a, Some(o))
    }

    /// Runs every stage.
    pub fn run(mut self) -> Result<RunSummary> {
        let mut model =
            build::model(&self.cfg.model, self.vocab, self.cfg.run.seed, &self.cfg.base_dir(), &self.device)?;
        self.state.register_model(model.as_ref());
        let tokenizer = self.state.tokenizer().ok_or_else(|| Error::msg("the pipeline has no tokenizer"))?;
        plan::adapter_sites(&self.cfg, &self.registry, &self.device, model.as_ref(), tokenizer)?;
        let mut adapters = Adapters::none(model.sites().len());
        let mut optimizer: Option<OptimizerInstance> = None;
        let mut summary = Vec::new();
        for i in 0..self.cfg.stages.len() {
            self.current = i;
            let s = self.cfg.stages[i].clone();
            match s.from.as_ref().map(|f| (f, self.cfg.stage(f).map(|(k, _)| k))) {
                Some((dir, None)) => {
                    let dir = self.cfg.base_dir().join(dir);
                    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
                    model = crate::model::load_model(&dir, &self.device)?;
                    self.model_dir = Some(dir);
                    self.state.register_model(model.as_ref());
                    adapters = Adapters::none(model.sites().len());
                    self.lineage.clear();
                    optimizer = None;
                }
                Some((_, Some(k))) if k + 1 != i => {
                    (model, adapters) = self.branch(k)?;
                    optimizer = None;
                }
                _ => {}
            }
            if i > 0 || !s.adapters.is_empty() {
                self.handoff(model.as_ref(), &mut adapters, &s)?;
            }
            let adapters_train = (0..adapters.methods().len()).any(|k| !adapters.is_frozen(k));
            self.freeze(model.as_ref(), &s, adapters_train);
            let stage_obj = self.registry.new_stage(s.objective.name(), &s.objective.config_json(), &self.state)?;
            let opt = match (s.handoff.optimizer, optimizer.take()) {
                (OptimizerHandoff::Carry, Some(o)) if o.core.plugin == s.optimizer.name => o,
                _ => self.registry.new_optimizer(&s.optimizer.name, &s.optimizer.config_json(), &self.state)?,
            };
            adapters.set_precision(self.cfg.run.precision);
            let mut trainer = Trainer::new(self.state.clone(), model, adapters, stage_obj, opt)?;
            self.set_lr_multipliers(&mut trainer, &s)?;
            let replay = self.replay_sources(&s);
            let order = match s.data.order {
                crate::config::Order::Shuffled => Order::Shuffled,
                crate::config::Order::Curriculum => Order::ByDifficulty,
            };
            let mut mixture =
                Mixture::new(self.train_data[i].clone(), replay, self.cfg.run.seed.wrapping_add(i as u64), order)?;
            // On resume: stages before the checkpoint's only rebuild their structure; the
            // checkpoint's stage gets every value back and continues where it stopped.
            let target = self.resume.as_ref().map(|(_, m)| (m.stage, m.stage_done));
            if let Some((t, _)) = target {
                if i < t {
                    self.ended[i] = Some(self.structure(&trainer.adapters));
                    (model, adapters, optimizer) = self.absorb(trainer, i);
                    continue;
                }
            }
            let mut progress = Progress::default();
            let mut marks = None;
            if let Some((ckpt, meta)) = self.resume.take() {
                for u in s.train.unfreeze.iter().filter(|u| u.at_step > 0 && u.at_step < meta.step) {
                    for (name, w) in trainer.model.weights() {
                        if u.modules.iter().any(|p| module_matches(p, &name)) {
                            w.set_trainable(true);
                        }
                    }
                }
                self.set_lr_multipliers(&mut trainer, &s)?;
                resume::load_values(&ckpt, &trainer, &self.objectives, i)?;
                self.state.rng.borrow_mut().set_state(meta.rng);
                trainer.step = meta.step;
                trainer.optimizer.updates = meta.optimizer_updates;
                if meta.stage_done {
                    self.ended[i] = Some(self.structure(&trainer.adapters));
                    summary.push((s.name.clone(), trainer.step, StageEnd::Budget));
                    (model, adapters, optimizer) = self.absorb(trainer, i);
                    continue;
                }
                if let Some(ms) = &meta.mixture {
                    let replay = self.replay_sources(&s);
                    mixture = Mixture::restore(self.train_data[i].clone(), replay, ms)?;
                }
                marks = Some(Marks::load(&ckpt, &meta.marks, &meta.progress, &trainer)?);
                progress = meta.progress.clone();
                self.event(
                    &s.name,
                    meta.step,
                    "resume",
                    format!("resumed from the checkpoint at step {}", meta.step),
                    false,
                )?;
            }
            let end = self.train_stage(&mut trainer, &mut mixture, progress, marks)?;
            // The retention row: every stage's eval set so far, at the end of this stage.
            // A stage that ran to its budget or exit rule was just evaluated in this state
            // (its own set and gated sets): those results are reused, not recomputed.
            let unchanged = matches!(end, StageEnd::Budget | StageEnd::Exit);
            for k in 0..=i {
                if let Some(m) = self.end_metrics(&mut trainer, k, unchanged)? {
                    if k == i {
                        self.own_scores.insert(s.name.clone(), m);
                    }
                }
            }
            let meta = ResumeMeta {
                stage: i,
                stage_done: true,
                step: trainer.step,
                rng: self.state.rng.borrow().state(),
                mixture: None,
                progress: Progress::default(),
                optimizer_updates: trainer.optimizer.updates,
                marks: MarkSteps::default(),
                own_scores: self.own_scores.clone(),
                rows: self.rows.len(),
                result: Some(self.structure(&trainer.adapters)),
            };
            resume::save(&self.run_dir, &s.name, &trainer, &self.objectives, i, &meta, BTreeMap::new())?;
            self.ended[i] = meta.result;
            self.event(&s.name, trainer.step, "end", format!("ended after {} steps by {end}", trainer.step), false)?;
            summary.push((s.name.clone(), trainer.step, end.clone()));
            (model, adapters, optimizer) = self.absorb(trainer, i);
            if end == StageEnd::GateStop {
                break;
            }
        }
        let retention = RetentionMatrix::from_rows_main(&self.rows, &["exact_match", "accuracy", "loss"]);
        retention.write_json(&self.run_dir)?;
        let extra = serde_json::json!({ "config": self.cfg.source.display().to_string(), "seed": self.cfg.run.seed });
        write_html(&self.run_dir, &self.cfg.run.name, &self.rows, Some(&retention), &self.event_rows, &extra)?;
        Ok(RunSummary { run_dir: self.run_dir.clone(), stages: summary, retention })
    }
}
