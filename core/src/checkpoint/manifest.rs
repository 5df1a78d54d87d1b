//! `manifest.json`: the sequence number and the SHA-256 of every file in a checkpoint,
//! sealed by a SHA-256 of the manifest itself.
//!
//! The manifest is written last (before the directory is renamed into place), so a
//! checkpoint whose manifest verifies has every file it lists. Its own checksum is over
//! its canonical serialization with `sha256` set to `""`:
//!
//! ```
//! use stagecraft_core::checkpoint::{FileEntry, Manifest};
//! let mut m = Manifest::new("step-10", 3);
//! m.files.insert("meta.json".into(), FileEntry::of_bytes(b"{}"));
//! let bytes = m.seal()?;
//! let back = Manifest::parse(std::path::Path::new("manifest.json"), &bytes)?;
//! assert_eq!(back.seq, 3);
//! assert_eq!(back.files["meta.json"].bytes, 2);
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The file name of the manifest inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest layout this module writes; others are refused on load.
pub const FORMAT_VERSION: u32 = 1;

/// Size and checksum of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Length in bytes; a shorter file on disk is reported as truncated.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl FileEntry {
    /// The entry describing `data`.
    pub fn of_bytes(data: &[u8]) -> Self {
        FileEntry { bytes: data.len() as u64, sha256: sha256_hex(data) }
    }

    /// The entry describing the file at `path`, hashed as it streams from disk.
    pub fn of_file(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(crate::error::io(path))?;
        let mut hasher = Sha256::new();
        let bytes = std::io::copy(&mut f, &mut hasher).map_err(crate::error::io(path))?;
        Ok(FileEntry { bytes, sha256: hex(&hasher.finalize()) })
    }
}

/// The manifest of one checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The checkpoint's name (its directory name).
    pub name: String,
    /// Sequence number: one more than the largest in the directory at save time, so it
    /// orders checkpoints oldest → newest independently of file times.
    pub seq: u64,
    /// Every file of the checkpoint (by file name) with its size and checksum.
    pub files: BTreeMap<String, FileEntry>,
    /// Lowercase hex SHA-256 of this manifest serialized with `sha256` set to `""`.
    #[serde(default)]
    pub sha256: String,
}

impl Manifest {
    /// An empty manifest for checkpoint `name` with sequence number `seq`.
    pub fn new(name: &str, seq: u64) -> Self {
        Manifest { format: FORMAT_VERSION, name: name.to_string(), seq, files: BTreeMap::new(), sha256: String::new() }
    }

    /// The SHA-256 of the canonical serialization (with an empty `sha256`).
    fn digest(&self) -> Result<String> {
        let unsealed = Manifest { sha256: String::new(), ..self.clone() };
        let bytes =
            serde_json::to_vec(&unsealed).map_err(|e| Error::msg(format!("manifest: cannot serialize: {e}")))?;
        Ok(sha256_hex(&bytes))
    }

    /// Fills in `sha256` and returns the bytes to write (pretty JSON, final newline).
    pub fn seal(&mut self) -> Result<Vec<u8>> {
        self.sha256 = self.digest()?;
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|e| Error::msg(format!("manifest: cannot serialize: {e}")))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses and verifies manifest bytes read from `path` (named in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                Error::file(path, format!("truncated ({e})"))
            } else {
                Error::file(path, format!("malformed ({e})"))
            }
        })?;
        if m.format != FORMAT_VERSION {
            return Err(Error::file(
                path,
                format!("unsupported checkpoint format {} (expected {FORMAT_VERSION})", m.format),
            ));
        }
        if m.sha256 != m.digest()? {
            return Err(Error::file(path, "checksum mismatch (manifest)"));
        }
        Ok(m)
    }

    /// Reads only the sequence number, without verifying anything: enough to order
    /// checkpoints in a listing. `None` when the manifest is unreadable.
    pub fn peek_seq(bytes: &[u8]) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        v.get("seq")?.as_u64()
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> Vec<u8> {
        let mut m = Manifest::new("a", 7);
        m.files.insert("x".into(), FileEntry::of_bytes(b"hello"));
        m.seal().expect("seal")
    }

    #[test]
    fn sha256_of_abc_matches_the_standard_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn sealed_manifest_parses_back() {
        let m = Manifest::parse(Path::new("m.json"), &sealed()).expect("parse");
        assert_eq!(m.seq, 7);
        assert_eq!(m.files["x"].bytes, 5);
        assert_eq!(Manifest::peek_seq(&sealed()), Some(7));
    }

    #[test]
    fn edited_manifest_fails_its_checksum() {
        let text = String::from_utf8(sealed()).expect("utf8").replace("\"seq\": 7", "\"seq\": 8");
        let err = Manifest::parse(Path::new("m.json"), text.as_bytes()).expect_err("edited");
        assert_eq!(err.to_string(), "m.json: checksum mismatch (manifest)");
    }

    #[test]
    fn cut_manifest_is_truncated() {
        let bytes = sealed();
        let err = Manifest::parse(Path::new("m.json"), &bytes[..bytes.len() / 2]).expect_err("cut");
        assert!(err.to_string().starts_with("m.json: truncated"), "{err}");
    }
}
