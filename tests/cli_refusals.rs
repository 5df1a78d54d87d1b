//! The `stagecraft` binary refuses bad input in one line before it runs a model or
//! allocates much: a closed stdout ends a command quietly, `forward --out` never replaces
//! a node that is not a regular file, inputs beyond the context length or the memory
//! available are refused, malformed `input_ids` are named with their shape, and model
//! directories that disagree with their config warn (or are refused) by tensor name, and
//! a plugin refusing its config is reported at the key in the pipeline file.

mod support;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use support::{fixture, scratch};

/// The command, run in an empty directory with no plugin search path.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    cmd.args(args).current_dir(scratch("refusals-cwd")).env_remove("STAGECRAFT_PLUGIN_PATH");
    cmd
}

/// Waits for `child` at most `limit`; kills it and fails the test when it takes longer.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = std::time::Instant::now();
    while child.try_wait().expect("poll").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Runs `stagecraft` (killed after a minute): (success, stdout, stderr).
fn stagecraft(args: &[&str]) -> (bool, String, String) {
    let child =
        command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().expect("spawn");
    let out = wait_at_most(child, Duration::from_secs(60), &args.join(" "));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The one line of a refusal: asserts a failure with exactly one line on stderr.
fn refusal(args: &[&str]) -> String {
    let (ok, out, err) = stagecraft(args);
    assert!(!ok, "{args:?} succeeded:\n{out}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line:\n{err}");
    err.trim().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A safetensors file with these tensors.
fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    candle_core::safetensors::save(&map, path).expect("save safetensors");
}

/// `input_ids` `[1, n]` of ids 1..=n (mod 200) in `dir/name`.
fn ids_file(dir: &Path, name: &str, n: usize) -> PathBuf {
    let ids: Vec<i64> = (0..n).map(|i| (i % 200) as i64 + 1).collect();
    let path = dir.join(name);
    save(&path, &[("input_ids", Tensor::from_vec(ids, (1, n), &Device::Cpu).expect("ids"))]);
    path
}

/// A copy of fixture `<model>/base` in a scratch directory, its config.json edited.
fn model_copy(model: &str, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> PathBuf {
    let dir = scratch(&format!("refusals-{model}"));
    let base = fixture(model, "base");
    std::fs::copy(base.join("model.safetensors"), dir.join("model.safetensors")).expect("copy weights");
    let text = std::fs::read_to_string(base.join("config.json")).expect("config");
    let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("json");
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).expect("json")).expect("write config");
    dir
}

/// Rewrites `dir/model.safetensors` with `extra` tensors added.
fn add_tensors(dir: &Path, extra: Vec<(String, Tensor)>) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("load");
    tensors.extend(extra);
    candle_core::safetensors::save(&tensors, &path).expect("save");
}

#[test]
fn a_closed_stdout_ends_listing_commands_quietly() {
    let model = fixture("llama-tiny", "base");
    for args in [vec!["model", "sites", "--model", s(&model)], vec!["plugin", "list"]] {
        // The reading end is closed before the command writes anything, so its first
        // line already meets a broken pipe (as after `| head -1` on longer output).
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let child = command(&args).stdout(writer).stderr(Stdio::piped()).spawn().expect("spawn");
        let out = wait_at_most(child, Duration::from_secs(60), &args.join(" "));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}:\n{err}");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked:\n{err}");
    }

    // Reading the first line and closing the pipe then: the same.
    let mut child = command(&["model", "sites", "--model", s(&model)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = [0u8; 16];
    child.stdout.take().expect("stdout").read_exact(&mut first).expect("first bytes");
    assert!(first.starts_with(b"NAME"));
    let out = wait_at_most(child, Duration::from_secs(60), "model sites");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn forward_refuses_to_replace_what_is_not_a_regular_file() {
    let dir = scratch("refusals-out");
    let model = fixture("llama-tiny", "base");
    let input = ids_file(&dir, "in.safetensors", 4);
    let forward = |out: &Path| refusal(&["forward", "--model", s(&model), "--input", s(&input), "--out", s(out)]);

    // A symbolic link (to a file that exists and one that does not) stays a link.
    let target = dir.join("target.safetensors");
    std::fs::write(&target, b"keep").expect("write");
    for to in [target.clone(), dir.join("missing")] {
        let link = dir.join("link.safetensors");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&to, &link).expect("symlink");
        let err = forward(&link);
        assert!(err.contains("link.safetensors") && err.contains("symbolic link"), "{err}");
        assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
        assert_eq!(std::fs::read_link(&link).expect("read link"), to);
    }
    assert_eq!(std::fs::read(&target).expect("target"), b"keep");

    // A FIFO stays a FIFO. (Not /dev/null itself: a regression, run as root, would
    // replace the machine's /dev/null with a file.)
    use std::os::unix::fs::FileTypeExt;
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let err = forward(&fifo);
    assert!(err.contains("fifo") && err.contains("FIFO"), "{err}");
    assert!(std::fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo());

    // A character device (a null device of our own, where mknod is allowed) stays one.
    let null = dir.join("null");
    if Command::new("mknod").arg(&null).args(["c", "1", "3"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    {
        let err = forward(&null);
        assert!(err.contains("character device"), "{err}");
        assert!(std::fs::symlink_metadata(&null).expect("node").file_type().is_char_device());
    }

    // A directory.
    let err = forward(&dir);
    assert!(err.contains("directory"), "{err}");

    // A regular file is replaced.
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"old").expect("write");
    let (ok, _, err) = stagecraft(&["forward", "--model", s(&model), "--input", s(&input), "--out", s(&out)]);
    assert!(ok, "{err}");
    let got = candle_core::safetensors::load(&out, &Device::Cpu).expect("written");
    assert_eq!(got["logits"].dims(), &[1, 4, 256]);
}

#[test]
fn forward_refuses_inputs_beyond_the_context_length_or_the_memory() {
    let dir = scratch("refusals-long");
    let model = fixture("llama-tiny", "base"); // max_position_embeddings = 128
    let out = dir.join("out.safetensors");
    let fits = ids_file(&dir, "fits.safetensors", 128);
    let (ok, _, err) = stagecraft(&["forward", "--model", s(&model), "--input", s(&fits), "--out", s(&out)]);
    assert!(ok, "{err}");

    let long = ids_file(&dir, "long.safetensors", 129);
    let err = refusal(&["forward", "--model", s(&model), "--input", s(&long), "--out", s(&out)]);
    assert!(err.contains("long.safetensors") && err.contains("context length of 128"), "{err}");
    assert!(err.contains("[1, 129]"), "{err}");

    // Without a context length, 200,000 tokens need about a TiB of attention scores.
    let unbounded = model_copy("llama-tiny", |c| {
        c.remove("max_position_embeddings");
    });
    let huge = ids_file(&dir, "huge.safetensors", 200_000);
    let err = refusal(&["forward", "--model", s(&unbounded), "--input", s(&huge), "--out", s(&out)]);
    assert!(err.contains("huge.safetensors") && err.contains("needs about") && err.contains("available"), "{err}");
    assert!(!out.exists() || std::fs::metadata(&out).is_ok_and(|m| m.is_file()));
}

#[test]
fn malformed_input_ids_are_named_with_their_shape() {
    let dir = scratch("refusals-ids");
    let model = fixture("llama-tiny", "base");
    let out = dir.join("out.safetensors");
    let dev = Device::Cpu;
    let cases = [
        ("empty.safetensors", Tensor::zeros((2, 0), DType::I64, &dev).expect("t"), "[2, 0]"),
        ("rank1.safetensors", Tensor::zeros(3, DType::I64, &dev).expect("t"), "[3]"),
        ("float.safetensors", Tensor::zeros((1, 3), DType::F32, &dev).expect("t"), "F32"),
        ("negative.safetensors", Tensor::new(&[[1i64, -1]], &dev).expect("t"), "-1"),
    ];
    for (file, ids, shown) in cases {
        let input = dir.join(file);
        save(&input, &[("input_ids", ids)]);
        let err = refusal(&["forward", "--model", s(&model), "--input", s(&input), "--out", s(&out)]);
        assert!(err.contains(file) && err.contains("input_ids") && err.contains(shown), "{file}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn generate_refuses_what_cannot_fit_and_streams_what_can() {
    let model = fixture("llama-tiny", "base");
    let start = std::time::Instant::now();
    let err = refusal(&["generate", "--model", s(&model), "--prompt", "ab", "--max-tokens", "1000000000"]);
    assert!(err.contains("context length of 128") && err.contains("126"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());

    // A prompt that fills the context leaves no room.
    let long = "x".repeat(200);
    let err = refusal(&["generate", "--model", s(&model), "--prompt", &long, "--max-tokens", "1"]);
    assert!(err.contains("200 tokens") && err.contains("no room"), "{err}");

    // Without --max-tokens the default stops at the context length.
    let prompt = "y".repeat(120);
    let (ok, out, err) = stagecraft(&["generate", "--model", s(&model), "--prompt", &prompt]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&prompt) && out.chars().count() <= 128 + 1, "{out:?}");

    // Without a context length, memory bounds it.
    let unbounded = model_copy("llama-tiny", |c| {
        c.remove("max_position_embeddings");
    });
    let err = refusal(&["generate", "--model", s(&unbounded), "--prompt", "ab", "--max-tokens", "1000000000"]);
    assert!(err.contains(" needs ") && err.contains("available"), "{err}");

    // Tokens are printed as they come: the first ones arrive while a long generation
    // (no end-of-text token in this vocabulary) still runs.
    let dir = scratch("refusals-stream");
    let tok = support::word_level_tokenizer(&dir);
    let args = ["generate", "--model", s(&unbounded), "--tokenizer", s(&tok), "--prompt", "t5", "--max-tokens", "4000"];
    let mut child = command(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            // The prompt and at least one generated token (`tN`).
            if seen.len() >= 4 {
                let _ = tx.send(seen.clone());
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60));
    let running = child.try_wait().expect("poll").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let first = first.expect("no generated token printed within a minute");
    assert!(first.starts_with(b"t5t"), "{:?}", String::from_utf8_lossy(&first));
    assert!(running, "the generation finished before its first token was seen");
}

#[test]
fn model_directories_that_disagree_with_their_config_warn_by_name() {
    let sites = |dir: &Path| {
        let (ok, out, err) = stagecraft(&["model", "sites", "--model", s(dir)]);
        assert!(ok, "{err}");
        (out, err)
    };
    // The fixtures themselves load without a warning.
    for model in ["llama-tiny", "llama-tied", "bert-tiny"] {
        let (_, err) = sites(&fixture(model, "base"));
        assert!(!err.contains("WARN"), "{model}: {err}");
    }

    // Fewer layers in the config than in the file: the extra layer is ignored, said once.
    let fewer = model_copy("llama-tiny", |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    let (out, err) = sites(&fewer);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("holds 2 layers") && err.contains("num_hidden_layers = 1") && err.contains("layer 1 is ignored")
    );
    assert!(!out.contains("model.layers.1."), "{out}");

    // Tensors the model does not use are named, five at most.
    let extra = model_copy("llama-tiny", |_| {});
    let t = Tensor::zeros(4, DType::F32, &Device::Cpu).expect("t");
    add_tensors(&extra, (0..7).map(|i| (format!("extra.{i}.weight"), t.clone())).collect());
    let (_, err) = sites(&extra);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("7 tensors") && err.contains("`extra.0.weight`") && err.contains("and 2 more"), "{err}");
    assert!(!err.contains("extra.6.weight"), "{err}");

    // A BERT masked-LM head, unused by the encoder, is named too.
    let bert = model_copy("bert-tiny", |_| {});
    add_tensors(&bert, vec![("cls.predictions.bias".into(), Tensor::zeros(128, DType::F32, &Device::Cpu).expect("t"))]);
    let (_, err) = sites(&bert);
    assert!(err.contains("1 tensor is") && err.contains("`cls.predictions.bias`"), "{err}");

    // A tied model whose file also holds lm_head.weight: the embedding table again is
    // fine; another matrix is refused, since tying would silently drop it.
    let embed = candle_core::safetensors::load(fixture("llama-tied", "base/model.safetensors"), &Device::Cpu)
        .expect("load")["model.embed_tokens.weight"]
        .clone();
    let same = model_copy("llama-tied", |_| {});
    add_tensors(&same, vec![("lm_head.weight".into(), embed.clone())]);
    let (_, err) = sites(&same);
    assert!(!err.contains("WARN"), "{err}");
    let other = model_copy("llama-tied", |_| {});
    add_tensors(&other, vec![("lm_head.weight".into(), (embed * 2.0).expect("scaled"))]);
    let err = refusal(&["model", "sites", "--model", s(&other)]);
    assert!(err.contains("lm_head.weight") && err.contains("tie_word_embeddings"), "{err}");
}

/// A pipeline whose adapter and optimizer tables end with `adapter` and `optimizer`.
const PLUGIN_CONFIGS: &str = r#"[run]
name = "plugin-configs"

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=16&digits=1" }
optimizer = { lr = 1e-3 }
max_steps = 1

[[stages]]
name = "adapt"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=16&digits=1" }
optimizer = { lr = 1e-3OPTIMIZER }
max_steps = 1
adapters = [
  { plugin = "lora", targets = ["q_proj"] },
  { plugin = "bottleneck"ADAPTER },
]
"#;

/// `run --check` of [`PLUGIN_CONFIGS`] with these tails: the refusal, and the line and
/// column of `needle` in the file.
fn plugin_config_refusal(adapter: &str, optimizer: &str, needle: &str) -> (String, String) {
    let text = PLUGIN_CONFIGS.replace("ADAPTER", adapter).replace("OPTIMIZER", optimizer);
    let path = scratch("plugin-configs").join("pipeline.toml");
    std::fs::write(&path, &text).expect("write");
    let offset = text.find(needle).expect("needle in the file");
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |n| n + 1) + 1;
    (refusal(&["run", "--check", s(&path)]), format!("{}:{line}:{col}: ", path.display()))
}

#[test]
fn a_plugin_refusing_its_config_is_reported_at_the_key_in_the_pipeline_file() {
    // An unknown key: at the key, with its path and the plugin's own message.
    let (e, at) = plugin_config_refusal(", reduction = 4", "", "reduction");
    assert!(
        e.contains(&format!("{at}stages[1].adapters[1].reduction: unknown field `reduction`, expected one of ")),
        "{e}"
    );
    assert!(e.ends_with("(plugin `bottleneck`)") && !e.contains("column"), "{e}");

    // A known key of the wrong type: at its value.
    let (e, at) = plugin_config_refusal(", reduction_factor = \"four\"", "", "\"four\"");
    assert!(e.contains(&format!("{at}stages[1].adapters[1].reduction_factor: invalid type: string \"four\"")), "{e}");

    // Inside an array: at the element.
    let (e, at) = plugin_config_refusal(", layers = [0, \"one\"]", "", "\"one\"");
    assert!(e.contains(&format!("{at}stages[1].adapters[1].layers[1]: invalid type")), "{e}");

    // A value the plugin refuses after parsing, naming the key: at the key.
    let (e, at) = plugin_config_refusal(", variant = \"sideways\"", "", "variant");
    assert!(e.contains(&format!("{at}stages[1].adapters[1].variant: variant must be")), "{e}");

    // The optimizer's table too.
    let (e, at) = plugin_config_refusal("", ", beta1 = 0.9", "beta1");
    assert!(e.contains(&format!("{at}stages[1].optimizer.beta1: unknown field `beta1`")), "{e}");
    assert!(e.ends_with("(plugin `adamw`)"), "{e}");
}
