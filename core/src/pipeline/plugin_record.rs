//! `plugins.json`: each plugin library a run loaded (its id, where it was found, its
//! SDK version, its plugins, its sha256), and the check a resume makes against it.
//!
//! A resume goes on with the same plugin builds: a library file whose sha256 differs
//! from the one the run recorded is refused, naming both hashes and the path, unless
//! the resume allows changes ([`PluginChanges::Allow`], `run --resume
//! --allow-plugin-change`). An allowed change is appended to the library's `changes`
//! (the new path and hash, when, and the stage and step the run went on from); the
//! original entry is never rewritten, and later resumes compare with the newest hash.
//! Each resume says, in one info line per library file, where the run had found it and
//! where it is found now when that differs.

use super::run_dir::RunDir;
use crate::error::{Error, Result};
use crate::plugin::{Library, Registry, Sha256, Source};
use serde::{Deserialize, Serialize};

/// The file name of the record in the run directory.
const FILE: &str = "plugins.json";

/// Whether a resume may go on with plugin library files other than the run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PluginChanges {
    /// A library file whose sha256 differs from the recorded one is refused.
    #[default]
    Refuse,
    /// It is used, and the change is recorded.
    Allow,
}

/// One library in `plugins.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LibraryRecord {
    /// The library id.
    pub library: String,
    /// Where it was found when the run started (`built-in` for the host's own).
    pub source: String,
    /// The SDK version it was built against.
    pub sdk: String,
    /// The plugins it provides.
    pub plugins: Vec<String>,
    /// Its sha256 when the run started (none for a built-in).
    pub sha256: Option<Sha256>,
    /// Each build the run went on with since, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<LibraryChange>,
}

/// A resume that went on with another build of a library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LibraryChange {
    /// Where the new build was found.
    pub source: String,
    /// Its sha256 (none for a built-in).
    pub sha256: Option<Sha256>,
    /// When the resume started, in seconds since the Unix epoch.
    pub unix_time: u64,
    /// The stage the run went on from.
    pub stage: String,
    /// The optimizer step in that stage the run went on from.
    pub step: u64,
}

/// Where a resumed run goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    /// The stage.
    pub stage: String,
    /// The step in it.
    pub step: u64,
}

impl LibraryRecord {
    /// The record of a library loaded now.
    fn of(lib: &Library) -> Result<LibraryRecord> {
        Ok(LibraryRecord {
            library: lib.id.clone(),
            source: lib.source.to_string(),
            sdk: lib.sdk.to_string(),
            plugins: lib.plugins.iter().map(|p| p.name.to_string()).collect(),
            sha256: sha256(lib)?,
            changes: Vec::new(),
        })
    }

    /// The build the run went on with last: its source and sha256.
    fn latest(&self) -> (&str, Option<&Sha256>) {
        match self.changes.last() {
            Some(c) => (&c.source, c.sha256.as_ref()),
            None => (&self.source, self.sha256.as_ref()),
        }
    }
}

/// The sha256 of a library's file (none for a built-in).
fn sha256(lib: &Library) -> Result<Option<Sha256>> {
    match &lib.source {
        Source::File { path } => Sha256::of_file(path).map(Some),
        Source::Builtin => Ok(None),
    }
}

/// What `plugins.json` records for the libraries loaded so far.
pub(crate) fn record(registry: &Registry) -> Result<serde_json::Value> {
    let records = registry.libraries().map(LibraryRecord::of).collect::<Result<Vec<_>>>()?;
    serde_json::to_value(records).map_err(|e| Error::msg(format!("cannot record the plugin libraries: {e}")))
}

/// Checks the libraries a resumed run loaded against `plugins.json` (a run without one
/// is not checked): says where each library file was found, refuses a changed build
/// unless `changes` allows it, and then records the change.
///
/// What is compared is the build that provides each plugin the pipeline uses: when the
/// run started, a recorded library file's over a built-in of the same name (files
/// replace built-ins); now, the registry's.
pub(crate) fn check_on_resume(
    run: &RunDir,
    registry: &Registry,
    changes: PluginChanges,
    at: &ResumePoint,
) -> Result<()> {
    let path = run.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let mut records: Vec<LibraryRecord> =
        serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a plugin record: {e}")))?;
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut refused = Vec::new();
    let mut changed = false;
    for (i, lib) in pairs(&records, registry) {
        let r = &mut records[i];
        let (then_source, then_sha) = r.latest();
        let now_source = lib.source.to_string();
        let now_sha = sha256(lib)?;
        if then_source != now_source {
            tracing::info!("plugin library `{}`: the run found it at {then_source}, now at {now_source}", r.library);
        } else if lib.source != Source::Builtin {
            tracing::info!("plugin library `{}`: at {now_source}, where the run found it", r.library);
        }
        if then_sha == now_sha.as_ref() {
            continue;
        }
        let what = format!(
            "plugin library `{}` at {now_source} has sha256 {}, but the run recorded {} (at {then_source})",
            lib.id,
            hash(now_sha.as_ref()),
            hash(then_sha)
        );
        match changes {
            PluginChanges::Refuse => refused.push(what),
            PluginChanges::Allow => {
                tracing::warn!("{what}: going on with it (--allow-plugin-change), recorded in {FILE}");
                let (stage, step) = (at.stage.clone(), at.step);
                r.changes.push(LibraryChange { source: now_source, sha256: now_sha, unix_time, stage, step });
                changed = true;
            }
        }
    }
    if !refused.is_empty() {
        return Err(Error::file(
            &path,
            format!(
                "{}: resuming would not continue the same run (`run --resume DIR --allow-plugin-change` goes on with the new build and records both)",
                refused.join("; ")
            ),
        ));
    }
    if !changed {
        return Ok(());
    }
    let value =
        serde_json::to_value(&records).map_err(|e| Error::file(&path, format!("cannot record the change: {e}")))?;
    run.write_json(FILE, &value)
}

/// Refuses plugin builds other than those another run recorded (`recorded`, its
/// `plugins.json`) for every plugin both use: what a run that takes stages from
/// another ([`super::branch`]) checks.
pub(crate) fn check_same_builds(recorded: &serde_json::Value, registry: &Registry) -> Result<()> {
    let records: Vec<LibraryRecord> = serde_json::from_value(recorded.clone())
        .map_err(|e| Error::msg(format!("its {FILE} is not a plugin record: {e}")))?;
    for (i, lib) in pairs(&records, registry) {
        let (then_source, then_sha) = records[i].latest();
        let now_sha = sha256(lib)?;
        if then_sha != now_sha.as_ref() {
            return Err(Error::msg(format!(
                "plugin library `{}` at {} has sha256 {}, but the run trained with {} (at {then_source})",
                lib.id,
                lib.source,
                hash(now_sha.as_ref()),
                hash(then_sha)
            )));
        }
    }
    Ok(())
}

/// Each recorded library that provided a plugin the resumed pipeline uses, with the
/// library that provides it now (loaded: the pipeline uses it), once per pair.
fn pairs<'a>(records: &[LibraryRecord], registry: &'a Registry) -> Vec<(usize, &'a Library)> {
    let is_file = |r: &LibraryRecord| r.sha256.is_some();
    let mut then: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        for name in &r.plugins {
            match then.get(name.as_str()) {
                Some(&j) if is_file(&records[j]) || !is_file(r) => {}
                _ => {
                    then.insert(name, i);
                }
            }
        }
    }
    let mut out: Vec<(usize, &Library)> = Vec::new();
    for (name, _, source) in registry.plugins() {
        let Some(&i) = then.get(name) else { continue };
        let provides = |l: &&Library| l.source == *source && l.plugins.iter().any(|p| p.name.as_str() == name);
        let Some(lib) = registry.libraries().find(provides) else { continue };
        if !out.iter().any(|(j, l)| *j == i && std::ptr::eq(*l, lib)) {
            out.push((i, lib));
        }
    }
    out
}

/// A sha256, or what stands for none.
fn hash(h: Option<&Sha256>) -> String {
    h.map_or_else(|| "none (built in)".to_string(), Sha256::to_string)
}
