//! `stagecraft drift`: a deliberately shifted data set exits 4 with the shifted tests
//! flagged, another sample of the same data exits 0; labels get the chi-square test,
//! a model the hidden-state test, and a run directory is a reference (its stage's
//! training data, its tokenizer, its model).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{fixture, scratch};

/// Runs `stagecraft` in `cwd`: (exit code, stdout, stderr).
fn stagecraft(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagecraft"))
        .args(args)
        .current_dir(cwd)
        .env_remove("STAGECRAFT_PLUGIN_PATH")
        .output()
        .expect("run stagecraft");
    let code = out.status.code().expect("exit code");
    (code, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `drift --json` in `cwd`: (exit code, report).
fn drift_json(cwd: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["drift", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = stagecraft(cwd, &all);
    assert!(code == 0 || code == 4, "exit {code}: {err}");
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

/// The result of `test` in a report, if it ran.
fn result<'a>(report: &'a Value, test: &str) -> Option<&'a Value> {
    report["results"].as_array().expect("results").iter().find(|r| r["test"] == test)
}

/// A classification .jsonl: `n` lines with words from `words`, labels cycling over
/// `labels`.
fn labelled(path: &Path, n: usize, words: &[&str], labels: &[&str]) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let text = format!("{} {} {}", words[i % words.len()], words[(i * 7 + 1) % words.len()], i % 13);
            serde_json::json!({ "text": text, "label": labels[i % labels.len()] }).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write jsonl");
}

#[test]
fn another_task_exits_4_and_another_seed_exits_0() {
    let cwd = scratch("drift_specs");
    let (code, out, err) = stagecraft(
        &cwd,
        &["drift", "--reference", "synthetic:add?n=200&seed=1", "--current", "synthetic:reverse?n=200&seed=2"],
    );
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("token_js") && out.contains("DRIFT"), "{out}");
    assert_eq!(err.trim(), "drift found: token_js, length_ks over threshold");
    let (code, out, err) = stagecraft(
        &cwd,
        &["drift", "--reference", "synthetic:add?n=200&seed=1", "--current", "synthetic:add?n=200&seed=2"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("DRIFT") && out.contains("hidden_mmd  skipped"), "{out}");
}

#[test]
fn thresholds_are_flags() {
    let cwd = scratch("drift_thresholds");
    let args = ["--reference", "synthetic:add?n=100&seed=1", "--current", "synthetic:reverse?n=100&seed=2"];
    let (code, report) = drift_json(&cwd, &[&args[..], &["--max-js", "0.95", "--max-ks", "1"]].concat());
    assert_eq!(code, 0, "{report:#}");
    let js = result(&report, "token_js").expect("token_js");
    assert!(js["p_value"].as_f64().expect("p") < 0.01 && js["threshold"] == 0.95, "{js}");
}

#[test]
fn shifted_labels_flag_the_chi_square_test() {
    let cwd = scratch("drift_labels");
    let words = ["good", "fine", "bad", "poor", "great", "awful"];
    labelled(&cwd.join("ref.jsonl"), 150, &words, &["pos", "neg"]);
    labelled(&cwd.join("same.jsonl"), 120, &words, &["neg", "pos"]);
    labelled(&cwd.join("shifted.jsonl"), 150, &words, &["pos", "pos", "pos", "pos", "neg"]);
    let (code, report) = drift_json(&cwd, &["--reference", "ref.jsonl", "--current", "same.jsonl"]);
    assert_eq!(code, 0, "{report:#}");
    let chi2 = result(&report, "label_chi2").expect("label_chi2");
    assert!(chi2["p_value"].as_f64().expect("p") > 0.5, "{chi2}");
    let (code, report) = drift_json(&cwd, &["--reference", "ref.jsonl", "--current", "shifted.jsonl"]);
    assert_eq!(code, 4, "{report:#}");
    let chi2 = result(&report, "label_chi2").expect("label_chi2");
    assert_eq!(chi2["flagged"], true, "{chi2}");
    assert!(!result(&report, "token_js").expect("js")["flagged"].as_bool().expect("flag"), "{report:#}");
}

#[test]
fn a_model_adds_the_hidden_state_test() {
    let cwd = scratch("drift_model");
    let model = fixture("llama-tiny", "base");
    let model = model.to_str().expect("utf-8 path");
    let same = ["--reference", "synthetic:add?n=60&seed=1", "--current", "synthetic:add?n=60&seed=2", "--model", model];
    let (code, report) = drift_json(&cwd, &same);
    assert_eq!(code, 0, "{report:#}");
    let mmd = result(&report, "hidden_mmd").expect("hidden_mmd");
    assert!(mmd["p_value"].as_f64().expect("p") > 0.01, "{mmd}");
    let shifted =
        ["--reference", "synthetic:add?n=60&seed=1", "--current", "synthetic:reverse?n=60&seed=2", "--model", model];
    let (code, report) = drift_json(&cwd, &[&shifted[..], &["--max-embedded", "40"]].concat());
    assert_eq!(code, 4, "{report:#}");
    let mmd = result(&report, "hidden_mmd").expect("hidden_mmd");
    assert_eq!(mmd["flagged"], true, "{mmd}");
}

const PIPELINE: &str = r#"
[run]
name = "demo"
seed = 1
out_dir = "runs"

[model]
arch = "llama"
hidden_size = 32
num_layers = 1
num_heads = 2

[[stages]]
name = "pre"
objective = "causal_lm"
max_steps = 2
batch_size = 4
seq_len = 32
optimizer = { name = "adamw", lr = 1e-3 }
data = { train = "synthetic:reverse?n=32&seed=1" }

[[stages]]
name = "ft"
objective = "completion"
max_steps = 2
batch_size = 4
seq_len = 32
optimizer = { name = "adamw", lr = 1e-3 }
data = { train = "synthetic:add?n=120&seed=3" }
"#;

/// A finished two-stage run in a fresh directory: (that directory, the run directory).
fn run(name: &str) -> (PathBuf, String) {
    let cwd = scratch(name);
    std::fs::write(cwd.join("p.toml"), PIPELINE).expect("write config");
    let (code, _, err) = stagecraft(&cwd, &["run", "p.toml", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let run = std::fs::read_dir(cwd.join("runs/demo")).expect("runs").next().expect("a run").expect("entry").path();
    (cwd, run.to_str().expect("utf-8 path").to_string())
}

#[test]
fn a_run_directory_is_the_reference() {
    let (cwd, run) = run("drift_run");
    // The last stage trained on `add`: new `add` data does not drift, `reverse` does.
    let (code, report) = drift_json(&cwd, &[&run, "--data", "synthetic:add?n=120&seed=9"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["reference"]["name"], "synthetic:add?n=120&seed=3");
    assert!(result(&report, "hidden_mmd").is_some(), "the stage's model runs the MMD test: {report:#}");
    let (code, report) =
        drift_json(&cwd, &[&format!("{run}:pre"), "--data", "synthetic:add?n=120&seed=9", "--no-model"]);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(report["reference"]["name"], "synthetic:reverse?n=32&seed=1");
    assert_eq!(report["skipped"][1]["reason"], "--no-model");
}

/// [`PIPELINE`] with a `drift` check on its second stage (`reverse` then `add` data:
/// drifted).
fn with_drift_check(check: &str) -> String {
    PIPELINE.replace(
        "data = { train = \"synthetic:add?n=120&seed=3\" }",
        &format!("data = {{ train = \"synthetic:add?n=120&seed=3\" }}\ndrift = {check}"),
    )
}

#[test]
fn a_stage_drift_check_warns_or_stops_before_training() {
    let cwd = scratch("drift_stage_check");
    std::fs::write(cwd.join("warn.toml"), with_drift_check("{ against = \"pre\", max_js = 0.2 }")).expect("write");
    std::fs::write(cwd.join("stop.toml"), with_drift_check("{ against = \"pre\", action = \"stop\" }")).expect("write");
    let (code, plan, err) = stagecraft(&cwd, &["run", "warn.toml", "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(plan.contains("   drift (warn on drift): token JS divergence 0.8487 bits against stage `pre`"), "{plan}");
    let (code, _, err) = stagecraft(&cwd, &["run", "stop.toml"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: stage `ft`: its training data drifted: token JS divergence"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = stagecraft(&cwd, &["run", "warn.toml", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("WARN") && err.contains("stage `ft` step 0: token JS divergence"), "{err}");
    let run = std::fs::read_dir(cwd.join("runs/demo"))
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .find(|r| r.join("events.jsonl").is_file() && r.join("checkpoints/ft").is_dir())
        .expect("the finished run");
    let events = std::fs::read_to_string(run.join("events.jsonl")).expect("events.jsonl");
    let first: Value = serde_json::from_str(events.lines().next().expect("an event")).expect("json");
    assert_eq!((first["stage"].as_str(), first["kind"].as_str()), (Some("ft"), Some("drift")), "{events}");
}

#[test]
fn bad_inputs_are_one_line() {
    let cwd = scratch("drift_errors");
    let (code, _, err) = stagecraft(&cwd, &["drift", "--reference", "missing.jsonl", "--current", "synthetic:add?n=4"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.jsonl") && err.trim().lines().count() == 1, "{err}");
    let (code, _, err) = stagecraft(&cwd, &["drift", "--current", "synthetic:add?n=4"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = stagecraft(
        &cwd,
        &["drift", "--reference", "synthetic:add?n=4", "--current", "synthetic:add?n=4", "--alpha", "2"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("alpha") && err.trim().lines().count() == 1, "{err}");
}
