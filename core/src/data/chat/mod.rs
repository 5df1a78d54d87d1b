//! Instruction and chat data: the row formats, the chat template that renders them,
//! and the loss mask on assistant turns.
//!
//! - [`ChatRow`]: an `alpaca`, `sharegpt` or `messages` JSONL line, parsed into
//!   [`Message`]s.
//! - [`ChatTemplate`]: a Jinja chat template (the model's `tokenizer_config.json`,
//!   the built-in ChatML one, or a `.jinja` file) rendered as transformers'
//!   `apply_chat_template` renders it.
//! - [`chat_example`]: a conversation → an [`Example`](super::Example) whose labels are
//!   the assistant turns' tokens.
//!
//! ```
//! use stagecraft_core::data::chat::{chat_example, ChatTemplate, Message, Role};
//! use stagecraft_core::data::Tokenizer;
//! let msgs = vec![Message::new(Role::User, "hi"), Message::new(Role::Assistant, "yo")];
//! let ex = chat_example(&Tokenizer::bytes(), &ChatTemplate::chatml(), &msgs, 128).unwrap();
//! let picked: Vec<u8> = ex.labels.unwrap().iter().filter(|&&l| l >= 0).map(|&l| l as u8).collect();
//! assert_eq!(String::from_utf8(picked).unwrap(), "yo<|im_end|>");
//! ```

mod format;
mod labels;
mod template;

pub use format::{ChatFormat, ChatRow, Message, Role};
pub use labels::{assistant_spans, chat_example};
pub use template::{ChatTemplate, TemplateSource};
