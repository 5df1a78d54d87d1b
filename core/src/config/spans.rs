//! Where a key lies in a pipeline file: the parsed document searched by key path, so
//! that an error found after parsing (a plugin refusing its config) is reported at
//! `file:line:column` like a parse error.

use super::key_path::{KeyPart, KeyPath};
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// Where a key and its value lie in the text, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpan {
    /// The key (none for an array element).
    pub key: Option<Range<usize>>,
    /// The value.
    pub value: Range<usize>,
}

/// The spans of the value at `path` in `text`; `None` when the text does not parse or
/// holds no such key (one set by `--set` only).
pub fn find(text: &str, path: &KeyPath) -> Option<KeySpan> {
    let doc = DeTable::parse(text).ok()?;
    let mut here = KeySpan { key: None, value: doc.span() };
    let mut node: Option<&DeValue> = None;
    for part in &path.0 {
        let child = match (part, node) {
            (KeyPart::Key(name), None) => entry(doc.get_ref(), name),
            (KeyPart::Key(name), Some(DeValue::Table(t))) => entry(t, name),
            (KeyPart::Index(i), Some(DeValue::Array(a))) => a.get(*i).map(|v| (None, v)),
            _ => None,
        };
        let (key, value) = child?;
        here = KeySpan { key, value: value.span() };
        node = Some(value.get_ref());
    }
    Some(here)
}

/// The key span and value of `name` in `table`.
fn entry<'a, 'i>(table: &'a DeTable<'i>, name: &str) -> Option<(Option<Range<usize>>, &'a toml::Spanned<DeValue<'i>>)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == name).map(|(k, v)| (Some(k.span()), v))
}

#[cfg(test)]
mod tests {
    use super::super::key_path::{KeyPart, KeyPath};
    use super::find;

    fn path(parts: &[&str]) -> KeyPath {
        KeyPath(parts.iter().map(|p| p.parse().map_or_else(|_| KeyPart::Key(p.to_string()), KeyPart::Index)).collect())
    }

    #[test]
    fn keys_are_found_in_tables_arrays_of_tables_and_inline_tables() {
        let text = "[run]\nname = \"x\"\n\n[[stages]]\nname = \"a\"\n\n[[stages]]\nname = \"b\"\nadapters = [{ plugin = \"lora\", r = 8 }, { plugin = \"ia3\" }]\n";
        let at = |parts: &[&str]| find(text, &path(parts)).map(|s| (s.key.map(|k| &text[k]), &text[s.value]));
        assert_eq!(at(&["run", "name"]), Some((Some("name"), "\"x\"")));
        assert_eq!(at(&["stages", "1", "name"]), Some((Some("name"), "\"b\"")));
        assert_eq!(at(&["stages", "1", "adapters", "0", "r"]), Some((Some("r"), "8")));
        assert_eq!(at(&["stages", "1", "adapters", "1"]), Some((None, "{ plugin = \"ia3\" }")));
        assert_eq!(at(&["stages", "1", "adapters", "1", "r"]), None);
        assert_eq!(at(&["stages", "2"]), None);
        assert!(find("not toml = ", &path(&["run"])).is_none());
    }
}
