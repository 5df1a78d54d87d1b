//! Shared helpers for the workspace integration tests: where things are (the
//! workspace, fixtures, the plugin libraries), the compatibility test plugins (built
//! once), unique scratch directories, comparing tensors, and running pipelines.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use stagecraft_core::checkpoint;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::pipeline::ResumeRecord;
use stagecraft_core::pipeline::{Pipeline, RunSummary};
use stagecraft_core::plugin::{HostState, Registry};
use stagecraft_core::report::{EventLog, Jsonl, MetricRow, MetricsLog};

// ---- where things are -----------------------------------------------------------

/// The workspace root: `STAGECRAFT_ROOT` when set (test binaries carried to another
/// machine, as the GPU check does), else where the tests were built.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STAGECRAFT_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `tests/fixtures/<model>/<rel>`.
pub fn fixture(model: &str, rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(model).join(rel)
}

/// The tensors of a fixture file (`reference.safetensors`, `methods.safetensors`, ...).
pub fn fixture_tensors(model: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(model, file), &Device::Cpu).unwrap_or_else(|e| panic!("{model}/{file}: {e}"))
}

/// A fixture's `reference.safetensors`.
pub fn reference(model: &str) -> HashMap<String, Tensor> {
    fixture_tensors(model, "reference.safetensors")
}

/// The directory of the running test's profile (`target/release` or `target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// A first-party plugin library (`lora`, `ia3`, `prompt_tuning`, `bottleneck`,
/// `optimizers`, `stages`), built by `cargo build --workspace` next to the test
/// binaries.
pub fn first_party(name: &str) -> PathBuf {
    let file = format!("libstagecraft_{name}.so");
    let dir = profile_dir();
    let path = dir.join(&file);
    if !path.exists() {
        let release = if dir.ends_with("release") { ["--release"].as_slice() } else { [].as_slice() };
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", &format!("stagecraft-{}", name.replace('_', "-"))])
            .args(release)
            .current_dir(root())
            .status()
            .expect("run cargo");
        assert!(status.success(), "building stagecraft-{name} failed");
    }
    assert!(path.exists(), "{} is missing: run `cargo build --release --workspace` first", path.display());
    path
}

// ---- the compatibility plugins --------------------------------------------------

/// The compat test plugins, built once: `(old, old_mismatch, next, faulty, not_a_plugin)`.
pub struct Compat {
    /// Built against the frozen SDK 1.0 prefix.
    pub old: PathBuf,
    /// Same, with an incompatible layout.
    pub old_mismatch: PathBuf,
    /// Built against an SDK one minor version newer than the host's (one more op).
    pub next: PathBuf,
    /// Misbehaving methods, against the live SDK.
    pub faulty: PathBuf,
    /// A shared library that is not a plugin.
    pub not_a_plugin: PathBuf,
    /// Built against an SDK of another major version.
    pub major: PathBuf,
}

/// The newest modification time under `dir` (sources of a compat crate).
fn newest(dir: &Path) -> std::time::SystemTime {
    let mut t = std::time::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let m = if p.is_dir() {
            newest(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH)
        };
        t = t.max(m);
    }
    t
}

/// Builds `crate_dir` (with `features`) unless `keep` is newer than every source it
/// depends on, and copies the built library to `keep`. Test binaries share the copies,
/// so each compat plugin is built once per change, not once per binary.
fn build_compat(crate_dir: &str, features: &[&str], built: &str, keep: &Path, sources: &[&str]) -> PathBuf {
    let compat = root().join("tests/compat");
    let fresh = keep
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .is_some_and(|k| sources.iter().chain([&crate_dir]).all(|s| newest(&compat.join(s)) < k));
    if fresh {
        return keep.to_path_buf();
    }
    let target = root().join("target/compat");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--target-dir"]).arg(&target).current_dir(compat.join(crate_dir));
    // The frozen-SDK plugins build exactly as pinned; the faulty and lifecycle ones
    // follow the live SDK.
    if !matches!(crate_dir, "plugin-faulty" | "plugin-lifecycle") {
        cmd.arg("--locked");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("run cargo");
    assert!(out.status.success(), "building {crate_dir} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(target.join("release").join(built), keep).expect("copy built plugin");
    keep.to_path_buf()
}

/// The compat plugins, built when their sources changed, into `target/compat/libs`.
///
/// The frozen SDK copies and the plugins built against them live in dot-folders
/// (`tests/compat/.sdk-1.0-prefix`, `.sdk-1.5-next`, `.plugin-old`, `.plugin-next`):
/// the copies are packages named `stagecraft-sdk` too, and cargo, looking for that
/// package in a git dependency on this repository, reads every package it finds
/// (following path dependencies) and would pick the highest version, a frozen copy,
/// over the live SDK. It skips hidden folders.
pub fn compat() -> &'static Compat {
    static C: OnceLock<Compat> = OnceLock::new();
    C.get_or_init(|| {
        let keep = root().join("target/compat/libs");
        std::fs::create_dir_all(&keep).expect("mkdir");
        let live = ["../../adapters-sdk/src"];
        Compat {
            old_mismatch: build_compat(
                ".plugin-old",
                &["mismatch"],
                "libcompat_plugin_old.so",
                &keep.join("libcompat_old_mismatch.so"),
                &[".sdk-1.0-prefix"],
            ),
            old: build_compat(
                ".plugin-old",
                &[],
                "libcompat_plugin_old.so",
                &keep.join("libcompat_old.so"),
                &[".sdk-1.0-prefix"],
            ),
            next: build_compat(
                ".plugin-next",
                &[],
                "libcompat_plugin_next.so",
                &keep.join("libcompat_next.so"),
                &[".sdk-1.5-next"],
            ),
            faulty: build_compat(
                "plugin-faulty",
                &[],
                "libcompat_plugin_faulty.so",
                &keep.join("libcompat_faulty.so"),
                &live,
            ),
            not_a_plugin: build_compat(
                "not-a-plugin",
                &[],
                "libcompat_not_a_plugin.so",
                &keep.join("libcompat_not_a_plugin.so"),
                &[],
            ),
            major: build_compat(
                ".plugin-old",
                &["major2"],
                "libcompat_plugin_old.so",
                &keep.join("libcompat_major.so"),
                &[".sdk-1.0-prefix"],
            ),
        }
    })
}

/// The `lifecycle_probe` objective (`tests/compat/plugin-lifecycle`), built when its
/// sources changed.
pub fn lifecycle_probe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let keep = root().join("target/compat/libs");
        std::fs::create_dir_all(&keep).expect("mkdir");
        build_compat(
            "plugin-lifecycle",
            &[],
            "libcompat_plugin_lifecycle.so",
            &keep.join("libcompat_lifecycle.so"),
            &["../../adapters-sdk/src"],
        )
    })
}

// ---- scratch space and host state -----------------------------------------------

/// A fresh, empty directory of this test's own: `target/test-scratch/<name>-<pid>-<n>`.
/// Tests run in parallel; none deletes another's directory.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = root().join("target/test-scratch").join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir scratch");
    d
}

/// A fresh host state on the CPU (f32, seed 0).
pub fn state() -> Rc<HostState> {
    Rc::new(HostState::new(Device::Cpu, DType::F32, 0))
}

/// The built-in plugins, reports into a scratch directory.
pub fn builtins() -> Registry {
    Registry::with_builtins(scratch("reports")).expect("registry")
}

/// An error's message, asserted to be one line.
pub fn one_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s}");
    s
}

// ---- tensors --------------------------------------------------------------------

/// The largest absolute difference of two tensors of the same shape (any device and
/// float dtype).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let f = |t: &Tensor| t.to_device(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32)).expect("to f32 on the cpu");
    (f(a) - f(b))
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max abs diff")
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .and_then(|t| t.abs())
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max abs")
}

/// The bit patterns of a float tensor (as f32), for exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("to f32")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Normal(0, `std`) values from the host's seeded generator.
pub fn random(shape: &[usize], seed: u64, std: f64) -> Tensor {
    let mut r = stagecraft_core::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (r.normal() * std) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

// ---- pipelines ------------------------------------------------------------------

/// A pipeline run to its end in its own scratch directory.
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// How each stage ended, and the retention matrix.
    pub summary: RunSummary,
}

/// Runs a pipeline config to its end; panics with the error otherwise.
pub fn run_pipeline(name: &str, text: &str) -> Run {
    run_pipeline_with(name, text, &[])
}

/// [`run_pipeline`] with plugin libraries loaded besides the built-ins.
pub fn run_pipeline_with(name: &str, text: &str, libs: &[&Path]) -> Run {
    let (dir, result) = try_pipeline(name, text, libs);
    Run { summary: result.unwrap_or_else(|e| panic!("{name}: {e}")), dir }
}

/// Runs a pipeline (the built-ins and `libs` loaded) in its own scratch directory:
/// the run directory, and how the run ended — a summary, or the one-line error.
pub fn try_pipeline(name: &str, text: &str, libs: &[&Path]) -> (PathBuf, Result<RunSummary, String>) {
    let dir = scratch(name);
    let cfg = PipelineConfig::from_str(text, &format!("{name}.toml"), &[]).expect("valid config");
    let mut reg = Registry::with_builtins(dir.join("reports")).expect("registry");
    for lib in libs {
        reg.load_file(lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    }
    let run = dir.join("run");
    let result = Pipeline::new(cfg, reg, &run, true).and_then(|(p, _)| p.run()).map_err(|e| one_line(&e));
    (run, result)
}

/// Resumes a run directory and runs it to its end.
pub fn resume_pipeline(run: &Path) -> RunSummary {
    let reg = Registry::with_builtins(run.join("reports")).expect("registry");
    let (p, _) = Pipeline::resume(run, reg, true).expect("resume");
    p.run().expect("resumed run")
}

/// The tensors of a checkpoint of a run (`checkpoints/<name>`).
pub fn checkpoint_tensors(run: &Path, name: &str) -> BTreeMap<String, Tensor> {
    checkpoint::load(&run.join("checkpoints").join(name), &Device::Cpu)
        .unwrap_or_else(|e| panic!("checkpoint {name}: {e}"))
        .tensors
}

/// A run's metrics rows without the fields that depend on when and how fast the
/// process ran (`time`, `elapsed_s`, `tokens_per_s`, `peak_rss_mib`, `peak_gpu_mib`):
/// what a resumed run must reproduce exactly.
#[allow(dead_code)]
pub fn untimed_metrics(run: &Path) -> Vec<MetricRow> {
    metrics(run).iter().map(MetricRow::without_timing).collect()
}

/// A run's metrics rows.
pub fn metrics(run: &Path) -> Vec<MetricRow> {
    MetricsLog::read(&run.join("metrics.jsonl")).expect("metrics.jsonl")
}

/// A run's events as `(stage, step, kind)`.
pub fn events(run: &Path) -> Vec<(String, u64, String)> {
    EventLog::read(&run.join("events.jsonl"))
        .expect("events.jsonl")
        .into_iter()
        .map(|e| (e.stage, e.step, e.kind.to_string()))
        .collect()
}

/// `(stage, step, checkpoint)` of each resume in `resumes.jsonl` (none: no file).
pub fn resumes(run: &Path) -> Vec<(String, u64, Option<String>)> {
    let path = run.join("resumes.jsonl");
    if !path.exists() {
        return Vec::new();
    }
    Jsonl::read::<ResumeRecord>(&path)
        .expect("resumes.jsonl")
        .into_iter()
        .map(|r| (r.stage, r.step, r.checkpoint))
        .collect()
}

/// The bit patterns of every tensor of a checkpoint, for exact comparisons.
pub fn checkpoint_bits(run: &Path, name: &str) -> BTreeMap<String, Vec<u32>> {
    checkpoint_tensors(run, name).iter().map(|(k, t)| (k.clone(), bits(t))).collect()
}

/// The entries of `t` whose names start with `prefix` (`model.`, `adapter.0.`, ...).
pub fn with_prefix<'a, V>(t: &'a BTreeMap<String, V>, prefix: &str) -> BTreeMap<&'a String, &'a V> {
    t.iter().filter(|(k, _)| k.starts_with(prefix)).collect()
}

/// A word-level `tokenizer.json` in `dir` whose token `tN` is id N (0..256), so tests can
/// type token ids as text and read generated ids back.
pub fn word_level_tokenizer(dir: &Path) -> PathBuf {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..256).map(|i| (format!("t{i}"), i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "t0" }
    });
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, tokenizer.to_string()).expect("write tokenizer");
    tok
}
