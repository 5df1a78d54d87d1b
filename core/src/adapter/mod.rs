//! Trained adapters on disk and in the model: reading PEFT adapter directories into
//! adaptation-method plugins, and merging adapters into the base weights.

mod merge;
mod peft;

pub use merge::merge_into_base;
pub use peft::{load_peft, peft_to_plugin, PeftAdapter, PEFT_KEY_PREFIX};
