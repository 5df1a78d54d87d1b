//! Branching: a new run that takes its first stages from another run instead of
//! training them again (`stagecraft run PIPELINE --from RUN_DIR --after STAGE`).
//!
//! The new run's stages up to and including `STAGE` must be the source run's: the same
//! resolved stage configs, model, seed and precision, the same data (by sha256) and the
//! same plugin builds. The new run directory then gets the source's end-of-stage
//! checkpoints of those stages (hard links where the file system allows, else copies;
//! checkpoints are never modified in place), its logs cut to what the checkpoint at
//! the end of `STAGE` covers, and those stages' per-example scores; the run goes on
//! from that checkpoint as a resume would, so the later stages train exactly as they
//! would have in the source run had its config been this one. `branch.json` records
//! where the run came from.
//!
//! This is how a hyperparameter search reuses the earlier stages' best result for every
//! trial of a later stage, and how a user tries several fine-tuning configs from one
//! pretraining run.

use super::plugin_record::{PluginChanges, ResumePoint};
use super::records::{RecordsMark, RESUMES_FILE};
use super::resume::ResumeMeta;
use super::run_dir::RunDir;
use super::{run_config, Pipeline, Resume, Resuming};
use crate::checkpoint::durable::io;
use crate::config::PipelineConfig;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::plugin::Registry;
use crate::report::EXAMPLES_DIR;
use crate::{bail, checkpoint};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file a branched run records its origin in.
pub(crate) const BRANCH_FILE: &str = "branch.json";

/// Where a branched run starts: at the end of stage `after` of the run in `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPoint {
    /// The source run directory.
    pub run: PathBuf,
    /// The last stage taken from it.
    pub after: String,
}

/// The source run's state at the branch point, checked against the new config.
pub(super) struct Source {
    /// Index of the last stage taken from it.
    pub stage: usize,
    /// Its end-of-stage checkpoint, meta and name.
    pub resume: Resume,
}

impl Source {
    /// Checks that `cfg`'s stages up to `from.after` are the source run's and loads the
    /// checkpoint at the end of that stage.
    pub fn open(cfg: &PipelineConfig, from: &BranchPoint, device: &candle_core::Device) -> Result<Source> {
        let origin = run_config(&from.run).map_err(|e| Error::msg(format!("--from {}: {e}", from.run.display())))?;
        let Some((stage, _)) = origin.stage(&from.after) else {
            bail!("--after {}: the run in {} has no such stage", from.after, from.run.display())
        };
        if cfg.stage(&from.after).map(|(i, _)| i) != Some(stage) {
            bail!(
                "--after {}: the pipeline's stages before it are not the run's ({})",
                from.after,
                format!("its stages are {}", origin.stage_names())
            )
        }
        same_prefix(&origin, cfg, stage).map_err(|what| {
            Error::msg(format!(
                "--from {}: {what}; the stages taken from a run must be the ones it trained",
                from.run.display()
            ))
        })?;
        let path = from.run.join("checkpoints").join(&from.after);
        if !path.is_dir() {
            bail!(
                "--from {}: stage `{}` has no end-of-stage checkpoint (it did not finish)",
                from.run.display(),
                from.after
            )
        }
        let ckpt = checkpoint::load(&path, device)?;
        let meta: ResumeMeta = serde_json::from_value(ckpt.meta.clone())
            .map_err(|e| Error::file(&path, format!("not a checkpoint this stagecraft can branch from: {e}")))?;
        if meta.stage != stage || !meta.stage_done {
            bail!("{}: not the end of stage `{}`", path.display(), from.after)
        }
        if meta.ended.last().is_some_and(|e| e.end == super::StageEnd::GateStop) {
            bail!("--after {}: a retention gate stopped the run there; later stages would not have run", from.after)
        }
        Ok(Source { stage, resume: Resume { ckpt, meta, name: from.after.clone() } })
    }
}

/// `Err(what differs)` unless `a` and `b` agree on the model, seed, precision and
/// stages `0..=last`.
fn same_prefix(a: &PipelineConfig, b: &PipelineConfig, last: usize) -> std::result::Result<(), String> {
    let mut pairs = vec![
        ("model".to_string(), toml_of(&a.model), toml_of(&b.model)),
        ("run.seed".to_string(), toml_of(&a.run.seed), toml_of(&b.run.seed)),
        ("run.precision".to_string(), toml_of(&a.run.precision), toml_of(&b.run.precision)),
    ];
    for (sa, sb) in a.stages[..=last].iter().zip(&b.stages) {
        pairs.push((format!("stages.{}", sa.name), toml_of(sa), toml_of(sb)));
    }
    for (path, va, vb) in pairs {
        if let Some((key, then, now)) = first_difference(&path, &va, &vb) {
            return Err(format!("`{key}` is {now} here but {then} in the run"));
        }
    }
    Ok(())
}

/// A config part as a TOML value, for comparisons.
fn toml_of<T: Serialize>(v: &T) -> toml::Value {
    toml::Value::try_from(v).unwrap_or_else(|e| toml::Value::String(format!("<cannot be written as TOML: {e}>")))
}

/// The first key under `path` where `a` and `b` differ, with both values (`absent` for a
/// missing key).
fn first_difference(path: &str, a: &toml::Value, b: &toml::Value) -> Option<(String, String, String)> {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            keys.into_iter().find_map(|k| {
                let sub = format!("{path}.{k}");
                match (ta.get(k), tb.get(k)) {
                    (Some(va), Some(vb)) => first_difference(&sub, va, vb),
                    (va, vb) => Some((sub, shown(va), shown(vb))),
                }
            })
        }
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

fn shown(v: Option<&toml::Value>) -> String {
    v.map_or("absent".to_string(), toml::Value::to_string)
}

impl Pipeline {
    /// A new run in `run_dir` that takes its stages up to `from.after` from the run in
    /// `from.run` and trains the rest (see the module docs). The configs and the
    /// checkpoint are checked before anything is copied; the data and plugin builds,
    /// once loaded, after, and a refusal takes the copies back.
    pub fn branch(
        cfg: PipelineConfig,
        registry: Registry,
        run_dir: RunDir,
        from: &BranchPoint,
        quiet: bool,
    ) -> Result<(Self, Tokenizer)> {
        let device = super::check::resolve_device(&cfg.run.device)?;
        let source = Source::open(&cfg, from, &device)?;
        let meta = &source.resume.meta;
        let mut copied = copy_prefix(&from.run, run_dir.path(), &cfg, source.stage, meta.records)?;
        // Opening the logs creates this one; taken back with the copies if the start fails.
        copied.track_new(run_dir.join(RESUMES_FILE));
        let next = cfg.stages.get(source.stage + 1).map(|s| s.name.clone()).unwrap_or_default();
        let resuming = Resuming {
            mark: meta.records,
            from: ResumePoint { stage: next, step: 0 },
            plugins: PluginChanges::Refuse,
            first_new_stage: source.stage + 1,
        };
        let opened = Pipeline::open(cfg, registry, run_dir, Some(resuming), quiet)
            .and_then(|(p, tokenizer)| check_same_sources(&from.run, &p, source.stage + 1).map(|()| (p, tokenizer)));
        let (mut p, tokenizer) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                copied.remove();
                return Err(e);
            }
        };
        p.write_start_files()?;
        let origin = BranchPoint {
            run: std::fs::canonicalize(&from.run).unwrap_or_else(|_| from.run.clone()),
            after: from.after.clone(),
        };
        let origin = serde_json::to_value(&origin).map_err(|e| Error::msg(format!("cannot record the branch: {e}")))?;
        p.run_dir.write_json(BRANCH_FILE, &origin)?;
        p.records.console().info(&format!("starting after stage `{}` of {}", from.after, from.run.display()));
        p.own_scores = meta.own_scores.clone();
        p.ended = meta.ended.clone();
        p.resume = Some(source.resume);
        Ok((p, tokenizer))
    }
}

/// Refuses a branch whose earlier stages' data or plugin builds are not the source
/// run's (its `data.json` and `plugins.json`).
fn check_same_sources(source: &Path, p: &Pipeline, first_new: usize) -> Result<()> {
    let read = |file: &str| -> Result<serde_json::Value> {
        let path = source.join(file);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| Error::file(&path, e))
    };
    let then = read("data.json")?;
    let then = then.as_array().cloned().unwrap_or_default();
    let taken = p.train_data[..first_new].iter().chain(p.sets.data()[..first_new].iter().flatten());
    for d in taken {
        let entry = serde_json::json!({ "source": d.name, "examples": d.len(), "sha256": d.sha256 });
        if !then.contains(&entry) {
            let sha = d.sha256.as_deref().unwrap_or("none: built in");
            bail!(
                "--from {}: data set {} is not the one the run trained on (now sha256 {sha})",
                source.display(),
                d.name
            )
        }
    }
    let then = read("plugins.json")?;
    super::plugin_record::check_same_builds(&then, &p.registry)
        .map_err(|e| Error::msg(format!("--from {}: {e}", source.display())))
}

/// What [`copy_prefix`] wrote, to take back when the branch cannot start.
struct Copied(Vec<PathBuf>);

impl Copied {
    /// Adds `path` to what is removed, unless it exists already.
    fn track_new(&mut self, path: PathBuf) {
        if !path.exists() {
            self.0.push(path);
        }
    }

    /// Removes every file and directory copied (best effort: the run never started).
    fn remove(self) {
        for path in self.0.iter().rev() {
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
    }
}

/// Copies what the source run in `from` wrote for stages `0..=last` into `to`: their
/// end-of-stage checkpoints, the logs up to `mark`, and their per-example scores.
fn copy_prefix(from: &Path, to: &Path, cfg: &PipelineConfig, last: usize, mark: RecordsMark) -> Result<Copied> {
    let mut copied = Copied(Vec::new());
    let result = copy_into(from, to, cfg, last, mark, &mut copied.0);
    match result {
        Ok(()) => Ok(copied),
        Err(e) => {
            copied.remove();
            Err(e)
        }
    }
}

/// [`copy_prefix`]'s copies, each path pushed to `copied` as it is made.
fn copy_into(
    from: &Path,
    to: &Path,
    cfg: &PipelineConfig,
    last: usize,
    mark: RecordsMark,
    copied: &mut Vec<PathBuf>,
) -> Result<()> {
    if !to.join("checkpoints").exists() {
        copied.push(to.join("checkpoints"));
    }
    for s in &cfg.stages[..=last] {
        let rel = Path::new("checkpoints").join(&s.name);
        if from.join(&rel).is_dir() {
            copied.push(to.join(&rel));
            link_dir(&from.join(&rel), &to.join(&rel))?;
        }
    }
    for (file, len) in [("metrics.jsonl", mark.metrics), ("events.jsonl", mark.events)] {
        copied.push(to.join(file));
        copy_head(&from.join(file), &to.join(file), len)?;
    }
    let examples = from.join(EXAMPLES_DIR);
    if examples.is_dir() {
        let taken = |name: &str| cfg.stages[..=last].iter().any(|s| name.starts_with(&format!("{}-step", s.name)));
        if !to.join(EXAMPLES_DIR).exists() {
            copied.push(to.join(EXAMPLES_DIR));
        }
        std::fs::create_dir_all(to.join(EXAMPLES_DIR)).map_err(io(to))?;
        for entry in std::fs::read_dir(&examples).map_err(io(&examples))? {
            let entry = entry.map_err(io(&examples))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if taken(&name) {
                link_file(&entry.path(), &to.join(EXAMPLES_DIR).join(&name))?;
            }
        }
    }
    Ok(())
}

/// The files of directory `from` in a new directory `to`.
pub(super) fn link_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        link_file(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// `from` at `to`: a hard link, or a copy where the file system has none.
fn link_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io(from))?;
    }
    Ok(())
}

/// The first `len` bytes of `from` (a log) as a new file `to`.
fn copy_head(from: &Path, to: &Path, len: u64) -> Result<()> {
    let bytes = std::fs::read(from).map_err(io(from))?;
    let Some(head) = usize::try_from(len).ok().and_then(|n| bytes.get(..n)) else {
        bail!("{}: shorter ({} bytes) than its checkpoint says ({len})", from.display(), bytes.len())
    };
    std::fs::write(to, head).map_err(io(to))
}
