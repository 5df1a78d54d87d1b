//! The host's error type: one enum, lowercase one-line messages naming the file,
//! plugin, site or field at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor computation failed in candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    ///
    /// The OS's message is part of this one line and not a separate `source`, so that
    /// error reporters that print the chain do not print it twice.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },

    /// A plugin library could not be loaded (one line; the host keeps running).
    #[error("plugin {path}: {msg}")]
    Load {
        /// The library file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A plugin returned an error or panicked in one of its entry points.
    #[error("plugin `{plugin}` failed in `{method}`: {msg}")]
    Plugin {
        /// Registered plugin name.
        plugin: String,
        /// The entry point (`forward`, `step`, ...), with the site where there is one.
        method: String,
        /// The plugin's message.
        msg: String,
    },

    /// A library provides plugins already provided by others: it is not used.
    #[error("{}", Clash::describe(clashes, second))]
    Duplicate {
        /// Each library that provides them first, with the names.
        clashes: Vec<Clash>,
        /// The library that provides them again.
        second: String,
    },

    /// No plugin with that name (and kind) is registered.
    #[error("no {kind} plugin named `{name}` (available: {available}); searched: {searched}")]
    UnknownPlugin {
        /// Plugin kind (`method`, `optimizer`, `stage`).
        kind: String,
        /// Requested name.
        name: String,
        /// Registered names of that kind.
        available: String,
        /// Each place searched and what was found there.
        searched: String,
    },

    /// A model file (config.json, safetensors, index) is missing something or malformed.
    #[error("{path}: {msg}")]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, naming the tensor or field (one line).
        msg: String,
    },

    /// A model, config or value the user gave is not usable.
    #[error("{0}")]
    Msg(String),

    /// Training produced a NaN or infinite loss or gradient (the anomaly guard recovers).
    #[error("{0}")]
    NonFinite(String),

    /// An error with what was being done when it happened (see [`Context`]); the inner
    /// error keeps its variant ([`Error::root`]).
    ///
    /// Like [`Error::Io`], the inner error is part of the one line, not a `source`.
    #[error("{what}: {inner}")]
    Context {
        /// What was being done: "stage `adapt` step 40", "evaluating the eval set of stage `add`".
        what: String,
        /// The error.
        inner: Box<Error>,
    },
}

/// Plugin names a library provides that another library, found first, provides too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash {
    /// The library found first.
    pub first: String,
    /// The names both provide.
    pub names: Vec<String>,
}

impl Clash {
    /// `plugin `a` is provided by both X and Y; plugins `b`, `c` are provided by both Z and Y`.
    fn describe(clashes: &[Clash], second: &str) -> String {
        let one = |c: &Clash| {
            let names: Vec<String> = c.names.iter().map(|n| format!("`{n}`")).collect();
            match names.len() {
                1 => format!("plugin {} is provided by both {} and {second}", names[0], c.first),
                _ => format!("plugins {} are provided by both {} and {second}", names.join(", "), c.first),
            }
        };
        clashes.iter().map(one).collect::<Vec<_>>().join("; ")
    }
}

/// `Result` with the host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a free-form message.
    pub fn msg(m: impl std::fmt::Display) -> Self {
        Error::Msg(m.to_string())
    }

    /// An error about a file: `msg` is kept to its first line, so that a wrapped
    /// error's backtrace or context never spreads the message over several lines.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        let msg = msg.to_string();
        let first = msg.lines().next().unwrap_or("").trim_end().to_string();
        Error::File { path: path.into(), msg: first }
    }
}

/// Wraps an I/O error with the path it concerns: `std::fs::read(p).map_err(io(p))?`.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Io { path: path.to_path_buf(), error }
}

impl Error {
    /// The error under every [`Error::Context`] layer.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            e => e,
        }
    }
}

/// Adds what was being done to an error: `result.context("loading stage `add`")?`.
///
/// ```
/// use stagecraft_core::error::{Context, Error, Result};
/// let r: Result<()> = Err(Error::NonFinite("loss is NaN".into()));
/// let e = r.context("stage `adapt` step 3").expect_err("an error");
/// assert_eq!(e.to_string(), "stage `adapt` step 3: loss is NaN");
/// assert!(matches!(e.root(), Error::NonFinite(_)));
/// ```
pub trait Context<T> {
    /// The error, if any, with `what` in front.
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
    /// The error, if any, with `what()` in front (built only on error).
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Error::Context { what: what.to_string(), inner: Box::new(e.into()) })
    }

    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::Context { what: what().to_string(), inner: Box::new(e.into()) })
    }
}

/// Returns early with [`Error::Msg`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::Msg(::std::format!($($arg)*)))
    };
}
