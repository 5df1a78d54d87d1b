//! `stagecraft run --from RUN_DIR --after STAGE`: a run that takes its first stages
//! from another run. Taken after a run stopped with `--until`, it ends exactly as the
//! uninterrupted run of the whole pipeline does (metrics, events and weights, bit for
//! bit); with a later stage changed it trains that stage from the same start; and what
//! would not continue the same stages (another earlier config, other data, a stage
//! that did not finish) is refused in one line, leaving nothing in the new directory.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{checkpoint_bits, events, scratch, untimed_metrics};

/// Three stages; the first trains on `pretrain.jsonl` in `dir`.
fn pipeline(dir: &Path) -> PathBuf {
    let rows: String =
        (0..48).map(|i| format!("{{\"text\": \"{} + {} = {}\"}}\n", i % 7, i % 5, i % 7 + i % 5)).collect();
    std::fs::write(dir.join("pretrain.jsonl"), rows).expect("write data");
    let text = r#"
[run]
name = "branch"
seed = 5

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "pretrain.jsonl", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }
optimizer = { lr = 3e-3 }
max_steps = 12
batch_size = 8
seq_len = 16

[[stages]]
name = "add"
objective = "completion"
data = { train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2", replay = { from = "pretrain", ratio = 0.25 } }
optimizer = { lr = 3e-3 }
max_steps = 10
eval_every = 5
batch_size = 8
seq_len = 12

[[stages]]
name = "sub"
objective = "completion"
data = { train = "synthetic:sub?n=64&digits=1", eval = "synthetic:sub?n=32&digits=1&seed=3" }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8 }]
optimizer = { lr = 1e-2 }
max_steps = 8
eval_every = 4
batch_size = 8
seq_len = 12
gates = { retention = { stage = "add", max_drop = 1.0 } }
"#;
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    path
}

fn stagecraft(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "warn").args(args).arg("--quiet");
    c.output().expect("stagecraft runs")
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_branch_after_a_stopped_run_ends_as_the_uninterrupted_run_does() {
    let dir = scratch("branch-same");
    let cfg = pipeline(&dir);
    let (whole, first, branch) = (dir.join("whole"), dir.join("first"), dir.join("branch"));
    ok(stagecraft(&["run", s(&cfg), "--run-dir", s(&whole)]));
    ok(stagecraft(&["run", s(&cfg), "--until", "add", "--run-dir", s(&first)]));
    let first_metrics = std::fs::read(first.join("metrics.jsonl")).expect("metrics");
    ok(stagecraft(&["run", s(&cfg), "--from", s(&first), "--after", "add", "--run-dir", s(&branch)]));

    assert_eq!(untimed_metrics(&branch), untimed_metrics(&whole), "metrics.jsonl");
    assert_eq!(events(&branch), events(&whole), "events.jsonl");
    for stage in ["pretrain", "add", "sub"] {
        assert_eq!(checkpoint_bits(&branch, stage), checkpoint_bits(&whole, stage), "checkpoint `{stage}`");
    }
    let origin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(branch.join("branch.json")).expect("branch.json")).expect("json");
    assert_eq!(origin["after"], "add");
    assert!(origin["run"].as_str().is_some_and(|r| r.ends_with("first")), "{origin}");
    // Nothing resumed, and the run it came from is as it was.
    assert_eq!(std::fs::read_to_string(branch.join("resumes.jsonl")).unwrap_or_default(), "");
    assert_eq!(std::fs::read(first.join("metrics.jsonl")).expect("metrics"), first_metrics);
    let config = std::fs::read_to_string(first.join("config.toml")).expect("config");
    assert!(!config.contains("name = \"sub\""), "--until leaves the later stages out of the run's config");
}

#[test]
fn a_branch_trains_a_changed_later_stage_from_the_same_start() {
    let dir = scratch("branch-changed");
    let cfg = pipeline(&dir);
    let (first, a, b) = (dir.join("first"), dir.join("a"), dir.join("b"));
    ok(stagecraft(&["run", s(&cfg), "--until", "add", "--run-dir", s(&first)]));
    let branch = |run: &Path, lr: &str| {
        let set = format!("stages.sub.optimizer.lr={lr}");
        ok(stagecraft(&["run", s(&cfg), "--from", s(&first), "--after", "add", "--set", &set, "--run-dir", s(run)]));
        untimed_metrics(run)
    };
    let (ma, mb) = (branch(&a, "1e-2"), branch(&b, "3e-3"));
    let taken = untimed_metrics(&first).len();
    assert_eq!(ma[..taken], mb[..taken], "both start from the same stages");
    assert_ne!(ma[taken..], mb[taken..], "and train the last one differently");
    assert!(ma[taken..].iter().all(|r| r.stage == "sub"));
}

#[test]
fn what_would_not_continue_the_same_stages_is_refused_in_one_line_leaving_nothing() {
    let dir = scratch("branch-refused");
    let cfg = pipeline(&dir);
    let first = dir.join("first");
    ok(stagecraft(&["run", s(&cfg), "--until", "add", "--run-dir", s(&first)]));
    let refused = |extra: &[&str], wanted: &str| {
        let target = dir.join("refused");
        let mut args = vec!["run", s(&cfg), "--run-dir", s(&target)];
        args.extend_from_slice(extra);
        let out = stagecraft(&args);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success() && err.contains(wanted), "wanted `{wanted}`: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let left: Vec<_> =
            std::fs::read_dir(&target).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.iter().all(|n| n == ".lock"), "left behind: {left:?}");
    };
    let from = ["--from", s(&first), "--after", "add"];
    refused(
        &[&from[..], &["--set", "stages.pretrain.optimizer.lr=1e-3"]].concat(),
        "`stages.pretrain.optimizer.lr` is 0.001 here but 0.003 in the run",
    );
    refused(&[&from[..], &["--seed", "6"]].concat(), "`run.seed` is 6 here but 5 in the run");
    refused(&["--from", s(&first), "--after", "sub"], "--after sub: the run in");
    refused(&["--from", s(&dir.join("nowhere")), "--after", "add"], "no such run directory");
    // A stage whose end-of-stage checkpoint is missing did not finish.
    let unfinished = dir.join("unfinished");
    ok(stagecraft(&["run", s(&cfg), "--until", "add", "--run-dir", s(&unfinished)]));
    std::fs::remove_dir_all(unfinished.join("checkpoints/add")).expect("remove");
    refused(&["--from", s(&unfinished), "--after", "add"], "stage `add` has no end-of-stage checkpoint");
    // Other data under the same name.
    let data = dir.join("pretrain.jsonl");
    let text = std::fs::read_to_string(&data).expect("data");
    std::fs::write(&data, text.replace("1 + 1 = 2", "1 + 1 = 3")).expect("edit data");
    refused(&from, "is not the one the run trained on");
}
