//! `stagecraft search` at a small size: two tuned stages with an untuned one between,
//! four trials each. Every trial of the second tuned stage starts from the best trial
//! of the first (through one run of the stage between), trial 0 has the pipeline's own
//! values, and the best config (`best.toml`) reproduces the best trial's score when run
//! on its own. A search killed in the middle and started again ends with the same
//! trials, values and scores as one that never stopped. Bad spaces are refused in one
//! line. Population-based training (`mode = "pbt"`): the worst member copies the best
//! once per decision, each member's config replays its run bit for bit, and a killed
//! population goes on as it was.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::{checkpoint_bits, scratch, untimed_metrics};

const PIPELINE: &str = r#"
[run]
name = "search"
seed = 3

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
max_steps = 12
eval_every = 4
batch_size = 8
seq_len = 16

[[stages]]
name = "add"
objective = "completion"
data = { train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2" }
optimizer = { lr = 3e-3 }
max_steps = 6
batch_size = 8
seq_len = 12

[[stages]]
name = "sub"
objective = "completion"
data = { train = "synthetic:sub?n=64&digits=1", eval = "synthetic:sub?n=32&digits=1&seed=3", replay = { from = "pretrain", ratio = 0.25 } }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8 }]
optimizer = { lr = 1e-2 }
max_steps = 9
eval_every = 3
batch_size = 8
seq_len = 12
"#;

const SPACE: &str = r#"
[search]
sampler = "tpe"
trials = 4
startup_trials = 2
prune = { eta = 2 }

[stages.pretrain]
"optimizer.lr" = { log_uniform = [1e-3, 3e-2] }

[stages.sub]
"optimizer.lr" = { log_uniform = [1e-3, 3e-2] }
"adapters.0.r" = { choice = [2, 4, 8] }
"#;

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("pipeline.toml"), PIPELINE).expect("pipeline");
    std::fs::write(dir.join("space.toml"), SPACE).expect("space");
    (dir.join("pipeline.toml"), dir.join("space.toml"))
}

fn stagecraft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.env_remove("STAGECRAFT_PLUGIN_PATH").env("RUST_LOG", "warn");
    c
}

fn search(dir: &Path, out: &Path) -> Command {
    let (pipeline, space) = files(dir);
    let mut c = stagecraft();
    c.arg("search").arg(&pipeline).arg("--space").arg(&space).arg("--dir").arg(out).arg("--quiet");
    c
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `trials.jsonl` without wall times.
fn trials(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("trials.jsonl")).expect("trials.jsonl");
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a trial line");
            v.as_object_mut().expect("an object").remove("seconds");
            v
        })
        .collect()
}

/// The complete trial with the highest score, the lowest number among equals (the
/// search's rule).
fn best(trials: &[serde_json::Value]) -> &serde_json::Value {
    let score = |r: &serde_json::Value| r["score"].as_f64().expect("a complete trial has a score");
    let complete = trials.iter().filter(|r| r["status"] == "complete");
    complete
        .fold(None, |b: Option<&serde_json::Value>, r| match b {
            Some(b) if score(b) >= score(r) => Some(b),
            _ => Some(r),
        })
        .expect("a complete trial")
}

#[test]
fn later_stages_start_from_the_best_earlier_trial_and_best_toml_reproduces_it() {
    let dir = scratch("search-whole");
    let out = dir.join("search");
    let printed = ok(search(&dir, &out).output().expect("search runs"));
    let t = trials(&out);
    assert_eq!(t.len(), 8, "four trials per tuned stage: {t:#?}");
    let of = |stage: &str| t.iter().filter(|r| r["stage"] == stage).cloned().collect::<Vec<_>>();
    let (pre, sub) = (of("pretrain"), of("sub"));
    let value = |r: &serde_json::Value, key: &str| {
        r["values"].as_array().expect("values").iter().find(|kv| kv["key"] == key).expect("the key")["value"].clone()
    };
    assert_eq!(value(&pre[0], "optimizer.lr"), 3e-3, "trial 0 has the pipeline's own values");
    assert_eq!((value(&sub[0], "optimizer.lr"), value(&sub[0], "adapters.0.r")), (1e-2.into(), 4.into()));
    // The best pretrain trial: the highest score among complete ones.
    let best_pre = best(&pre);
    // Every sub trial branched from one run of `add` made from that trial.
    let prefix: Vec<PathBuf> = std::fs::read_dir(out.join("prefix"))
        .expect("prefix runs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(prefix.len(), 1, "{prefix:?}");
    let origin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prefix[0].join("branch.json")).expect("branch.json"))
            .expect("json");
    let best_dir = best_pre["run_dir"].as_str().expect("run_dir");
    assert!(origin["run"].as_str().expect("run").ends_with(best_dir), "{origin} from {best_dir}");
    for r in &sub {
        let run = out.join(r["run_dir"].as_str().expect("run_dir"));
        let origin: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("branch.json")).expect("branch.json"))
                .expect("json");
        assert_eq!(origin["after"], "add");
        assert!(untimed_metrics(&run).iter().filter(|m| m.stage == "pretrain").count() > 0, "the earlier stages' logs");
    }
    // best.toml holds both stages' best values; run on its own it gives the best score.
    let best_sub = best(&sub);
    let best_toml = std::fs::read_to_string(out.join("best.toml")).expect("best.toml");
    std::fs::write(dir.join("best.toml"), &best_toml).expect("copy next to the pipeline");
    let again = dir.join("again");
    ok(stagecraft()
        .arg("run")
        .arg(dir.join("best.toml"))
        .arg("--run-dir")
        .arg(&again)
        .arg("--quiet")
        .output()
        .expect("run"));
    let last = untimed_metrics(&again)
        .into_iter()
        .rev()
        .find(|m| m.stage == "sub" && m.set.as_deref() == Some("sub"))
        .expect("sub evaluated");
    assert_eq!(
        last.metrics["exact_match"],
        best_sub["value"].as_f64().expect("a value"),
        "best.toml reproduces the best trial"
    );
    assert!(printed.contains("best"), "{printed}");
    let report = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(report.contains("stage <code>sub</code>") && report.contains("Importance"), "report");
}

/// Starts `cmd` (a search into `out`), kills it once `under_way(lines of
/// trials.jsonl)` holds, and returns how many trials it had finished by then.
fn kill_when(mut cmd: Command, out: &Path, under_way: impl Fn(usize) -> bool) -> usize {
    let finished = || std::fs::read_to_string(out.join("trials.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
    let mut child = cmd.spawn().expect("search starts");
    let t0 = Instant::now();
    while !under_way(finished()) && child.try_wait().expect("wait").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the search made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill");
    child.wait().expect("reaped");
    finished()
}

/// `trials.jsonl` without wall times and commands (a resumed trial's command is
/// `run --resume`).
fn trials_without_commands(out: &Path) -> Vec<serde_json::Value> {
    let mut t = trials(out);
    for v in &mut t {
        v.as_object_mut().expect("an object").remove("command");
    }
    t
}

#[test]
fn a_killed_search_goes_on_where_it_was_and_ends_as_an_uninterrupted_one() {
    let dir = scratch("search-kill");
    let whole = dir.join("whole");
    ok(search(&dir, &whole).output().expect("search runs"));
    let killed = dir.join("killed");
    // Killed once the first stage has two finished trials and a third is under way.
    let third = killed.join("trials/pretrain-02/metrics.jsonl");
    let done = kill_when(search(&dir, &killed), &killed, |n| n >= 2 && third.exists());
    assert!(done < 8, "killed before the end ({done} trials finished)");
    ok(search(&dir, &killed).output().expect("search goes on"));
    assert_eq!(trials_without_commands(&killed), trials_without_commands(&whole), "the same trials, values and scores");
}

#[test]
fn spaces_that_cannot_be_searched_are_refused_in_one_line() {
    let dir = scratch("search-refused");
    let (pipeline, _) = files(&dir);
    let refused = |space: &str, wanted: &str| {
        let path = dir.join("bad.toml");
        std::fs::write(&path, space).expect("write");
        let out = stagecraft()
            .arg("search")
            .arg(&pipeline)
            .arg("--space")
            .arg(&path)
            .arg("--dir")
            .arg(dir.join("s"))
            .output()
            .expect("search runs");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success() && err.contains(wanted), "wanted `{wanted}`: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    };
    refused("[stages.nope]\nmax_steps = { int = [1, 2] }\n", "the pipeline has no such stage");
    refused("[stages.sub]\n\"optimizer.lr\" = { log_uniform = [0.0, 1e-2] }\n", "log_uniform needs 0 < lo <= hi");
    refused("[stages.sub]\n\"optimizer.lr\" = { uniform = [1e-3, 1e-2], int = [1, 2] }\n", "exactly one of");
    refused("[stages.sub]\nnot_a_key = { int = [1, 2] }\n", "does not fit the pipeline");
    refused(
        "[search]\nsampler = \"grid\"\n[stages.sub]\nmax_steps = { int = [1, 2] }\n",
        "expected \"tpe\" or \"random\"",
    );
    refused("", "nothing to tune");
    refused("[search]\nmode = \"pbt\"\n[stages.sub]\n\"adapters.0.r\" = { choice = [2, 4] }\n", "none is tuned here");
    refused("[search]\nmode = \"pbt\"\npbt = { interval = 2 }\n[stages.sub]\n\"optimizer.lr\" = { uniform = [1e-3, 1e-2] }\n", "not a multiple of the stage's eval_every (3)");
    refused(
        "[search]\nmode = \"pbt\"\ntrials = 1\n[stages.sub]\n\"optimizer.lr\" = { uniform = [1e-3, 1e-2] }\n",
        "needs a population",
    );
    refused(
        "[search]\nmode = \"pbt\"\n[stages.add]\n\"optimizer.lr\" = { uniform = [1e-3, 1e-2] }\n",
        "give the stage `eval_every`",
    );
}

/// Population-based training of `pretrain` (12 steps, evaluated every 4): three
/// generations of four members.
const PBT_SPACE: &str = r#"
[search]
mode = "pbt"
trials = 4
seed = 0

[stages.pretrain]
"optimizer.lr" = { log_uniform = [1e-3, 3e-2] }
"optimizer.weight_decay" = { uniform = [0.0, 0.1] }
"#;

fn pbt(dir: &Path, out: &Path) -> Command {
    let (pipeline, _) = files(dir);
    std::fs::write(dir.join("pbt.toml"), PBT_SPACE).expect("space");
    let mut c = stagecraft();
    c.arg("search").arg(&pipeline).arg("--space").arg(dir.join("pbt.toml")).arg("--dir").arg(out).arg("--quiet");
    c
}

#[test]
fn a_population_copies_its_best_and_each_members_config_replays_its_schedule() {
    let dir = scratch("search-pbt");
    let out = dir.join("search");
    ok(pbt(&dir, &out).output().expect("search runs"));
    let t = trials(&out);
    assert_eq!(t.len(), 12, "four members, three generations: {t:#?}");
    for g in 0..3 {
        let gen: Vec<&serde_json::Value> = t.iter().filter(|r| r["generation"] == g).collect();
        let wanted = if g < 2 { "paused" } else { "complete" };
        assert_eq!(gen.len(), 4);
        assert!(gen.iter().all(|r| r["status"] == wanted && r["steps"] == 4), "generation {g}: {gen:#?}");
    }
    let run = |r: &serde_json::Value| out.join(r["run_dir"].as_str().expect("run_dir"));
    let copied: Vec<&serde_json::Value> =
        t.iter().filter(|r| r["parent"].as_u64().is_some_and(|p| Some(p) != r["number"].as_u64())).collect();
    assert_eq!(copied.len(), 2, "the worst of four copies the best once per decision: {t:#?}");
    for r in &copied {
        let g = r["generation"].as_u64().expect("generation");
        let parent = t
            .iter()
            .find(|q| q["number"] == r["parent"] && q["generation"] == g - 1)
            .expect("the parent's previous generation");
        // It took the parent's state: its logs up to the copy are the parent's.
        let upto = |m: &Vec<stagecraft_core::report::MetricRow>| {
            m.iter().filter(|m| m.step <= 4 * g).cloned().collect::<Vec<_>>()
        };
        assert_eq!(upto(&untimed_metrics(&run(r))), upto(&untimed_metrics(&run(parent))));
        // And recorded the change: an `adjust` entry and event at that step.
        let config = std::fs::read_to_string(run(r).join("config.toml")).expect("config.toml");
        assert!(config.contains(&format!("after_step = {}", 4 * g)), "{config}");
        assert!(support::events(&run(r)).contains(&("pretrain".into(), 4 * g, "adjust".into())));
    }
    // A member's config is its whole schedule: run from scratch, the last copied
    // member's config gives its history and result bit for bit.
    let last = copied.last().expect("a copied member");
    let again = dir.join("again");
    ok(stagecraft()
        .arg("run")
        .arg(run(last).join("config.toml"))
        .arg("--run-dir")
        .arg(&again)
        .arg("--quiet")
        .output()
        .expect("run"));
    assert_eq!(untimed_metrics(&again), untimed_metrics(&run(last)));
    assert_eq!(checkpoint_bits(&again, "pretrain"), checkpoint_bits(&run(last), "pretrain"));
    // best.toml gives the best member's config: run to pretrain, it ends at its score.
    let best = best(&t);
    std::fs::write(dir.join("best.toml"), std::fs::read_to_string(out.join("best.toml")).expect("best.toml"))
        .expect("copy next to the pipeline");
    let b = dir.join("best-run");
    ok(stagecraft()
        .arg("run")
        .arg(dir.join("best.toml"))
        .args(["--until", "pretrain", "--quiet", "--run-dir"])
        .arg(&b)
        .output()
        .expect("run"));
    assert_eq!(checkpoint_bits(&b, "pretrain"), checkpoint_bits(&run(best), "pretrain"));
    let report = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(report.contains("generation") && report.contains("(copied)"), "report");
}

#[test]
fn a_killed_population_goes_on_where_it_was() {
    let dir = scratch("search-pbt-kill");
    let whole = dir.join("whole");
    ok(pbt(&dir, &whole).output().expect("search runs"));
    let killed = dir.join("killed");
    // Killed in the second generation, with its second member (a copy of a paused run,
    // resumed) under way.
    let second = killed.join("trials/pretrain-m01-g1/metrics.jsonl");
    let done = kill_when(pbt(&dir, &killed), &killed, |n| n >= 5 && second.exists());
    assert!(done < 12, "killed before the end ({done} records)");
    ok(pbt(&dir, &killed).output().expect("search goes on"));
    assert_eq!(trials_without_commands(&killed), trials_without_commands(&whole), "the same members and scores");
}
