//! Loss masking for chat data: which tokens of a rendered conversation are targets.
//!
//! Method (template-agnostic, no `{% generation %}` markers needed): for each
//! assistant turn `i`, render `messages[..i]` with `add_generation_prompt = true`
//! (everything up to where the model starts speaking) and `messages[..=i]` (the same
//! plus the turn); the turn's span is what the second adds to the first: the content
//! as the template writes it and the end-of-turn tokens after it (`<|im_end|>`,
//! `<|eot_id|>`), as axolotl and TRL train them; trailing whitespace after the end of
//! turn is left out. Both renders must be prefixes of the whole conversation's render,
//! else the template is not prefix-stable and the row is refused.
//!
//! The whole text is then tokenized once, without adding special tokens (as
//! `apply_chat_template` does: the template writes BOS itself where the model wants
//! one), and a token is a target when its first byte lies in an assistant span. A
//! longer conversation is cut at the start, as completion data is, keeping the last
//! turns.
//!
//! ```
//! use stagecraft_core::data::chat::{assistant_spans, ChatTemplate, Message, Role};
//! let msgs = [Message::new(Role::User, "a"), Message::new(Role::Assistant, "b")];
//! let (text, spans) = assistant_spans(&ChatTemplate::chatml(), &msgs).unwrap();
//! assert_eq!(&text[spans[0].clone()], "b<|im_end|>");
//! ```

use super::{ChatTemplate, Message, Role};
use crate::data::{Example, Tokenizer, IGNORE};
use std::ops::Range;

/// The rendered conversation and the byte ranges of its assistant turns.
pub fn assistant_spans(template: &ChatTemplate, messages: &[Message]) -> Result<(String, Vec<Range<usize>>), String> {
    let full = template.render(messages, false)?;
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == Role::Assistant) {
        let before = template.render(&messages[..i], true)?;
        let with = template.render(&messages[..=i], false)?;
        if !with.starts_with(&before) || !full.starts_with(&with) {
            return Err(format!(
                "chat template {} is not prefix-stable at message {i} (rendering the turns before it, and it, does not start the whole conversation), so its assistant tokens cannot be found",
                template.name
            ));
        }
        let end = before.len() + with[before.len()..].trim_end().len();
        if end == before.len() && !m.content.is_empty() {
            return Err(format!("chat template {} writes nothing for assistant message {i}", template.name));
        }
        spans.push(before.len()..end);
    }
    Ok((full, spans))
}

/// A conversation as an example: ids of the rendered text, labels the ids of the
/// assistant turns' tokens and [`IGNORE`] elsewhere, at most `max_len` tokens.
pub fn chat_example(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    max_len: usize,
) -> Result<Example, String> {
    if max_len == 0 {
        return Err("max_len must be at least 1".into());
    }
    let (text, spans) = assistant_spans(template, messages)?;
    let (ids, offsets) = tokenizer.encode_with_offsets(&text).map_err(|e| e.to_string())?;
    let labels: Vec<i64> = ids
        .iter()
        .zip(&offsets)
        .map(|(&id, &(start, end))| {
            let inside = end > start && spans.iter().any(|s| s.contains(&start));
            if inside {
                i64::from(id)
            } else {
                IGNORE
            }
        })
        .collect();
    if labels.iter().all(|&l| l == IGNORE) {
        return Err("the assistant turns have no tokens".into());
    }
    let cut = ids.len().saturating_sub(max_len);
    if labels[cut..].iter().all(|&l| l == IGNORE) {
        return Err(format!(
            "the conversation is {} tokens and its last assistant turn ends before the last {max_len} (max_len): nothing left to train on",
            ids.len()
        ));
    }
    let ids = ids[cut..].to_vec();
    let difficulty = ids.len() as f64;
    Ok(Example { ids, labels: Some(labels[cut..].to_vec()), class_label: None, difficulty, packed: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(ex: &Example) -> String {
        let bytes: Vec<u8> = ex.labels.iter().flatten().filter(|&&l| l >= 0).map(|&l| l as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn only_assistant_turns_and_their_end_of_turn_are_targets() -> Result<(), String> {
        let t = Tokenizer::bytes();
        let msgs = vec![
            Message::new(Role::System, "s"),
            Message::new(Role::User, "q1"),
            Message::new(Role::Assistant, "a1"),
            Message::new(Role::User, "q2"),
            Message::new(Role::Assistant, "a2"),
        ];
        let ex = chat_example(&t, &ChatTemplate::chatml(), &msgs, 512)?;
        assert_eq!(targets(&ex), "a1<|im_end|>a2<|im_end|>");
        assert_eq!(ex.ids.len(), ex.labels.as_ref().map_or(0, Vec::len));
        // Cut at the start: the last turn stays.
        let short = chat_example(&t, &ChatTemplate::chatml(), &msgs, 20)?;
        assert_eq!((short.ids.len(), targets(&short)), (20, "a2<|im_end|>".to_string()));
        let tail = vec![Message::new(Role::Assistant, "a"), Message::new(Role::User, "a long question after it")];
        let e = chat_example(&t, &ChatTemplate::chatml(), &tail, 8).err().unwrap_or_default();
        assert!(e.contains("nothing left to train on"), "{e}");
        Ok(())
    }

    #[test]
    fn a_template_that_is_not_prefix_stable_is_refused() {
        // Writes the last message differently from the others.
        let src = "{% for m in messages %}{% if loop.last %}LAST:{% endif %}{{ m.content }}|{% endfor %}";
        let t = ChatTemplate::new("odd", src, vec![]).unwrap_or_else(|_| ChatTemplate::chatml());
        let msgs = [Message::new(Role::User, "q"), Message::new(Role::Assistant, "a")];
        let e = assistant_spans(&t, &msgs).err().unwrap_or_default();
        assert!(e.starts_with("chat template odd is not prefix-stable at message 1"), "{e}");
    }
}
