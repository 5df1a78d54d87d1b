//! SIGKILL in the middle of a stage, then `stagecraft run --resume`: the final weights
//! equal an uninterrupted run's, bit for bit. The interrupted stage uses model and
//! adapter dropout (RNG state), a retention gate and early stopping (their snapshots),
//! so all of that must come back from the checkpoint.

mod support;

use candle_core::Device;
use stagecraft_core::checkpoint;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::scratch;

const PIPELINE: &str = r#"
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
data = { train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=8&digits=1&seed=1" }
optimizer = { lr = 3e-3 }
max_steps = 20
batch_size = 8
seq_len = 24

[[stages]]
name = "adapt"
objective = "completion"
data = { train = "synthetic:add?n=128&digits=1", eval = "synthetic:add?n=8&digits=1&seed=2", replay = { from = "pretrain", ratio = 0.25 } }
optimizer = { lr = 1e-2 }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8, dropout = 0.1 }]
train = { dropout = 0.1 }
gates = { retention = { stage = "pretrain", max_drop = 100.0, metric = "loss" } }
exit = { metric = "eval.loss", patience = 1000 }
max_steps = 400
eval_every = 20
batch_size = 8
seq_len = 12
"#;

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "warn");
    c
}

fn final_tensors(run: &Path) -> BTreeMap<String, Vec<u32>> {
    let c = checkpoint::load(&run.join("checkpoints/adapt"), &Device::Cpu).expect("final checkpoint");
    c.tensors.into_iter().map(|(k, t)| (k, t.flatten_all().expect("f").to_dtype(candle_core::DType::F32).expect("f32").to_vec1::<f32>().expect("v").into_iter().map(f32::to_bits).collect())).collect()
}

#[test]
fn resume_after_kill_is_bit_identical() {
    let dir = scratch("resume");
    let cfg = dir.join("p.toml");
    std::fs::write(&cfg, PIPELINE).expect("write config");

    let whole = dir.join("whole");
    let out = stagecraft().arg("run").arg(&cfg).arg("--run-dir").arg(&whole).arg("--quiet").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let killed = dir.join("killed");
    let mut child = stagecraft().arg("run").arg(&cfg).arg("--run-dir").arg(&killed).arg("--quiet").spawn().expect("spawn");
    let marker = killed.join("checkpoints/resume/manifest.json");
    let t = Instant::now();
    // Kill it once it has checkpointed inside the second stage.
    loop {
        assert!(child.try_wait().expect("wait").is_none(), "the run finished before it could be killed");
        if marker.exists() && killed.join("checkpoints/pretrain").exists() {
            std::thread::sleep(Duration::from_millis(30));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(!killed.join("checkpoints/adapt").exists(), "killed before the end of the stage");

    let out = stagecraft().arg("run").arg("--resume").arg(&killed).arg("--quiet").output().expect("resume");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (a, b) = (final_tensors(&whole), final_tensors(&killed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs after resume");
    }
    // The metrics log has no duplicated steps.
    let rows = stagecraft_core::report::MetricsLog::read(&killed.join("metrics.jsonl")).expect("metrics");
    let train: Vec<(String, u64)> = rows.iter().filter(|r| r.loss.is_some() && r.set.is_none()).map(|r| (r.stage.clone(), r.step)).collect();
    let mut dedup = train.clone();
    dedup.dedup();
    assert_eq!(train, dedup);
}
