//! `stagecraft search PIPELINE --space SPACE`: hierarchical hyperparameter search over
//! a pipeline's stages.
//!
//! Stages are tuned one after the other, in pipeline order ([`space`]). Every trial of
//! a stage starts from the best result of the stages before it, taken from disk by a
//! branch (`run --from RUN --after STAGE`, [`crate::pipeline::BranchPoint`]), never
//! retrained: the best trial of the previous tuned stage, or — when untuned stages lie
//! in between — one run of those from it, kept under `prefix/<key>/`, the key being a
//! hash of the resolved config of the stages it ran. A trial runs its stage's config up to that stage
//! (`--until`). Its objective is the stage's main score on its own eval set at its last
//! evaluation; a trial whose stage a retention gate rolled back or stopped is
//! infeasible, not just worse. Trial 0 of a stage has the pipeline's own values (the
//! baseline the others must beat); the next come from the sampler ([`tpe`]: random,
//! or TPE) and are pruned by ASHA on the stage's evaluations ([`trial`]). With
//! `mode = "pbt"` a stage is trained by a population instead ([`pbt`]).
//!
//! Each trial is a `stagecraft run` process (its command is recorded). Everything goes
//! to the search directory: `trials.jsonl` (one line per finished trial), `trials/`
//! (each trial's run directory and log), `prefix/`, `best.toml` and `best.json` (the
//! pipeline with every tuned stage's best values) and `report.html` ([`report`]). A
//! killed search started again with the same arguments goes on where it was: finished
//! trials are read back, a trial that was running is resumed from its checkpoint, and
//! sampling is seeded per trial, so it proposes what it would have.

mod pbt;
mod report;
pub mod space;
mod tpe;
pub mod trial;

use crate::config::apply_override;
use crate::config::PipelineConfig;
use crate::error::{io, Error, Result};
use crate::rng::Rng;
use crate::{bail, pipeline};
use serde::{Deserialize, Serialize};
pub use space::KeyValue;
use space::{current_value, Mode, Param, Space, StageSpace};
use std::path::{Path, PathBuf};
use std::process::Command;
use trial::{asha_goes_on, Status};

/// The search's record of its arguments (`search.json`): a search directory continues
/// only the search it was made for.
const SEARCH_FILE: &str = "search.json";
/// One line per finished trial.
const TRIALS_FILE: &str = "trials.jsonl";

/// What to search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// The space file.
    pub space: PathBuf,
    /// The search directory.
    pub dir: PathBuf,
    /// Trials per stage instead of the space's `trials`.
    pub trials: Option<usize>,
    /// Stop starting trials once all trials together trained this many steps.
    pub budget: Option<u64>,
    /// The `stagecraft` executable trials run.
    pub exe: PathBuf,
    /// No line per trial.
    pub quiet: bool,
}

/// One finished trial, as `trials.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The tuned stage.
    pub stage: String,
    /// Its number in the stage (0: the pipeline's own values).
    pub number: usize,
    /// The tuned keys' values.
    pub values: Vec<KeyValue>,
    /// How it ended.
    pub status: Status,
    /// The stage's main metric at its last evaluation, and its value.
    pub metric: Option<String>,
    /// The metric's value.
    pub value: Option<f64>,
    /// The value oriented so that higher is better (what is compared).
    pub score: Option<f64>,
    /// Steps it trained in the stage.
    pub steps: u64,
    /// Its scores at the pruning rungs it reached.
    pub rungs: Vec<trial::RungScore>,
    /// Wall seconds.
    pub seconds: f64,
    /// Its run directory, inside the search directory.
    pub run_dir: PathBuf,
    /// The command that ran it.
    pub command: Vec<String>,
    /// For a failed trial: its last error line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Population-based training: the generation (interval) this record trained; its
    /// `number` is the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<usize>,
    /// Population-based training: the member whose state it started from (itself when
    /// it went on with its own; `None` in the first generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<usize>,
}

impl TrialRecord {
    /// Whether it counts for the best: complete within its gates, with a score.
    pub fn feasible(&self) -> bool {
        self.status == Status::Complete && self.score.is_some()
    }

    /// `3`, or for a member of a population `3.g2` (member 3 in generation 2).
    pub fn label(&self) -> String {
        match self.generation {
            Some(g) => format!("{}.g{g}", self.number),
            None => self.number.to_string(),
        }
    }
}

/// The best trial of each tuned stage, and where the results are.
#[derive(Debug)]
pub struct SearchSummary {
    /// Per tuned stage: its baseline trial (the pipeline's values) and its best.
    pub stages: Vec<(TrialRecord, TrialRecord)>,
    /// `--set` overrides of every best value.
    pub overrides: Vec<String>,
    /// Trials run in all.
    pub trials: usize,
    /// Whether the step budget ended the search early.
    pub budget_spent: bool,
}

/// A stage's trials so far, and the ASHA rungs they reached.
struct StageTrials<'a> {
    space: &'a StageSpace,
    done: Vec<TrialRecord>,
}

/// A search in progress.
struct Search {
    opts: SearchOptions,
    space: Space,
    pipeline: PipelineConfig,
    trials_per_stage: usize,
    records: Vec<TrialRecord>,
    steps_spent: u64,
    _lock: std::fs::File,
}

/// Runs (or continues) the search `opts` describes.
pub fn search(opts: SearchOptions) -> Result<SearchSummary> {
    let mut s = Search::open(opts)?;
    let mut chosen: Vec<String> = Vec::new();
    let mut prefix: Option<pipeline::BranchPoint> = None;
    let mut summary = Vec::new();
    let mut budget_spent = false;
    for k in 0..s.space.stages.len() {
        let stage = s.space.stages[k].clone();
        let started = s.records.iter().filter(|r| r.stage == stage.stage).count();
        if started < s.trials_per_stage && s.budget_left() == Some(0) {
            budget_spent = true;
            break;
        }
        let from = s.prefix_for(&stage, &chosen, prefix.take())?;
        budget_spent = !match s.space.settings.mode {
            Mode::Sample => s.run_stage(&stage, &chosen, from.as_ref())?,
            Mode::Pbt => s.run_stage_pbt(&stage, &chosen, from.as_ref())?,
        };
        let done: Vec<&TrialRecord> = s.records.iter().filter(|r| r.stage == stage.stage).collect();
        if done.is_empty() {
            break;
        }
        let Some(best) = best(&done) else {
            s.write_outputs(&chosen)?;
            bail!(
                "search: no trial of stage `{}` finished within its gates (see {}); the later stages are not tuned",
                stage.stage,
                s.opts.dir.join(TRIALS_FILE).display()
            );
        };
        // Trial 0 (in a population: member 0 at its last generation).
        let baseline = done
            .iter()
            .filter(|r| r.number == 0)
            .max_by_key(|r| r.generation)
            .map(|r| (*r).clone())
            .unwrap_or_else(|| best.clone());
        match s.space.settings.mode {
            Mode::Sample => chosen.extend(stage.overrides(&best.values)),
            Mode::Pbt => chosen.extend(pbt::overrides(&stage, &s.opts.dir.join(&best.run_dir))?),
        }
        prefix = Some(pipeline::BranchPoint { run: s.opts.dir.join(&best.run_dir), after: stage.stage.clone() });
        summary.push((baseline, best.clone()));
        s.write_outputs(&chosen)?;
        if budget_spent {
            break;
        }
    }
    Ok(SearchSummary { stages: summary, overrides: chosen, trials: s.records.len(), budget_spent })
}

/// The best feasible trial (highest score; the lower number on ties).
fn best(done: &[&TrialRecord]) -> Option<TrialRecord> {
    let feasible = done.iter().filter(|r| r.feasible());
    let best = feasible.min_by(|a, b| {
        let (sa, sb) = (a.score.unwrap_or(f64::NEG_INFINITY), b.score.unwrap_or(f64::NEG_INFINITY));
        sb.total_cmp(&sa).then(a.number.cmp(&b.number))
    })?;
    Some((*best).clone())
}

impl Search {
    /// Opens the search directory: a new search records its arguments; an existing one
    /// must have been started with the same pipeline and space, and its finished trials
    /// are read back.
    fn open(opts: SearchOptions) -> Result<Search> {
        let space = Space::load(&opts.space, &opts.pipeline)?;
        let pipeline = PipelineConfig::from_file(&opts.pipeline, &[])?;
        for s in &space.stages {
            if pipeline.stages[s.index].data.eval.is_none() {
                bail!(
                    "{}: stage `{}` has no eval set (data.eval), so its trials cannot be scored",
                    opts.space.display(),
                    s.stage
                );
            }
        }
        let trials_per_stage = opts.trials.unwrap_or(space.settings.trials).max(1);
        std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
        let lock = lock(&opts.dir)?;
        let args = serde_json::json!({
            "pipeline": std::fs::canonicalize(&opts.pipeline).unwrap_or_else(|_| opts.pipeline.clone()),
            "pipeline_text": std::fs::read_to_string(&opts.pipeline).map_err(io(&opts.pipeline))?,
            "space_text": std::fs::read_to_string(&opts.space).map_err(io(&opts.space))?,
            "trials": trials_per_stage,
        });
        let path = opts.dir.join(SEARCH_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let then: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
                if then != args {
                    bail!(
                        "{}: holds a search of another pipeline, space or trial count; give another --dir",
                        opts.dir.display()
                    );
                }
            }
            Err(_) => crate::checkpoint::durable::replace(
                &path,
                serde_json::to_string_pretty(&args).unwrap_or_default().as_bytes(),
            )?,
        }
        let trials = opts.dir.join(TRIALS_FILE);
        let records: Vec<TrialRecord> = match trials.exists() {
            true => crate::report::Jsonl::read(&trials)?,
            false => Vec::new(),
        };
        let steps_spent = records.iter().map(|r| r.steps).sum();
        Ok(Search { opts, space, pipeline, trials_per_stage, records, steps_spent, _lock: lock })
    }

    /// Steps the budget leaves (`None`: no budget).
    fn budget_left(&self) -> Option<u64> {
        self.opts.budget.map(|b| b.saturating_sub(self.steps_spent))
    }

    /// Where stage `stage`'s trials start from: nothing (the first stage), the best
    /// trial of the previous tuned stage when it ends just before, or a run of the
    /// stages in between from it (made once, kept under `prefix/`).
    fn prefix_for(
        &self,
        stage: &StageSpace,
        chosen: &[String],
        previous: Option<pipeline::BranchPoint>,
    ) -> Result<Option<pipeline::BranchPoint>> {
        if stage.index == 0 {
            return Ok(None);
        }
        let last = self.pipeline.stages[stage.index - 1].name.clone();
        if previous.as_ref().is_some_and(|p| p.after == last) {
            return Ok(previous);
        }
        let key = prefix_key(&self.opts.pipeline, chosen, stage.index - 1)?;
        let dir = self.opts.dir.join("prefix").join(&key);
        self.wait_until_free(&dir);
        if !dir.join("checkpoints").join(&last).is_dir() {
            let mut cmd = match dir.join("config.toml").is_file() {
                true => self.resume_command(&dir),
                false => self.run_command(chosen, &[], &last, previous.as_ref(), &dir),
            };
            self.say(&format!("search: stages up to `{last}` from the values chosen so far → {}", dir.display()));
            let log = self.opts.dir.join("prefix").join(format!("{key}.log"));
            std::fs::create_dir_all(self.opts.dir.join("prefix")).map_err(io(&self.opts.dir))?;
            let out = std::fs::File::create(&log).map_err(io(&log))?;
            let mut child = cmd
                .stderr(out.try_clone().map_err(io(&log))?)
                .stdout(out)
                .spawn()
                .map_err(|e| Error::msg(format!("cannot start a run: {e}")))?;
            trial::record_pid(&trial::pid_file(&dir), child.id())?;
            let status = child.wait().map_err(|e| Error::msg(format!("cannot wait for a run: {e}")))?;
            let _ = std::fs::remove_file(trial::pid_file(&dir));
            if !status.success() {
                bail!("search: the run of the stages up to `{last}` failed (see {})", log.display());
            }
        }
        Ok(Some(pipeline::BranchPoint { run: dir, after: last }))
    }

    /// Runs stage `stage`'s remaining trials; `false` when the step budget stopped it.
    fn run_stage(
        &mut self,
        stage: &StageSpace,
        chosen: &[String],
        from: Option<&pipeline::BranchPoint>,
    ) -> Result<bool> {
        let base_cfg = PipelineConfig::from_file(&self.opts.pipeline, chosen)?;
        let rng = Rng::new(self.space.settings.seed).fork(stage.index as u64);
        loop {
            let trials = StageTrials {
                space: stage,
                done: self.records.iter().filter(|r| r.stage == stage.stage).cloned().collect(),
            };
            let number = trials.done.len();
            if number >= self.trials_per_stage {
                return Ok(true);
            }
            if self.budget_left() == Some(0) {
                self.say(&format!("search: the step budget ({} steps) is spent", self.steps_spent));
                return Ok(false);
            }
            let values = match number {
                0 => stage
                    .params
                    .iter()
                    .map(|p| KeyValue { key: p.key.clone(), value: current_value(&base_cfg, stage.index, &p.key) })
                    .collect(),
                _ => trials.suggest(self.space.sampler(), &mut rng.fork(number as u64)),
            };
            let record = self.run_trial(&trials, number, values, chosen, from)?;
            self.say(&describe(&record));
            self.steps_spent += record.steps;
            let mut log = crate::report::Jsonl::open(&self.opts.dir.join(TRIALS_FILE))?;
            log.append(&record)?;
            log.sync()?;
            self.records.push(record);
        }
    }

    /// Runs (or resumes, when its directory holds a run already) trial `number`.
    fn run_trial(
        &self,
        trials: &StageTrials<'_>,
        number: usize,
        values: Vec<KeyValue>,
        chosen: &[String],
        from: Option<&pipeline::BranchPoint>,
    ) -> Result<TrialRecord> {
        let stage = trials.space;
        let name = format!("{}-{number:02}", stage.stage);
        let run_dir = Path::new("trials").join(&name);
        let dir = self.opts.dir.join(&run_dir);
        let mut cmd = self.run_command(chosen, &stage.overrides(&values), &stage.stage, from, &dir);
        let command: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.wait_until_free(&dir);
        if dir.join("config.toml").is_file() {
            cmd = self.resume_command(&dir);
        }
        let prune = self.space.settings.prune.asha();
        let mut judge = |rung: usize, score: f64| {
            let eta = prune.map_or(f64::INFINITY, |p| p.eta);
            let others: Vec<f64> =
                trials.done.iter().filter_map(|r| r.rungs.iter().find(|g| g.rung == rung)).map(|g| g.score).collect();
            asha_goes_on(&others, score, eta)
        };
        let t = std::time::Instant::now();
        let log = self.opts.dir.join("trials").join(format!("{name}.log"));
        std::fs::create_dir_all(self.opts.dir.join("trials")).map_err(io(&self.opts.dir))?;
        let out = trial::run(&mut cmd, &dir, &stage.stage, prune, &mut judge, &log)?;
        Ok(TrialRecord {
            stage: stage.stage.clone(),
            number,
            values,
            status: out.status,
            metric: out.metric.as_ref().map(|(m, _)| m.clone()),
            value: out.metric.map(|(_, v)| v),
            score: out.score,
            steps: out.steps,
            rungs: out.rungs,
            seconds: t.elapsed().as_secs_f64(),
            run_dir,
            command,
            error: out.error,
            generation: None,
            parent: None,
        })
    }

    /// `stagecraft run PIPELINE --set … --until STAGE [--from RUN --after S] --run-dir DIR`.
    fn run_command(
        &self,
        chosen: &[String],
        own: &[String],
        until: &str,
        from: Option<&pipeline::BranchPoint>,
        dir: &Path,
    ) -> Command {
        let mut cmd = self.exe();
        cmd.arg("run").arg(&self.opts.pipeline);
        for o in chosen.iter().chain(own) {
            cmd.arg("--set").arg(o);
        }
        cmd.arg("--until").arg(until);
        if let Some(f) = from {
            cmd.arg("--from").arg(&f.run).arg("--after").arg(&f.after);
        }
        cmd.arg("--run-dir").arg(dir).arg("--quiet");
        cmd
    }

    /// Waits while a process of an earlier search (killed without its trials) still
    /// runs in the run directory `dir`, or was started for it: the run is resumed once
    /// that process is done.
    fn wait_until_free(&self, dir: &Path) {
        let busy = || trial::recorded_process_runs(dir) || crate::pipeline::RunDir::is_busy(dir);
        if busy() {
            self.say(&format!("search: waiting for the process still running in {}", dir.display()));
        }
        while busy() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `stagecraft run --resume DIR --quiet`.
    fn resume_command(&self, dir: &Path) -> Command {
        let mut cmd = self.exe();
        cmd.args(["run", "--resume"]).arg(dir).arg("--quiet");
        cmd
    }

    fn exe(&self) -> Command {
        Command::new(&self.opts.exe)
    }

    fn say(&self, line: &str) {
        if !self.opts.quiet {
            println!("{line}");
        }
    }

    /// `best.toml`, `best.json` and `report.html` for the values chosen so far.
    fn write_outputs(&self, chosen: &[String]) -> Result<()> {
        let text = std::fs::read_to_string(&self.opts.pipeline).map_err(io(&self.opts.pipeline))?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::file(&self.opts.pipeline, e))?;
        for o in chosen {
            apply_override(&mut table, o)?;
        }
        let body = toml::to_string(&table).map_err(|e| Error::msg(format!("cannot write best.toml: {e}")))?;
        let header = format!(
            "# {} with the best values `stagecraft search` found; relative paths resolve\n# against that file's folder.\n",
            self.opts.pipeline.display()
        );
        crate::checkpoint::durable::replace(&self.opts.dir.join("best.toml"), format!("{header}{body}").as_bytes())?;
        let command: Vec<String> = ["stagecraft", "run"]
            .into_iter()
            .map(str::to_string)
            .chain([self.opts.pipeline.display().to_string()])
            .chain(chosen.iter().flat_map(|o| ["--set".to_string(), o.clone()]))
            .collect();
        let best = serde_json::json!({ "overrides": chosen, "command": command });
        crate::checkpoint::durable::replace(
            &self.opts.dir.join("best.json"),
            format!("{}\n", serde_json::to_string_pretty(&best).unwrap_or_default()).as_bytes(),
        )?;
        report::write(&self.opts.dir, &self.space, &self.records)
    }
}

impl StageTrials<'_> {
    /// The sampler's next values for this stage.
    fn suggest(&self, kind: tpe::SamplerKind, rng: &mut Rng) -> Vec<KeyValue> {
        let params: &[Param] = &self.space.params;
        let history: Vec<tpe::Observed> = self
            .done
            .iter()
            .map(|r| tpe::Observed {
                point: params
                    .iter()
                    .map(|p| r.values.iter().find(|kv| kv.key == p.key)?.value.as_ref().and_then(|v| p.coordinate(v)))
                    .collect(),
                score: r.feasible().then_some(r.score).flatten(),
            })
            .collect();
        let x = tpe::suggest(kind, &self.space.dims(), &history, rng);
        params.iter().zip(x).map(|(p, x)| KeyValue { key: p.key.clone(), value: Some(p.value(x)) }).collect()
    }
}

/// A short stable key for a run of stages `0..=last`: a hash of their resolved config
/// (the model, seed, precision and those stages, with the values chosen so far).
fn prefix_key(pipeline: &Path, chosen: &[String], last: usize) -> Result<String> {
    use sha2::Digest;
    let cfg = PipelineConfig::from_file(pipeline, chosen)?;
    let resolved = serde_json::json!({
        "model": cfg.model,
        "seed": cfg.run.seed,
        "precision": cfg.run.precision,
        "stages": &cfg.stages[..=last],
    });
    let digest = sha2::Sha256::digest(resolved.to_string().as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{hex}", cfg.stages[last].name))
}

/// One console line for a finished trial.
fn describe(r: &TrialRecord) -> String {
    let values: Vec<String> = r
        .values
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map_or("(pipeline default)".to_string(), Param::show)))
        .collect();
    let result = match (&r.metric, r.value) {
        (Some(m), Some(v)) => format!("{m} {v:.4}"),
        _ => "no score".to_string(),
    };
    let status = r.status.describe();
    let copied = match r.parent {
        Some(p) if p != r.number => format!(" (copied #{p})"),
        _ => String::new(),
    };
    format!(
        "{} #{}{copied}: {}  {result}  {status}, {} steps, {:.1} s{}",
        r.stage,
        r.label(),
        values.join(" "),
        r.steps,
        r.seconds,
        r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
    )
}

/// An exclusive lock on the search directory for as long as the search runs.
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("{}: another stagecraft search is running in this directory", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}
