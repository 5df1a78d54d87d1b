//! The instruction and chat row formats of JSONL data, detected by their keys.
//!
//! | format | keys | turns |
//! |---|---|---|
//! | `alpaca` | `instruction`, `output`, optional `input`, `system` | one user turn (instruction, then input after a blank line), one assistant turn |
//! | `sharegpt` | `conversations`: `[{from, value}]` | `from`: `system`, `human` or `user`, `gpt` or `assistant` |
//! | `messages` | `messages`: `[{role, content}]` | `role`: `system`, `user`, `assistant` |
//!
//! Every row may add `difficulty` (the curriculum key). A conversation row may put its
//! system prompt in a top-level `system` (as some ShareGPT exports do); its other
//! top-level keys (`id`, `source`, ...) are metadata and ignored. A `messages` turn's
//! `content` may be a list of text parts (`[{"type": "text", "text": ...}]`, joined).
//! An alpaca row's other keys, other roles, keys inside a turn other than its two, an
//! empty conversation or one with no assistant turn are errors.
//!
//! ```
//! use stagecraft_core::data::chat::{ChatFormat, ChatRow, Role};
//! let v: serde_json::Value = serde_json::from_str(r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}"#).unwrap();
//! let row = ChatRow::parse(v.as_object().unwrap()).unwrap().unwrap();
//! assert_eq!(row.format(), ChatFormat::ShareGpt);
//! assert_eq!(row.messages()[1].role, Role::Assistant);
//! ```

use serde_json::{Map, Value};

/// Which format a row is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// `instruction` / `input` / `output`.
    Alpaca,
    /// `conversations` of `{from, value}`.
    ShareGpt,
    /// `messages` of `{role, content}` (OpenAI, Hugging Face).
    Messages,
}

impl std::fmt::Display for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChatFormat::Alpaca => "alpaca",
            ChatFormat::ShareGpt => "sharegpt",
            ChatFormat::Messages => "messages",
        })
    }
}

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The model: the turns that take loss.
    Assistant,
}

impl Role {
    /// The role as chat templates read it (`message['role']`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Who speaks.
    #[serde(serialize_with = "role_str")]
    pub role: Role,
    /// What is said.
    pub content: String,
}

fn role_str<S: serde::Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

impl Message {
    /// A turn.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: content.into() }
    }
}

/// A parsed instruction or chat row.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatRow {
    /// An alpaca row, kept apart so that it can use the Alpaca prompt.
    Alpaca {
        /// Optional system prompt.
        system: Option<String>,
        /// The task.
        instruction: String,
        /// Optional context (empty when absent).
        input: String,
        /// The answer: the only tokens with loss.
        output: String,
    },
    /// A conversation.
    Conversation {
        /// `sharegpt` or `messages`.
        format: ChatFormat,
        /// The turns, at least one of them the assistant's.
        messages: Vec<Message>,
    },
}

impl ChatRow {
    /// The row's format.
    pub fn format(&self) -> ChatFormat {
        match self {
            ChatRow::Alpaca { .. } => ChatFormat::Alpaca,
            ChatRow::Conversation { format, .. } => *format,
        }
    }

    /// The row as turns: alpaca is a system turn (if any), the user's instruction
    /// (and input after a blank line), and the assistant's output.
    pub fn messages(&self) -> Vec<Message> {
        match self {
            ChatRow::Conversation { messages, .. } => messages.clone(),
            ChatRow::Alpaca { system, instruction, input, output } => {
                let user = if input.is_empty() { instruction.clone() } else { format!("{instruction}\n\n{input}") };
                let system = system.iter().map(|s| Message::new(Role::System, s.clone()));
                system.chain([Message::new(Role::User, user), Message::new(Role::Assistant, output.clone())]).collect()
            }
        }
    }

    /// The row in `obj` if it is an instruction or chat row (it has `messages`,
    /// `conversations` or `instruction`), else `None`. Errors are one line.
    pub fn parse(obj: &Map<String, Value>) -> Option<Result<ChatRow, String>> {
        if obj.contains_key("messages") {
            Some(turns(obj, ChatFormat::Messages))
        } else if obj.contains_key("conversations") {
            Some(turns(obj, ChatFormat::ShareGpt))
        } else if obj.contains_key("instruction") {
            Some(only_keys(obj, &["instruction", "input", "output", "system"]).and_then(|()| alpaca(obj)))
        } else {
            None
        }
    }
}

fn only_keys(obj: &Map<String, Value>, keys: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !keys.contains(&k.as_str()) && k.as_str() != "difficulty") {
        Some(k) => Err(format!("unknown key `{k}` (keys: {}, difficulty)", keys.join(", "))),
        None => Ok(()),
    }
}

fn text(obj: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("{what}`{key}` must be a string, got {}", short(v))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// A `content` list of text parts, joined; other part types (images, audio) cannot be
/// trained on here.
fn text_parts(parts: &[Value], at: &str) -> Result<String, String> {
    let mut out = String::new();
    for (j, part) in parts.iter().enumerate() {
        match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => out.push_str(t),
            (Some(kind), _) if kind != "text" => {
                return Err(format!("{at}content[{j}] is a `{kind}` part; only text parts can be trained on"))
            }
            _ => {
                return Err(format!(
                    "{at}content[{j}] must be {{\"type\": \"text\", \"text\": ...}}, got {}",
                    short(part)
                ))
            }
        }
    }
    Ok(out)
}

fn alpaca(obj: &Map<String, Value>) -> Result<ChatRow, String> {
    let instruction = text(obj, "instruction", "")?.unwrap_or_default();
    let output = text(obj, "output", "")?.ok_or("an alpaca row needs `output` (the answer)")?;
    if output.is_empty() {
        return Err("`output` is empty: an alpaca row needs an answer to train on".into());
    }
    let input = text(obj, "input", "")?.unwrap_or_default();
    Ok(ChatRow::Alpaca { system: text(obj, "system", "")?, instruction, input, output })
}

fn turns(obj: &Map<String, Value>, format: ChatFormat) -> Result<ChatRow, String> {
    let (key, role_key, text_key) = if format == ChatFormat::ShareGpt {
        ("conversations", "from", "value")
    } else {
        ("messages", "role", "content")
    };
    let Some(Value::Array(items)) = obj.get(key) else {
        return Err(format!("`{key}` must be a list of {{{role_key}, {text_key}}} objects"));
    };
    if items.is_empty() {
        return Err(format!("`{key}` is empty"));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(turn) = item else {
            return Err(format!("{key}[{i}] must be a {{{role_key}, {text_key}}} object, got {}", short(item)));
        };
        let at = format!("{key}[{i}]: ");
        let role = text(turn, role_key, &at)?.ok_or_else(|| format!("{key}[{i}] has no `{role_key}`"))?;
        let role = match (format, role.as_str()) {
            (_, "system") => Role::System,
            (_, "user") | (ChatFormat::ShareGpt, "human") => Role::User,
            (_, "assistant") | (ChatFormat::ShareGpt, "gpt") => Role::Assistant,
            _ => {
                let known = if format == ChatFormat::ShareGpt {
                    "system, human, gpt, user, assistant"
                } else {
                    "system, user, assistant"
                };
                return Err(format!("{key}[{i}]: unknown {role_key} `{role}` (known: {known})"));
            }
        };
        let content = match (format, turn.get(text_key)) {
            (ChatFormat::Messages, Some(Value::Array(parts))) => text_parts(parts, &at)?,
            _ => text(turn, text_key, &at)?.ok_or_else(|| format!("{key}[{i}] has no `{text_key}`"))?,
        };
        if let Some(k) = turn.keys().find(|k| *k != role_key && *k != text_key) {
            return Err(format!("{key}[{i}]: unknown key `{k}` (keys: {role_key}, {text_key})"));
        }
        messages.push(Message { role, content });
    }
    if let Some(system) = text(obj, "system", "")? {
        if messages[0].role == Role::System {
            return Err(format!("a top-level `system` and a system turn in `{key}`: give one of them"));
        }
        messages.insert(0, Message::new(Role::System, system));
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err(format!("`{key}` has no assistant turn: nothing to train on"));
    }
    Ok(ChatRow::Conversation { format, messages })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Option<Result<ChatRow, String>> {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        v.as_object().and_then(ChatRow::parse)
    }

    fn err(line: &str) -> String {
        match parse(line) {
            Some(Err(e)) => e,
            other => format!("not an error: {other:?}"),
        }
    }

    #[test]
    fn alpaca_becomes_a_user_and_an_assistant_turn() {
        let row = parse(r#"{"instruction": "Add", "input": "1 2", "output": "3", "system": "Be brief"}"#);
        let Some(Ok(row)) = row else { panic!("{row:?}") };
        assert_eq!(row.format(), ChatFormat::Alpaca);
        assert_eq!(
            row.messages(),
            vec![
                Message::new(Role::System, "Be brief"),
                Message::new(Role::User, "Add\n\n1 2"),
                Message::new(Role::Assistant, "3")
            ]
        );
        let Some(Ok(row)) = parse(r#"{"instruction": "Hi", "input": "", "output": "Hello"}"#) else { panic!() };
        assert_eq!(row.messages()[0], Message::new(Role::User, "Hi"));
    }

    #[test]
    fn sharegpt_and_messages_map_their_roles() {
        let Some(Ok(a)) = parse(
            r#"{"conversations": [{"from": "system", "value": "s"}, {"from": "user", "value": "u"}, {"from": "assistant", "value": "a"}]}"#,
        ) else {
            panic!()
        };
        let Some(Ok(b)) = parse(
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "difficulty": 2}"#,
        ) else {
            panic!()
        };
        assert_eq!(a.messages(), b.messages());
        assert_eq!((a.format(), b.format()), (ChatFormat::ShareGpt, ChatFormat::Messages));
        assert!(parse(r#"{"text": "x"}"#).is_none());
    }

    #[test]
    fn conversations_take_a_top_level_system_text_parts_and_ignore_metadata() {
        let row = parse(
            r#"{"id": "x1", "source": "web", "system": "Be brief", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}"#,
        );
        let Some(Ok(row)) = row else { panic!("{row:?}") };
        let want = [
            Message::new(Role::System, "Be brief"),
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "yo"),
        ];
        assert_eq!(row.messages(), want);
        let row = parse(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}, {"role": "assistant", "content": "yo"}]}"#,
        );
        let Some(Ok(row)) = row else { panic!("{row:?}") };
        assert_eq!(row.messages()[0], Message::new(Role::User, "hi"));
    }

    #[test]
    fn malformed_rows_say_what_is_wrong() {
        assert_eq!(err(r#"{"messages": []}"#), "`messages` is empty");
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": "u"}]}"#),
            "`messages` has no assistant turn: nothing to train on"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "tool", "content": "u"}]}"#),
            "messages[0]: unknown role `tool` (known: system, user, assistant)"
        );
        assert_eq!(
            err(r#"{"conversations": [{"from": "bot", "value": "u"}]}"#),
            "conversations[0]: unknown from `bot` (known: system, human, gpt, user, assistant)"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "human", "content": "u"}]}"#),
            "messages[0]: unknown role `human` (known: system, user, assistant)"
        );
        assert_eq!(err(r#"{"messages": "hi"}"#), "`messages` must be a list of {role, content} objects");
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": [1]}]}"#),
            "messages[0]: content[0] must be {\"type\": \"text\", \"text\": ...}, got 1"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#),
            "messages[0]: content[0] is a `image_url` part; only text parts can be trained on"
        );
        assert_eq!(
            err(r#"{"conversations": [{"from": "human", "value": 7}]}"#),
            "conversations[0]: `value` must be a string, got 7"
        );
        assert_eq!(
            err(
                r#"{"system": "s", "messages": [{"role": "system", "content": "t"}, {"role": "assistant", "content": "a"}]}"#
            ),
            "a top-level `system` and a system turn in `messages`: give one of them"
        );
        assert_eq!(err(r#"{"messages": [{"role": "user"}]}"#), "messages[0] has no `content`");
        assert_eq!(
            err(r#"{"instruction": "x", "output": "y", "id": 3}"#),
            "unknown key `id` (keys: instruction, input, output, system, difficulty)"
        );
        assert_eq!(err(r#"{"instruction": "x"}"#), "an alpaca row needs `output` (the answer)");
        assert_eq!(
            err(r#"{"instruction": "x", "output": ""}"#),
            "`output` is empty: an alpaca row needs an answer to train on"
        );
    }
}
