//! The `stagecraft` binary: `plugin list` (built-ins, the search path, `./plugins`) and
//! `plugin inspect`, `forward`, `generate`, `model sites`, `run` on the example
//! pipelines, `export`, `merge`, `bench`, and one-line errors.

mod support;

use std::path::Path;
use std::process::Command;
use support::{compat, first_party, max_abs_diff, scratch};

/// Runs `stagecraft` in an empty working directory (no `./plugins`).
fn stagecraft(args: &[&str], plugin_path: Option<&Path>) -> (bool, String, String) {
    stagecraft_in(&scratch("cli-cwd"), args, plugin_path)
}

fn stagecraft_in(cwd: &Path, args: &[&str], plugin_path: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    cmd.args(args).current_dir(cwd).env_remove("STAGECRAFT_PLUGIN_PATH");
    if let Some(p) = plugin_path {
        cmd.env("STAGECRAFT_PLUGIN_PATH", p);
    }
    let out = cmd.output().expect("run stagecraft");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn plugin_list_shows_builtins_and_search_path_plugins_with_versions() {
    let (ok, out, _) = stagecraft(&["plugin", "list"], None);
    assert!(ok);
    let header = out.lines().next().expect("header");
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["NAME", "KIND", "VERSION", "SDK", "SOURCE"]);
    for name in ["lora", "adamw", "sgd", "lion", "causal_lm", "completion", "classification", "distill"] {
        assert!(out.lines().any(|l| l.starts_with(name) && l.ends_with("built-in")), "{name} missing:\n{out}");
    }

    // Plugins on STAGECRAFT_PLUGIN_PATH; a broken file there is one warning line.
    let dir = scratch("cli-path");
    std::fs::copy(&compat().faulty, dir.join("libfaulty.so")).expect("copy");
    std::fs::copy(&compat().old, dir.join("libold.so")).expect("copy");
    std::fs::copy(&compat().old_mismatch, dir.join("libbroken.so")).expect("copy");
    let (ok, out, err) = stagecraft(&["plugin", "list"], Some(&dir));
    assert!(ok, "{err}");
    let old = out.lines().find(|l| l.starts_with("old_scale")).expect("old plugin listed");
    assert!(old.contains("1.0.0 (older SDK, accepted)") && old.contains("libold.so"), "{old}");
    assert!(out.lines().any(|l| l.starts_with("panicky") && l.contains("libfaulty.so")));
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("libbroken.so") && warnings[0].contains("incompatible ABI"), "{err}");

    // `./plugins` is searched too, and a file there replaces the built-in of its name.
    let cwd = scratch("cli-plugins-dir");
    std::fs::create_dir_all(cwd.join("plugins")).expect("mkdir");
    std::fs::copy(first_party("ia3"), cwd.join("plugins/libstagecraft_ia3.so")).expect("copy");
    let (ok, out, err) = stagecraft_in(&cwd, &["plugin", "list"], None);
    assert!(ok, "{err}");
    let ia3 = out.lines().find(|l| l.starts_with("ia3 ")).expect("ia3 listed");
    assert!(ia3.ends_with("libstagecraft_ia3.so") && !ia3.contains("built-in"), "{ia3}");
}

#[test]
fn plugin_inspect_shows_schema_and_sha256() {
    let lora = first_party("lora");
    let (ok, out, err) = stagecraft(&["plugin", "inspect", lora.to_str().expect("utf-8 path")], None);
    assert!(ok, "{err}");
    let sha = out.lines().find_map(|l| l.strip_prefix("sha256")).expect("sha256 line").trim().to_string();
    let sum = Command::new("sha256sum").arg(&lora).output().expect("sha256sum");
    let want = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(sha, want, "the file's sha256");
    assert!(out.contains("method lora"), "{out}");
    assert!(out.contains("\"targets\"") && out.contains("\"use_rslora\""), "config schema shown:\n{out}");

    let (ok, _, err) = stagecraft(&["plugin", "inspect", "no-such.so"], None);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such.so") && err.contains("cannot read"), "{err}");
}

#[test]
fn forward_writes_logits_that_match_transformers_and_peft() {
    let dev = candle_core::Device::Cpu;
    let refs = support::reference("llama-tiny");
    let dir = scratch("cli-forward");
    let input = dir.join("in.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("input_ids".to_string(), refs["input_ids"].clone())]),
        &input,
    )
    .expect("save");
    let base = support::fixture("llama-tiny", "base");
    let lora = support::fixture("llama-tiny", "lora");
    let out = dir.join("out.safetensors");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    for (extra, want) in [
        (vec![], "logits"),
        (vec!["--adapter".to_string(), path(&lora)], "logits_lora"),
        (vec!["--adapter".to_string(), path(&lora), "--merge".to_string()], "logits_lora_merged"),
    ] {
        let mut args = vec![
            "forward".to_string(),
            "--model".into(),
            path(&base),
            "--input".into(),
            path(&input),
            "--out".into(),
            path(&out),
        ];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = stagecraft(&args, None);
        assert!(ok, "{err}");
        let got = candle_core::safetensors::load(&out, &dev).expect("out");
        let d = max_abs_diff(&got["logits"], &refs[want]);
        assert!(d <= 1e-5, "{want}: {d}");
    }

    // An encoder writes last_hidden_state, with the attention mask applied.
    let brefs = support::reference("bert-tiny");
    let binput = dir.join("bert-in.safetensors");
    let map = std::collections::HashMap::from([
        ("input_ids".to_string(), brefs["input_ids"].clone()),
        ("attention_mask".to_string(), brefs["attention_mask"].clone()),
    ]);
    candle_core::safetensors::save(&map, &binput).expect("save");
    let (ok, _, err) = stagecraft(
        &[
            "forward",
            "--model",
            &path(&support::fixture("bert-tiny", "base")),
            "--input",
            &path(&binput),
            "--out",
            &path(&out),
        ],
        None,
    );
    assert!(ok, "{err}");
    let got = candle_core::safetensors::load(&out, &dev).expect("out");
    assert!(max_abs_diff(&got["last_hidden_state"], &brefs["last_hidden_state"]) <= 1e-5);

    // Bad input: one line, non-zero exit.
    let (ok, _, err) =
        stagecraft(&["forward", "--model", &path(&dir), "--input", &path(&input), "--out", &path(&out)], None);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn generate_is_greedy_like_transformers_and_samples_by_seed_and_model_sites_lists_sites() {
    use stagecraft_core::generate::{generate, Sampling};
    use stagecraft_core::model::{load_model, Adapters};
    // Greedy decoding gives transformers' tokens (`model.generate(do_sample=False)`).
    let r = support::reference("llama-tiny");
    let model = load_model(&support::fixture("llama-tiny", "base"), &candle_core::Device::Cpu).expect("model");
    let prompt: Vec<u32> = r["greedy_prompt"]
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::U32))
        .and_then(|t| t.to_vec1())
        .expect("prompt");
    let want: Vec<u32> = r["greedy_tokens"]
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::U32))
        .and_then(|t| t.to_vec1())
        .expect("tokens");
    let greedy = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };
    let got = generate(
        model.as_ref(),
        &Adapters::none(model.sites().len()),
        &prompt,
        8,
        &greedy,
        None,
        &candle_core::Device::Cpu,
    )
    .expect("generate");
    assert_eq!([prompt, got].concat(), want);

    let base = support::fixture("llama-tiny", "base");
    let base = base.to_str().expect("utf-8");
    let run = |seed: &str| {
        stagecraft(
            &[
                "generate",
                "--model",
                base,
                "--prompt",
                "ab",
                "--max-tokens",
                "12",
                "--temperature",
                "1.0",
                "--top-p",
                "0.95",
                "--seed",
                seed,
            ],
            None,
        )
    };
    let (ok, a, err) = run("3");
    assert!(ok, "{err}");
    assert_eq!(a, run("3").1, "one seed, one continuation");
    assert!(a.starts_with("ab"));
    assert_ne!(a, run("4").1, "another seed, another continuation");
    // The command's greedy continuation is the library's, decoded as bytes.
    let (ok, cli_greedy, err) = stagecraft(&["generate", "--model", base, "--prompt", "ab", "--max-tokens", "4"], None);
    assert!(ok, "{err}");
    let ids = generate(
        model.as_ref(),
        &Adapters::none(model.sites().len()),
        &[97, 98],
        4,
        &greedy,
        Some(10),
        &candle_core::Device::Cpu,
    )
    .expect("generate");
    let bytes: Vec<u8> = ids.iter().map(|&t| t as u8).collect();
    assert_eq!(
        cli_greedy.trim_end_matches('\n'),
        format!("ab{}", String::from_utf8_lossy(&bytes)).trim_end_matches('\n')
    );

    let (ok, sites, err) = stagecraft(&["model", "sites", "--model", base], None);
    assert!(ok, "{err}");
    let q = sites.lines().find(|l| l.starts_with("model.layers.1.self_attn.q_proj ")).expect("q_proj site");
    assert!(q.contains("linear") && q.contains("in 64, out 64") && q.ends_with(" attn_q"), "{q}");
    assert!(sites.lines().any(|l| l.starts_with("model.layers.0.self_attn.key_states ") && l.contains("attn_key")));
}

#[test]
fn model_sites_lists_a_pipelines_fresh_model() {
    let file = support::root().join("examples/pipelines/tiny.toml");
    let (ok, sites, err) = stagecraft(&["model", "sites", "--config", &file.to_string_lossy()], None);
    assert!(ok, "{err}");
    // tiny.toml: a fresh 2-layer Llama of hidden size 32.
    let up = sites.lines().find(|l| l.starts_with("model.layers.1.mlp.up_proj ")).expect("up_proj site");
    assert!(up.contains("linear") && up.contains("in 32, out 88") && up.ends_with(" mlp_up"), "{up}");
    assert!(!sites.contains("model.layers.2."), "two layers:\n{sites}");
}

#[test]
fn generate_with_a_peft_adapter_continues_as_peft_does() {
    // A word-level tokenizer whose token `tN` is id N, so that the fixture's prompt
    // (ids 5, 17, 42) can be typed and every generated id read back.
    let dir = scratch("cli-generate-peft");
    let tok = support::word_level_tokenizer(&dir);
    let r = support::reference("llama-tiny");
    let ids = |name: &str| -> Vec<u32> {
        r[name].flatten_all().and_then(|t| t.to_dtype(candle_core::DType::U32)).and_then(|t| t.to_vec1()).expect("ids")
    };
    let prompt: String = ids("greedy_prompt").iter().map(|i| format!("t{i} ")).collect();
    let generate = |adapter: Option<&str>| -> Vec<u32> {
        let base = support::fixture("llama-tiny", "base");
        let mut args = vec![
            "generate",
            "--model",
            base.to_str().expect("utf-8"),
            "--tokenizer",
            tok.to_str().expect("utf-8"),
            "--prompt",
            &prompt,
            "--max-tokens",
            "8",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        let (ok, out, err) = stagecraft(&args, None);
        assert!(ok, "{err}");
        out.split_whitespace()
            .map(|t| t.strip_prefix('t').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("token `{t}` in {out}")))
            .collect()
    };
    let lora = support::fixture("llama-tiny", "lora");
    let with_lora = generate(Some(lora.to_str().expect("utf-8")));
    assert_eq!(with_lora, ids("greedy_tokens_lora"), "greedy through PEFT's LoRA adapter");
    assert_eq!(generate(None), ids("greedy_tokens"), "greedy on the base");
    assert_ne!(with_lora, ids("greedy_tokens"), "the adapter changes the continuation");
}

#[test]
fn a_gate_stop_exits_with_its_own_code_and_seed_sets_the_runs_seed() {
    let file = support::root().join("examples/pipelines/tiny.toml");
    let dir = scratch("cli-gate-stop");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
        cmd.arg("run").arg(&file).args(["--quiet", "--set", "stages.pretrain.max_steps=5"]).args(args);
        cmd.current_dir(&dir).env_remove("STAGECRAFT_PLUGIN_PATH").output().expect("run stagecraft")
    };
    // A learning rate that wrecks the earlier stage, under a gate that allows no drop.
    let wreck =
        ["--set", "stages.adapt_sub.optimizer.lr=0.3", "--set", "stages.adapt_sub.gates.retention.max_drop=0.0"];
    let loss_gate = ["--set", "stages.adapt_sub.gates.retention.metric=loss", "--run-dir", "gated"];
    let out = run(&[&wreck[..], &loss_gate[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("a retention gate failed in stage `adapt_sub`"), "{err}");

    let seeded = |seed: &str, run_dir: &str| {
        let out = run(&["--seed", seed, "--run-dir", run_dir]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.join(run_dir).join("config.toml")).expect("the run's config")
    };
    let (a, b) = (seeded("11", "seed-a"), seeded("12", "seed-b"));
    assert!(a.contains("seed = 11") && b.contains("seed = 12"), "{a}");
}

#[test]
fn generate_refuses_an_encoder_first() {
    let base = support::fixture("bert-tiny", "base");
    let (ok, _, err) = stagecraft(&["generate", "--model", &base.to_string_lossy(), "--prompt", "hi"], None);
    assert!(!ok);
    assert!(err.contains("cannot generate with `bert`: it is an encoder"), "{err}");
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let file = support::root().join("examples/pipelines/tiny.toml");
    let run_dir = scratch("cli-no-colour").join("run");
    let (ok, _, err) = stagecraft(&["run", &file.to_string_lossy(), "--run-dir", &run_dir.to_string_lossy()], None);
    assert!(ok, "{err}");
    assert!(err.contains("INFO"), "the run should log its stage ends:\n{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape codes in a log that is not a terminal:\n{err}");
}

#[test]
fn the_example_pipelines_run_and_print_the_retention_table() {
    for name in ["tiny", "reference"] {
        let file = support::root().join(format!("examples/pipelines/{name}.toml"));
        let dir = scratch(&format!("cli-run-{name}"));
        let run_dir = dir.join("run");
        let (ok, out, err) =
            stagecraft(&["run", &file.to_string_lossy(), "--run-dir", &run_dir.to_string_lossy(), "--quiet"], None);
        assert!(ok, "{name}: {err}");
        assert!(out.contains("main score") && out.contains("forgetting"), "{name}: {out}");
        for f in ["config.toml", "metrics.jsonl", "retention.json", "report.html", "plugins.json", "data.json"] {
            assert!(run_dir.join(f).exists(), "{name}: {f} missing");
        }
    }
    // A gate that stops the pipeline makes the command fail, after the table.
    let file = support::root().join("examples/pipelines/reference.toml");
    let run_dir = scratch("cli-run-stop").join("run");
    let (ok, out, err) = stagecraft(
        &[
            "run",
            &file.to_string_lossy(),
            "--run-dir",
            &run_dir.to_string_lossy(),
            "--quiet",
            "--set",
            "stages.adapt.gates.retention.1.max_drop=0.0",
        ],
        None,
    );
    assert!(!ok && out.contains("ended by the retention gate (pipeline stopped)"), "{out}");
    assert!(err.contains("error: the pipeline stopped: a retention gate failed in stage `adapt`"), "{err}");
    // A type error names the file, the position and the key.
    let bad = scratch("cli-run-bad").join("bad.toml");
    let text = std::fs::read_to_string(support::root().join("examples/pipelines/tiny.toml")).expect("read").replacen(
        "batch_size = 16",
        "batch_size = \"16\"",
        1,
    );
    std::fs::write(&bad, text).expect("write");
    let (ok, _, err) = stagecraft(&["run", &bad.to_string_lossy()], None);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    assert!(err.contains("bad.toml:21:14: stages[0].batch_size: invalid type: string \"16\""), "{err}");
}

/// The adapter tour with small budgets, then every command that takes its stages
/// out: `export` in both formats, `forward` and `generate` on a run's stage, `merge`.
#[test]
fn the_adapter_tour_runs_and_its_stages_export_and_run_outside() {
    let file = support::root().join("examples/pipelines/adapters.toml");
    let dir = scratch("cli-adapters");
    let run_dir = dir.join("run");
    let mut args: Vec<String> = ["run", &file.to_string_lossy(), "--run-dir", &run_dir.to_string_lossy(), "--quiet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--set".to_string(), "stages.pretrain.schedule.warmup_steps=2".to_string()]);
    for (stage, steps) in [
        ("pretrain", 10),
        ("add", 4),
        ("lora", 3),
        ("dora", 3),
        ("ia3", 3),
        ("prefix", 3),
        ("bottleneck", 3),
        ("two_loras", 3),
        ("prompt", 3),
        ("after_prompt", 3),
    ] {
        args.extend(["--set".to_string(), format!("stages.{stage}.max_steps={steps}")]);
    }
    let (ok, out, err) = stagecraft(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(ok, "{err}");
    assert!(out.contains("stage after_prompt: 3 steps"), "{out}");
    let run = run_dir.to_string_lossy().to_string();

    let peft = dir.join("ia3-peft");
    let (ok, out, err) = stagecraft(&["export", &run, "--stage", "ia3", "--out", &peft.to_string_lossy()], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("ia3-peft/base")
            && peft.join("adapter_config.json").exists()
            && peft.join("base/config.json").exists(),
        "{out}"
    );
    let merged = dir.join("dora-merged");
    let (ok, _, err) = stagecraft(
        &["export", &run, "--stage", "dora", "--out", &merged.to_string_lossy(), "--format", "merged"],
        None,
    );
    assert!(ok, "{err}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(merged.join(f).exists(), "{f} missing from the merged export");
    }
    let (ok, _, err) = stagecraft(
        &["export", &run, "--stage", "prompt", "--out", &dir.join("x").to_string_lossy(), "--format", "merged"],
        None,
    );
    assert!(
        !ok && err.trim().lines().count() == 1
            && err.contains("stage `prompt` cannot be exported merged")
            && err.contains("--format peft"),
        "{err}"
    );
    let (ok, _, err) =
        stagecraft(&["export", &run, "--stage", "bottleneck", "--out", &dir.join("y").to_string_lossy()], None);
    assert!(!ok && err.contains("adapter `bottleneck` has no PEFT format"), "{err}");

    // The bottleneck stage, a third-party-style method with no PEFT format, runs outside
    // the pipeline from the run itself.
    let ids = dir.join("ids.safetensors");
    let t = std::collections::HashMap::from([(
        "input_ids".to_string(),
        candle_core::Tensor::new(&[[55i64, 45, 51, 61]], &candle_core::Device::Cpu).expect("ids"),
    )]);
    candle_core::safetensors::save(&t, &ids).expect("save ids");
    let logits = dir.join("logits.safetensors");
    let (ok, _, err) = stagecraft(
        &[
            "forward",
            "--adapter",
            &format!("{run}:bottleneck"),
            "--input",
            &ids.to_string_lossy(),
            "--out",
            &logits.to_string_lossy(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = stagecraft(
        &["generate", "--adapter", &format!("{run}:after_prompt"), "--prompt", "7-3=", "--max-tokens", "2"],
        None,
    );
    assert!(ok && out.starts_with("7-3="), "{out}{err}");
    // The merged directory and the PEFT one load as any model and adapter.
    let (ok, _, err) = stagecraft(
        &[
            "forward",
            "--model",
            &merged.to_string_lossy(),
            "--input",
            &ids.to_string_lossy(),
            "--out",
            &logits.to_string_lossy(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let remerged = dir.join("ia3-merged");
    let (ok, _, err) = stagecraft(
        &[
            "merge",
            "--model",
            &peft.join("base").to_string_lossy(),
            "--adapter",
            &peft.to_string_lossy(),
            "--out",
            &remerged.to_string_lossy(),
        ],
        None,
    );
    assert!(ok && remerged.join("model.safetensors").exists(), "{err}");
}

#[test]
fn the_default_pipeline_learns_both_tasks() {
    let run_dir = scratch("cli-run-default").join("run");
    let (ok, out, err) = stagecraft(&["run", "--run-dir", &run_dir.to_string_lossy(), "--quiet"], None);
    assert!(ok, "{err}");
    let m =
        stagecraft_core::report::RetentionMatrix::read_json(&run_dir.join("retention.json")).expect("retention.json");
    let last = m.stages.len() - 1;
    assert_eq!(m.stages, ["pretrain", "finetune_add", "adapt_sub"], "{out}");
    for set in ["finetune_add", "adapt_sub"] {
        let j = m.sets.iter().position(|s| s == set).expect("set");
        assert_eq!(m.metric_of(j), "exact_match");
        let em = m.value(last, j).expect("final score");
        assert!(em >= 0.9, "{set}: exact match {em} after the last stage\n{out}");
    }
}

#[test]
fn check_prints_the_plan_without_training() {
    let file = support::root().join("examples/pipelines/tiny.toml");
    let cwd = scratch("cli-check");
    let (ok, out, err) = stagecraft_in(
        &cwd,
        &["run", &file.to_string_lossy(), "--check", "--set", "stages.adapt_sub.max_steps=7"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("model: llama (2 layers, hidden 32, vocab 256)"), "{out}");
    assert!(out.contains("3. adapt_sub [completion] 7 steps x 16 examples"), "{out}");
    let sites = "adapter lora on 8 sites: model.layers.*.self_attn.q_proj x2 (attn_q), model.layers.*.self_attn.v_proj x2 (attn_v), model.layers.*.mlp.up_proj x2 (mlp_up), model.layers.*.mlp.down_proj x2 (mlp_down)";
    assert!(out.contains(sites), "{out}");
    // r 8 on two layers: q and v 32 -> 32, up 32 -> 88, down 88 -> 32, each r·(in + out).
    let lora = 2 * (2 * 8 * (32 + 32) + 2 * 8 * (32 + 88));
    assert_eq!(lora, 5_888);
    assert!(out.contains("trains 41,632 of 41,632 parameters (100.00%)"), "pretraining trains everything:\n{out}");
    assert!(out.contains("trains 5,888 of 47,520 parameters (12.39%)"), "the base is frozen under LoRA:\n{out}");
    assert_eq!(std::fs::read_dir(&cwd).expect("cwd").count(), 0, "nothing written");
    let (ok, _, err) = stagecraft(
        &["run", &file.to_string_lossy(), "--check", "--set", "stages.adapt_sub.adapters.0.targets=[\"nope\"]"],
        None,
    );
    assert!(
        !ok && err.contains("stage `adapt_sub`: adapter `lora`") && err.contains("`nope` matches no linear site"),
        "{err}"
    );
}

#[test]
fn bench_prints_one_json_line_with_its_measurements() {
    let (ok, out, err) = stagecraft(&["bench", "--workload", "w1", "--mode", "lora", "--steps", "1"], None);
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(
        (line["workload"].as_str(), line["mode"].as_str(), line["device"].as_str(), line["precision"].as_str()),
        (Some("w1"), Some("lora"), Some("cpu"), Some("fp32"))
    );
    assert_eq!(
        line["trainable"].as_u64(),
        Some(2 * 4 * (8 * 256 + 256 * 8)),
        "LoRA r 8 on q_proj and v_proj of 4 layers"
    );
    assert!(
        line["ms_per_step"].as_f64().is_some_and(|m| m > 0.0) && line["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0),
        "{line}"
    );
    assert!(line["mfu"].is_null() && line["peak_gpu_mib"].is_null(), "no GPU figures on the CPU: {line}");
    let (ok, _, err) = stagecraft(&["bench", "--workload", "w1", "--device", "cuda:0"], None);
    assert!(!ok && err.contains("built without CUDA"), "{err}");
}
