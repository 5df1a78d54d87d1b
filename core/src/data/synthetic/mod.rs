//! Synthetic data sources: `synthetic:<task>?n=<count>&seed=<seed>&<task options>`.
//!
//! | task | kind | one example | options (default) |
//! |---|---|---|---|
//! | `arith_text` | text | `"12+35=47\n"`, `"47-12=35\n"` or `"reverse abcd=dcba\n"` (a third each), `lines` of them | `digits` (2), `len` (4) or `min_len`/`max_len`, `lines` (1) |
//! | `add` | completion | prompt `"12+35="`, completion `"47\n"` | `digits` (2) |
//! | `sub` | completion | prompt `"47-12="`, completion `"35\n"` (a >= b) | `digits` (2) |
//! | `reverse` | completion | prompt `"reverse abcd="`, completion `"dcba\n"` | `len` (4) or `min_len`/`max_len` |
//!
//! Every task takes `n` (required, 1..=10,000,000) and `seed` (default 0). Operands are
//! uniform in `0..10^digits` (`digits` in 1..=18), written without leading zeros; words
//! are lowercase ASCII letters, their length uniform in `min_len..=max_len`.
//!
//! Generation uses only [`Rng`](crate::rng::Rng) integer draws, so a spec yields the same
//! examples on every machine, and the first `k` examples of `n=1000` are those of `n=k`.
//!
//! ```
//! use stagecraft_core::data::SyntheticSpec;
//! let s = SyntheticSpec::parse("synthetic:add?n=3&seed=1&digits=3").unwrap();
//! assert_eq!((s.n, s.seed), (3, 1));
//! let items = s.generate();
//! assert_eq!(items.len(), 3);
//! assert!(SyntheticSpec::parse("synthetic:add?n=3&len=2").is_err());
//! ```

mod tasks;

pub use tasks::Item;

use crate::error::{Error, Result};

/// The largest `n` a synthetic source accepts (a guard against typos such as `n=1e9`).
pub const MAX_N: u64 = 10_000_000;

/// A range of word lengths, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LenRange {
    /// Shortest word.
    pub min: usize,
    /// Longest word.
    pub max: usize,
}

/// A synthetic task and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Text lines of the three other tasks, mixed; `lines` lines per example.
    ArithText {
        /// Digits per operand.
        digits: u32,
        /// Word lengths for `reverse` lines.
        len: LenRange,
        /// Lines per example.
        lines: usize,
    },
    /// `a+b=` → `a+b`.
    Add {
        /// Digits per operand.
        digits: u32,
    },
    /// `a-b=` → `a-b`, with `a >= b`.
    Sub {
        /// Digits per operand.
        digits: u32,
    },
    /// `reverse w=` → `w` reversed.
    Reverse {
        /// Word lengths.
        len: LenRange,
    },
}

/// The task names, as written in specs.
pub const TASKS: [&str; 4] = ["arith_text", "add", "sub", "reverse"];

/// A parsed `synthetic:` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// What to generate.
    pub task: Task,
    /// Number of examples.
    pub n: usize,
    /// Generator seed.
    pub seed: u64,
}

impl SyntheticSpec {
    /// Parses a whole spec, `synthetic:<task>?<options>`; errors name the spec and the
    /// task or option at fault.
    pub fn parse(spec: &str) -> Result<SyntheticSpec> {
        let err = |m: String| Error::msg(format!("data source `{spec}`: {m}"));
        let rest =
            spec.strip_prefix("synthetic:").ok_or_else(|| err("expected `synthetic:<task>?n=<count>`".into()))?;
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        let opts = Options::parse(query).map_err(err)?;
        let allowed: &[&str] = match name {
            "arith_text" => &["n", "seed", "digits", "len", "min_len", "max_len", "lines"],
            "add" | "sub" => &["n", "seed", "digits"],
            "reverse" => &["n", "seed", "len", "min_len", "max_len"],
            _ => return Err(err(format!("unknown synthetic task `{name}` (tasks: {})", TASKS.join(", ")))),
        };
        if let Some((key, _)) = opts.pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(err(format!("unknown option `{key}` for task `{name}` (options: {})", allowed.join(", "))));
        }
        let n = opts.int("n", None, 1, MAX_N).map_err(err)? as usize;
        let seed = opts.int("seed", Some(0), 0, u64::MAX).map_err(err)?;
        let task = match name {
            "arith_text" => Task::ArithText {
                digits: digits(&opts).map_err(err)?,
                len: len_range(&opts).map_err(err)?,
                lines: opts.int("lines", Some(1), 1, 1000).map_err(err)? as usize,
            },
            "add" => Task::Add { digits: digits(&opts).map_err(err)? },
            "sub" => Task::Sub { digits: digits(&opts).map_err(err)? },
            _ => Task::Reverse { len: len_range(&opts).map_err(err)? },
        };
        Ok(SyntheticSpec { task, n, seed })
    }

    /// The task's name as written in specs.
    pub fn task_name(&self) -> &'static str {
        match self.task {
            Task::ArithText { .. } => "arith_text",
            Task::Add { .. } => "add",
            Task::Sub { .. } => "sub",
            Task::Reverse { .. } => "reverse",
        }
    }
}

fn digits(opts: &Options) -> Result<u32, String> {
    Ok(opts.int("digits", Some(2), 1, 18)? as u32)
}

/// `len=k`, or `min_len`/`max_len` (4 when neither is given; one alone sets the other
/// to 4 unless that would make an empty range, then to its own value).
fn len_range(opts: &Options) -> Result<LenRange, String> {
    let len = opts.opt_int("len", 1, 1000)?;
    let min = opts.opt_int("min_len", 1, 1000)?;
    let max = opts.opt_int("max_len", 1, 1000)?;
    let (min, max) = match (len, min, max) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("give either `len` or `min_len`/`max_len`, not both".into())
        }
        (Some(len), None, None) => (len, len),
        (None, Some(min), Some(max)) => (min, max),
        (None, Some(min), None) => (min, min.max(4)),
        (None, None, Some(max)) => (max.min(4), max),
        (None, None, None) => (4, 4),
    };
    if min > max {
        return Err(format!("option `min_len` ({min}) is greater than `max_len` ({max})"));
    }
    Ok(LenRange { min: min as usize, max: max as usize })
}

/// `key=value` pairs of a query string, in order, keys unique.
struct Options {
    pairs: Vec<(String, String)>,
}

impl Options {
    fn parse(query: &str) -> Result<Options, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("option `{part}` has no `=value`"))?;
            if k.is_empty() {
                return Err(format!("option `{part}` has no name"));
            }
            if pairs.iter().any(|(key, _)| key == k) {
                return Err(format!("option `{k}` is given twice"));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(Options { pairs })
    }

    /// The integer option `key` in `min..=max`; `default` when absent (required when
    /// `None`).
    fn int(&self, key: &str, default: Option<u64>, min: u64, max: u64) -> Result<u64, String> {
        self.opt_int(key, min, max)?.or(default).ok_or_else(|| format!("option `{key}` is required"))
    }

    /// The integer option `key` in `min..=max`, if given.
    fn opt_int(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, String> {
        let Some((_, raw)) = self.pairs.iter().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        match raw.parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ if max == u64::MAX => Err(format!("option `{key}` must be an integer >= {min}, got `{raw}`")),
            _ => Err(format!("option `{key}` must be an integer in {min}..={max}, got `{raw}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str) -> String {
        SyntheticSpec::parse(spec).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn options_parse_with_defaults() -> Result<()> {
        let s = SyntheticSpec::parse("synthetic:add?n=5")?;
        assert_eq!(s, SyntheticSpec { task: Task::Add { digits: 2 }, n: 5, seed: 0 });
        let s = SyntheticSpec::parse("synthetic:reverse?n=5&seed=9&min_len=2&max_len=7")?;
        assert_eq!(s.task, Task::Reverse { len: LenRange { min: 2, max: 7 } });
        assert_eq!(s.seed, 9);
        let s = SyntheticSpec::parse("synthetic:reverse?n=5&max_len=9")?;
        assert_eq!(s.task, Task::Reverse { len: LenRange { min: 4, max: 9 } });
        let s = SyntheticSpec::parse("synthetic:reverse?n=5&max_len=2")?;
        assert_eq!(s.task, Task::Reverse { len: LenRange { min: 2, max: 2 } });
        let s = SyntheticSpec::parse("synthetic:arith_text?n=5&len=3&lines=4&digits=1")?;
        assert_eq!(s.task, Task::ArithText { digits: 1, len: LenRange { min: 3, max: 3 }, lines: 4 });
        assert_eq!(s.task_name(), "arith_text");
        Ok(())
    }

    #[test]
    fn bad_specs_name_the_spec_and_the_option() {
        assert_eq!(
            err("synthetic:mul?n=5"),
            "data source `synthetic:mul?n=5`: unknown synthetic task `mul` (tasks: arith_text, add, sub, reverse)"
        );
        assert_eq!(
            err("synthetic:add?n=5&len=3"),
            "data source `synthetic:add?n=5&len=3`: unknown option `len` for task `add` (options: n, seed, digits)"
        );
        assert_eq!(
            err("synthetic:add?n=five"),
            "data source `synthetic:add?n=five`: option `n` must be an integer in 1..=10000000, got `five`"
        );
        assert_eq!(err("synthetic:add"), "data source `synthetic:add`: option `n` is required");
        assert_eq!(
            err("synthetic:add?n=0"),
            "data source `synthetic:add?n=0`: option `n` must be an integer in 1..=10000000, got `0`"
        );
        assert_eq!(
            err("synthetic:sub?n=1&digits=19"),
            "data source `synthetic:sub?n=1&digits=19`: option `digits` must be an integer in 1..=18, got `19`"
        );
        assert_eq!(
            err("synthetic:add?n=1&seed=-1"),
            "data source `synthetic:add?n=1&seed=-1`: option `seed` must be an integer >= 0, got `-1`"
        );
        assert!(err("synthetic:add?n=1&n=2").contains("option `n` is given twice"));
        assert!(err("synthetic:add?n").contains("option `n` has no `=value`"));
        assert!(err("synthetic:reverse?n=1&len=2&max_len=3").contains("not both"));
        assert!(
            err("synthetic:reverse?n=1&min_len=5&max_len=3").contains("`min_len` (5) is greater than `max_len` (3)")
        );
        assert!(
            err("synthetic:reverse?n=1&min_len=x").contains("option `min_len` must be an integer in 1..=1000, got `x`")
        );
        assert!(
            err("synthetic:reverse?n=1&max_len=0").contains("option `max_len` must be an integer in 1..=1000, got `0`")
        );
    }
}
