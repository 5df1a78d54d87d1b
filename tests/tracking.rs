//! Experiment tracking: every metrics row stamped with its time, the run's elapsed
//! seconds (continued across a resume), throughput and memory; `metrics.csv`; and
//! TensorBoard event files read back record by record (both CRCs checked here, with
//! the `crc32c` crate, independently of the writer) and decoded.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
use stagecraft_core::report::clock::parse_iso8601;
use stagecraft_core::report::tensorboard::Event;
use stagecraft_core::report::{MetricRow, Split};
use support::{metrics, scratch};

const CONFIG: &str = r#"
[run]
name = "tracking"
seed = 5
tensorboard = true

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=1" }
optimizer = { lr = 3e-3 }
max_steps = 20
batch_size = 8
seq_len = 24

[[stages]]
name = "adapt"
objective = "completion"
data = { train = "synthetic:add?n=128&digits=1", eval = "synthetic:add?n=64&digits=1&seed=2", replay = { from = "pretrain", ratio = 0.25 } }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8 }]
batch_size = 8
seq_len = 12
optimizer = { lr = 1e-2 }
max_steps = 60
eval_every = 10
"#;

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "error");
    c
}

/// Starts the run, SIGKILLs it once its first mid-stage checkpoint is written, waits,
/// and resumes it to the end.
fn killed_and_resumed(dir: &Path) -> PathBuf {
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, CONFIG).expect("config");
    let run = dir.join("run");
    let mut child = stagecraft().arg("run").arg(&cfg).arg("--run-dir").arg(&run).arg("--quiet").spawn().expect("spawn");
    let t = Instant::now();
    while !run.join("checkpoints/resume/manifest.json").exists() {
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before its first checkpoint");
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(1500));
    let out = stagecraft().arg("run").arg("--resume").arg(&run).arg("--quiet").output().expect("resume");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run
}

/// The records of a TFRecord file, each checked against its masked CRC32C.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let masked = |d: &[u8]| crc32c::crc32c(d).rotate_right(15).wrapping_add(0xa282_ead8);
    let bytes = std::fs::read(path).expect("events file");
    let (mut out, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let len_bytes: [u8; 8] = bytes[at..at + 8].try_into().expect("length");
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("crc"));
        assert_eq!(crc, masked(&len_bytes), "{}: length CRC at byte {at}", path.display());
        let len = u64::from_le_bytes(len_bytes) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().expect("crc"));
        assert_eq!(crc, masked(data), "{}: data CRC at byte {at}", path.display());
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

fn scalars(events: &[Event], tag: &str) -> Vec<(i64, f32)> {
    events
        .iter()
        .filter_map(|e| {
            let v = e.summary.as_ref()?.value.first()?;
            (v.tag == tag).then_some((e.step, v.simple_value?))
        })
        .collect()
}

#[test]
fn a_resumed_run_tracks_time_throughput_memory_csv_and_tensorboard() {
    let dir = scratch("tracking-resume");
    let run = killed_and_resumed(&dir);
    let rows = metrics(&run);
    let train: Vec<&MetricRow> = rows.iter().filter(|r| r.split == Split::Train).collect();
    assert_eq!(train.len(), 80, "every step logged once");

    // Every row is stamped; the run's start (time - elapsed_s) is the same before and
    // after the resume: elapsed_s went on, it did not restart.
    let starts: Vec<f64> = rows
        .iter()
        .map(|r| parse_iso8601(r.time.as_deref().expect("time")).expect("ISO 8601") - r.elapsed_s.expect("elapsed_s"))
        .collect();
    let spread = starts.iter().cloned().fold(f64::MIN, f64::max) - starts.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread < 0.05, "run start moved by {spread} s across the resume");
    assert!(rows.last().and_then(|r| r.elapsed_s).expect("elapsed") >= 1.5, "the time down is part of the run");
    assert!(rows.iter().all(|r| r.peak_rss_mib.is_some_and(|m| m > 1.0)), "peak RSS on every row");
    assert!(train.iter().all(|r| r.tokens_per_s.is_some_and(|t| t > 0.0)), "throughput on every train row");
    assert!(rows.iter().filter(|r| r.split == Split::Eval).all(|r| r.tokens_per_s.is_none()));

    // metrics.csv: the jsonl's rows, once each, every line as wide as the header.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), rows.len() + 1);
    assert!(lines[0].starts_with(
        "stage,step,global_step,split,set,loss,task_loss,replay_loss,lr,grad_norm,penalty,time,elapsed_s,tokens_per_s,"
    ));
    assert!(lines[0].contains("eval/adapt/exact_match") && lines[0].contains("eval/pretrain/loss"), "{}", lines[0]);
    let width = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == width));
    assert!(lines.iter().any(|l| l.starts_with("adapt,1,21,train,")), "global steps go on across stages");

    // TensorBoard: one file per process, the resumed one starting with SessionLog START.
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("tensorboard"))
        .expect("tensorboard dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files
        .iter()
        .all(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents."))));
    let decoded: Vec<Vec<Event>> = files
        .iter()
        .map(|f| records(f).iter().map(|d| Event::decode(d.as_slice()).expect("Event proto")).collect())
        .collect();
    for events in &decoded {
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    }
    let start = decoded[1][1].session_log.as_ref().map(|s| (s.status, decoded[1][1].step));
    let (status, resumed_at) = start.expect("the resumed file starts with a SessionLog");
    assert_eq!(status, 1);
    assert!(resumed_at > 20, "resumed within the second stage, global step {resumed_at}");
    // What TensorBoard shows: the first file up to the resume, then the second file.
    let all: Vec<Event> = decoded[0].iter().filter(|e| e.step < resumed_at).chain(&decoded[1]).cloned().collect();
    let loss = scalars(&all, "train/loss");
    let steps: Vec<i64> = loss.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (1..=80).collect::<Vec<i64>>(), "one global timeline, no step lost or repeated");
    for (r, (_, v)) in train.iter().zip(&loss) {
        assert_eq!(r.loss.map(|l| l as f32), Some(*v));
    }
    assert_eq!(scalars(&all, "train/tokens_per_s").len(), 80);
    let evals = scalars(&all, "eval/adapt/exact_match");
    assert_eq!(evals.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [30, 40, 50, 60, 70, 80]);
    assert!(!scalars(&all, "eval/pretrain/loss").is_empty());
}
