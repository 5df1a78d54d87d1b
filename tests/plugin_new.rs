//! `stagecraft plugin new`: each kind's crate builds against the SDK by path without
//! edits, its unit tests pass, `plugin inspect` accepts the library and the pipeline
//! it comes with trains with it; `examples/plugin-quickstart` is exactly what the
//! command writes, and builds and trains in place; a folder in use is refused.
//!
//! The generated crates build with cargo, offline (the SDK's dependencies are those
//! of the workspace, already downloaded), into one target folder they share.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{checkpoint_tensors, max_abs, metrics, root, scratch};

/// What a command gave: exit status, stdout, stderr.
struct Output {
    status: std::process::ExitStatus,
    out: String,
    err: String,
}

fn output(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Output { status: o.status, out: text(o.stdout), err: text(o.stderr) }
}

/// Runs `stagecraft` in `cwd`, with `STAGECRAFT_PLUGIN_PATH` set to `plugin_path` (or unset).
fn stagecraft(cwd: &Path, args: &[&str], plugin_path: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    cmd.args(args).current_dir(cwd).env_remove("STAGECRAFT_PLUGIN_PATH");
    if let Some(p) = plugin_path {
        cmd.env("STAGECRAFT_PLUGIN_PATH", p);
    }
    output(&mut cmd)
}

/// The target folder the generated crates share.
fn target_dir() -> PathBuf {
    root().join("target/plugin-new")
}

/// Runs `cargo <args>` in the crate at `dir`, offline, into the shared target folder.
fn cargo(dir: &Path, args: &[&str]) {
    let o = output(
        Command::new(env!("CARGO"))
            .args(args)
            .arg("--offline")
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", target_dir())
            .env_remove("RUSTFLAGS"),
    );
    assert!(o.status.success(), "cargo {} in {} failed:\n{}", args.join(" "), dir.display(), o.err);
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Writes the crate `name` of `kind` into `dir` with `plugin new`, against `sdk`.
fn plugin_new(cwd: &Path, name: &str, kind: &str, dir: &Path, sdk: &str) -> Output {
    let o = stagecraft(cwd, &["plugin", "new", name, "--kind", kind, "--dir", utf8(dir), "--sdk", sdk], None);
    assert!(o.status.success(), "plugin new {name} --kind {kind}: {}", o.err);
    o
}

/// Tests and builds the crate at `dir`, checks that `plugin inspect` accepts its library
/// and shows the plugin `name` of `kind`, and runs its pipeline with only that library
/// on the search path; returns the run directory.
fn build_inspect_and_train(dir: &Path, lib_name: &str, kind: &str) -> PathBuf {
    cargo(dir, &["test", "--release"]);
    cargo(dir, &["build", "--release"]);
    let plugins = scratch(&format!("plugin-new-{lib_name}-lib"));
    let lib = plugins.join(format!("lib{lib_name}.so"));
    std::fs::copy(target_dir().join("release").join(format!("lib{lib_name}.so")), &lib).expect("copy library");

    let o = stagecraft(dir, &["plugin", "inspect", utf8(&lib)], None);
    assert!(o.status.success(), "plugin inspect: {}", o.err);
    assert!(o.out.contains(&format!("\n{kind} {lib_name} 0.1.0\n")), "{}", o.out);
    assert!(o.out.contains(&format!(
        "sdk       {} (host {})",
        stagecraft_sdk::SDK_VERSION,
        stagecraft_sdk::SDK_VERSION
    )));

    let run = scratch(&format!("plugin-new-{lib_name}-run")).join("run");
    let o = stagecraft(dir, &["run", "pipeline.toml", "--quiet", "--run-dir", utf8(&run)], Some(&plugins));
    assert!(o.status.success(), "run pipeline.toml: {}", o.err);
    run
}

/// The training losses of a stage, in step order.
fn train_losses(run: &Path, stage: &str) -> Vec<f64> {
    metrics(run).into_iter().filter(|r| r.stage == stage).filter_map(|r| r.loss).collect()
}

/// Asserts the stage ran `steps` steps and its training loss fell.
fn assert_learned(run: &Path, stage: &str, steps: usize) {
    let losses = train_losses(run, stage);
    assert_eq!(losses.len(), steps, "{stage}: {losses:?}");
    let (first, last) = (losses[0], losses[steps - 1]);
    assert!(last < first, "{stage}: loss went from {first} to {last}");
}

/// Asserts the adapter's `<site>.up` factors (zeros at the start) were trained.
fn assert_adapter_trained(run: &Path, stage: &str) {
    let tensors = checkpoint_tensors(run, stage);
    let up: Vec<_> = tensors.iter().filter(|(k, _)| k.ends_with(".up")).collect();
    assert!(!up.is_empty(), "no `.up` factor in the {stage} checkpoint: {:?}", tensors.keys());
    for (k, t) in up {
        assert!(max_abs(t) > 0.0, "{k} is still zero");
    }
}

fn sdk_path() -> String {
    utf8(&root().join("adapters-sdk")).to_string()
}

#[test]
fn a_new_method_plugin_builds_inspects_and_trains() {
    let cwd = scratch("plugin-new-method");
    plugin_new(&cwd, "scaffold-method", "method", &cwd.join("scaffold-method"), &sdk_path());
    let run = build_inspect_and_train(&cwd.join("scaffold-method"), "scaffold_method", "method");
    assert_learned(&run, "adapt", 20);
    assert_adapter_trained(&run, "adapt");
}

#[test]
fn a_new_optimizer_plugin_builds_inspects_and_trains() {
    let cwd = scratch("plugin-new-optimizer");
    plugin_new(&cwd, "scaffold-optimizer", "optimizer", &cwd.join("scaffold-optimizer"), &sdk_path());
    let run = build_inspect_and_train(&cwd.join("scaffold-optimizer"), "scaffold_optimizer", "optimizer");
    assert_learned(&run, "pretrain", 30);
}

#[test]
fn a_new_objective_plugin_builds_inspects_and_trains() {
    let cwd = scratch("plugin-new-objective");
    plugin_new(&cwd, "scaffold-objective", "objective", &cwd.join("scaffold-objective"), &sdk_path());
    let run = build_inspect_and_train(&cwd.join("scaffold-objective"), "scaffold_objective", "stage");
    assert_learned(&run, "pretrain", 30);
}

/// The files under `dir`, relative, sorted; build outputs (`target`, `Cargo.lock`,
/// `runs`) left out.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("under base").to_path_buf();
            if ["target", "Cargo.lock", "runs"].iter().any(|skip| rel == Path::new(skip)) {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The example's folder and the command that writes it.
const EXAMPLE: &str = "examples/plugin-quickstart";
const REGENERATE: &str = "rm -r examples/plugin-quickstart && target/release/stagecraft plugin new quickstart --kind method --dir examples/plugin-quickstart --sdk ../../adapters-sdk";

#[test]
fn the_quickstart_example_is_what_plugin_new_writes() {
    let cwd = scratch("plugin-new-example");
    let fresh = cwd.join("plugin-quickstart");
    let o = plugin_new(&cwd, "quickstart", "method", &fresh, "../../adapters-sdk");
    // From the scratch folder the relative SDK path leads nowhere: a warning says so.
    assert!(o.err.contains("warning: --sdk ../../adapters-sdk: no Cargo.toml at"), "{}", o.err);

    let example = root().join(EXAMPLE);
    assert_eq!(
        files(&fresh),
        files(&example),
        "{EXAMPLE} has other files than `plugin new` writes; regenerate it: {REGENERATE}"
    );
    for f in files(&fresh) {
        let want = std::fs::read_to_string(fresh.join(&f)).expect("generated file");
        let have = std::fs::read_to_string(example.join(&f)).expect("example file");
        assert!(
            have == want,
            "{EXAMPLE}/{} differs from what `plugin new` writes; regenerate it: {REGENERATE}",
            f.display()
        );
    }
}

#[test]
fn the_quickstart_example_builds_against_the_sdk_by_path_and_trains() {
    let run = build_inspect_and_train(&root().join(EXAMPLE), "quickstart", "method");
    assert_learned(&run, "adapt", 20);
    assert_adapter_trained(&run, "adapt");
}

#[test]
fn plugin_new_refuses_a_folder_in_use_and_bad_names_in_one_line() {
    let cwd = scratch("plugin-new-refusals");
    let taken = cwd.join("taken");
    std::fs::create_dir_all(&taken).expect("mkdir");
    std::fs::write(taken.join("notes.txt"), "mine").expect("write");

    let o = stagecraft(&cwd, &["plugin", "new", "taken", "--kind", "method"], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert_eq!(o.err.trim(), "error: taken is not empty: choose another --dir, or remove it first");
    assert_eq!(std::fs::read_to_string(taken.join("notes.txt")).expect("read"), "mine", "nothing overwritten");

    let o = stagecraft(&cwd, &["plugin", "new", "x", "--kind", "optimizer", "--dir", "taken/notes.txt"], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert_eq!(o.err.trim(), "error: taken/notes.txt exists and is not a folder: choose another --dir");

    let o = stagecraft(&cwd, &["plugin", "new", "My.Plugin", "--kind", "objective"], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert_eq!(
        o.err.trim(),
        "error: plugin name `My.Plugin`: use lowercase letters, digits, `-` and `_`, starting with a letter"
    );
    assert!(!cwd.join("My.Plugin").exists());

    // An empty folder is fine, and without --sdk the crate depends on the project's repository.
    std::fs::create_dir_all(cwd.join("empty")).expect("mkdir");
    let o = stagecraft(&cwd, &["plugin", "new", "fresh", "--kind", "objective", "--dir", "empty"], None);
    assert!(o.status.success(), "{}", o.err);
    let repository = "https://github.com/stagecraft-ml/stagecraft";
    assert!(o.out.contains(&format!("stagecraft-sdk: git {repository} (the project's repository")), "{}", o.out);
    let manifest = std::fs::read_to_string(cwd.join("empty/Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains(&format!("stagecraft-sdk = {{ git = \"{repository}\" }}")), "{manifest}");
}
