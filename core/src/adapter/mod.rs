//! Trained adapters on disk and in the model: the PEFT adapter format both ways, and
//! merging adapters into the base weights.

mod merge;
mod peft;

pub use merge::merge_into_base;
pub use peft::{load_peft, peft_to_plugin, write_peft, write_safetensors, ExportedAdapter, Lineage, PeftAdapter, PeftType, PEFT_KEY_PREFIX};
