//! Checkpoint control: `save_every` checkpoints at the right steps, `keep_last` pruning
//! them (never the end-of-stage ones), a SIGKILL after a `save_every` checkpoint but
//! before the first evaluation, SIGINT → exit 130 with a resume checkpoint and
//! `--resume latest`, and a second SIGINT that exits at once (resumed as `--resume runs/NAME`). Every interrupted run
//! must end as the uninterrupted one: each stage's weights bit for bit,
//! `metrics.jsonl` field for field but for the wall-clock fields, and `events.jsonl` byte for byte but for its
//! `interrupt` rows (one per signal that stopped the run).

mod support;

use stagecraft_core::checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{run_pipeline, scratch};

/// Two stages; the first evaluates only at its end (200 steps), so a run stopped at
/// an early `save_every` checkpoint has not evaluated yet.
const PIPELINE: &str = r#"
[run]
name = "ctl"
seed = 7
save_every = 10
keep_last = 2

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "lm"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }
optimizer = { lr = 3e-2 }
train = { dropout = 0.1 }
max_steps = 200
batch_size = 8
seq_len = 24

[[stages]]
name = "add"
objective = "completion"
data = { train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=16&digits=1&seed=2", replay = { from = "lm", ratio = 0.25 } }
optimizer = { lr = 3e-2 }
max_steps = 20
eval_every = 10
save_every = 7
batch_size = 8
seq_len = 12
"#;

fn stagecraft(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.current_dir(cwd).env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "error");
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// A scratch folder holding the pipeline as `p.toml`.
fn folder(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::write(dir.join("p.toml"), PIPELINE).expect("write config");
    dir
}

/// `stagecraft run p.toml` in `cwd` (the run goes to `runs/ctl/<timestamp>`).
fn start(cwd: &Path) -> Child {
    stagecraft(cwd).args(["run", "p.toml", "--quiet"]).spawn().expect("spawn")
}

fn succeeded(out: Output) -> Output {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The uninterrupted run, once per test binary: its directory and stdout.
fn reference() -> &'static (PathBuf, Output) {
    static WHOLE: OnceLock<(PathBuf, Output)> = OnceLock::new();
    WHOLE.get_or_init(|| {
        let dir = folder("ctl-whole");
        let out = succeeded(start(&dir).wait_with_output().expect("wait"));
        (the_run(&dir), out)
    })
}

/// The only run directory under `<cwd>/runs/ctl`.
fn the_run(cwd: &Path) -> PathBuf {
    let runs: Vec<PathBuf> =
        std::fs::read_dir(cwd.join("runs/ctl")).expect("runs").flatten().map(|e| e.path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// Waits until `path` exists (a checkpoint appears whole: it is renamed into place).
fn wait_for(path: &Path, child: &mut Child) {
    let t = Instant::now();
    while !path.exists() {
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before {} appeared", path.display());
        assert!(t.elapsed() < Duration::from_secs(120), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends signal `name` (`-INT`) with kill(1); whether the process was there for it.
fn signal(child: &Child, name: &str) -> bool {
    let quiet = Stdio::null;
    let sent = Command::new("kill").args([name, &child.id().to_string()]).stderr(quiet()).status().expect("kill");
    sent.success()
}

fn stage_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("stage ")).map(str::to_string).collect()
}

/// `events.jsonl` without its `interrupt` rows, and how many there were.
fn events_but_interrupts(run: &Path) -> (String, usize) {
    let text = std::fs::read_to_string(run.join("events.jsonl")).expect("events");
    let interrupt = |l: &&str| l.contains("\"kind\":\"interrupt\"");
    let kept: Vec<&str> = text.lines().filter(|l| !interrupt(l)).collect();
    (kept.join("\n"), text.lines().filter(interrupt).count())
}

/// The resumed run ended as the uninterrupted one.
fn same_end(run: &Path, out: &Output, what: &str) {
    let (whole, reference_out) = reference();
    assert_eq!(stage_lines(out), stage_lines(reference_out), "{what}: the summary lists every stage");
    // Every field but the wall-clock ones (time, elapsed_s, tokens_per_s, memory).
    let (a, b) = (support::untimed_metrics(whole), support::untimed_metrics(run));
    assert!(a == b, "{what}: metrics.jsonl differs from the uninterrupted run's");
    assert_eq!(events_but_interrupts(whole).0, events_but_interrupts(run).0, "{what}: events.jsonl");
    for stage in ["lm", "add"] {
        let file = format!("checkpoints/{stage}/tensors.safetensors");
        let (a, b) = (std::fs::read(whole.join(&file)).expect("whole"), std::fs::read(run.join(&file)).expect("run"));
        assert!(a == b, "{what}: stage `{stage}` ended with other weights");
    }
}

fn meta_step(run: &Path, name: &str) -> u64 {
    let meta = std::fs::read_to_string(run.join("checkpoints").join(name).join("meta.json")).expect("meta");
    serde_json::from_str::<serde_json::Value>(&meta).expect("json")["step"].as_u64().expect("step")
}

fn checkpoint_names(run: &Path) -> Vec<String> {
    checkpoint::list(&run.join("checkpoints")).expect("list").into_iter().map(|(n, _)| n).collect()
}

#[test]
fn save_every_writes_at_its_steps_and_keep_last_prunes_only_those() {
    let small = PIPELINE.replace("max_steps = 200", "max_steps = 25\neval_every = 10");
    let all = run_pipeline("save-every-all", &small.replace("keep_last = 2", "keep_last = 100"));
    // lm: 10 and 20 (not 25, its end); add: 7 and 14. A `save_every` checkpoint stands
    // for the rolling one of an evaluation at the same step (lm, 10 and 20); add's
    // evaluation at 10 writes the rolling one.
    let names = checkpoint_names(&all.dir);
    assert_eq!(
        names,
        ["resume-lm-step10", "resume-lm-step20", "lm", "resume-add-step7", "resume", "resume-add-step14", "add"],
        "oldest first"
    );
    for (name, step) in [("resume-lm-step10", 10), ("resume-lm-step20", 20), ("resume-add-step7", 7), ("resume", 10)] {
        assert_eq!(meta_step(&all.dir, name), step, "{name}");
    }
    let kept = run_pipeline("save-every-kept", &small);
    assert_eq!(checkpoint_names(&kept.dir), ["lm", "resume-add-step7", "resume", "resume-add-step14", "add"]);
    assert_eq!(kept.summary.stages.len(), 2);
    // The end-of-stage checkpoints are the same whatever was kept.
    for stage in ["lm", "add"] {
        assert_eq!(support::checkpoint_bits(&all.dir, stage), support::checkpoint_bits(&kept.dir, stage), "{stage}");
    }
}

#[test]
fn a_kill_after_a_save_every_checkpoint_before_any_evaluation_resumes_exactly() {
    let dir = folder("ctl-kill");
    let mut child = start(&dir);
    let run = loop {
        if let Ok(mut e) = std::fs::read_dir(dir.join("runs/ctl")) {
            if let Some(Ok(e)) = e.next() {
                break e.path();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    wait_for(&run.join("checkpoints/resume-lm-step20"), &mut child);
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(!run.join("checkpoints/lm").exists(), "the kill landed after stage `lm` ended");
    let evals = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    assert!(!evals.contains("\"split\":\"eval\""), "the kill landed after an evaluation");

    let out = succeeded(stagecraft(&dir).args(["run", "--resume"]).arg(&run).output().expect("resume"));
    let resumed = support::resumes(&run);
    assert_eq!(resumed.len(), 1);
    let from = resumed[0].2.clone().unwrap_or_default();
    assert!(from.starts_with("resume-lm-step") && resumed[0].1 >= 20, "{resumed:?}");
    same_end(&run, &out, "killed");
    assert_eq!(events_but_interrupts(&run).1, 0);
}

/// Starts a run, waits for its first `save_every` checkpoint, sends SIGINT `times`
/// times in a row: the run directory and how the process ended.
fn interrupt(name: &str, times: usize) -> (PathBuf, PathBuf, Output) {
    let dir = folder(name);
    let mut child = start(&dir);
    let run = loop {
        if let Ok(mut e) = std::fs::read_dir(dir.join("runs/ctl")) {
            if let Some(Ok(e)) = e.next() {
                break e.path();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    wait_for(&run.join("checkpoints/resume-lm-step10"), &mut child);
    assert!(signal(&child, "-INT"), "the run is going");
    for _ in 1..times {
        // Apart, so that the kernel does not merge them into one pending signal.
        std::thread::sleep(Duration::from_millis(2));
        signal(&child, "-INT");
    }
    (dir, run, child.wait_with_output().expect("wait"))
}

#[test]
fn sigint_saves_exits_130_and_resume_latest_finishes_exactly() {
    let (dir, run, out) = interrupt("ctl-sigint", 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let line = err.lines().find(|l| l.starts_with("SIGINT stopped the run")).unwrap_or_else(|| panic!("{err}"));
    let rel = run.strip_prefix(&dir).expect("under the folder");
    assert!(line.ends_with(&format!("resume with: stagecraft run --resume {}", rel.display())), "{line}");
    assert!(line.contains(&format!("saved {}", rel.join("checkpoints/resume").display())), "{line}");
    let step = meta_step(&run, "resume");
    assert!(step >= 10, "saved at step {step}");
    let events = support::events(&run);
    assert_eq!(events.last(), Some(&("lm".to_string(), step, "interrupt".to_string())), "{events:?}");

    let out = succeeded(stagecraft(&dir).args(["run", "p.toml", "--resume", "latest"]).output().expect("resume"));
    assert_eq!(support::resumes(&run), [("lm".to_string(), step, Some("resume".to_string()))]);
    same_end(&run, &out, "SIGINT");
    assert_eq!(events_but_interrupts(&run).1, 1, "the interruption stays recorded, once");
}

#[test]
fn a_second_sigint_exits_at_once_and_leaves_a_resumable_run() {
    let (dir, run, out) = interrupt("ctl-twice", 2);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    // The runs folder names the newest run in it.
    let out = succeeded(stagecraft(&dir).args(["run", "--resume", "runs/ctl"]).output().expect("resume"));
    same_end(&run, &out, "two SIGINTs");
    assert!(events_but_interrupts(&run).1 <= 1);
}

#[test]
fn resume_latest_says_where_it_looked_when_there_is_no_run() {
    let dir = folder("ctl-none");
    let out = stagecraft(&dir).args(["run", "p.toml", "--resume", "latest"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1 && err.contains("runs/ctl"), "{err}");
}
