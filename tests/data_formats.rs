//! Instruction and chat data: alpaca, ShareGPT and messages rows; chat templates
//! rendered as transformers' `apply_chat_template` renders them (references written
//! by `tests/fixtures/chat/make_chat_fixtures.py`); loss only on assistant turns; and
//! a LoRA stage trained on chat data.

mod support;

use stagecraft_core::data::chat::{chat_example, ChatTemplate, Message, Role};
use stagecraft_core::data::{load_source, DataKind, Dataset, Tokenizer, IGNORE};
use std::path::{Path, PathBuf};
use support::{metrics, root, run_pipeline, scratch};

fn chat_fixture(name: &str) -> Tokenizer {
    let path = root().join("tests/fixtures/chat").join(name).join("tokenizer.json");
    Tokenizer::from_file(&path).expect("fixture tokenizer")
}

fn references() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/chat/references.json")).expect("references");
    serde_json::from_str(&text).expect("json")
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    let role = |r: &str| match r {
        "system" => Role::System,
        "user" => Role::User,
        _ => Role::Assistant,
    };
    v.as_array()
        .expect("list")
        .iter()
        .map(|m| Message::new(role(m["role"].as_str().unwrap_or("")), m["content"].as_str().unwrap_or("")))
        .collect()
}

#[test]
fn chat_templates_render_and_tokenize_as_transformers_does() {
    let refs = references();
    for name in ["chatml", "llama3"] {
        let tokenizer = chat_fixture(name);
        let template = ChatTemplate::for_tokenizer(&tokenizer).expect("loads").expect("has a template");
        for (k, case) in refs[name].as_array().expect("cases").iter().enumerate() {
            let msgs = messages(&case["messages"]);
            let text = template.render(&msgs, false).expect("renders");
            assert_eq!(text, case["text"].as_str().unwrap_or(""), "{name} #{k}: rendered text");
            let ex = chat_example(&tokenizer, &template, &msgs, 4096).expect("example");
            let want: Vec<u32> =
                case["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().unwrap_or(0) as u32).collect();
            assert_eq!(ex.ids, want, "{name} #{k}: token ids (BOS written once, by the template)");
            // The labelled tokens cover exactly the assistant contents and end-of-turn tokens.
            let (_, offsets) = tokenizer.encode_with_offsets(&text).expect("offsets");
            let labels = ex.labels.clone().expect("labels");
            let mut covered = String::new();
            for ((&id, &l), &(s, e)) in ex.ids.iter().zip(&labels).zip(&offsets) {
                if l != IGNORE {
                    assert_eq!(l, i64::from(id));
                    covered.push_str(&text[s..e]);
                }
            }
            let spans: Vec<&str> =
                case["assistant"].as_array().expect("spans").iter().map(|s| s.as_str().unwrap_or("")).collect();
            assert_eq!(covered, spans.concat(), "{name} #{k}: labelled text");
        }
    }
}

fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").expect("write");
    p
}

fn load(dir: &Path, spec: &str, t: &Tokenizer) -> Result<Dataset, String> {
    load_source(spec, t, dir, 256).map_err(|e| e.to_string())
}

fn targets(t: &Tokenizer, ds: &Dataset, i: usize) -> String {
    let ex = &ds.examples[i];
    let ids: Vec<u32> = ex.labels.iter().flatten().filter(|&&l| l != IGNORE).map(|&l| l as u32).collect();
    t.decode(&ids).expect("decode")
}

#[test]
fn every_format_trains_only_on_the_answer() {
    let dir = scratch("chat-formats");
    let t = Tokenizer::bytes();
    write(&dir, "alpaca.jsonl", &[r#"{"instruction": "Add", "input": "1 2", "output": "3"}"#]);
    write(
        &dir,
        "sharegpt.jsonl",
        &[
            r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}, {"from": "human", "value": "bye"}, {"from": "gpt", "value": "ciao"}]}"#,
        ],
    );
    write(
        &dir,
        "messages.jsonl",
        &[
            r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "difficulty": 3}"#,
        ],
    );
    let ds = load(&dir, "sharegpt.jsonl?template=chatml", &t).expect("sharegpt");
    assert_eq!(
        (ds.kind, ds.format.as_deref()),
        (DataKind::Completion, Some("sharegpt, chat template chatml (built in)"))
    );
    assert_eq!(targets(&t, &ds, 0), "yo<|im_end|>ciao<|im_end|>");
    let ds = load(&dir, "messages.jsonl?template=chatml", &t).expect("messages");
    assert_eq!((targets(&t, &ds, 0), ds.examples[0].difficulty), ("yo<|im_end|>".to_string(), 3.0));
    assert_eq!(
        t.decode(&ds.examples[0].ids).expect("decode"),
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    );
    let ds = load(&dir, "alpaca.jsonl?template=chatml", &t).expect("alpaca with a template");
    assert_eq!(targets(&t, &ds, 0), "3<|im_end|>");
    // No template: the Alpaca prompt, the output and the end-of-text token.
    let ds = load(&dir, "alpaca.jsonl", &t).expect("alpaca");
    assert_eq!(ds.format.as_deref(), Some("alpaca, Alpaca prompt (no chat template)"));
    let text = t.decode(&ds.examples[0].ids).expect("decode");
    assert!(text.starts_with("Below is an instruction that describes a task, paired with an input"), "{text}");
    assert!(text.ends_with("### Instruction:\nAdd\n\n### Input:\n1 2\n\n### Response:\n3\n"), "{text}");
    assert_eq!(targets(&t, &ds, 0), "3\n");
    // The model's own template, read from tokenizer_config.json next to tokenizer.json.
    let llama3 = chat_fixture("llama3");
    let ds = load(&dir, "messages.jsonl", &llama3).expect("model template");
    // <|begin_of_text|> (3) once, from the template, then <|start_header_id|> (4).
    assert_eq!(&ds.examples[0].ids[..2], &[3, 4]);
    assert!(ds.format.as_deref().unwrap_or("").contains("llama3/tokenizer_config.json"));
}

#[test]
fn malformed_chat_rows_name_the_file_and_line() {
    let dir = scratch("chat-errors");
    let t = Tokenizer::bytes();
    let ok = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let cases = [
        (r#"{"question": "q", "answer": "a"}"#, "unknown key `answer`"),
        (
            r#"{"messages": [{"role": "bot", "content": "a"}]}"#,
            "messages[0]: unknown role `bot` (known: system, user, assistant)",
        ),
        (r#"{"messages": []}"#, "`messages` is empty"),
        (
            r#"{"messages": [{"role": "user", "content": "q"}]}"#,
            "`messages` has no assistant turn: nothing to train on",
        ),
        (r#"{"conversations": [{"from": "gpt", "value": "a"}]}"#, "a `sharegpt` line, but line 1 is a `messages` line"),
    ];
    for (k, (line, want)) in cases.iter().enumerate() {
        let p = write(&dir, &format!("bad{k}.jsonl"), &[ok, line]);
        let e = load(&dir, &format!("bad{k}.jsonl?template=chatml"), &t).err().unwrap_or_default();
        assert!(e.starts_with(&format!("{}:2: ", p.display())) && e.contains(want), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let p = write(&dir, "plain.jsonl", &[ok]);
    let e = load(&dir, "plain.jsonl", &t).err().unwrap_or_default();
    assert_eq!(
        e,
        format!(
            "{}:1: a `messages` row needs a chat template and the tokenizer (bytes) has none: add `?template=chatml` to the source (`train = \"data.jsonl?template=chatml\"`), or `?template=path/to/template.jinja`",
            p.display()
        )
    );
}

#[test]
fn a_lora_stage_trains_on_chat_data_with_the_models_template() {
    let dir = scratch("chat-train");
    let row = |q: &str, a: &str| {
        format!(r#"{{"messages": [{{"role": "user", "content": "{q}"}}, {{"role": "assistant", "content": "{a}"}}]}}"#)
    };
    let lines: Vec<String> = (0..16).map(|i| row(&format!("What is {i}+{i}?"), &format!("It is {}.", 2 * i))).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let data = write(&dir, "chat.jsonl", &refs);
    let text = format!(
        r#"
[run]
name = "chat"
seed = 3

[model]
from = "{model}"
tokenizer = "{tok}"

[[stages]]
name = "sft"
objective = "completion"
data = {{ train = "{data}", eval = "{data}" }}
optimizer = {{ lr = 1e-2 }}
max_steps = 6
batch_size = 4
seq_len = 96
adapters = [{{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, alpha = 8 }}]
"#,
        model = root().join("tests/fixtures/llama-tiny/base").display(),
        tok = root().join("tests/fixtures/chat/chatml/tokenizer.json").display(),
        data = data.display(),
    );
    let run = run_pipeline("chat-train", &text);
    assert_eq!(run.summary.stages.len(), 1);
    let losses: Vec<f64> = metrics(&run.dir).iter().filter_map(|r| r.loss).collect();
    assert!(losses.len() >= 6 && losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[losses.len() - 1] < losses[0], "the loss falls: {losses:?}");
}
