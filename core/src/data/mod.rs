//! Data: tokenizers (and, with the pipeline, data sources and batching).

mod tokenizer;

pub use tokenizer::Tokenizer;
