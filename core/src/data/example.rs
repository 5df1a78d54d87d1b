//! Tokenized examples and datasets: what every data source produces.
//!
//! An [`Example`] is token ids plus, for completion data, one target per token (`-100`
//! on prompt tokens, where no loss is taken) and, for classification data, a class
//! index. A [`Dataset`] holds the examples of one source with their [`DataKind`] and,
//! for file sources, the sha256 of the bytes read.
//!
//! Length rule, `max_len` tokens at most per example:
//! - text (and classification text) is cut at the end;
//! - completion data keeps the whole completion and cuts the start of the prompt; a
//!   completion that alone is longer than `max_len` is an error.
//!
//! ```
//! use stagecraft_core::data::{Example, Tokenizer};
//! let t = Tokenizer::bytes();
//! let ex = Example::completion(&t, "1+2=", "3\n", 16).unwrap();
//! assert_eq!(ex.ids, vec![49, 43, 50, 61, 51, 10]);
//! assert_eq!(ex.labels.as_deref(), Some(&[-100, -100, -100, -100, 51, 10][..]));
//! let cut = Example::completion(&t, "1+2=", "3\n", 4).unwrap();
//! assert_eq!(t.decode(&cut.ids).unwrap(), "2=3\n");
//! ```

use super::Tokenizer;
use crate::bail;
use crate::error::{Error, Result};

/// The target value of tokens that take no loss.
pub const IGNORE: i64 = -100;

/// What a dataset's examples carry, and so which objective can train on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Plain text: the causal-LM objective predicts every token.
    Text,
    /// Prompt + completion: only completion tokens are targets.
    Completion,
    /// Text + class label.
    Classification,
}

impl std::fmt::Display for DataKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataKind::Text => "text",
            DataKind::Completion => "completion",
            DataKind::Classification => "classification",
        })
    }
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids, at most `max_len` of them, never empty.
    pub ids: Vec<u32>,
    /// Completion data: one target per id, [`IGNORE`] (-100) on prompt tokens and the
    /// token id itself on completion tokens. `None` for text, where every token is one.
    pub labels: Option<Vec<i64>>,
    /// Classification data: the class index (>= 0).
    pub class_label: Option<i64>,
    /// Curriculum key, lower is easier: the source's `difficulty` field where it has
    /// one, else the number of tokens.
    pub difficulty: f64,
    /// A packed row ([`super::pack`]): the lengths of the examples it holds, in order
    /// (their tokens attend only within their own example). Empty for one example.
    pub packed: Vec<u32>,
}

impl Example {
    /// Plain text, cut at the end to `max_len` tokens. Errors if it has no tokens.
    pub fn text(tokenizer: &Tokenizer, text: &str, max_len: usize) -> Result<Example> {
        check_max_len(max_len)?;
        let mut ids = tokenizer.encode(text)?;
        if ids.is_empty() {
            return Err(Error::msg("text has no tokens"));
        }
        ids.truncate(max_len);
        Ok(Example::from_ids(ids))
    }

    /// The example within `max_len` tokens, cut the way its constructor cuts: text and
    /// classification rows at the end, completion rows at the start of the prompt.
    /// Borrowed when it already fits (replayed data tokenized for a longer stage).
    pub fn cut(&self, max_len: usize) -> std::borrow::Cow<'_, Example> {
        let n = self.ids.len();
        if n <= max_len || max_len == 0 {
            return std::borrow::Cow::Borrowed(self);
        }
        let range = if self.labels.is_some() && self.packed.is_empty() { n - max_len..n } else { 0..max_len };
        std::borrow::Cow::Owned(Example {
            ids: self.ids[range.clone()].to_vec(),
            labels: self.labels.as_ref().map(|l| l[range].to_vec()),
            class_label: self.class_label,
            difficulty: self.difficulty,
            packed: cut_lengths(&self.packed, max_len),
        })
    }

    /// Text tokens as they are (the caller keeps them within its length limit).
    pub fn from_ids(ids: Vec<u32>) -> Example {
        let difficulty = ids.len() as f64;
        Example { ids, labels: None, class_label: None, difficulty, packed: Vec::new() }
    }

    /// Text with a class index, cut at the end to `max_len` tokens.
    pub fn classified(tokenizer: &Tokenizer, text: &str, class: i64, max_len: usize) -> Result<Example> {
        if class < 0 {
            bail!("class label {class} is negative");
        }
        Ok(Example { class_label: Some(class), ..Example::text(tokenizer, text, max_len)? })
    }

    /// A prompt and its completion. The text is tokenized whole; prompt tokens are the
    /// longest common prefix of the prompt's tokens and the whole text's (exact for the
    /// byte tokenizer; with a subword tokenizer a token that straddles the boundary
    /// counts as completion). If the result is longer than `max_len`, the start of the
    /// prompt is cut.
    pub fn completion(tokenizer: &Tokenizer, prompt: &str, completion: &str, max_len: usize) -> Result<Example> {
        check_max_len(max_len)?;
        let full = tokenizer.encode(&format!("{prompt}{completion}"))?;
        let prompt_ids = tokenizer.encode(prompt)?;
        let boundary = full.iter().zip(&prompt_ids).take_while(|(a, b)| a == b).count();
        let targets = full.len() - boundary;
        if targets == 0 {
            return Err(Error::msg("completion has no tokens"));
        }
        if targets > max_len {
            bail!("completion is {targets} tokens, more than max_len {max_len}");
        }
        let cut = full.len().saturating_sub(max_len);
        let labels = full
            .iter()
            .enumerate()
            .skip(cut)
            .map(|(i, &id)| if i < boundary { IGNORE } else { i64::from(id) })
            .collect();
        let ids: Vec<u32> = full[cut..].to_vec();
        let difficulty = ids.len() as f64;
        Ok(Example { ids, labels: Some(labels), class_label: None, difficulty, packed: Vec::new() })
    }

    /// The same example with another curriculum key.
    pub fn with_difficulty(self, difficulty: f64) -> Example {
        Example { difficulty, ..self }
    }

    /// The kind of data this example is.
    pub fn kind(&self) -> DataKind {
        match (&self.labels, self.class_label) {
            (_, Some(_)) => DataKind::Classification,
            (Some(_), None) => DataKind::Completion,
            (None, None) => DataKind::Text,
        }
    }
}

/// A packed row's example lengths within its first `max_len` tokens.
fn cut_lengths(lengths: &[u32], max_len: usize) -> Vec<u32> {
    let mut left = max_len as u32;
    let mut out = Vec::new();
    for &n in lengths {
        if left == 0 {
            break;
        }
        out.push(n.min(left));
        left -= n.min(left);
    }
    out
}

fn check_max_len(max_len: usize) -> Result<()> {
    if max_len == 0 {
        return Err(Error::msg("max_len must be at least 1"));
    }
    Ok(())
}

/// The examples of one source.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The source spec as written in the config (`synthetic:add?n=100`, `data/train.jsonl`).
    pub name: String,
    /// What the examples carry; all examples are of this kind.
    pub kind: DataKind,
    /// The examples, in source order; never empty.
    pub examples: Vec<Example>,
    /// Hex sha256 of the source file's bytes; `None` for synthetic data.
    pub sha256: Option<String>,
    /// Classification with string labels: the label of each class index, in order of
    /// first appearance. Empty for integer labels and other kinds.
    pub label_names: Vec<String>,
    /// Instruction and chat data: the row format detected and how it is rendered
    /// (`messages, chat template chatml (built in)`); `None` for other data.
    pub format: Option<String>,
    /// Packed data: what packing did; `None` when the examples are as loaded.
    pub packing: Option<super::PackingStats>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The memory its examples take: their tokens and labels, and each one's
    /// bookkeeping.
    pub fn memory(&self) -> crate::memory::Bytes {
        let per_example = std::mem::size_of::<Example>() as u64 + 32;
        let tokens: u64 = self
            .examples
            .iter()
            .map(|e| e.ids.len() as u64 * 4 + e.labels.as_ref().map_or(0, |l| l.len() as u64 * 8))
            .sum();
        crate::memory::Bytes(tokens + per_example * self.examples.len() as u64)
    }

    /// The curriculum key of each example, in order.
    pub fn difficulties(&self) -> Vec<f64> {
        self.examples.iter().map(|e| e.difficulty).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_masks_prompt_and_keeps_completion_when_cut() -> Result<()> {
        let t = Tokenizer::bytes();
        let ex = Example::completion(&t, "reverse ab=", "ba\n", 64)?;
        assert_eq!(ex.kind(), DataKind::Completion);
        let labels = ex.labels.clone().unwrap_or_default();
        assert_eq!(labels.iter().filter(|&&l| l != IGNORE).count(), 3);
        assert_eq!(&labels[11..], &[98, 97, 10]);
        let cut = Example::completion(&t, "reverse ab=", "ba\n", 5)?;
        assert_eq!(t.decode(&cut.ids)?, "b=ba\n");
        assert_eq!(cut.labels, Some(vec![IGNORE, IGNORE, 98, 97, 10]));
        let e = Example::completion(&t, "p", "long\n", 4).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "completion is 5 tokens, more than max_len 4");
        assert!(Example::completion(&t, "p", "", 4).is_err());
        Ok(())
    }

    #[test]
    fn cutting_a_longer_example_matches_its_constructor() -> Result<()> {
        let t = Tokenizer::bytes();
        let long = Example::completion(&t, "reverse ab=", "ba\n", 64)?;
        let cut = long.cut(5);
        assert_eq!(
            (&cut.ids, &cut.labels),
            (&Example::completion(&t, "reverse ab=", "ba\n", 5)?.ids, &Some(vec![IGNORE, IGNORE, 98, 97, 10]))
        );
        assert_eq!(Example::text(&t, "abcdef", 64)?.cut(4).ids, Example::text(&t, "abcdef", 4)?.ids);
        assert!(matches!(long.cut(64), std::borrow::Cow::Borrowed(_)));
        Ok(())
    }

    #[test]
    fn text_is_cut_at_the_end_and_difficulty_is_token_count() -> Result<()> {
        let t = Tokenizer::bytes();
        let ex = Example::text(&t, "abcdef", 4)?;
        assert_eq!(t.decode(&ex.ids)?, "abcd");
        assert_eq!(ex.difficulty, 4.0);
        assert_eq!(ex.kind(), DataKind::Text);
        assert!(Example::text(&t, "", 4).is_err());
        assert!(Example::text(&t, "a", 0).is_err());
        let c = Example::classified(&t, "good", 1, 8)?;
        assert_eq!((c.kind(), c.class_label), (DataKind::Classification, Some(1)));
        assert!(Example::classified(&t, "bad", -1, 8).is_err());
        Ok(())
    }
}
