//! JSON-lines data files: one object per line, every line of the same shape.
//!
//! | keys | kind |
//! |---|---|
//! | `prompt`, `completion` (strings) | completion: loss on completion tokens only |
//! | `text` (string) | text: loss on every token |
//! | `text`, `label` (integer >= 0, or string) | classification |
//! | `instruction`, `output`, optional `input`, `system` (alpaca) | completion: loss on the output |
//! | `conversations` (ShareGPT) or `messages` (OpenAI / HF) | completion: loss on assistant turns |
//!
//! Instruction and chat rows (see [`chat`](super::chat)) are rendered with a chat
//! template: the source's `?template=` option, else the tokenizer's own. Without
//! one, alpaca rows use the Alpaca prompt (`Below is an instruction that describes a
//! task...### Response:\n`) with the output and the tokenizer's end-of-text token as
//! completion, and conversation rows are an error saying how to choose a template.
//!
//! Any line may add `difficulty` (a number; the curriculum key, else the token count).
//! Other keys are errors. String labels become class indices in order of first
//! appearance ([`Dataset::label_names`]); a file uses integer labels or string labels,
//! not both. Blank lines are skipped. Errors read `FILE:LINE: what is wrong`.
//!
//! ```
//! use stagecraft_core::data::{load_jsonl, DataKind, Tokenizer};
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("sst.jsonl");
//! std::fs::write(&p, "{\"text\": \"great\", \"label\": \"pos\"}\n{\"text\": \"dull\", \"label\": \"neg\"}\n").unwrap();
//! let ds = load_jsonl(&p, &Tokenizer::bytes(), 32).unwrap();
//! assert_eq!((ds.kind, ds.label_names.clone()), (DataKind::Classification, vec!["pos".to_string(), "neg".to_string()]));
//! assert_eq!(ds.examples[1].class_label, Some(1));
//! ```

use super::chat::{chat_example, ChatRow, ChatTemplate, TemplateSource};
use super::{read_source_file, DataKind, Dataset, Example, Tokenizer};
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A class label as written.
#[derive(Debug, Clone, PartialEq)]
enum Label {
    Int(i64),
    Name(String),
}

/// One parsed line: `a` is the prompt or the text, `b` the completion.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    kind: DataKind,
    a: String,
    b: String,
    label: Option<Label>,
    difficulty: Option<f64>,
    chat: Option<ChatRow>,
}

fn shape_name(row: &Row) -> String {
    if let Some(chat) = &row.chat {
        return chat.format().to_string();
    }
    match row.kind {
        DataKind::Completion => "prompt + completion",
        DataKind::Text => "text",
        DataKind::Classification => "text + label",
    }
    .to_string()
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Ok(String::new()),
    }
}

fn parse_row(line: &str) -> Result<Row, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid json: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a json object".into());
    };
    if let Some(chat) = ChatRow::parse(&obj) {
        let chat = Some(chat?);
        let difficulty = difficulty(&obj)?;
        return Ok(Row {
            kind: DataKind::Completion,
            a: String::new(),
            b: String::new(),
            label: None,
            difficulty,
            chat,
        });
    }
    if let Some(key) =
        obj.keys().find(|k| !["prompt", "completion", "text", "label", "difficulty"].contains(&k.as_str()))
    {
        return Err(format!("unknown key `{key}` (keys: prompt, completion, text, label, difficulty; or instruction + output, conversations, messages)"));
    }
    let has = |k: &str| obj.contains_key(k);
    let kind = match (has("prompt"), has("completion"), has("text"), has("label")) {
        (true, true, false, false) => DataKind::Completion,
        (false, false, true, false) => DataKind::Text,
        (false, false, true, true) => DataKind::Classification,
        _ => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(format!(
                "expected `prompt` + `completion`, `text`, `text` + `label`, `instruction` + `output`, `conversations` or `messages`; got keys: {}",
                keys.join(", ")
            ));
        }
    };
    let (a, b) = match kind {
        DataKind::Completion => (string(&obj, "prompt")?, string(&obj, "completion")?),
        _ => (string(&obj, "text")?, String::new()),
    };
    let label = match obj.get("label") {
        None => None,
        Some(Value::String(s)) => Some(Label::Name(s.clone())),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|v| v >= 0) => n.as_i64().map(Label::Int),
        Some(v) => return Err(format!("`label` must be an integer >= 0 or a string, got {v}")),
    };
    Ok(Row { kind, a, b, label, difficulty: difficulty(&obj)?, chat: None })
}

fn difficulty(obj: &Map<String, Value>) -> Result<Option<f64>, String> {
    match obj.get("difficulty") {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => Ok(n.as_f64()),
        Some(v) => Err(format!("`difficulty` must be a number, got {v}")),
    }
}

/// The standard Alpaca prompt (Stanford Alpaca's `PROMPT_DICT`); a `system` text
/// replaces its opening sentence.
fn alpaca_prompt(system: Option<&str>, instruction: &str, input: &str) -> String {
    let preamble = match (system, input.is_empty()) {
        (Some(s), _) => s.to_string(),
        (None, true) => "Below is an instruction that describes a task. Write a response that appropriately completes the request.".into(),
        (None, false) => "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.".into(),
    };
    if input.is_empty() {
        format!("{preamble}\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!("{preamble}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    }
}

/// A chat row as an example: through the template, else (alpaca) the Alpaca prompt.
fn chat_row_example(
    row: &ChatRow,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_len: usize,
) -> Result<Example, String> {
    match (template, row) {
        (Some(t), _) => chat_example(tokenizer, t, &row.messages(), max_len),
        (None, ChatRow::Alpaca { system, instruction, input, output }) => {
            let prompt = alpaca_prompt(system.as_deref(), instruction, input);
            let eos = tokenizer.eos_token().unwrap_or_default();
            Example::completion(tokenizer, &prompt, &format!("{output}{eos}"), max_len).map_err(|e| e.to_string())
        }
        (None, ChatRow::Conversation { format, .. }) => Err(format!(
            "a `{format}` row needs a chat template and the tokenizer ({}) has none: add `?template=chatml` to the source (`train = \"data.jsonl?template=chatml\"`), or `?template=path/to/template.jinja`",
            tokenizer.describe()
        )),
    }
}

/// What the file's chat rows are rendered with, as `--check` shows it.
fn format_words(row: &Row, template: Option<&ChatTemplate>) -> Option<String> {
    let chat = row.chat.as_ref()?;
    Some(match template {
        Some(t) => format!("{}, chat template {}", chat.format(), t.name),
        None => format!("{}, Alpaca prompt (no chat template)", chat.format()),
    })
}

/// Reads a `.jsonl` file into a dataset (named by its path, with its sha256).
pub fn load_jsonl(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<Dataset> {
    load_jsonl_with(path, tokenizer, max_len, None)
}

/// [`load_jsonl`], chat rows rendered with `template` when given (else the
/// tokenizer's own chat template, if it has one).
pub fn load_jsonl_with(
    path: &Path,
    tokenizer: &Tokenizer,
    max_len: usize,
    template: Option<&TemplateSource>,
) -> Result<Dataset> {
    let (contents, sha256) = read_source_file(path)?;
    let template = match template {
        Some(source) => Some(ChatTemplate::from_source(source, tokenizer)?),
        None => ChatTemplate::for_tokenizer(tokenizer)?,
    };
    let mut format = None;
    let at = |line: usize, msg: &dyn std::fmt::Display| Error::msg(format!("{}:{line}: {msg}", path.display()));
    let mut first: Option<(usize, String, bool)> = None; // line, shape, string labels
    let mut label_names: Vec<String> = Vec::new();
    let mut examples = Vec::new();
    for (i, line) in contents.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let row = parse_row(line).map_err(|m| at(n, &m))?;
        if first.is_none() {
            format = format_words(&row, template.as_ref());
        }
        let shape = shape_name(&row);
        let named = matches!(row.label, Some(Label::Name(_)));
        let (first_line, first_shape, first_named) = first.get_or_insert((n, shape.clone(), named)).clone();
        if shape != first_shape {
            return Err(at(
                n,
                &format!(
                    "a `{}` line, but line {first_line} is a `{}` line; every line must have the same keys",
                    shape, first_shape
                ),
            ));
        }
        if named != first_named {
            let what = |s: bool| if s { "a string" } else { "an integer" };
            return Err(at(
                n,
                &format!("`label` is {}, but line {first_line}'s is {}", what(named), what(first_named)),
            ));
        }
        let ex = match (&row.kind, row.label) {
            _ if row.chat.is_some() => {
                let chat = row.chat.as_ref().ok_or_else(|| at(n, &"no chat row"))?;
                chat_row_example(chat, tokenizer, template.as_ref(), max_len).map_err(Error::msg)
            }
            (DataKind::Completion, _) => Example::completion(tokenizer, &row.a, &row.b, max_len),
            (DataKind::Classification, Some(Label::Int(c))) => Example::classified(tokenizer, &row.a, c, max_len),
            (DataKind::Classification, Some(Label::Name(s))) => {
                let class = label_names.iter().position(|l| *l == s).unwrap_or_else(|| {
                    label_names.push(s);
                    label_names.len() - 1
                });
                Example::classified(tokenizer, &row.a, class as i64, max_len)
            }
            _ => Example::text(tokenizer, &row.a, max_len),
        }
        .map_err(|e| at(n, &e))?;
        examples.push(match row.difficulty {
            Some(d) => ex.with_difficulty(d),
            None => ex,
        });
    }
    let Some(kind) = examples.first().map(Example::kind) else {
        return Err(Error::file(path, "no examples (every line is blank)"));
    };
    Ok(Dataset {
        name: path.display().to_string(),
        kind,
        examples,
        sha256: Some(sha256),
        label_names,
        format,
        packing: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(contents: &str) -> (std::path::PathBuf, Result<Dataset>) {
        let Ok(dir) = tempfile::tempdir() else { panic!("no temp dir") };
        let p = dir.path().join("data.jsonl");
        let _ = std::fs::write(&p, contents);
        let r = load_jsonl(&p, &Tokenizer::bytes(), 16);
        (p, r)
    }

    fn err(contents: &str) -> String {
        let (p, r) = load(contents);
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        e.replace(&p.display().to_string(), "F")
    }

    #[test]
    fn each_shape_loads_with_its_kind() -> Result<()> {
        let ds = load("{\"prompt\": \"1+1=\", \"completion\": \"2\\n\", \"difficulty\": 0.5}\n\n{\"prompt\": \"\", \"completion\": \"x\"}\n").1?;
        assert_eq!((ds.kind, ds.len()), (DataKind::Completion, 2));
        assert_eq!(ds.examples[0].labels, Some(vec![-100, -100, -100, -100, 50, 10]));
        assert_eq!(ds.difficulties(), vec![0.5, 1.0]);
        assert_eq!(ds.sha256.as_deref().map(str::len), Some(64));
        let ds = load("{\"text\": \"hello\"}\n{\"text\": \"a very long line of text\"}\n").1?;
        assert_eq!((ds.kind, ds.examples[1].ids.len(), ds.examples[1].labels.clone()), (DataKind::Text, 16, None));
        let ds = load("{\"text\": \"a\", \"label\": 2}\n{\"text\": \"b\", \"label\": 0}\n").1?;
        assert_eq!((ds.kind, ds.examples[0].class_label, ds.label_names.len()), (DataKind::Classification, Some(2), 0));
        Ok(())
    }

    #[test]
    fn malformed_lines_are_named_by_line_number() {
        let ok = "{\"text\": \"a\"}\n";
        assert!(err(&format!("{ok}{{\"text\": \"b\"\n")).starts_with("F:2: invalid json: "));
        assert_eq!(err(&format!("{ok}\n[1]\n")), "F:3: expected a json object");
        assert_eq!(err(&format!("{ok}{{\"text\": 5}}\n")), "F:2: `text` must be a string");
        assert_eq!(
            err(&format!("{ok}{{\"txt\": \"a\"}}\n")),
            "F:2: unknown key `txt` (keys: prompt, completion, text, label, difficulty; or instruction + output, conversations, messages)"
        );
        assert_eq!(
            err("{\"prompt\": \"a\"}\n"),
            "F:1: expected `prompt` + `completion`, `text`, `text` + `label`, `instruction` + `output`, `conversations` or `messages`; got keys: prompt"
        );
        assert_eq!(
            err(&format!("{ok}{{\"prompt\": \"a\", \"completion\": \"b\"}}\n")),
            "F:2: a `prompt + completion` line, but line 1 is a `text` line; every line must have the same keys"
        );
        assert_eq!(
            err("{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": 1}\n"),
            "F:2: `label` is an integer, but line 1's is a string"
        );
        assert_eq!(
            err("{\"text\": \"a\", \"label\": -1}\n"),
            "F:1: `label` must be an integer >= 0 or a string, got -1"
        );
        assert_eq!(
            err("{\"text\": \"a\", \"difficulty\": \"hard\"}\n"),
            "F:1: `difficulty` must be a number, got \"hard\""
        );
        assert_eq!(err("{\"text\": \"\"}\n"), "F:1: text has no tokens");
        assert_eq!(
            err("{\"prompt\": \"p\", \"completion\": \"a completion too long\"}\n"),
            "F:1: completion is 21 tokens, more than max_len 16"
        );
        assert_eq!(err("\n  \n"), "F: no examples (every line is blank)");
    }
}
