//! User data in real pipelines: `.txt` and `.jsonl` files (text, prompt/completion,
//! labelled text), a Hugging Face `tokenizer.json`, BERT with a classification head;
//! and `grad_accum` from the config.

mod support;

use sha2::{Digest, Sha256};
use std::path::Path;
use support::{checkpoint_tensors, max_abs_diff, metrics, run_pipeline, scratch};

/// A word-level `tokenizer.json` (whitespace pre-tokenizer) over `words`, `[UNK]` first.
fn word_tokenizer(path: &Path, words: &[&str]) {
    let vocab: serde_json::Map<String, serde_json::Value> = std::iter::once("[UNK]")
        .chain(words.iter().copied())
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    });
    std::fs::write(path, json.to_string()).expect("write tokenizer.json");
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).expect("read")).iter().map(|b| format!("{b:02x}")).collect()
}

/// `(source, examples, sha256)` of each data source in a run's `data.json`.
fn data_records(run: &Path) -> Vec<(String, u64, Option<String>)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data.json")).expect("data.json")).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["source"].as_str().expect("source").to_string(),
                d["examples"].as_u64().expect("examples"),
                d["sha256"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn bert_learns_to_classify_labelled_jsonl_through_a_tokenizer_json() {
    let dir = scratch("bert-data");
    let words = ["the", "film", "movie", "was", "very", "quite", "good", "bad", "great", "awful"];
    let tokenizer = dir.join("tokenizer.json");
    word_tokenizer(&tokenizer, &words);
    // The label is carried by one word among noise: positive words → "pos".
    let row = |i: usize| {
        let (word, label) = [("good", "pos"), ("bad", "neg"), ("great", "pos"), ("awful", "neg")][i % 4];
        let noun = if i.is_multiple_of(3) { "film" } else { "movie" };
        let adverb = if i % 5 < 2 { "very" } else { "quite" };
        format!("{{\"text\": \"the {noun} was {adverb} {word}\", \"label\": \"{label}\"}}\n")
    };
    let (train, eval) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    std::fs::write(&train, (0..96).map(row).collect::<String>()).expect("write");
    std::fs::write(&eval, (96..128).map(row).collect::<String>()).expect("write");
    let text = format!(
        r#"
[run]
seed = 2
[model]
arch = "bert"
hidden_size = 32
num_layers = 2
num_heads = 2
tokenizer = "{}"
[[stages]]
name = "sentiment"
objective = {{ name = "classification", num_classes = 2 }}
data = {{ train = "{}", eval = "{}" }}
optimizer = {{ lr = 3e-3 }}
max_steps = 60
eval_every = 20
batch_size = 16
seq_len = 8
"#,
        tokenizer.display(),
        train.display(),
        eval.display()
    );
    let run = run_pipeline("bert-data", &text);
    let acc: Vec<f64> = metrics(&run.dir)
        .iter()
        .filter(|r| r.set.as_deref() == Some("sentiment"))
        .map(|r| r.metrics["accuracy"])
        .collect();
    assert_eq!(acc.last().copied(), Some(1.0), "eval accuracy by evaluation: {acc:?}");
    // The model's vocabulary is the tokenizer's (11 words), not the byte tokenizer's 256.
    let t = checkpoint_tensors(&run.dir, "sentiment");
    let embeddings = t.iter().find(|(k, _)| k.contains("word_embeddings")).expect("a BERT word embedding");
    assert_eq!(embeddings.1.dims()[0], words.len() + 1, "{}", embeddings.0);
    assert!(t.keys().any(|k| k.contains("classifier")), "the classification head is saved");
    let records = data_records(&run.dir);
    for (file, n) in [(&train, 96), (&eval, 32)] {
        let want = (file.display().to_string(), n, Some(sha256(file)));
        assert!(records.contains(&want), "{want:?} not in {records:?}");
    }
}

#[test]
fn a_llama_trains_on_txt_and_jsonl_text_and_completions() {
    let dir = scratch("llama-data");
    let sums: Vec<(u32, u32)> = (0..64).map(|i| (i % 10, (i * 7) % 10)).collect();
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, sums.iter().map(|(a, b)| format!("{a}+{b}={}\n\n", a + b)).collect::<String>())
        .expect("write");
    let text = dir.join("text.jsonl");
    std::fs::write(
        &text,
        sums.iter().map(|(a, b)| format!("{{\"text\": \"{b}+{a}={}\"}}\n", a + b)).collect::<String>(),
    )
    .expect("write");
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        sums.iter()
            .map(|(a, b)| format!("{{\"prompt\": \"{a}+{b}=\", \"completion\": \"{}\"}}\n", a + b))
            .collect::<String>(),
    )
    .expect("write");
    let stage = |name: &str, objective: &str, file: &Path| {
        format!(
            "[[stages]]\nname = \"{name}\"\nobjective = \"{objective}\"\ndata = {{ train = \"{f}\", eval = \"{f}\" }}\noptimizer = {{ lr = 1e-2 }}\nmax_steps = 30\neval_every = 15\nbatch_size = 16\nseq_len = 12\n",
            f = file.display()
        )
    };
    let config = format!(
        "[run]\nseed = 4\n[model]\narch = \"llama\"\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\n{}{}{}",
        stage("txt", "causal_lm", &corpus),
        stage("jsonl_text", "causal_lm", &text),
        stage("jsonl_pairs", "completion", &pairs)
    );
    let run = run_pipeline("llama-data", &config);
    let rows = metrics(&run.dir);
    for set in ["txt", "jsonl_text", "jsonl_pairs"] {
        // Each stage's own evaluations of its set: the loss falls.
        let losses: Vec<f64> = rows
            .iter()
            .filter(|r| r.stage == set && r.set.as_deref() == Some(set))
            .map(|r| r.metrics["loss"])
            .collect();
        assert!(losses.len() >= 2 && losses[losses.len() - 1] < losses[0], "{set}: {losses:?}");
    }
    let pairs_eval = rows
        .iter()
        .rev()
        .find(|r| r.stage == "jsonl_pairs" && r.set.as_deref() == Some("jsonl_pairs"))
        .expect("evaluated");
    assert!(pairs_eval.metrics.contains_key("exact_match"), "prompt/completion data is scored as completions");
    // Blank lines are skipped: 64 examples in each file.
    let records = data_records(&run.dir);
    for file in [&corpus, &text, &pairs] {
        let want = (file.display().to_string(), 64, Some(sha256(file)));
        assert!(records.contains(&want), "{want:?} not in {records:?}");
    }
}

#[test]
fn grad_accum_from_the_config_equals_a_batch_that_many_times_larger() {
    // Lines of equal length, so micro-batch means weigh like one batch's mean.
    let dir = scratch("accum-data");
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        (0..64).map(|i| format!("{}+{}={:02}\n", i % 10, i / 10, i % 10 + i / 10)).collect::<String>(),
    )
    .expect("write");
    let config = |batch: usize, accum: usize| {
        format!(
            "[run]\nseed = 4\n[model]\narch = \"llama\"\nhidden_size = 16\nnum_layers = 1\nnum_heads = 2\n[[stages]]\nname = \"lm\"\nobjective = \"causal_lm\"\ndata = {{ train = \"{}\" }}\noptimizer = {{ name = \"sgd\", lr = 0.5, momentum = 0.0 }}\nmax_steps = 3\nbatch_size = {batch}\ngrad_accum = {accum}\nseq_len = 12\n",
            corpus.display()
        )
    };
    let (accum, whole, single) = (
        run_pipeline("accum-2x8", &config(8, 2)),
        run_pipeline("accum-1x16", &config(16, 1)),
        run_pipeline("accum-1x8", &config(8, 1)),
    );
    let (a, w, s) = (
        checkpoint_tensors(&accum.dir, "lm"),
        checkpoint_tensors(&whole.dir, "lm"),
        checkpoint_tensors(&single.dir, "lm"),
    );
    let worst = |x: &std::collections::BTreeMap<String, candle_core::Tensor>,
                 y: &std::collections::BTreeMap<String, candle_core::Tensor>| {
        x.iter().filter(|(k, _)| k.starts_with("model.")).map(|(k, t)| max_abs_diff(t, &y[k])).fold(0f32, f32::max)
    };
    assert!(worst(&a, &w) < 1e-6, "2 x 8 accumulated vs 16 at once: {}", worst(&a, &w));
    assert!(worst(&a, &s) > 1e-3, "accumulation changed nothing: {}", worst(&a, &s));
}

#[test]
fn completion_on_plain_text_is_refused_before_training() {
    let text = "[run]\nseed = 1\n[model]\narch = \"llama\"\nhidden_size = 16\nnum_layers = 1\nnum_heads = 2\n[[stages]]\nname = \"lm\"\nobjective = \"completion\"\ndata = { train = \"synthetic:arith_text?n=16\" }\noptimizer = { lr = 1e-2 }\nmax_steps = 2\nbatch_size = 2\nseq_len = 12\n";
    let cfg = stagecraft_core::config::PipelineConfig::from_str(text, "p.toml", &[]).expect("config");
    let reg = stagecraft_core::plugin::Registry::with_builtins(scratch("completion-text")).expect("registry");
    let err = stagecraft_core::pipeline::Pipeline::plan(&cfg, &reg).expect_err("plain text").to_string();
    assert!(err.contains("stage `lm`") && err.contains("plain text") && err.contains("arith_text"), "{err}");
}
