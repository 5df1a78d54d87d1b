//! `stagecraft eval`: a run's stage scores its eval set as the pipeline did, a model
//! directory with a PEFT adapter scores as the merged model, bad inputs are one line,
//! and a `max_steps = 0` stage only evaluates and hands on its start model.

mod support;

use candle_core::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{fixture, scratch};

/// Runs `stagecraft` in `cwd`: (success, stdout, stderr).
fn stagecraft(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagecraft"))
        .args(args)
        .current_dir(cwd)
        .env_remove("STAGECRAFT_PLUGIN_PATH")
        .output()
        .expect("run stagecraft");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
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
max_steps = 4
batch_size = 4
seq_len = 32
optimizer = { name = "adamw", lr = 1e-3 }
data = { train = "synthetic:add?n=32&seed=1", eval = "synthetic:add?n=12&seed=2" }

[[stages]]
name = "ft"
objective = "completion"
max_steps = 3
batch_size = 3
seq_len = 32
optimizer = { name = "adamw", lr = 1e-2 }
adapters = [{ plugin = "lora", targets = ["role:attn_q", "role:attn_v"], r = 2 }]
data = { train = "synthetic:add?n=32&seed=3", eval = "synthetic:add?n=10&seed=4" }
"#;

/// Runs `config` in a fresh directory: (that directory, the run directory).
fn run_pipeline(name: &str, config: &str) -> (PathBuf, PathBuf, String) {
    let cwd = scratch(name);
    std::fs::write(cwd.join("p.toml"), config).expect("write config");
    let (ok, out, err) = stagecraft(&cwd, &["run", "p.toml"]);
    assert!(ok, "{err}");
    let runs = cwd.join("runs/demo");
    let run = std::fs::read_dir(&runs).expect("runs").next().expect("a run").expect("entry").path();
    (cwd, run, out)
}

/// The last evaluation of `set` in `stage` that metrics.jsonl records.
fn last_eval(run: &Path, stage: &str, set: &str) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .rev()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .find(|r| r["split"] == "eval" && r["stage"] == stage && r["set"] == set)
        .and_then(|r| r["metrics"].as_object().cloned())
        .unwrap_or_else(|| panic!("no eval of `{set}` in stage `{stage}`"))
}

/// `eval --json` in `cwd`: the report.
fn eval_json(cwd: &Path, args: &[&str]) -> Value {
    let mut all = vec!["eval", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = stagecraft(cwd, &all);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn eval_of_a_run_stage_reproduces_the_pipeline_s_last_evaluation() {
    let (cwd, run, _) = run_pipeline("eval-run", PIPELINE);
    let run_s = run.to_string_lossy().to_string();
    for (spec, stage) in [(format!("{run_s}:pre"), "pre"), (run_s.clone(), "ft")] {
        let out = cwd.join(format!("{stage}.json"));
        let report = eval_json(&cwd, &["--model", &spec, "--out", out.to_str().expect("utf-8")]);
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("--out")).expect("json");
        assert_eq!(written, report, "--out holds what --json prints");
        let want = last_eval(&run, stage, stage);
        let got = report["metrics"].as_object().expect("metrics");
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the same metrics");
        for (name, w) in &want {
            let (w, g) = (w.as_f64().expect("number"), got[name].as_f64().expect("number"));
            // Measured: identical to the last bit on the CPU; allow float noise only.
            assert!((w - g).abs() <= 1e-6 * w.abs().max(1.0), "stage `{stage}` {name}: pipeline {w}, eval {g}");
        }
        for q in ["loss_p50", "loss_p90", "loss_p99"] {
            assert!(got.contains_key(q), "{q} reported");
        }
    }
    // The table on stdout, with the stage's objective.
    let (ok, out, err) = stagecraft(&cwd, &["eval", "--model", &format!("{run_s}:ft")]);
    assert!(ok, "{err}");
    assert!(out.contains("objective  completion") && out.contains("exact_match") && out.contains("loss_p99"), "{out}");
}

#[test]
fn eval_of_a_model_directory_with_a_peft_adapter_matches_the_merged_model() {
    let cwd = scratch("eval-peft");
    let (base, lora) = (fixture("llama-tiny", "base"), fixture("llama-tiny", "lora"));
    let (base_s, lora_s) = (base.to_str().expect("utf-8"), lora.to_str().expect("utf-8"));
    let data = ["--data", "synthetic:add?n=16&seed=3"];
    let plain = eval_json(&cwd, &[&["--model", base_s][..], &data[..]].concat());
    let adapted = eval_json(&cwd, &[&["--model", base_s, "--adapter", lora_s][..], &data[..]].concat());
    let (ok, _, err) = stagecraft(&cwd, &["merge", "--model", base_s, "--adapter", lora_s, "--out", "merged"]);
    assert!(ok, "{err}");
    let merged = eval_json(&cwd, &[&["--model", "merged"][..], &data[..]].concat());
    let loss = |r: &Value| r["metrics"]["loss"].as_f64().expect("loss");
    assert_eq!(adapted["objective"], "causal_lm", "text data is scored as a causal LM");
    assert!((loss(&plain) - loss(&adapted)).abs() > 1e-4, "the adapter changes the loss");
    assert!((loss(&adapted) - loss(&merged)).abs() < 1e-4, "adapter {} vs merged {}", loss(&adapted), loss(&merged));
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let (cwd, run, _) = run_pipeline("eval-bad", PIPELINE);
    let run_s = run.to_string_lossy().to_string();
    std::fs::write(cwd.join("bad.jsonl"), "{\"text\": \"ok\"}\nnot json\n").expect("write");
    let base = fixture("llama-tiny", "base").to_string_lossy().to_string();
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec!["--model".into(), "no/such/dir".into(), "--data".into(), "synthetic:add?n=4".into()],
            "no such directory",
        ),
        (vec!["--model".into(), format!("{run_s}:nope")], "the run has no stage `nope` (stages: pre, ft)"),
        (vec!["--model".into(), base.clone(), "--data".into(), "bad.jsonl".into()], "bad.jsonl:2"),
        (vec!["--model".into(), base.clone(), "--data".into(), "missing.txt".into()], "missing.txt"),
        (
            vec![
                "--model".into(),
                base,
                "--data".into(),
                "synthetic:add?n=4".into(),
                "--objective".into(),
                "classification".into(),
            ],
            "objective `classification` cannot score",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["eval"];
        all.extend(args.iter().map(String::as_str));
        let (ok, _, err) = stagecraft(&cwd, &all);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line:\n{err}");
        assert!(err.contains(want), "{args:?}: expected `{want}` in:\n{err}");
    }
}

#[test]
fn a_max_steps_0_stage_evaluates_and_hands_off_unchanged_weights() {
    let config = format!(
        "{}\n{}",
        PIPELINE.split("[[stages]]\nname = \"ft\"").next().expect("first stage"),
        r#"[[stages]]
name = "probe"
objective = "completion"
max_steps = 0
batch_size = 3
seq_len = 32
optimizer = { name = "adamw", lr = 1e-3 }
data = { train = "synthetic:add?n=32&seed=3", eval = "synthetic:add?n=10&seed=4" }
"#
    );
    let (_, run, out) = run_pipeline("eval-zero", &config);
    assert!(out.contains("stage probe: evaluated only (max_steps = 0)"), "{out}");
    let probe = last_eval(&run, "probe", "probe");
    assert!(probe.contains_key("exact_match") && probe.contains_key("loss_p90"), "{probe:?}");
    let pre_seen_by_probe = last_eval(&run, "probe", "pre");
    assert_eq!(pre_seen_by_probe["loss"], last_eval(&run, "pre", "pre")["loss"], "same model, same loss");
    let load = |stage: &str| stagecraft_core::checkpoint::load(&run.join("checkpoints").join(stage), &Device::Cpu);
    let (pre, probe) = (load("pre").expect("pre"), load("probe").expect("probe"));
    let weights: Vec<&String> = pre.tensors.keys().filter(|k| k.starts_with("model.")).collect();
    assert!(!weights.is_empty());
    for name in weights {
        let (a, b) = (&pre.tensors[name], &probe.tensors[name]);
        let diff = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>()).expect("diff");
        assert_eq!(diff, 0.0, "{name} changed in the max_steps = 0 stage");
    }
}
