//! Data: tokenizers, data sources, sampling and batching for the stage pipeline.
//!
//! - [`Tokenizer`]: byte-level or a Hugging Face `tokenizer.json`.
//! - [`parse_spec`] / [`load_source`]: a source spec from the config (`synthetic:<task>?...`,
//!   a `.txt` or a `.jsonl` path) → a tokenized [`Dataset`] of [`Example`]s.
//! - [`Sampler`]: deterministic, resumable epoch shuffling (optionally a curriculum).
//! - [`Mixture`]: a stage's data mixed with replay from earlier stages.
//! - [`pack`]: short examples packed into full rows, attention kept inside each.
//! - [`augment()`]: seeded token-level transforms of training rows.
//! - [`collate()`]: examples → a padded [`Batch`](crate::train::Batch).
//!
//! Everything is a function of the specs and seeds, so a resumed run sees exactly the
//! batches the uninterrupted run would have.
//!
//! ```
//! use stagecraft_core::data::{collate, load_source, Sampler, Tokenizer};
//! use std::path::Path;
//! let t = Tokenizer::bytes();
//! let ds = load_source("synthetic:add?n=32", &t, Path::new("."), 64).unwrap();
//! let mut sampler = Sampler::new(ds.len(), 0);
//! let picked: Vec<_> = sampler.next_batch(8).into_iter().map(|i| &ds.examples[i]).collect();
//! let batch = collate(&picked, 0, &candle_core::Device::Cpu).unwrap();
//! assert_eq!(batch.input_ids.dims()[0], 8);
//! ```

mod augment;
pub mod chat;
mod collate;
mod example;
mod jsonl;
mod mixture;
mod packing;
mod sampler;
mod source;
mod spec;
mod synthetic;
mod text_file;
mod tokenizer;

pub use augment::{augment, Augment};
pub use collate::collate;
pub use example::{DataKind, Dataset, Example, IGNORE};
pub use jsonl::{load_jsonl, load_jsonl_with};
pub use mixture::{Mixture, MixtureState, SourceState};
pub use packing::{pack, pack_dataset, PackingStats};
pub use sampler::{Order, Sampler, SamplerState};
pub(crate) use source::read_source_file;
pub use source::{load_source, preview_source, SourcePreview};
pub use spec::{parse_spec, SourceSpec};
pub use synthetic::{Item, LenRange, SyntheticSpec, Task, MAX_N, TASKS};
pub use text_file::load_text;
pub use tokenizer::Tokenizer;
