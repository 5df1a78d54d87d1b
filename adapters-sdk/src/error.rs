//! The error type plugin code returns.
//!
//! Across the ABI an error is a message ([`RString`]); inside a plugin it is an
//! [`Error`], which any `Display` error converts into, so `?` works on serde, host ops
//! and your own checks alike. Messages are lowercase and name what is wrong and where.

use abi_stable::std_types::{RResult, RString};
use std::fmt;

/// A plugin-side error: one line, naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What crosses the ABI: a value or a one-line message.
pub type AbiResult<T> = RResult<T, RString>;

impl Error {
    /// An error with this message.
    pub fn msg(msg: impl fmt::Display) -> Self {
        Error(msg.to_string())
    }

    /// Prefixes the message with context: `"{ctx}: {msg}"`.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        Error(format!("{ctx}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<RString> for Error {
    fn from(s: RString) -> Self {
        Error(s.into_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_string())
    }
}

/// Returns early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error(::std::format!($($arg)*)))
    };
}

/// Converts a plugin-side result into what crosses the ABI.
pub fn to_abi<T>(r: Result<T>) -> AbiResult<T> {
    match r {
        Ok(v) => RResult::ROk(v),
        Err(e) => RResult::RErr(RString::from(e.0)),
    }
}

/// Converts what crossed the ABI into a plugin-side result.
pub fn from_abi<T>(r: AbiResult<T>) -> Result<T> {
    match r {
        RResult::ROk(v) => Ok(v),
        RResult::RErr(e) => Err(Error(e.into_string())),
    }
}
