//! Tokenizers: a Hugging Face `tokenizer.json` (through the `tokenizers` crate), or the
//! built-in byte-level tokenizer for embedded data.
//!
//! The byte tokenizer maps each UTF-8 byte to its value (vocabulary 256, no special
//! tokens); `\n` (10) serves as end of text.
//!
//! ```
//! use stagecraft_core::data::Tokenizer;
//! let t = Tokenizer::bytes();
//! let ids = t.encode("hi").unwrap();
//! assert_eq!(ids, vec![104, 105]);
//! assert_eq!(t.decode(&ids).unwrap(), "hi");
//! ```

use crate::error::io;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A token's byte range `(start, end)` in the text it was encoded from.
pub type Offsets = (usize, usize);

/// A tokenizer.
#[derive(Clone)]
pub enum Tokenizer {
    /// Bytes as tokens.
    Bytes,
    /// A Hugging Face tokenizer.
    Hf {
        /// Where it was loaded from.
        path: PathBuf,
        /// The tokenizer.
        inner: Box<tokenizers::Tokenizer>,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Bytes => f.write_str("Tokenizer::Bytes"),
            Tokenizer::Hf { path, .. } => write!(f, "Tokenizer::Hf({})", path.display()),
        }
    }
}

impl Tokenizer {
    /// The byte-level tokenizer.
    pub fn bytes() -> Self {
        Tokenizer::Bytes
    }

    /// A `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::msg(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        Ok(Tokenizer::Hf { path: path.to_path_buf(), inner: Box::new(inner) })
    }

    /// `"bytes"`, or a path to a `tokenizer.json`.
    pub fn from_spec(spec: &str) -> Result<Self> {
        if spec == "bytes" {
            Ok(Tokenizer::Bytes)
        } else {
            Tokenizer::from_file(Path::new(spec))
        }
    }

    /// The tokenizer of a Hugging Face model directory: its `tokenizer.json` if there is
    /// one, else `None`.
    pub fn for_model_dir(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join("tokenizer.json");
        if p.exists() {
            Ok(Some(Tokenizer::from_file(&p)?))
        } else {
            Ok(None)
        }
    }

    /// Token ids of `text` (with the tokenizer's special tokens, as `add_special_tokens`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf { path, inner } => inner
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::msg(format!("{}: cannot encode: {e}", path.display()))),
        }
    }

    /// Token ids of `text` without special tokens added (what a chat template's
    /// rendered text is tokenized with), and each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Offsets>)> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().enumerate().map(|(i, b)| (u32::from(b), (i, i + 1))).unzip()),
            Tokenizer::Hf { path, inner } => inner
                .encode(text, false)
                .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
                .map_err(|e| Error::msg(format!("{}: cannot encode: {e}", path.display()))),
        }
    }

    /// Text of `ids` (special tokens skipped; invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .map(|&i| u8::try_from(i).map_err(|_| Error::msg(format!("token id {i} is not a byte"))))
                    .collect::<Result<_>>()?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf { path, inner } => {
                inner.decode(ids, true).map_err(|e| Error::msg(format!("{}: cannot decode: {e}", path.display())))
            }
        }
    }

    /// Vocabulary size (with added tokens).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Hf { inner, .. } => inner.get_vocab_size(true),
        }
    }

    /// This tokenizer as a `tokenizer.json` that Hugging Face `tokenizers` (and so
    /// transformers' fast tokenizers) load: the file itself for a loaded one; for the
    /// byte tokenizer, a byte-level BPE with no merges whose 256 tokens have the ids
    /// of their bytes, so that it encodes exactly as [`Tokenizer::Bytes`] does.
    pub fn to_hf_json(&self) -> Result<String> {
        match self {
            Tokenizer::Hf { path, .. } => std::fs::read_to_string(path).map_err(io(path)),
            Tokenizer::Bytes => {
                let vocab: serde_json::Map<String, serde_json::Value> =
                    (0u8..=255).map(|b| (byte_char(b).to_string(), serde_json::json!(b))).collect();
                let json = serde_json::json!({
                    "version": "1.0",
                    "truncation": null,
                    "padding": null,
                    "added_tokens": [],
                    "normalizer": null,
                    "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false },
                    "post_processor": null,
                    "decoder": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false },
                    "model": { "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": [] },
                });
                serde_json::to_string_pretty(&json)
                    .map_err(|e| Error::msg(format!("cannot serialize tokenizer.json: {e}")))
            }
        }
    }

    /// The end-of-text token as text (what a completion ends with), if there is one.
    pub fn eos_token(&self) -> Option<String> {
        match self {
            Tokenizer::Bytes => Some("\n".into()),
            Tokenizer::Hf { inner, .. } => self.eos_id().and_then(|id| inner.id_to_token(id)),
        }
    }

    /// `bytes`, or the `tokenizer.json` path, for messages.
    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes".into(),
            Tokenizer::Hf { path, .. } => path.display().to_string(),
        }
    }

    /// The end-of-text token, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => Some(b'\n' as u32),
            Tokenizer::Hf { inner, .. } => {
                ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]"].iter().find_map(|t| inner.token_to_id(t))
            }
        }
    }
}

/// The printable character GPT-2's byte-level pre-tokenizer shows byte `b` as:
/// printable Latin-1 bytes stand for themselves, the others for `U+0100` onwards.
fn byte_char(b: u8) -> char {
    let printable = |c: u8| (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c);
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_tokenizer_as_tokenizer_json_encodes_the_same_ids() {
        let dir = std::env::temp_dir().join(format!("stagecraft-bytes-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, Tokenizer::bytes().to_hf_json().expect("json")).expect("write");
        let hf = Tokenizer::from_file(&p).expect("tokenizers loads it");
        let text = "7+5=12\n naïve → é\t\0";
        assert_eq!(hf.encode(text).expect("encode"), Tokenizer::bytes().encode(text).expect("encode"));
        assert_eq!(hf.decode(&hf.encode(text).expect("encode")).expect("decode"), text);
        assert_eq!(hf.vocab_size(), 256);
    }

    #[test]
    fn bytes_round_trip_utf8() {
        let t = Tokenizer::bytes();
        let s = "naïve → ok\n";
        assert_eq!(t.decode(&t.encode(s).unwrap_or_default()).unwrap_or_default(), s);
        assert!(t.decode(&[300]).is_err());
        assert_eq!(t.eos_id(), Some(10));
    }

    #[test]
    fn tokenizer_json_loads_and_round_trips() {
        // A word-level tokenizer.json, as `tokenizers` writes it.
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1,"world":2},"unk_token":"[UNK]"}}"#;
        let dir = std::env::temp_dir().join(format!("stagecraft-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, json).unwrap_or_default();
        let t = Tokenizer::from_file(&p).expect("loads");
        assert_eq!(t.encode("hello world").unwrap_or_default(), vec![1, 2]);
        assert_eq!(t.vocab_size(), 3);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{").unwrap_or_default();
        let err = Tokenizer::from_file(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("bad.json") && !err.contains('\n'), "{err}");
    }
}
