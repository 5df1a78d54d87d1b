//! Chat templates: the Jinja templates Hugging Face tokenizers carry, rendered with
//! `minijinja` the way transformers' `apply_chat_template` renders them.
//!
//! Where a template comes from, first match wins:
//! 1. the data source's `?template=` option: `chatml` (the built-in ChatML template
//!    below) or a path to a `.jinja` file;
//! 2. the tokenizer's directory: `chat_template.jinja`, else `tokenizer_config.json`'s
//!    `chat_template` (a string, or a list of `{name, template}` of which `default`
//!    is used).
//!
//! `bos_token`, `eos_token`, `unk_token` and `pad_token` come from
//! `tokenizer_config.json` (strings or `{content: ...}` objects); the built-in ChatML
//! template uses `<|im_end|>` as its end of turn when the tokenizer names none.
//! The environment is transformers': `trim_blocks` and `lstrip_blocks`, loop controls,
//! `raise_exception(msg)`, `tojson` as Python's `json.dumps` (`ensure_ascii=False`,
//! optional `indent`), and Python string and dict methods (`.strip()`,
//! `.startswith()`, `.items()`, ...) through `minijinja-contrib`'s `pycompat`.
//! `{% generation %}` markers (transformers' assistant-mask blocks) are dropped.
//!
//! ```
//! use stagecraft_core::data::chat::{ChatTemplate, Message, Role};
//! let t = ChatTemplate::chatml();
//! let text = t.render(&[Message::new(Role::User, "hi")], true).unwrap();
//! assert_eq!(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
//! ```

use super::Message;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ChatML template (as in transformers' docs and Qwen/SmolLM models, without a
/// default system prompt).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A template chosen on the data source (`?template=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The built-in ChatML template.
    ChatMl,
    /// A `.jinja` file, its path resolved.
    File(PathBuf),
}

/// A compiled chat template and the special tokens it reads.
#[derive(Clone)]
pub struct ChatTemplate {
    /// Where it came from, for messages and `--check`.
    pub name: String,
    env: Arc<Environment<'static>>,
    tokens: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.name)
    }
}

impl ChatTemplate {
    /// Compiles `source`; `name` says where it came from.
    pub fn new(name: &str, source: &str, tokens: Vec<(&'static str, String)>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        let source = source.replace("{% generation %}", "").replace("{% endgeneration %}", "");
        let source = source.replace("{%- generation %}", "").replace("{%- endgeneration %}", "");
        env.add_template_owned("chat", source)
            .map_err(|e| Error::msg(format!("chat template {name}: {}", one_line(&e))))?;
        Ok(ChatTemplate { name: name.to_string(), env: Arc::new(env), tokens })
    }

    /// The built-in ChatML template.
    pub fn chatml() -> ChatTemplate {
        let tokens = vec![("bos_token", String::new()), ("eos_token", "<|im_end|>".to_string())];
        match ChatTemplate::new("chatml (built in)", CHATML, tokens) {
            Ok(t) => t,
            Err(e) => unreachable!("the built-in template compiles: {e}"),
        }
    }

    /// The template `source` names, with the tokenizer's special tokens.
    pub fn from_source(source: &TemplateSource, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let config = tokenizer_config(tokenizer)?;
        let tokens = config.as_ref().map(|(_, c)| special_tokens(c)).unwrap_or_default();
        match source {
            TemplateSource::ChatMl => {
                let mut t = ChatTemplate::chatml();
                t.tokens.retain(|(k, _)| !tokens.iter().any(|(k2, _)| k2 == k));
                t.tokens.extend(tokens);
                Ok(t)
            }
            TemplateSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
                ChatTemplate::new(&path.display().to_string(), &text, tokens)
            }
        }
    }

    /// The tokenizer's own template (`chat_template.jinja` or `tokenizer_config.json`
    /// next to its `tokenizer.json`), or `None` when it has none.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
        let Tokenizer::Hf { path, .. } = tokenizer else { return Ok(None) };
        let config = tokenizer_config(tokenizer)?;
        let tokens = config.as_ref().map(|(_, c)| special_tokens(c)).unwrap_or_default();
        let jinja = path.with_file_name("chat_template.jinja");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(crate::error::io(&jinja))?;
            return ChatTemplate::new(&jinja.display().to_string(), &text, tokens).map(Some);
        }
        let Some((file, config)) = config else { return Ok(None) };
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => default_of(&file, list)?,
            Some(_) => {
                return Err(Error::file(&file, "`chat_template` must be a string or a list of {name, template}"))
            }
        };
        ChatTemplate::new(&file.display().to_string(), &source, tokens).map(Some)
    }

    /// The text of `messages`, with the assistant's header after it when
    /// `add_generation_prompt`. Errors are one line (a template's
    /// `raise_exception` message included).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| one_line(&e))?;
        let mut ctx: Vec<(&str, Value)> = self.tokens.iter().map(|(k, v)| (*k, Value::from(v.as_str()))).collect();
        ctx.push(("messages", Value::from_serialize(messages)));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        let ctx: Value = ctx.into_iter().collect::<std::collections::BTreeMap<_, _>>().into();
        tmpl.render(ctx).map_err(|e| format!("chat template {}: {}", self.name, one_line(&e)))
    }
}

fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(detail) = e.detail() {
        if !s.contains(detail) {
            s = format!("{s}: {detail}");
        }
    }
    s.replace('\n', " ")
}

/// `tokenizer_config.json` next to the tokenizer, if there is one.
fn tokenizer_config(tokenizer: &Tokenizer) -> Result<Option<(PathBuf, serde_json::Value)>> {
    let Tokenizer::Hf { path, .. } = tokenizer else { return Ok(None) };
    let file = path.with_file_name("tokenizer_config.json");
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&file).map_err(crate::error::io(&file))?;
    let value = serde_json::from_str(&text).map_err(|e| Error::file(&file, format!("invalid json: {e}")))?;
    Ok(Some((file, value)))
}

fn special_tokens(config: &serde_json::Value) -> Vec<(&'static str, String)> {
    ["bos_token", "eos_token", "unk_token", "pad_token"]
        .into_iter()
        .filter_map(|k| match config.get(k)? {
            serde_json::Value::String(s) => Some((k, s.clone())),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(|s| (k, s.to_string())),
            _ => None,
        })
        .collect()
}

fn default_of(file: &Path, list: &[serde_json::Value]) -> Result<String> {
    let named = |n: &str| {
        list.iter().find(|t| t.get("name").and_then(|v| v.as_str()) == Some(n)).and_then(|t| t.get("template"))
    };
    match named("default").and_then(|v| v.as_str()) {
        Some(s) => Ok(s.to_string()),
        None => Err(Error::file(file, "`chat_template` is a list with no {name: \"default\", template} entry")),
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers'
/// `tojson` filter; keys keep their order.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(&value, indent, 0, &mut out)?;
    Ok(out)
}

fn dump(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let bad = |e: serde_json::Error| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string());
    let (open, close, is_map) = match v.kind() {
        ValueKind::Map => ('{', '}', true),
        ValueKind::Seq | ValueKind::Iterable => ('[', ']', false),
        ValueKind::Undefined | ValueKind::None => {
            out.push_str("null");
            return Ok(());
        }
        _ => {
            out.push_str(&serde_json::to_string(v).map_err(bad)?);
            return Ok(());
        }
    };
    let items: Vec<Value> = v.try_iter()?.collect();
    out.push(open);
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        if is_map {
            out.push_str(&serde_json::to_string(&item.to_string()).map_err(bad)?);
            out.push_str(": ");
            dump(&v.get_item(item)?, indent, depth + 1, out)?;
        } else {
            dump(item, indent, depth + 1, out)?;
        }
    }
    if !items.is_empty() {
        newline(out, depth);
    }
    out.push(close);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::chat::Role;

    fn render(src: &str) -> Result<String, String> {
        let t = ChatTemplate::new("t", src, vec![("bos_token", "<s>".into())]).map_err(|e| e.to_string())?;
        t.render(&[Message::new(Role::User, " Hi ")], false)
    }

    #[test]
    fn the_environment_has_what_hf_templates_use() {
        assert_eq!(render("{{ bos_token }}{{ messages[0]['content'] | trim }}").as_deref(), Ok("<s>Hi"));
        assert_eq!(render("{{ messages[0].content.strip() }}{{ 'ab'.startswith('a') }}").as_deref(), Ok("HiTrue"));
        assert_eq!(
            render("{{ {'a': [1, 'é<'], 'b': none} | tojson }}").as_deref(),
            Ok("{\"a\": [1, \"é<\"], \"b\": null}")
        );
        assert_eq!(render("{{ [1] | tojson(indent=2) }}").as_deref(), Ok("[\n  1\n]"));
        assert_eq!(render("{% for m in messages %}{% break %}{% endfor %}x").as_deref(), Ok("x"));
        assert_eq!(render("  {% if true %}\nx{% generation %}y{% endgeneration %}{% endif %}").as_deref(), Ok("xy"));
        let e = render("{{ raise_exception('roles must alternate') }}").err().unwrap_or_default();
        assert!(e.starts_with("chat template t: ") && e.contains("roles must alternate"), "{e}");
        let e = ChatTemplate::new("t", "{% if %}", vec![]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("chat template t: ") && !e.contains('\n'), "{e}");
    }
}
