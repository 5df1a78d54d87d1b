//! Data source specs as the config writes them, checked before any training starts.
//!
//! A spec is one of:
//! - `synthetic:<task>?n=<count>&seed=<seed>&...`, see [`SyntheticSpec`];
//! - a path to a `.txt` file (plain text, one example per non-empty line);
//! - a path to a `.jsonl` file (one JSON object per line, see [`load_jsonl`](super::load_jsonl)).
//!
//! Relative paths resolve against `base_dir`, the directory of the config file.
//! [`parse_spec`] checks task names, options and that files exist; it reads no data.
//!
//! ```
//! use stagecraft_core::data::{parse_spec, SourceSpec};
//! use std::path::Path;
//! let s = parse_spec("synthetic:sub?n=10", Path::new(".")).unwrap();
//! assert!(matches!(s, SourceSpec::Synthetic(_)));
//! let e = parse_spec("missing/train.jsonl", Path::new("/cfg")).unwrap_err().to_string();
//! assert_eq!(e, "data source `missing/train.jsonl`: no such file /cfg/missing/train.jsonl");
//! ```

use super::chat::TemplateSource;
use super::{DataKind, SyntheticSpec};
use crate::bail;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A checked data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Generated data.
    Synthetic(SyntheticSpec),
    /// A `.txt` file, its path resolved.
    TextFile(PathBuf),
    /// A `.jsonl` file, its path resolved, and the chat template its `?template=`
    /// option chose, if any.
    JsonlFile(PathBuf, Option<TemplateSource>),
}

impl SourceSpec {
    /// The kind of data the source produces, where that is known without reading it
    /// (synthetic sources); `None` for files.
    pub fn known_kind(&self) -> Option<DataKind> {
        match self {
            SourceSpec::Synthetic(s) => Some(s.kind()),
            SourceSpec::TextFile(_) => Some(DataKind::Text),
            SourceSpec::JsonlFile(..) => None,
        }
    }
}

/// Parses and checks a spec: synthetic tasks and options are valid, files exist.
pub fn parse_spec(spec: &str, base_dir: &Path) -> Result<SourceSpec> {
    if spec.trim().is_empty() {
        return Err(Error::msg("data source is empty"));
    }
    if spec.starts_with("synthetic:") {
        return SyntheticSpec::parse(spec).map(SourceSpec::Synthetic);
    }
    let (file, options) = spec.split_once('?').unwrap_or((spec, ""));
    let path = Path::new(file);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let template = template_option(spec, options, ext, base_dir)?;
    let make = |p: PathBuf| match ext {
        "txt" => SourceSpec::TextFile(p),
        _ => SourceSpec::JsonlFile(p, template.clone()),
    };
    match ext {
        "txt" | "jsonl" => {}
        _ => {
            return Err(Error::msg(format!(
                "data source `{spec}`: expected `synthetic:<task>?n=<count>`, a .txt file or a .jsonl file"
            )))
        }
    }
    let resolved = if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) };
    if !resolved.exists() {
        bail!("data source `{spec}`: no such file {}", resolved.display());
    }
    if !resolved.is_file() {
        bail!("data source `{spec}`: {} is not a file", resolved.display());
    }
    Ok(make(resolved))
}

/// The `?template=chatml` or `?template=path/to/template.jinja` option of a `.jsonl`
/// source (a path resolves against `base_dir` and must exist).
fn template_option(spec: &str, options: &str, ext: &str, base_dir: &Path) -> Result<Option<TemplateSource>> {
    if options.is_empty() {
        return Ok(None);
    }
    let Some(value) = options.strip_prefix("template=").filter(|v| !v.contains('&')) else {
        bail!("data source `{spec}`: unknown option `{options}` (a .jsonl source takes `?template=chatml` or `?template=path/to/template.jinja`)");
    };
    if ext != "jsonl" {
        bail!("data source `{spec}`: `template` applies to .jsonl chat data only");
    }
    if value == "chatml" {
        return Ok(Some(TemplateSource::ChatMl));
    }
    let p = Path::new(value);
    let resolved = if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
    if !resolved.is_file() {
        bail!(
            "data source `{spec}`: template `{value}` is neither `chatml` nor a file ({} does not exist)",
            resolved.display()
        );
    }
    Ok(Some(TemplateSource::File(resolved)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str, dir: &Path) -> String {
        parse_spec(spec, dir).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn files_resolve_against_base_dir_and_must_exist() -> Result<()> {
        let dir = tempfile::tempdir().map_err(Error::msg)?;
        std::fs::write(dir.path().join("a.txt"), "x\n").map_err(Error::msg)?;
        std::fs::write(dir.path().join("b.jsonl"), "{}\n").map_err(Error::msg)?;
        assert_eq!(parse_spec("a.txt", dir.path())?, SourceSpec::TextFile(dir.path().join("a.txt")));
        assert_eq!(parse_spec("a.txt", dir.path())?.known_kind(), Some(DataKind::Text));
        assert_eq!(parse_spec("synthetic:add?n=1", dir.path())?.known_kind(), Some(DataKind::Completion));
        let abs = dir.path().join("b.jsonl");
        assert_eq!(parse_spec(&abs.to_string_lossy(), Path::new("/elsewhere"))?, SourceSpec::JsonlFile(abs, None));
        assert_eq!(
            parse_spec("b.jsonl?template=chatml", dir.path())?,
            SourceSpec::JsonlFile(dir.path().join("b.jsonl"), Some(TemplateSource::ChatMl))
        );
        std::fs::write(dir.path().join("t.jinja"), "{{ x }}").map_err(Error::msg)?;
        assert_eq!(
            parse_spec("b.jsonl?template=t.jinja", dir.path())?,
            SourceSpec::JsonlFile(dir.path().join("b.jsonl"), Some(TemplateSource::File(dir.path().join("t.jinja"))))
        );
        assert!(err("b.jsonl?template=nope", dir.path()).contains("template `nope` is neither `chatml` nor a file"));
        assert!(err("b.jsonl?tmpl=chatml", dir.path()).contains("unknown option `tmpl=chatml`"));
        assert!(err("a.txt?template=chatml", dir.path()).contains("applies to .jsonl chat data only"));
        assert!(err("c.txt", dir.path()).starts_with("data source `c.txt`: no such file "));
        assert!(
            err("data.csv", dir.path()).contains("expected `synthetic:<task>?n=<count>`, a .txt file or a .jsonl file")
        );
        assert!(err("sub.jsonl", Path::new("/")).contains("no such file"));
        std::fs::create_dir(dir.path().join("d.txt")).map_err(Error::msg)?;
        assert!(err("d.txt", dir.path()).ends_with("is not a file"));
        assert_eq!(err(" ", dir.path()), "data source is empty");
        assert!(err("synthetic:nope?n=1", dir.path()).contains("unknown synthetic task `nope`"));
        Ok(())
    }
}
