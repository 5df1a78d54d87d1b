//! Loading a data source from its spec: synthetic data, a `.txt` file or a `.jsonl`
//! file, tokenized into a [`Dataset`] named by the spec.
//!
//! The same spec and tokenizer give the same dataset on every machine; file sources
//! record the sha256 of the bytes they were read from, for the run record.
//!
//! ```
//! use stagecraft_core::data::{load_source, DataKind, Tokenizer};
//! use std::path::Path;
//! let ds = load_source("synthetic:add?n=4&seed=7", &Tokenizer::bytes(), Path::new("."), 32).unwrap();
//! assert_eq!((ds.name.as_str(), ds.kind, ds.len(), ds.sha256.clone()), ("synthetic:add?n=4&seed=7", DataKind::Completion, 4, None));
//! ```

use super::{load_jsonl_with, load_text, parse_spec, Dataset, Example, Item, SourceSpec, SyntheticSpec, Tokenizer};
use crate::error::io;
use crate::error::{Context, Error, Result};
use crate::memory::Bytes;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Loads and tokenizes the source `spec` (relative paths against `base_dir`), each
/// example at most `max_len` tokens (see [`Example`] for how longer ones are cut).
pub fn load_source(spec: &str, tokenizer: &Tokenizer, base_dir: &Path, max_len: usize) -> Result<Dataset> {
    let dataset = match parse_spec(spec, base_dir)? {
        SourceSpec::Synthetic(s) => synthetic(spec, &s, tokenizer, max_len)?,
        SourceSpec::TextFile(path) => load_text(&path, tokenizer, max_len)?,
        SourceSpec::JsonlFile(path, template) => load_jsonl_with(&path, tokenizer, max_len, template.as_ref())?,
    };
    Ok(Dataset { name: spec.to_string(), ..dataset })
}

/// The first examples of a source and how many it has in all: what checks and memory
/// estimates need, without generating a large synthetic source in full.
#[derive(Debug, Clone)]
pub struct SourcePreview {
    /// The source, cut to its first examples when it is synthetic and larger than the
    /// preview; the whole source otherwise.
    pub dataset: Dataset,
    /// How many examples the whole source has.
    pub len: usize,
}

impl SourcePreview {
    /// Whether the preview holds the whole source.
    pub fn is_complete(&self) -> bool {
        self.dataset.len() == self.len
    }

    /// The memory the whole source takes once loaded, extrapolated from the preview.
    pub fn memory(&self) -> Bytes {
        let seen = self.dataset.memory().0 as u128;
        let scaled = seen * self.len as u128 / self.dataset.len().max(1) as u128;
        Bytes(u64::try_from(scaled).unwrap_or(u64::MAX))
    }
}

/// Loads the source `spec` like [`load_source`], but a synthetic source generates only
/// its first `limit` examples (those of the whole source: generation is prefix-stable).
pub fn preview_source(
    spec: &str,
    tokenizer: &Tokenizer,
    base_dir: &Path,
    max_len: usize,
    limit: usize,
) -> Result<SourcePreview> {
    match parse_spec(spec, base_dir)? {
        SourceSpec::Synthetic(s) => {
            let first = SyntheticSpec { n: s.n.min(limit.max(1)), ..s.clone() };
            Ok(SourcePreview { dataset: synthetic(spec, &first, tokenizer, max_len)?, len: s.n })
        }
        _ => {
            let dataset = load_source(spec, tokenizer, base_dir, max_len)?;
            Ok(SourcePreview { len: dataset.len(), dataset })
        }
    }
}

fn synthetic(spec: &str, s: &SyntheticSpec, tokenizer: &Tokenizer, max_len: usize) -> Result<Dataset> {
    let examples = s
        .generate()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            match item {
                Item::Text(text) => Example::text(tokenizer, text, max_len),
                Item::Completion { prompt, completion } => Example::completion(tokenizer, prompt, completion, max_len),
            }
            .with_context(|| format!("data source `{spec}`: example {i}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset {
        name: spec.to_string(),
        kind: s.kind(),
        examples,
        sha256: None,
        label_names: Vec::new(),
        format: None,
        packing: None,
    })
}

/// A data file's text and the hex sha256 of its bytes.
pub(crate) fn read_source_file(path: &Path) -> Result<(String, String)> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    match String::from_utf8(bytes) {
        Ok(text) => Ok((text, sha256)),
        Err(e) => {
            let bad = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..bad].iter().filter(|&&b| b == b'\n').count();
            Err(Error::msg(format!("{}:{line}: not valid utf-8", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataKind;

    #[test]
    fn synthetic_sources_tokenize_deterministically() -> Result<()> {
        let t = Tokenizer::bytes();
        let here = Path::new(".");
        let a = load_source("synthetic:sub?n=20&seed=5", &t, here, 32)?;
        let b = load_source("synthetic:sub?n=20&seed=5", &t, here, 32)?;
        let c = load_source("synthetic:sub?n=20&seed=6", &t, here, 32)?;
        assert_eq!(a.examples, b.examples);
        assert_ne!(a.examples, c.examples);
        for ex in &a.examples {
            let text = t.decode(&ex.ids)?;
            let labels = ex.labels.clone().unwrap_or_default();
            let eq = text.find('=').unwrap_or(0);
            assert!(labels[..=eq].iter().all(|&l| l == -100), "{text}");
            assert_eq!(labels[eq + 1..].iter().map(|&l| l as u8 as char).collect::<String>(), text[eq + 1..]);
        }
        let text = load_source("synthetic:arith_text?n=5&lines=4", &t, here, 12)?;
        assert_eq!(text.kind, DataKind::Text);
        assert!(text.examples.iter().all(|e| e.ids.len() == 12 && e.labels.is_none()));
        let e =
            load_source("synthetic:reverse?n=3&len=20", &t, here, 16).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e,
            "data source `synthetic:reverse?n=3&len=20`: example 0: completion is 21 tokens, more than max_len 16"
        );
        Ok(())
    }

    #[test]
    fn a_preview_generates_the_first_examples_and_extrapolates_their_memory() -> Result<()> {
        let t = Tokenizer::bytes();
        let here = Path::new(".");
        let p = preview_source("synthetic:add?n=100000&seed=3", &t, here, 32, 100)?;
        let full = load_source("synthetic:add?n=100000&seed=3", &t, here, 32)?;
        assert_eq!((p.dataset.len(), p.len, p.is_complete()), (100, 100_000, false));
        assert_eq!(p.dataset.examples[..], full.examples[..100]);
        let (estimate, actual) = (p.memory().0 as f64, full.memory().0 as f64);
        assert!((estimate / actual - 1.0).abs() < 0.05, "{estimate} vs {actual}");
        assert!(preview_source("synthetic:add?n=50", &t, here, 32, 100)?.is_complete());
        Ok(())
    }

    #[test]
    fn file_sources_keep_the_spec_as_name_and_hash_the_bytes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(Error::msg)?;
        std::fs::write(dir.path().join("c.txt"), "abc\n").map_err(Error::msg)?;
        let ds = load_source("c.txt", &Tokenizer::bytes(), dir.path(), 8)?;
        assert_eq!(ds.name, "c.txt");
        // sha256 of "abc\n".
        assert_eq!(ds.sha256.as_deref(), Some("edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"));
        std::fs::write(dir.path().join("bad.txt"), b"ok\n\xff\n").map_err(Error::msg)?;
        let e =
            load_source("bad.txt", &Tokenizer::bytes(), dir.path(), 8).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.ends_with("bad.txt:2: not valid utf-8"), "{e}");
        Ok(())
    }
}
