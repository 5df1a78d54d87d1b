//! SIGKILLs at random moments (seeded), each followed by `stagecraft run --resume`:
//! a three-stage pipeline whose first stage has anomaly-guard recoveries, whose second
//! replays the first under a retention gate that fails and passes, and whose third
//! trains a LoRA adapter with replay of both and early stopping. Some resumes are
//! killed in turn. Every interrupted run must end exactly as the uninterrupted one:
//! every stage's weights bit for bit, and the records — `events.jsonl`,
//! `retention.json` byte for byte; `metrics.jsonl` row for row, every field but the
//! time-dependent ones (`time`, `elapsed_s`, `tokens_per_s`, `peak_rss_mib`,
//! `peak_gpu_mib`), which a resumed process cannot reproduce; `report.html` byte for
//! byte outside its sections marked as time-dependent (throughput, memory, wall time).

mod support;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use support::{scratch, untimed_metrics};

const PIPELINE: &str = r#"
[run]
name = "kills"
seed = 5

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }
optimizer = { lr = 3e-2 }
max_steps = 80
eval_every = 5
batch_size = 8
seq_len = 24
anomaly = { spike_factor = 1.1, spike_margin = 0.0, max_recoveries = 50, lr_scale = 0.9 }

[[stages]]
name = "add"
objective = "completion"
data = { train = "synthetic:add?n=128&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2", replay = { from = "pretrain", ratio = 0.25 } }
optimizer = { lr = 3e-2 }
train = { dropout = 0.1 }
max_steps = 40
eval_every = 5
batch_size = 8
seq_len = 12
gates = { retention = { stage = "pretrain", metric = "loss", max_drop = 0.9, patience = 3 } }

[[stages]]
name = "adapt"
objective = "completion"
data = { train = "synthetic:add?n=128&digits=1&seed=3", eval = "synthetic:add?n=32&digits=1&seed=4", replay = { from = ["pretrain", "add"], ratio = 0.5 } }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8, dropout = 0.1 }]
optimizer = { lr = 1e-2 }
max_steps = 60
eval_every = 5
batch_size = 8
seq_len = 12
exit = { metric = "eval.loss", patience = 2 }
"#;

/// Interrupted runs.
const TRIALS: u64 = 12;
/// Of which the resume is killed too, every this many.
const KILL_RESUME_EVERY: u64 = 3;
/// The records compared byte for byte (`metrics.jsonl` and `report.html` apart, see
/// [`same_end`]), and that a refused run must not touch.
const RECORDS: [&str; 4] = ["metrics.jsonl", "events.jsonl", "retention.json", "report.html"];

/// `report.html` without its time-dependent sections (`<!--timing-->...<!--/timing-->`).
fn untimed_report(run: &Path) -> String {
    let mut html = std::fs::read_to_string(run.join("report.html")).expect("report.html");
    while let (Some(a), Some(b)) = (html.find("<!--timing-->"), html.find("<!--/timing-->")) {
        assert!(a < b, "unbalanced timing markers");
        html.replace_range(a..b + "<!--/timing-->".len(), "");
    }
    html
}

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "error");
    c
}

fn start(cfg: &Path, run: &Path) -> Child {
    // A run killed before it wrote its config holds no run yet: it is started again.
    let resuming = run.join("config.toml").exists();
    let mut c = stagecraft();
    match resuming {
        true => c.arg("run").arg("--resume").arg(run),
        false => c.arg("run").arg(cfg).arg("--run-dir").arg(run),
    };
    c.arg("--quiet").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn")
}

fn finish(child: Child) -> Output {
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs until `after`, then SIGKILL; whether the process was still running.
fn kill_after(child: &mut Child, after: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < after {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let running = child.try_wait().expect("wait").is_none();
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    running
}

/// The stage lines of the final table (`stage add: 40 steps, ended by ...`).
fn stage_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("stage ")).map(str::to_string).collect()
}

/// splitmix64: the kill moments, the same on every machine for one seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fraction(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}

fn same_end(whole: &Path, killed: &Path, what: &str) {
    // Time-dependent fields differ between processes; every other field must not.
    let json =
        |run: &Path| untimed_metrics(run).iter().map(|r| serde_json::to_string(r).expect("row")).collect::<Vec<_>>();
    assert!(json(whole) == json(killed), "{what}: metrics.jsonl differs from the uninterrupted run's");
    assert!(
        untimed_report(whole) == untimed_report(killed),
        "{what}: report.html differs from the uninterrupted run's"
    );
    for file in ["events.jsonl", "retention.json"] {
        let (a, b) = (std::fs::read(whole.join(file)).expect(file), std::fs::read(killed.join(file)).expect(file));
        assert!(a == b, "{what}: {file} differs from the uninterrupted run's");
    }
    for stage in ["pretrain", "add", "adapt"] {
        let tensors = format!("checkpoints/{stage}/tensors.safetensors");
        let (a, b) = (
            std::fs::read(whole.join(&tensors)).expect("whole"),
            std::fs::read(killed.join(&tensors)).expect("killed"),
        );
        assert!(a == b, "{what}: stage `{stage}` ended with other weights");
    }
}

#[test]
fn random_kills_and_resumes_end_with_the_same_weights_and_records() {
    let dir = scratch("random-kills");
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, PIPELINE).expect("write config");
    let whole = dir.join("whole");
    let t = Instant::now();
    let reference = finish(start(&cfg, &whole));
    let span = t.elapsed();
    let events = std::fs::read_to_string(whole.join("events.jsonl")).expect("events");
    for kind in ["anomaly", "gate", "patience"] {
        assert!(events.contains(&format!("\"kind\":\"{kind}\"")), "the pipeline exercises `{kind}`: {events}");
    }
    let mut seed = 0x5EED;
    let mut kills = 0;
    for trial in 0..TRIALS {
        let run = dir.join(format!("killed-{trial}"));
        let mut child = start(&cfg, &run);
        kills += u32::from(kill_after(&mut child, span.mul_f64(fraction(&mut seed))));
        if trial % KILL_RESUME_EVERY == 0 {
            let mut again = start(&cfg, &run);
            kills += u32::from(kill_after(&mut again, span.mul_f64(fraction(&mut seed))));
        }
        let out = finish(start(&cfg, &run));
        assert_eq!(stage_lines(&out), stage_lines(&reference), "trial {trial}: stage ends");
        same_end(&whole, &run, &format!("trial {trial}"));
    }
    println!("{kills} kills landed in a running process, over {TRIALS} trials of a {span:?} run");
    assert!(kills >= 10, "only {kills} kills landed while the run was going");
}

#[test]
fn a_finished_run_resumes_to_the_same_records_and_its_directory_is_never_reused() {
    let dir = scratch("finished-resume");
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, PIPELINE).expect("write config");
    let run = dir.join("run");
    finish(start(&cfg, &run));
    let read = |file: &str| std::fs::read(run.join(file)).unwrap_or_default();
    let before: Vec<Vec<u8>> = RECORDS.iter().chain(&["config.toml"]).map(|f| read(f)).collect();
    assert!(String::from_utf8_lossy(&before[1]).contains("\"anomaly\""), "a recovery's row is among the records");

    // Resuming the finished run redoes nothing and changes nothing.
    finish(start(&cfg, &run));
    let after: Vec<Vec<u8>> = RECORDS.iter().chain(&["config.toml"]).map(|f| read(f)).collect();
    for (file, (a, b)) in RECORDS.iter().chain(&["config.toml"]).zip(before.iter().zip(&after)) {
        assert!(a == b, "resuming a finished run changed its {file}");
    }

    // A second run into the same directory is refused, and touches nothing.
    let out = stagecraft().arg("run").arg(&cfg).arg("--run-dir").arg(&run).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("holds a run already") && err.contains("--resume"), "{err}");
    assert!(read("metrics.jsonl") == before[0], "the refused run wrote into the directory");

    // A run whose metrics lost lines is refused, not resumed into an empty matrix.
    std::fs::remove_file(run.join("metrics.jsonl")).expect("remove");
    let out = stagecraft().arg("run").arg("--resume").arg(&run).output().expect("resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metrics.jsonl") && err.contains("damaged"), "{err}");
    assert!(read("retention.json") == before[2], "retention.json was rewritten");
}

#[test]
fn a_resume_on_changed_data_is_refused() {
    let dir = scratch("changed-data");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "1+2=3\n2+2=4\n3+4=7\n5+1=6\n").expect("corpus");
    let cfg = dir.join("p.toml");
    let text = format!(
        "[run]\nseed = 1\n[model]\narch = \"llama\"\nhidden_size = 16\nnum_layers = 1\nnum_heads = 2\n[[stages]]\nname = \"lm\"\nobjective = \"causal_lm\"\ndata = {{ train = \"{}\" }}\noptimizer = {{ lr = 1e-2 }}\nmax_steps = 4\nbatch_size = 2\nseq_len = 8\n",
        corpus.display()
    );
    std::fs::write(&cfg, text).expect("config");
    let run = dir.join("run");
    finish(start(&cfg, &run));
    std::fs::write(&corpus, "1+2=3\n2+2=5\n3+4=7\n5+1=6\n").expect("edit corpus");
    let out = stagecraft().arg("run").arg("--resume").arg(&run).output().expect("resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("data.json") && err.contains("corpus.txt") && err.contains("changed"),
        "{err}"
    );
}
