//! Hyperparameters that change while a stage trains (`adjust`), `run --pause-at
//! STAGE:STEP` and `run --resume RUN --adjust KEY=VALUE`: a run paused and resumed
//! without a change ends bit for bit as the uninterrupted one; paused and resumed with
//! `--adjust` it ends bit for bit as a run whose config had the same `adjust` entry from
//! the start (the optimizer rebuilt with its state carried: rebuilt with the same
//! math, nothing changes; the dropout changed), and
//! its config.toml then holds that entry; a later stage that carries an adjusted
//! optimizer over resumes as it ran; what cannot be adjusted is refused in one line,
//! leaving the run as it was.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{checkpoint_bits, events, scratch, untimed_metrics};

/// Two stages; the second (`lora`, with LoRA and dropout) is the one adjusted.
fn pipeline(dir: &Path) -> PathBuf {
    let text = r#"
[run]
name = "adjust"
seed = 11

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=48&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }
optimizer = { lr = 3e-3, weight_decay = 0.1 }
max_steps = 6
batch_size = 8
seq_len = 16

[[stages]]
name = "lora"
objective = "completion"
data = { train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2" }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8 }]
optimizer = { lr = 1e-2, weight_decay = 0.0 }
schedule = { warmup_steps = 2, decay = "cosine" }
train = { dropout = 0.1 }
max_steps = 12
eval_every = 4
batch_size = 8
seq_len = 12
"#;
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    path
}

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "warn");
    c
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok_output(out: Output) -> Vec<u8> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn run(pipeline: &Path, dir: &Path, extra: &[&str]) -> String {
    ok(stagecraft()
        .arg("run")
        .arg(pipeline)
        .arg("--run-dir")
        .arg(dir)
        .arg("--quiet")
        .args(extra)
        .output()
        .expect("run"))
}

fn resume(dir: &Path, extra: &[&str]) -> Output {
    stagecraft().arg("run").arg("--resume").arg(dir).arg("--quiet").args(extra).output().expect("resume")
}

/// A run's events without the pause (the uninterrupted run has none).
fn events_but_pauses(run: &Path) -> Vec<(String, u64, String)> {
    events(run).into_iter().filter(|e| e.2 != "interrupt").collect()
}

#[test]
fn a_paused_run_resumed_ends_as_the_uninterrupted_one() {
    let dir = scratch("adjust-pause");
    let p = pipeline(&dir);
    let (whole, paused) = (dir.join("whole"), dir.join("paused"));
    run(&p, &whole, &[]);
    let said = run(&p, &paused, &["--pause-at", "lora:4"]);
    assert!(said.contains("paused in stage `lora` after step 4") && said.contains("--resume"), "{said}");
    assert!(!paused.join("checkpoints/lora").exists(), "paused inside the stage");
    // Resumed with the same pause point, it stops there again as it is.
    let again = String::from_utf8_lossy(&ok_output(resume(&paused, &["--pause-at", "lora:4"]))).into_owned();
    assert!(again.contains("paused in stage `lora` after step 4"), "{again}");
    ok(resume(&paused, &[]));
    let pauses = events(&paused).iter().filter(|e| e.2 == "interrupt").count();
    assert_eq!(pauses, 1, "one pause, recorded once");
    assert_eq!(untimed_metrics(&paused), untimed_metrics(&whole));
    assert_eq!(events_but_pauses(&paused), events_but_pauses(&whole));
    assert!(events(&paused).contains(&("lora".into(), 4, "interrupt".into())), "the pause is recorded");
    assert_eq!(checkpoint_bits(&paused, "lora"), checkpoint_bits(&whole, "lora"));
}

#[test]
fn adjusting_at_a_pause_equals_the_same_schedule_in_the_config() {
    let dir = scratch("adjust-schedule");
    let p = pipeline(&dir);
    let (planned, adjusted, plain) = (dir.join("planned"), dir.join("adjusted"), dir.join("plain"));
    let entry = r#"stages.lora.adjust=[{ after_step = 8, "optimizer.lr" = 4e-3, "optimizer.weight_decay" = 0.05, "train.dropout" = 0.0 }]"#;
    run(&p, &planned, &["--set", entry]);
    run(&p, &plain, &[]);
    run(&p, &adjusted, &["--pause-at", "lora:8"]);
    ok(resume(
        &adjusted,
        &["--adjust", "optimizer.lr=4e-3", "--adjust", "optimizer.weight_decay=0.05", "--adjust", "train.dropout=0.0"],
    ));
    assert_eq!(untimed_metrics(&adjusted), untimed_metrics(&planned));
    assert_eq!(events_but_pauses(&adjusted), events_but_pauses(&planned));
    assert!(events(&planned).contains(&("lora".into(), 8, "adjust".into())), "{:?}", events(&planned));
    assert_eq!(checkpoint_bits(&adjusted, "lora"), checkpoint_bits(&planned, "lora"));
    // The adjustment changed the training: from step 9 on the rows differ from the
    // plain run's, with the new learning rate.
    let lr_at = |run: &Path, step: u64| {
        untimed_metrics(run)
            .into_iter()
            .find(|m| m.stage == "lora" && m.step == step && m.lr.is_some())
            .and_then(|m| m.lr)
    };
    assert_eq!(lr_at(&adjusted, 8), lr_at(&plain, 8));
    let (a, b) = (lr_at(&adjusted, 9).expect("lr"), lr_at(&plain, 9).expect("lr"));
    assert!((a / b - 0.4).abs() < 1e-9, "the schedule shapes the new lr as the old: {a} vs {b}");
    assert_ne!(checkpoint_bits(&adjusted, "lora"), checkpoint_bits(&plain, "lora"));
    // An entry that rebuilds the optimizer without changing its math (AdamW's eps,
    // written out at its default) leaves the training exactly as it was: the moments
    // and the update count carry over.
    let rebuilt = dir.join("rebuilt");
    run(&p, &rebuilt, &["--set", r#"stages.lora.adjust=[{ after_step = 4, "optimizer.eps" = 1e-8 }]"#]);
    assert!(events(&rebuilt).contains(&("lora".into(), 4, "adjust".into())));
    assert_eq!(checkpoint_bits(&rebuilt, "lora"), checkpoint_bits(&plain, "lora"));
    // The run's config records the schedule: it runs again as it ran.
    let config = std::fs::read_to_string(adjusted.join("config.toml")).expect("config.toml");
    assert!(config.contains("after_step = 8") && config.contains("\"train.dropout\" = 0.0"), "{config}");
    let again = dir.join("again");
    run(&adjusted.join("config.toml"), &again, &[]);
    assert_eq!(checkpoint_bits(&again, "lora"), checkpoint_bits(&planned, "lora"));
}

#[test]
fn what_cannot_be_adjusted_is_refused_in_one_line_and_the_run_is_left_as_it_was() {
    let dir = scratch("adjust-refused");
    let p = pipeline(&dir);
    let paused = dir.join("paused");
    run(&p, &paused, &["--pause-at", "lora:4"]);
    let config = std::fs::read_to_string(paused.join("config.toml")).expect("config.toml");
    let refused = |args: &[&str], wanted: &str| {
        let out = resume(&paused, args);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success() && err.contains(wanted), "wanted `{wanted}`: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::read_to_string(paused.join("config.toml")).expect("config"), config, "unchanged");
    };
    refused(&["--adjust", "max_steps=20"], "`max_steps` cannot change while stage `lora` trains");
    refused(&["--adjust", "optimizer.name=sgd"], "`optimizer.name` cannot change");
    refused(&["--adjust", "optimizer.lr=-1"], "optimizer.lr must be > 0");
    refused(&["--adjust", "optimizer.bogus=1"], "unknown field `bogus`");
    refused(&["--adjust", "train.dropout=1.5"], "train.dropout must be in [0, 1)");
    let never = dir.join("never");
    let out = stagecraft().arg("run").arg(&p).arg("--run-dir").arg(&never).args(["--pause-at", "nope:3"]).output();
    let out = out.expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no stage `nope`") && !never.exists(), "{err}");
    // The refusals left the run resumable as it was; once finished, nothing is in
    // progress to adjust.
    ok(resume(&paused, &[]));
    let out = resume(&paused, &["--adjust", "optimizer.lr=1e-3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--adjust changes a stage in progress"), "{err}");
}

#[test]
fn a_stage_carrying_an_adjusted_optimizer_resumes_as_it_ran() {
    // `lora` carries pretrain's optimizer, whose weight decay pretrain adjusted; paused
    // and resumed inside `lora`, the run rebuilds pretrain's optimizer as it ended.
    let dir = scratch("adjust-carry");
    let p = pipeline(&dir);
    let set = [
        "--set",
        r#"stages.pretrain.adjust=[{ after_step = 3, "optimizer.weight_decay" = 0.5 }]"#,
        "--set",
        "stages.lora.handoff.optimizer=carry",
    ];
    let (whole, paused) = (dir.join("whole"), dir.join("paused"));
    run(&p, &whole, &set);
    run(&p, &paused, &[&set[..], &["--pause-at", "lora:4"]].concat());
    ok(resume(&paused, &[]));
    assert_eq!(untimed_metrics(&paused), untimed_metrics(&whole));
    assert_eq!(checkpoint_bits(&paused, "lora"), checkpoint_bits(&whole, "lora"));
}
