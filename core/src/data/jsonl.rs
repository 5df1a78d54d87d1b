//! JSON-lines data files: one object per line, every line of the same shape.
//!
//! | keys | kind |
//! |---|---|
//! | `prompt`, `completion` (strings) | completion: loss on completion tokens only |
//! | `text` (string) | text: loss on every token |
//! | `text`, `label` (integer >= 0, or string) | classification |
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
}

fn shape_name(kind: DataKind) -> &'static str {
    match kind {
        DataKind::Completion => "prompt + completion",
        DataKind::Text => "text",
        DataKind::Classification => "text + label",
    }
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
    if let Some(key) =
        obj.keys().find(|k| !["prompt", "completion", "text", "label", "difficulty"].contains(&k.as_str()))
    {
        return Err(format!("unknown key `{key}` (keys: prompt, completion, text, label, difficulty)"));
    }
    let has = |k: &str| obj.contains_key(k);
    let kind = match (has("prompt"), has("completion"), has("text"), has("label")) {
        (true, true, false, false) => DataKind::Completion,
        (false, false, true, false) => DataKind::Text,
        (false, false, true, true) => DataKind::Classification,
        _ => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(format!(
                "expected `prompt` + `completion`, `text`, or `text` + `label`; got keys: {}",
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
    let difficulty = match obj.get("difficulty") {
        None => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => n.as_f64(),
        Some(v) => return Err(format!("`difficulty` must be a number, got {v}")),
    };
    Ok(Row { kind, a, b, label, difficulty })
}

/// Reads a `.jsonl` file into a dataset (named by its path, with its sha256).
pub fn load_jsonl(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<Dataset> {
    let (contents, sha256) = read_source_file(path)?;
    let at = |line: usize, msg: &dyn std::fmt::Display| Error::msg(format!("{}:{line}: {msg}", path.display()));
    let mut first: Option<(usize, DataKind, bool)> = None; // line, shape, string labels
    let mut label_names: Vec<String> = Vec::new();
    let mut examples = Vec::new();
    for (i, line) in contents.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let row = parse_row(line).map_err(|m| at(n, &m))?;
        let named = matches!(row.label, Some(Label::Name(_)));
        let (first_line, kind, first_named) = *first.get_or_insert((n, row.kind, named));
        if row.kind != kind {
            return Err(at(
                n,
                &format!(
                    "a `{}` line, but line {first_line} is a `{}` line; every line must have the same keys",
                    shape_name(row.kind),
                    shape_name(kind)
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
    let Some((_, kind, _)) = first else {
        return Err(Error::file(path, "no examples (every line is blank)"));
    };
    Ok(Dataset { name: path.display().to_string(), kind, examples, sha256: Some(sha256), label_names })
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
            "F:2: unknown key `txt` (keys: prompt, completion, text, label, difficulty)"
        );
        assert_eq!(
            err("{\"prompt\": \"a\"}\n"),
            "F:1: expected `prompt` + `completion`, `text`, or `text` + `label`; got keys: prompt"
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
