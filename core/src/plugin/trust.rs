//! Which plugin library files a pipeline trusts: sha256 pins (`[plugins.pins]`) and
//! `[plugins] require_pinned`, checked on a library file before any of its code runs.
//!
//! A pin names a library by its file name (`libstagecraft_bottleneck.so`) or by its
//! library id (`stagecraft_bottleneck`, from its `stagecraft_plugin_<id>` symbol); every
//! pin that names a file must match its sha256. Plugins compiled into the host are
//! exempt: they are part of the binary, not files on a search path.

use super::loader::LibraryFile;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;

/// A sha256 digest: 64 lowercase hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(String);

impl Sha256 {
    /// The sha256 of a file's bytes.
    pub fn of_file(path: &Path) -> Result<Sha256> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Load { path: path.to_path_buf(), msg: format!("cannot read: {e}") })?;
        Ok(Sha256(sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256 {
    type Error = String;

    /// Accepts 64 hexadecimal digits in either case.
    fn try_from(s: String) -> std::result::Result<Self, String> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256(s.to_ascii_lowercase()))
        } else {
            Err(format!("a sha256 is 64 hexadecimal digits, got {:?} ({} characters)", s, s.chars().count()))
        }
    }
}

impl std::str::FromStr for Sha256 {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Sha256::try_from(s.to_string())
    }
}

impl From<Sha256> for String {
    fn from(h: Sha256) -> String {
        h.0
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a pipeline trusts. The default trusts every library (no pins, none required).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// sha256 pins, by library file name or library id.
    pub pins: BTreeMap<String, Sha256>,
    /// Whether a library file without a pin is refused.
    pub require_pinned: bool,
    /// The config the policy comes from, as errors name it.
    pub source: String,
}

impl TrustPolicy {
    /// Whether the policy refuses nothing (no pin to check, none required).
    pub fn is_open(&self) -> bool {
        self.pins.is_empty() && !self.require_pinned
    }

    /// Whether pin `key` names `file` (by file name or library id).
    pub fn names(key: &str, file: &LibraryFile) -> bool {
        key == file.id || file.path.file_name().is_some_and(|n| n.to_str() == Some(key))
    }

    /// Checks a library file before it is opened: each pin naming it must match its
    /// sha256, and with `require_pinned` one must name it. Errors name the file, the pin
    /// and both hashes.
    pub fn check(&self, file: &LibraryFile) -> Result<()> {
        if self.is_open() {
            return Ok(());
        }
        let pins: Vec<(&String, &Sha256)> = self.pins.iter().filter(|(k, _)| Self::names(k, file)).collect();
        if pins.is_empty() && !self.require_pinned {
            return Ok(());
        }
        let actual = Sha256::of_file(&file.path)?;
        let refuse = |msg: String| Error::Load { path: file.path.clone(), msg };
        if pins.is_empty() {
            let name = file.path.file_name().map_or(file.id.clone(), |n| n.to_string_lossy().into_owned());
            return Err(refuse(format!(
                "not pinned, and {} sets `[plugins] require_pinned = true` (its sha256 is {actual}: once you trust this build, pin it with `\"{name}\" = \"{actual}\"` in [plugins.pins])",
                self.source
            )));
        }
        match pins.into_iter().find(|(_, pinned)| **pinned != actual) {
            Some((key, pinned)) => Err(refuse(format!(
                "sha256 {actual} does not match its pin in {} ([plugins.pins] \"{key}\" = \"{pinned}\"): refused before loading it",
                self.source
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    #[test]
    fn sha256_values_are_64_hex_digits_kept_lowercase() {
        let upper = "AB".repeat(32);
        assert_eq!(upper.parse::<Sha256>().expect("hex").as_str(), "ab".repeat(32));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let e = bad.parse::<Sha256>().expect_err("refused");
            assert!(e.contains("64 hexadecimal digits"), "{e}");
        }
    }
}
