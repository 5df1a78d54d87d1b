//! `stagecraft compare`: two seeds of one configuration show no evidence of a
//! difference on the fine-tuning set; a configuration that trains a fraction of the
//! steps is worse, with an interval well below 0; the page and JSON carry the same.

mod support;

use stagecraft_core::compare::{compare_runs, CompareOptions, Verdict};
use std::path::Path;
use std::process::Command;
use support::scratch;

const PIPELINE: &str = r#"
[run]
name = "cmp"
seed = 1

[model]
arch = "llama"
hidden_size = 64
num_layers = 2
num_heads = 4

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=2000&digits=1&lines=2" }
optimizer = { lr = 3e-3 }
schedule = { warmup_steps = 10, decay = "cosine", min_lr_ratio = 0.1 }
max_steps = 100
batch_size = 32
seq_len = 32

[[stages]]
name = "finetune_add"
objective = "completion"
data = { train = "synthetic:add?n=2000&digits=1", eval = "synthetic:add?n=200&digits=1&seed=2" }
optimizer = { lr = 3e-3 }
schedule = { warmup_steps = 10, decay = "cosine", min_lr_ratio = 0.1 }
max_steps = 150
batch_size = 32
seq_len = 12
"#;

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "warn");
    c
}

fn run(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let run = dir.join(name);
    let out = stagecraft()
        .args(["run", dir.join("p.toml").to_str().expect("path"), "--quiet", "--run-dir"])
        .arg(&run)
        .args(extra)
        .output()
        .expect("stagecraft runs");
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    run
}

#[test]
fn two_seeds_show_no_evidence_and_a_short_run_is_worse() {
    let dir = scratch("compare");
    std::fs::write(dir.join("p.toml"), PIPELINE).expect("write config");
    let a = run(&dir, "seed1", &["--seed", "1"]);
    let b = run(&dir, "seed2", &["--seed", "2"]);
    let short = run(&dir, "short", &["--seed", "1", "--set", "stages.finetune_add.max_steps=20"]);

    let opts = CompareOptions::default();
    let seeds = compare_runs(&a, &b, &opts).expect("compare seeds");
    let [set] = seeds.sets.as_slice() else { panic!("one eval set: {seeds:?}") };
    assert_eq!((set.set.as_str(), set.metric.as_str(), set.n), ("finetune_add", "exact_match", 200));
    assert_eq!(set.verdict, Verdict::NoEvidence, "{set:?}");
    assert!(set.ci.0 <= 0.0 && set.ci.1 >= 0.0);

    let worse = compare_runs(&a, &short, &opts).expect("compare a short run");
    let set = &worse.sets[0];
    assert_eq!(set.verdict, Verdict::Worse, "{set:?}");
    assert!(set.diff < -0.3 && set.ci.1 < 0.0 && set.ci.0 <= set.diff && set.diff <= set.ci.1, "{set:?}");
    // The other way round it is better, by the same amount.
    let better = compare_runs(&short, &a, &opts).expect("compare reversed");
    assert_eq!(better.sets[0].verdict, Verdict::Better);
    assert!((better.sets[0].diff + set.diff).abs() < 1e-12);

    // The command: the table, the page, and JSON with the same verdict.
    let page = dir.join("ab.html");
    let out = stagecraft().arg("compare").arg(&a).arg(&short).arg("--html").arg(&page).output().expect("compare");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.starts_with("finetune_add") && l.ends_with("worse")), "{text}");
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.contains("<td class=\"n worse\">worse</td>") && html.contains("<svg"), "{html}");
    let out =
        stagecraft().arg("compare").arg(&a).arg(&b).arg("--json").arg("--html").arg(&page).output().expect("json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["sets"][0]["verdict"], "no_evidence");

    // A set whose scores one run lacks is named as not compared, not guessed at.
    std::fs::remove_dir_all(short.join("examples")).expect("remove the per-example files");
    let c = compare_runs(&a, &short, &opts).expect("compare without scores");
    assert!(c.sets.is_empty() && c.skipped[0].1.contains("no per-example scores"), "{c:?}");
    let err = compare_runs(&a, &dir.join("nowhere"), &opts).expect_err("not a run");
    assert!(err.to_string().contains("not a run directory"), "{err}");
}
