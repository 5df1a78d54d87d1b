//! Trained adapters on disk and in the model: the PEFT adapter format both ways,
//! merging adapters into the base weights, and combining LoRA adapters into one.

mod combine;
pub mod linalg;
mod merge;
mod peft;

pub use combine::{combine_lora, Combine, CombinedLora, LoraInput};
pub use merge::merge_into_base;
pub use peft::{
    load_peft, peft_to_plugin, plugin_config_of, write_peft, write_safetensors, ExportedAdapter, Lineage, PeftAdapter,
    PeftType, PEFT_KEY_PREFIX,
};
