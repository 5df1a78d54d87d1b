//! Models named `org/name[@revision]` resolve offline through the local Hugging Face
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`), in every command and in a pipeline's
//! `from`; a local directory wins; what cannot be found is one line saying where it
//! looked; an I/O error's message is not doubled.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{fixture, scratch};

const REV_MAIN: &str = "1111111111111111111111111111111111111111";
const REV_ONE_LAYER: &str = "2222222222222222222222222222222222222222";

/// Runs `stagecraft` in `cwd` with `env` (every HF variable not in it removed).
fn stagecraft(cwd: &Path, env: &[(&str, &Path)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    cmd.args(args).current_dir(cwd).env_remove("HF_HUB_CACHE").env_remove("HF_HOME").env("HOME", cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run stagecraft");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A blob under `repo/blobs`, and a relative symlink to it in the snapshot, as
/// huggingface_hub lays them out.
fn add_file(repo: &Path, rev: &str, name: &str, bytes: &[u8], blob: &str) {
    std::fs::create_dir_all(repo.join("blobs")).expect("mkdir blobs");
    std::fs::write(repo.join("blobs").join(blob), bytes).expect("write blob");
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).expect("mkdir snapshot");
    std::os::unix::fs::symlink(Path::new("../../blobs").join(blob), snap.join(name)).expect("symlink");
}

/// A hub cache under `hub` holding `acme/tiny`: `main` is the tiny llama fixture, ref
/// `v1` a one-layer variant of it (same weights file, fewer layers in config.json).
fn fake_cache(hub: &Path) -> PathBuf {
    let repo = hub.join("models--acme--tiny");
    let base = fixture("llama-tiny", "base");
    let config = std::fs::read(base.join("config.json")).expect("config");
    let weights = std::fs::read(base.join("model.safetensors")).expect("weights");
    add_file(&repo, REV_MAIN, "config.json", &config, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    add_file(
        &repo,
        REV_MAIN,
        "model.safetensors",
        &weights,
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    );
    let mut one: serde_json::Value = serde_json::from_slice(&config).expect("json");
    one["num_hidden_layers"] = 1.into();
    add_file(
        &repo,
        REV_ONE_LAYER,
        "config.json",
        one.to_string().as_bytes(),
        "cccccccccccccccccccccccccccccccccccccccc",
    );
    std::os::unix::fs::symlink(
        "../../blobs/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        repo.join("snapshots").join(REV_ONE_LAYER).join("model.safetensors"),
    )
    .expect("symlink");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir refs");
    std::fs::write(repo.join("refs/main"), REV_MAIN).expect("refs/main");
    std::fs::write(repo.join("refs/v1"), format!("{REV_ONE_LAYER}\n")).expect("refs/v1");
    repo
}

/// Sites `model sites` lists for `model` (rows after the header).
fn sites(cwd: &Path, env: &[(&str, &Path)], model: &str) -> usize {
    let (ok, out, err) = stagecraft(cwd, env, &["model", "sites", "--model", model]);
    assert!(ok, "{model}: {err}");
    out.lines().count() - 1
}

#[test]
fn models_resolve_through_hf_hub_cache_and_hf_home_with_revisions() {
    let cwd = scratch("hub-resolve");
    let hub = cwd.join("cache/hub");
    fake_cache(&hub);
    let by_cache = [("HF_HUB_CACHE", hub.as_path())];
    let local = sites(&cwd, &[], fixture("llama-tiny", "base").to_str().expect("utf-8"));
    assert_eq!(sites(&cwd, &by_cache, "acme/tiny"), local, "refs/main is the fixture");
    let home = cwd.join("cache");
    assert_eq!(sites(&cwd, &[("HF_HOME", home.as_path())], "acme/tiny"), local, "$HF_HOME/hub");
    let one_layer = sites(&cwd, &by_cache, "acme/tiny@v1");
    assert!(one_layer < local, "a ref pins the one-layer revision: {one_layer} vs {local}");
    assert_eq!(sites(&cwd, &by_cache, &format!("acme/tiny@{REV_ONE_LAYER}")), one_layer, "a commit hash too");

    // A local directory of that name wins over the cache.
    std::fs::create_dir_all(cwd.join("acme/tiny")).expect("mkdir");
    let one = hub.join("models--acme--tiny/snapshots").join(REV_ONE_LAYER);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(one.join(f), cwd.join("acme/tiny").join(f)).expect("copy");
    }
    assert_eq!(sites(&cwd, &by_cache, "acme/tiny"), one_layer, "the local directory is used");
}

#[test]
fn eval_and_pipelines_load_cached_models_and_say_from_where() {
    let cwd = scratch("hub-pipeline");
    let hub = cwd.join("hub");
    fake_cache(&hub);
    let env = [("HF_HUB_CACHE", hub.as_path())];
    let (ok, out, err) =
        stagecraft(&cwd, &env, &["eval", "--model", "acme/tiny", "--data", "synthetic:add?n=4&seed=1"]);
    assert!(ok, "{err}");
    assert!(out.contains("loss") && err.contains("from the Hugging Face cache"), "{out}\n{err}");
    let config = r#"
[run]
name = "cached"
out_dir = "runs"

[model]
from = "acme/tiny"

[[stages]]
name = "ft"
objective = "causal_lm"
max_steps = 1
batch_size = 2
seq_len = 16
optimizer = { name = "adamw", lr = 1e-3 }
data = { train = "synthetic:add?n=4&seed=1" }
"#;
    std::fs::write(cwd.join("p.toml"), config).expect("write");
    let (ok, out, err) = stagecraft(&cwd, &env, &["run", "p.toml", "--check"]);
    assert!(ok, "{out}\n{err}");
    let snapshot = hub.join("models--acme--tiny/snapshots").join(REV_MAIN);
    assert!(err.contains(&format!("model `acme/tiny`: from the Hugging Face cache, {}", snapshot.display())), "{err}");
}

#[test]
fn a_model_in_neither_place_is_one_line_saying_where_it_looked() {
    let cwd = scratch("hub-missing");
    let hub = cwd.join("hub");
    fake_cache(&hub);
    let env = [("HF_HUB_CACHE", hub.as_path())];
    let (ok, _, err) = stagecraft(&cwd, &env, &["model", "sites", "--model", "acme/missing"]);
    assert!(!ok);
    let want = format!(
        "error: model `acme/missing`: not a directory and not in the Hugging Face cache (looked in {})",
        hub.join("models--acme--missing").display()
    );
    assert_eq!(err.trim(), want);
    let (ok, _, err) = stagecraft(&cwd, &env, &["generate", "--model", "acme/tiny@v9", "--prompt", "1+1="]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("revision `v9` is not in the Hugging Face cache") && err.contains("refs/v9"), "{err}");
    // Without HF variables: ~/.cache/huggingface/hub.
    let (_, _, err) = stagecraft(&cwd, &[], &["eval", "--model", "acme/tiny", "--data", "synthetic:add?n=2"]);
    assert!(err.contains(&cwd.join(".cache/huggingface/hub/models--acme--tiny").display().to_string()), "{err}");
}

#[test]
fn an_io_error_names_the_file_and_the_os_error_once() {
    let cwd = scratch("hub-io");
    std::fs::create_dir_all(cwd.join("empty")).expect("mkdir");
    let (ok, _, err) = stagecraft(&cwd, &[], &["model", "sites", "--model", "empty"]);
    assert!(!ok);
    assert_eq!(err.trim(), "error: empty/config.json: No such file or directory (os error 2)");
}
