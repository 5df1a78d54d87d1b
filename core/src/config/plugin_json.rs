//! A plugin's config as the JSON text handed to the plugin, with where each key and
//! value lies in that text: a position a plugin reports in it (serde_json's `at line 1
//! column 59`) maps back to the key path in the user's file.
//!
//! The text is what `serde_json::to_string` writes for the table (compact, one line);
//! scalars are written by serde_json itself, so the two never differ.

use super::key_path::KeyPath;
use std::ops::Range;

/// Whether a span covers a key or its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The key's quoted name.
    Key,
    /// The value (for a table or an array: from its opening to its closing bracket).
    Value,
}

/// One key or value in the text.
#[derive(Debug, Clone)]
struct Span {
    bytes: Range<usize>,
    path: KeyPath,
    part: Part,
}

/// A plugin config's JSON text and the spans of its keys and values.
#[derive(Debug, Clone)]
pub struct PluginJson {
    /// The JSON handed to the plugin.
    pub text: String,
    spans: Vec<Span>,
}

impl PluginJson {
    /// The JSON of a plugin's config table.
    pub fn of(table: &toml::Table) -> PluginJson {
        let mut json = PluginJson { text: String::new(), spans: Vec::new() };
        json.table(table, &KeyPath::default());
        json
    }

    /// The innermost key or value that covers byte `offset` of the text.
    pub fn at(&self, offset: usize) -> Option<(&KeyPath, Part)> {
        self.spans.iter().filter(|s| s.bytes.contains(&offset)).min_by_key(|s| s.bytes.len()).map(|s| (&s.path, s.part))
    }

    /// Whether the config has a key at `path`.
    pub fn has_key(&self, path: &KeyPath) -> bool {
        self.spans.iter().any(|s| s.part == Part::Key && &s.path == path)
    }

    fn table(&mut self, table: &toml::Table, path: &KeyPath) {
        let start = self.text.len();
        self.text.push('{');
        for (i, (k, v)) in table.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            let key_start = self.text.len();
            self.scalar(&toml::Value::String(k.clone()));
            let inner = path.key(k);
            self.spans.push(Span { bytes: key_start..self.text.len(), path: inner.clone(), part: Part::Key });
            self.text.push(':');
            self.value(v, &inner);
        }
        self.text.push('}');
        self.spans.push(Span { bytes: start..self.text.len(), path: path.clone(), part: Part::Value });
    }

    fn value(&mut self, v: &toml::Value, path: &KeyPath) {
        let start = self.text.len();
        match v {
            toml::Value::Table(t) => return self.table(t, path),
            toml::Value::Array(items) => {
                self.text.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    self.value(item, &path.index(i));
                }
                self.text.push(']');
            }
            scalar => self.scalar(scalar),
        }
        self.spans.push(Span { bytes: start..self.text.len(), path: path.clone(), part: Part::Value });
    }

    fn scalar(&mut self, v: &toml::Value) {
        // A string, a number, a bool (serde_json writes NaN and infinities as `null`) or
        // a datetime (toml serializes it as a one-key table): serde_json's own text.
        self.text.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::{Part, PluginJson};

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn the_text_is_serde_jsons() {
        let t = table(
            "r = 8\nalpha = 1.5\nnan = nan\ntargets = [\"q\", \"k\"]\nwhen = 1979-05-27T07:32:00Z\n[per_site]\n\"a.b\" = { r = 2, s = \"\\\"x\\\"\" }\n",
        );
        assert_eq!(PluginJson::of(&t).text, serde_json::to_string(&t).expect("json"));
        assert_eq!(PluginJson::of(&toml::Table::new()).text, "{}");
    }

    #[test]
    fn a_position_maps_to_the_innermost_key_or_value() {
        let t = table("hidden = 4\ntargets = [\"q\", 7]\n[inner]\nx = true\n");
        let json = PluginJson::of(&t);
        let at = |needle: &str, back: usize| {
            let offset = json.text.find(needle).expect("needle") + needle.len() - back;
            json.at(offset).map(|(p, part)| (p.to_string(), part))
        };
        assert_eq!(at("\"hidden\"", 1), Some(("hidden".into(), Part::Key)));
        assert_eq!(at(":4", 1), Some(("hidden".into(), Part::Value)));
        assert_eq!(at("7", 1), Some(("targets[1]".into(), Part::Value)));
        assert_eq!(at("true", 1), Some(("inner.x".into(), Part::Value)));
        assert_eq!(at("true}", 1), Some(("inner".into(), Part::Value)));
        assert_eq!(json.at(json.text.len() - 1).map(|(p, _)| p.is_empty()), Some(true));
    }
}
