//! Shared helpers for the workspace integration tests: where the plugin libraries are,
//! and building the compatibility test plugins (tests/compat) once per test binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use stagecraft_core::plugin::HostState;

/// The workspace root: `STAGECRAFT_ROOT` when set (test binaries carried to another
/// machine, as the GPU check does), else where the tests were built.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STAGECRAFT_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
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

/// The compat test plugins, built once: `(old, old_mismatch, next, faulty, not_a_plugin)`.
pub struct Compat {
    /// Built against the frozen SDK 1.0 prefix.
    pub old: PathBuf,
    /// Same, with an incompatible layout.
    pub old_mismatch: PathBuf,
    /// Built against SDK 1.1 (one more op).
    pub next: PathBuf,
    /// Misbehaving methods, against the live SDK.
    pub faulty: PathBuf,
    /// A shared library that is not a plugin.
    pub not_a_plugin: PathBuf,
}

fn cargo_build(crate_dir: &str, features: &[&str], target: &Path) {
    let dir = root().join("tests/compat").join(crate_dir);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--target-dir"]).arg(target).current_dir(&dir);
    // The frozen-SDK plugins build exactly as pinned; the faulty one follows the live SDK.
    if crate_dir != "plugin-faulty" {
        cmd.arg("--locked");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("run cargo");
    assert!(out.status.success(), "building {crate_dir} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Builds the compat plugins (once per process) into `target/compat`.
pub fn compat() -> &'static Compat {
    static C: OnceLock<Compat> = OnceLock::new();
    C.get_or_init(|| {
        let target = root().join("target/compat");
        let out = target.join("release");
        let keep = target.join("libs");
        std::fs::create_dir_all(&keep).expect("mkdir");
        let copy = |from: &str, to: &str| {
            std::fs::copy(out.join(from), keep.join(to)).expect("copy built plugin");
            keep.join(to)
        };
        cargo_build("plugin-old", &["mismatch"], &target);
        let old_mismatch = copy("libcompat_plugin_old.so", "libcompat_old_mismatch.so");
        cargo_build("plugin-old", &[], &target);
        let old = copy("libcompat_plugin_old.so", "libcompat_old.so");
        cargo_build("plugin-next", &[], &target);
        let next = copy("libcompat_plugin_next.so", "libcompat_next.so");
        cargo_build("plugin-faulty", &[], &target);
        let faulty = copy("libcompat_plugin_faulty.so", "libcompat_faulty.so");
        cargo_build("not-a-plugin", &[], &target);
        let not_a_plugin = copy("libcompat_not_a_plugin.so", "libcompat_not_a_plugin.so");
        Compat { old, old_mismatch, next, faulty, not_a_plugin }
    })
}

/// A fresh host state on the CPU (f32, seed 0).
pub fn state() -> Rc<HostState> {
    Rc::new(HostState::new(Device::Cpu, DType::F32, 0))
}

/// A scratch directory for reports.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir scratch");
    d
}
