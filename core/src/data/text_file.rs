//! Plain-text data files: one example per non-empty line.
//!
//! Each line is tokenized with its line break (`"line\n"`, so that with the byte
//! tokenizer every example ends in the end-of-text token); a line longer than
//! `max_len` tokens becomes several examples, consecutive windows of `max_len` tokens
//! (the last one shorter). Blank lines are skipped; `\r\n` line ends are accepted.
//!
//! ```
//! use stagecraft_core::data::{load_text, DataKind, Tokenizer};
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("corpus.txt");
//! std::fs::write(&p, "abcdef\n\nxy\n").unwrap();
//! let ds = load_text(&p, &Tokenizer::bytes(), 4).unwrap();
//! let texts: Vec<String> = ds.examples.iter().map(|e| String::from_utf8(e.ids.iter().map(|&i| i as u8).collect()).unwrap()).collect();
//! assert_eq!(texts, ["abcd", "ef\n", "xy\n"]);
//! assert_eq!(ds.kind, DataKind::Text);
//! ```

use super::{read_source_file, DataKind, Dataset, Example, Tokenizer};
use crate::error::{Context, Error, Result};
use std::path::Path;

/// Reads a `.txt` file into a dataset (named by its path, with its sha256).
pub fn load_text(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<Dataset> {
    if max_len == 0 {
        return Err(Error::msg("max_len must be at least 1"));
    }
    let (contents, sha256) = read_source_file(path)?;
    let mut examples = Vec::new();
    for (i, line) in contents.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let ids = tokenizer.encode(&format!("{line}\n")).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        examples.extend(ids.chunks(max_len).map(|c| Example::from_ids(c.to_vec())));
    }
    if examples.is_empty() {
        return Err(Error::file(path, "no examples (every line is blank)"));
    }
    Ok(Dataset {
        name: path.display().to_string(),
        kind: DataKind::Text,
        examples,
        sha256: Some(sha256),
        label_names: Vec::new(),
        format: None,
        packing: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_examples_and_long_lines_windows() -> Result<()> {
        let dir = tempfile::tempdir().map_err(Error::msg)?;
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "hello\r\n   \nabcdefghij").map_err(Error::msg)?;
        let t = Tokenizer::bytes();
        let ds = load_text(&p, &t, 5)?;
        let texts: Vec<String> = ds.examples.iter().map(|e| t.decode(&e.ids)).collect::<Result<_>>()?;
        assert_eq!(texts, ["hello", "\n", "abcde", "fghij", "\n"]);
        assert!(ds.examples.iter().all(|e| e.labels.is_none() && e.difficulty == e.ids.len() as f64));
        assert_eq!(load_text(&p, &t, 64)?.len(), 2);
        std::fs::write(&p, "\n\n").map_err(Error::msg)?;
        let e = load_text(&p, &t, 5).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.ends_with("t.txt: no examples (every line is blank)"), "{e}");
        Ok(())
    }
}
