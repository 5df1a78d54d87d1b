//! The README's "Fine-tuning a chat model, start to finish", run as written: its
//! `sft.toml` and its commands, in an empty folder, against a Hugging Face cache that
//! holds a small stand-in for the model it names (the tiny Llama fixture with a ChatML
//! tokenizer and chat template). The run is stopped with SIGINT after its first
//! `save_every` checkpoint, resumed with `--resume latest`, then evaluated and exported.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{fixture, root, scratch};

const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// The README's text.
fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// The walkthrough's `sft.toml`: the first toml block after "write `sft.toml`".
fn sft_toml(readme: &str) -> String {
    let after = &readme[readme.find("write `sft.toml`").expect("the walkthrough")..];
    let block = &after[after.find("```toml\n").expect("its toml block") + 8..];
    block[..block.find("```").expect("the block's end")].to_string()
}

/// A Hugging Face cache holding `MODEL` at one revision: the tiny Llama's weights (its
/// context widened to the walkthrough's rows; rotary positions have no table) and a
/// ChatML tokenizer with its chat template.
fn hub_cache(dir: &Path) -> PathBuf {
    let hub = dir.join("hub");
    let repo = hub.join(format!("models--{}", MODEL.replace('/', "--")));
    let snapshot = repo.join("snapshots/4f1c0aa9e1d6a0f5b3c2");
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs/main"), "4f1c0aa9e1d6a0f5b3c2").expect("ref");
    let base = fixture("llama-tiny", "base");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).expect("config")).expect("json");
    config["max_position_embeddings"] = 2048.into();
    std::fs::write(snapshot.join("config.json"), config.to_string()).expect("config");
    std::fs::copy(base.join("model.safetensors"), snapshot.join("model.safetensors")).expect("weights");
    let chat = root().join("tests/fixtures/chat/chatml");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(chat.join(f), snapshot.join(f)).expect("tokenizer");
    }
    hub
}

/// `n` conversations of one or two turns: additions asked and answered.
fn conversations(n: usize, seed: usize) -> String {
    (0..n)
        .map(|i| {
            let (a, b) = ((i * 7 + seed) % 50, (i * 13 + 3 * seed) % 50);
            let mut messages = vec![
                serde_json::json!({"role": "user", "content": format!("What is {a}+{b}?")}),
                serde_json::json!({"role": "assistant", "content": format!("{}", a + b)}),
            ];
            if i % 3 == 0 {
                messages
                    .insert(0, serde_json::json!({"role": "system", "content": "You answer with the number only."}));
                messages.push(serde_json::json!({"role": "user", "content": format!("And {a}+{a}?")}));
                messages.push(serde_json::json!({"role": "assistant", "content": format!("{}", 2 * a)}));
            }
            format!("{}\n", serde_json::json!({ "messages": messages }))
        })
        .collect()
}

/// `stagecraft ARGS` in `cwd` with the cache in `hub`.
fn stagecraft(cwd: &Path, hub: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.current_dir(cwd).args(args).env("HF_HUB_CACHE", hub).env_remove("STAGECRAFT_PLUGIN_PATH");
    c.env("RUST_LOG", "error").stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn succeeded(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for the run's first `save_every` checkpoint.
fn first_checkpoint(folder: &Path, child: &mut Child) -> PathBuf {
    let t = Instant::now();
    loop {
        let run = std::fs::read_dir(folder.join("runs/sft")).ok().and_then(|mut d| d.next()).and_then(|e| e.ok());
        if let Some(run) = run.map(|e| e.path()) {
            if run.join("checkpoints/resume-sft-step50").exists() {
                return run;
            }
        }
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before its first checkpoint");
        assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_readme_walkthrough_trains_stops_resumes_and_evaluates() {
    let readme = readme();
    for command in [
        "stagecraft run sft.toml --check",
        "stagecraft run sft.toml ",
        "stagecraft run sft.toml --resume latest",
        "RUN=$(ls -d runs/sft/* | tail -1)",
        "stagecraft eval --model $RUN:sft ",
        "stagecraft export $RUN --stage sft --out sft-lora",
    ] {
        assert!(readme.contains(command), "the README no longer says `{command}`");
    }
    let folder = scratch("walkthrough");
    let hub = hub_cache(&folder);
    let work = folder.join("work");
    std::fs::create_dir_all(&work).expect("work");
    std::fs::write(work.join("sft.toml"), sft_toml(&readme)).expect("sft.toml");
    std::fs::write(work.join("chat.jsonl"), conversations(3000, 1)).expect("train");
    std::fs::write(work.join("chat-eval.jsonl"), conversations(24, 5)).expect("eval");

    let plan = succeeded(stagecraft(&work, &hub, &["run", "sft.toml", "--check"]).output().expect("check"), "check");
    let template = format!(
        "messages, chat template {}",
        hub.join("models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots").display()
    );
    assert!(plan.contains(&template), "the model's own template, from the cache: {plan}");
    assert!(plan.contains("packed 3000 examples into"), "{plan}");
    let steps: usize = plan
        .split(" steps x 4 packed rows")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{plan}"));

    let mut child = stagecraft(&work, &hub, &["run", "sft.toml"]).spawn().expect("run");
    let run = first_checkpoint(&work, &mut child);
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "Ctrl-C exits 130: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!run.join("checkpoints/sft").exists(), "stopped before the stage ended");

    let resumed = stagecraft(&work, &hub, &["run", "sft.toml", "--resume", "latest"]).output().expect("resume");
    let summary = succeeded(resumed, "resume latest");
    assert!(summary.contains("stage sft:"), "{summary}");
    let rows = support::metrics(&run);
    let train = rows.iter().filter(|r| r.split == stagecraft_core::report::Split::Train).count();
    assert_eq!(train, steps, "every step of both epochs, once");
    let events = std::fs::read_dir(run.join("tensorboard")).expect("tensorboard").count();
    assert_eq!(events, 2, "one event file per process");
    assert!(run.join("report.html").exists());

    let target = format!("{}:sft", run.display());
    let table = succeeded(stagecraft(&work, &hub, &["eval", "--model", &target]).output().expect("eval"), "eval");
    assert!(table.contains("exact_match") && table.contains("loss_p90"), "{table}");
    let json =
        succeeded(stagecraft(&work, &hub, &["eval", "--model", &target, "--json"]).output().expect("eval"), "eval");
    let metrics: serde_json::Value = serde_json::from_str(&json).expect("eval --json");
    let last = rows.iter().rev().find(|r| r.set.as_deref() == Some("sft")).expect("the stage's last evaluation");
    let loss = metrics["metrics"]["loss"].as_f64().or(metrics["loss"].as_f64()).expect("loss");
    assert_eq!(loss, last.metrics["loss"], "eval reproduces the stage's own last evaluation");

    let args = ["export", &run.display().to_string(), "--stage", "sft", "--out", "sft-lora"].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    succeeded(stagecraft(&work, &hub, &args).output().expect("export"), "export");
    let adapter = std::fs::read_to_string(work.join("sft-lora/adapter_config.json")).expect("a PEFT adapter");
    assert!(adapter.contains("\"r\": 16") || adapter.contains("\"r\":16"), "{adapter}");
}
