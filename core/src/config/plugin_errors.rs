//! A plugin's refusal of its config, reported at the key in the user's file.
//!
//! A plugin checks its own config, which it receives as JSON, and answers with text:
//! ``config of plugin `bottleneck`: unknown field `reduction`, expected one of ... at
//! line 1 column 59`` — a position in the host's JSON. The host knows where each key
//! of that JSON lies ([`PluginJson`]) and where each key of the pipeline file lies
//! ([`spans::find`]), so the error becomes
//! ``pipeline.toml:14:1: stages[1].adapters[0].reduction: unknown field `reduction`, ... (plugin `bottleneck`)``.
//! A message with no position points at the key of the plugin's config it names (the
//! first in backticks, else its first word), else at the plugin's table (or name).

use super::key_path::KeyPath;
use super::plugin_json::{Part, PluginJson};
use super::{line_col, spans, PipelineConfig, StageConfig};
use crate::error::Error;

/// Which plugin of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginSlot {
    /// The objective.
    Objective,
    /// The optimizer.
    Optimizer,
    /// Adapter `k` of `adapters`.
    Adapter(usize),
}

impl PluginSlot {
    /// Its key path in the pipeline file.
    fn path(self, stage: usize) -> KeyPath {
        let stage = KeyPath::default().key("stages").index(stage);
        match self {
            PluginSlot::Objective => stage.key("objective"),
            PluginSlot::Optimizer => stage.key("optimizer"),
            PluginSlot::Adapter(k) => stage.key("adapters").index(k),
        }
    }

    /// How errors name it: `objective`, `optimizer`, ``adapter `lora` ``.
    fn what(self, s: &StageConfig) -> String {
        match self {
            PluginSlot::Objective => "objective".into(),
            PluginSlot::Optimizer => "optimizer".into(),
            PluginSlot::Adapter(k) => format!("adapter `{}`", s.adapters.get(k).map_or("?", |a| a.plugin.as_str())),
        }
    }
}

impl StageConfig {
    /// The config JSON handed to the plugin in `slot`, with its spans.
    pub fn plugin_json(&self, slot: PluginSlot) -> PluginJson {
        match slot {
            PluginSlot::Objective => self.objective.plugin_json(),
            PluginSlot::Optimizer => self.optimizer.plugin_json(),
            PluginSlot::Adapter(k) => {
                self.adapters.get(k).map_or_else(|| PluginJson::of(&toml::Table::new()), |a| a.plugin_json())
            }
        }
    }
}

impl PipelineConfig {
    /// An error from instantiating the plugin in `slot` of stage `stage`: a plugin's
    /// refusal of its config becomes `file:line:column: key.path: message (plugin `x`)`
    /// at that key in the pipeline file; any other error gets the stage and plugin in
    /// front.
    pub fn plugin_error(&self, stage: usize, slot: PluginSlot, e: Error) -> Error {
        let Some(s) = self.stages.get(stage) else { return e };
        match self.located(stage, s, slot, &e) {
            Some(located) => located,
            None => Error::Context { what: format!("stage `{}`: {}", s.name, slot.what(s)), inner: Box::new(e) },
        }
    }

    /// The plugin's config error at its key in the file, if `e` is one and the file
    /// holds the plugin's table.
    fn located(&self, stage: usize, s: &StageConfig, slot: PluginSlot, e: &Error) -> Option<Error> {
        let Error::Plugin { plugin, method, msg } = e else { return None };
        let origin = self.origin.as_ref().filter(|_| method == "new")?;
        let (msg, column) = split_position(msg);
        let json = s.plugin_json(slot);
        let (inner, part) = match column.and_then(|c| json.at(c.checked_sub(1)?)) {
            Some((path, part)) => (path.clone(), part),
            None => (named_key(msg, &json).unwrap_or_default(), Part::Key),
        };
        let table = slot.path(stage);
        let path = table.join(&inner);
        let span = spans::find(&origin.text, &path).or_else(|| spans::find(&origin.text, &table))?;
        let offset = match part {
            Part::Key => span.key.unwrap_or(span.value).start,
            Part::Value => span.value.start,
        };
        let (line, col) = line_col(&origin.text, offset);
        Some(Error::msg(format!("{}:{line}:{col}: {path}: {msg} (plugin `{plugin}`)", origin.file)))
    }
}

/// A plugin's message without the SDK's ``config of plugin `x`: `` prefix and
/// serde_json's ` at line 1 column N` suffix, and that column.
fn split_position(msg: &str) -> (&str, Option<usize>) {
    let msg =
        msg.strip_prefix("config of plugin `").and_then(|rest| rest.split_once("`: ")).map_or(msg, |(_, rest)| rest);
    match msg.rsplit_once(" at line 1 column ") {
        Some((text, col)) => match col.trim().parse() {
            Ok(col) => (text, Some(col)),
            Err(_) => (msg, None),
        },
        None => (msg, None),
    }
}

/// The top-level key of the plugin's config that the message names: the first one in
/// backticks, else its first word (`variant must be ...`).
fn named_key(msg: &str, json: &PluginJson) -> Option<KeyPath> {
    let first_word = msg.split([' ', ':', ',']).next().unwrap_or("");
    let quoted = msg.split('`').skip(1).step_by(2);
    quoted.chain([first_word]).map(|w| KeyPath::default().key(w)).find(|p| json.has_key(p))
}

#[cfg(test)]
mod tests {
    use super::split_position;

    #[test]
    fn the_sdks_prefix_and_serde_jsons_position_are_taken_off() {
        assert_eq!(
            split_position("config of plugin `bottleneck`: unknown field `x`, expected `y` at line 1 column 59"),
            ("unknown field `x`, expected `y`", Some(59))
        );
        assert_eq!(split_position("r must be > 0"), ("r must be > 0", None));
        assert_eq!(split_position("x at line 1 column q"), ("x at line 1 column q", None));
    }
}
