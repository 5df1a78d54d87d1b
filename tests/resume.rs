//! Kills in the middle of a stage, then `stagecraft run --resume`: the run ends as an
//! uninterrupted one does — the same weights, bit for bit, the same events and stage
//! ends — and it really resumed where the checkpoint was: the resume event names the
//! stage and step, and the logged steps continue from there, none twice.
//!
//! The interrupted stages use model and adapter dropout (RNG state), data augmentation
//! (drawn by step and row), replay (sampler state), and a retention gate and early
//! stopping that are *acting* at the kill — a kill between two failing gate
//! evaluations, and one in the middle of a patience count — so their state must come
//! back from the checkpoint for the ends to match.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{bits, checkpoint_tensors, events, metrics, resumes, scratch, untimed_metrics};

fn head(adapt: &str) -> String {
    format!(
        r#"
[run]
name = "resume"
seed = 11

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }}
optimizer = {{ lr = 3e-3 }}
max_steps = 20
batch_size = 8
seq_len = 24

[[stages]]
name = "adapt"
objective = "completion"
data = {{ train = "synthetic:add?n=128&digits=1", eval = "synthetic:add?n=64&digits=1&seed=2", replay = {{ from = "pretrain", ratio = 0.25 }} }}
adapters = [{{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8, dropout = 0.1 }}]
train = {{ dropout = 0.1 }}
batch_size = 8
seq_len = 12
{adapt}
"#
    )
}

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "warn");
    c
}

fn run_to_end(cfg: &Path, run: &Path) {
    let out = stagecraft().arg("run").arg(cfg).arg("--run-dir").arg(run).arg("--quiet").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn resume(run: &Path) {
    let out = stagecraft().arg("run").arg("--resume").arg(run).arg("--quiet").output().expect("resume");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn checkpoint_step(run: &Path) -> Option<u64> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/resume/meta.json")).ok()?).ok()?;
    meta["step"].as_u64()
}

/// Whether `adapt` has logged a training step past `step` in the run's metrics.
fn logged_past(run: &Path, step: u64) -> bool {
    let Ok(text) = std::fs::read_to_string(run.join("metrics.jsonl")) else { return false };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|r| r["stage"] == "adapt" && r["step"].as_u64().is_some_and(|s| s > step))
}

/// Starts the pipeline, freezes the process (SIGSTOP) once the mid-stage checkpoint of
/// `step` is complete and the run has logged a step past it — rows and events written
/// after the checkpoint, as a crash leaves them — copies its run directory as it is at
/// that moment and kills it. Tries again if the process got past the next checkpoint or
/// to the end of the stage before it was frozen (the copy must resume from `step`).
fn killed_after_checkpoint(cfg: &Path, dir: &Path, step: u64) -> PathBuf {
    for attempt in 0..5 {
        let live = dir.join(format!("live-{attempt}"));
        let mut child =
            stagecraft().arg("run").arg(cfg).arg("--run-dir").arg(&live).arg("--quiet").spawn().expect("spawn");
        let t = Instant::now();
        while checkpoint_step(&live) != Some(step)
            || !live.join("checkpoints/resume/manifest.json").exists()
            || !logged_past(&live, step)
        {
            assert!(child.try_wait().expect("wait").is_none(), "the run finished before step {step} was checkpointed");
            assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint at step {step}");
            std::thread::sleep(Duration::from_millis(1));
        }
        let pid = child.id().to_string();
        Command::new("kill").args(["-STOP", &pid]).status().expect("SIGSTOP");
        let killed = dir.join(format!("killed-{attempt}"));
        let copied = Command::new("cp").arg("-a").arg(&live).arg(&killed).status().expect("copy");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert!(copied.success());
        // Frozen too late (past the next checkpoint, or after the stage ended): again.
        if checkpoint_step(&killed) == Some(step) && !killed.join("checkpoints/adapt").exists() {
            assert!(logged_past(&killed, step), "killed past the checkpoint, before the end of the stage");
            return killed;
        }
    }
    panic!("could not freeze the run between the checkpoint of step {step} and the next");
}

fn final_bits(run: &Path) -> BTreeMap<String, Vec<u32>> {
    checkpoint_tensors(run, "adapt").iter().map(|(k, t)| (k.clone(), bits(t))).collect()
}

/// Kills the run right after the checkpoint of `step`, resumes it, and checks it
/// against an uninterrupted run: where it resumed, the logged steps, the final bits,
/// and every event and stage end.
fn check_kill_and_resume(name: &str, config: &str, step: u64) {
    let dir = scratch(name);
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, config).expect("write config");
    let whole = dir.join("whole");
    run_to_end(&cfg, &whole);
    let killed = killed_after_checkpoint(&cfg, &dir, step);
    resume(&killed);

    // It resumed from the checkpoint of `step`, in the stage it was written in...
    assert_eq!(resumes(&killed), [("adapt".to_string(), step, Some("resume".to_string()))], "{name}: resumes");
    // ...and the logged training steps continue from there: strictly increasing per
    // stage, none missing, none twice.
    let rows = metrics(&killed);
    for stage in ["pretrain", "adapt"] {
        let steps: Vec<u64> =
            rows.iter().filter(|r| r.stage == stage && r.set.is_none() && r.loss.is_some()).map(|r| r.step).collect();
        assert!(
            steps.windows(2).all(|w| w[1] == w[0] + 1) && steps.first() == Some(&1),
            "{name}: {stage} logged steps {steps:?}"
        );
    }
    // The same end: weights, events (but the resume) and stage ends.
    let (a, b) = (final_bits(&whole), final_bits(&killed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{name}: {k} differs after resume");
    }
    // The same records: the resume cut the logs back to what the checkpoint covered,
    // and the redone steps wrote the same lines again. Metrics rows are compared
    // without their time-dependent fields (time, elapsed_s, tokens_per_s,
    // peak_rss_mib, peak_gpu_mib), every other field exactly; the rest byte for byte.
    let (a, b) = (untimed_metrics(&whole), untimed_metrics(&killed));
    assert!(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| same_row(x, y)), "{name}: metrics differ after resume");
    for file in ["events.jsonl", "retention.json"] {
        let (a, b) = (std::fs::read(whole.join(file)).expect(file), std::fs::read(killed.join(file)).expect(file));
        assert!(a == b, "{name}: {file} differs after resume");
    }
    // Every evaluation's per-example scores too (the redone ones written again alike).
    let listing = |run: &Path| {
        let mut names: Vec<_> =
            std::fs::read_dir(run.join("examples")).expect("examples/").flatten().map(|e| e.file_name()).collect();
        names.sort();
        names
    };
    assert_eq!(listing(&whole), listing(&killed), "{name}: examples/ differ after resume");
    for file in listing(&whole) {
        let (a, b) =
            (std::fs::read(whole.join("examples").join(&file)), std::fs::read(killed.join("examples").join(&file)));
        assert!(a.expect("whole") == b.expect("killed"), "{name}: examples/{file:?} differs after resume");
    }
    let ends = |run: &Path| events(run).into_iter().filter(|e| e.2 == "end").collect::<Vec<_>>();
    println!("{name}: resumed from step {step}; ends {:?}", ends(&killed));
}

/// Two untimed rows are equal, NaN included (a diverged loss is NaN in both).
fn same_row(a: &stagecraft_core::report::MetricRow, b: &stagecraft_core::report::MetricRow) -> bool {
    serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
}

/// With data augmentation too: its draws depend on the step and row, not on state.
const AUGMENT: &str = r#"augment = [{ kind = "token_mask", p = 0.1, token = 0 }, { kind = "swap", p = 0.1 }, { kind = "span_deletion", p = 0.05, max_len = 2 }]"#;

#[test]
fn a_kill_mid_stage_resumes_bit_identically_from_its_checkpoint() {
    let adapt = format!("optimizer = {{ lr = 1e-2 }}\nmax_steps = 60\neval_every = 10\n{AUGMENT}");
    check_kill_and_resume("resume-plain", &head(&adapt), 30);
}

#[test]
fn a_kill_between_failing_gate_evaluations_resumes_the_gate_where_it_was() {
    // The gate fails twice in a row (tolerated, patience 2) and acts at the third: the
    // kill after the checkpoint of the second failure leaves a count of 2 to carry over
    // (with this seed: failures at 2, 4, then 14, 16, acting at 18).
    let adapt = r#"optimizer = { lr = 0.5 }
gates = { retention = { stage = "pretrain", max_drop = 0.05, metric = "loss", patience = 2 } }
max_steps = 40
eval_every = 2"#;
    let dir = scratch("resume-gate-probe");
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, head(adapt)).expect("write");
    run_to_end(&cfg, &dir.join("run"));
    let gates: Vec<u64> = events(&dir.join("run")).into_iter().filter(|e| e.2 == "gate").map(|e| e.1).collect();
    let acted: Vec<u64> = events(&dir.join("run")).into_iter().filter(|e| e.2 == "rollback").map(|e| e.1).collect();
    let (last, before) = (gates[gates.len() - 1], gates[gates.len().saturating_sub(2)]);
    assert!(
        acted.len() == 1 && last + 2 == acted[0] && before + 2 == last,
        "the config no longer fails the gate twice in a row before it acts: {gates:?} {acted:?}"
    );
    check_kill_and_resume("resume-gate", &head(adapt), last);
}

#[test]
fn a_kill_in_the_middle_of_a_patience_count_resumes_early_stopping_where_it_was() {
    // Early stopping on exact match with patience 3: the kill lands after an evaluation
    // that did not improve, before the count runs out.
    let adapt = r#"optimizer = { lr = 0.05 }
exit = { metric = "eval.exact_match", patience = 3 }
max_steps = 80
eval_every = 2"#;
    let dir = scratch("resume-patience-probe");
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, head(adapt)).expect("write");
    let run = dir.join("run");
    run_to_end(&cfg, &run);
    let scores: Vec<(u64, f64)> = metrics(&run)
        .into_iter()
        .filter(|r| r.stage == "adapt" && r.set.as_deref() == Some("adapt"))
        .map(|r| (r.step, r.metrics["exact_match"]))
        .collect();
    // The first evaluation no better than the best before it, with the stage running on.
    let mut best = f64::NEG_INFINITY;
    let mid = scores.iter().find_map(|&(step, score)| {
        let stalled = score <= best;
        best = best.max(score);
        stalled.then_some(step)
    });
    let ended = events(&run).into_iter().find(|e| e.0 == "adapt" && e.2 == "patience").map(|e| e.1);
    let (Some(mid), Some(ended)) = (mid, ended) else { panic!("the config no longer stops early: {scores:?}") };
    assert!(mid < ended, "{mid} {ended}");
    check_kill_and_resume("resume-patience", &head(adapt), mid);
}

/// `stagecraft run --resume RUN [extra]` with info logs: (success, stderr).
/// A distillation stage — a fresh student of its own, a teacher rebuilt from the
/// earlier stage's checkpoint, model dropout and replay — resumes to the same bits.
#[test]
fn a_kill_in_a_distillation_stage_resumes_bit_identically() {
    let adapt_start = head("").find("[[stages]]\nname = \"adapt\"").expect("adapt stage");
    let config = head("")[..adapt_start].to_string()
        + r#"[[stages]]
name = "adapt"
model = { arch = "llama", hidden_size = 8, num_layers = 1, num_heads = 2 }
teacher = "pretrain"
objective = { name = "distill", temperature = 2.0, alpha = 0.7 }
data = { train = "synthetic:arith_text?n=128&digits=1&seed=3", eval = "synthetic:arith_text?n=16&digits=1&seed=2", replay = { from = "pretrain", ratio = 0.25 } }
optimizer = { lr = 1e-2 }
train = { dropout = 0.1 }
batch_size = 8
seq_len = 24
max_steps = 60
eval_every = 10
"#;
    check_kill_and_resume("resume-distill", &config, 30);
}

/// A stage with EWC: its anchors and Fisher weights, computed when it started, are
/// loaded again on resume, so the penalty pulls toward the same point.
#[test]
fn a_kill_in_a_regularized_stage_resumes_bit_identically() {
    let adapt = "optimizer = { lr = 1e-2 }\nmax_steps = 60\neval_every = 10\nregularize = { kind = \"ewc\", lambda = 50.0, fisher_batches = 2 }";
    check_kill_and_resume("resume-ewc", &head(adapt), 30);
}

fn resume_with(run: &Path, extra: &[&str], plugin_path: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "info");
    if let Some(p) = plugin_path {
        c.env("STAGECRAFT_PLUGIN_PATH", p);
    }
    let out = c.args(["run", "--resume"]).arg(run).args(extra).args(["--quiet"]).output().expect("stagecraft");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn sha256(p: &Path) -> String {
    stagecraft_core::plugin::sha256_file(p).expect("sha256")
}

/// The `plugins.json` entry of the library providing `lora` from a file.
fn lora_record(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("plugins.json")).expect("plugins.json");
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    all.into_iter().find(|l| l["library"] == "lora" && !l["sha256"].is_null()).expect("lora from a file")
}

#[test]
fn a_resume_refuses_a_changed_plugin_build_unless_allowed_and_keeps_both_hashes() {
    let dir = scratch("plugin-change");
    std::fs::create_dir(dir.join("libs")).expect("mkdir");
    let lib = dir.join("libs/libstagecraft_lora.so");
    std::fs::copy(support::first_party("lora"), &lib).expect("copy");
    let original = sha256(&lib);
    let cfg = dir.join("p.toml");
    let text =
        head("optimizer = { lr = 1e-2 }\nmax_steps = 4\neval_every = 2").replace("max_steps = 20", "max_steps = 2");
    std::fs::write(&cfg, format!("{text}\n[plugins]\npaths = [\"libs\"]\n")).expect("write");
    let run = dir.join("run");
    run_to_end(&cfg, &run);
    assert_eq!(lora_record(&run)["sha256"], original.as_str());

    // Another build of it (still loadable: bytes appended after the ELF image).
    let mut bytes = std::fs::read(&lib).expect("read");
    bytes.extend_from_slice(b"another build");
    std::fs::write(&lib, bytes).expect("write");
    let changed = sha256(&lib);
    let before = std::fs::read(run.join("plugins.json")).expect("plugins.json");

    let (ok, err) = resume_with(&run, &[], None);
    assert!(!ok, "{err}");
    let error = err.lines().find(|l| l.starts_with("error:")).expect("an error line");
    for needle in [&original, &changed, "libs/libstagecraft_lora.so", "--allow-plugin-change", "plugins.json"] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    assert_eq!(std::fs::read(run.join("plugins.json")).expect("plugins.json"), before, "the record is untouched");

    let (ok, err) = resume_with(&run, &["--allow-plugin-change"], None);
    assert!(ok, "{err}");
    let record = lora_record(&run);
    assert_eq!(record["sha256"], original.as_str(), "the original hash is kept");
    let changes = record["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{record}");
    assert_eq!(changes[0]["sha256"], changed.as_str());
    assert_eq!((changes[0]["stage"].as_str(), changes[0]["step"].as_u64()), (Some("adapt"), Some(4)), "{record}");
    assert!(changes[0]["unix_time"].as_u64().is_some_and(|t| t > 0), "{record}");

    // The same build again is no change; found elsewhere, the resume says where.
    let moved = dir.join("moved");
    std::fs::create_dir(&moved).expect("mkdir");
    std::fs::rename(&lib, moved.join("libstagecraft_lora.so")).expect("move");
    let (ok, err) = resume_with(&run, &[], Some(&moved));
    assert!(ok, "{err}");
    let line = err.lines().find(|l| l.contains("plugin library `lora`")).expect("an info line on the library");
    assert!(line.contains("libs/libstagecraft_lora.so") && line.contains("moved/libstagecraft_lora.so"), "{line}");
    assert_eq!(lora_record(&run)["changes"].as_array().map(Vec::len), Some(1));
}
