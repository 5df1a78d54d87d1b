//! Where a model's weights come from: a seeded fresh init (pretraining from scratch)
//! or a checkpoint directory.
//!
//! Models ask for each weight by its Hugging Face name and shape, in model order; the
//! builder draws it (`normal(0, std)` for matrices, ones for norm scales, zeros for
//! biases) or loads it (shape and dtype checked), and keeps the list for
//! [`Model::weights`](super::Model::weights).

use super::hf::WeightStore;
use super::Weight;
use crate::error::Result;
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};

enum Source<'a> {
    Fresh {
        rng: Rng,
        std: f64,
    },
    /// Every weight zeros: the shapes and sites of a model without drawing its values.
    Placeholder,
    Store {
        store: &'a WeightStore,
        prefix: String,
    },
}

/// How a fresh weight is filled.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Normal,
    Ones,
    Zeros,
}

/// Makes (or loads) named weights and remembers them in order.
pub(crate) struct WeightBuilder<'a> {
    source: Source<'a>,
    dtype: DType,
    device: Device,
    made: Vec<(String, Weight)>,
}

impl<'a> WeightBuilder<'a> {
    /// Fresh weights: matrices `normal(0, std)` drawn from `seed`.
    pub fn fresh(seed: u64, std: f64, dtype: DType, device: &Device) -> Self {
        WeightBuilder {
            source: Source::Fresh { rng: Rng::new(seed), std },
            dtype,
            device: device.clone(),
            made: Vec::new(),
        }
    }

    /// All-zero weights, for checks that need a model's sites and shapes but not its
    /// values (`run --check`): the zeros come from the allocator's zeroed pages, so even
    /// a large model costs neither time nor touched memory until something writes to it.
    pub fn placeholder(dtype: DType, device: &Device) -> Self {
        WeightBuilder { source: Source::Placeholder, dtype, device: device.clone(), made: Vec::new() }
    }

    /// Weights from a checkpoint; names are looked up with `prefix` in front.
    pub fn from_store(store: &'a WeightStore, prefix: &str, dtype: DType, device: &Device) -> Self {
        WeightBuilder {
            source: Source::Store { store, prefix: prefix.to_string() },
            dtype,
            device: device.clone(),
            made: Vec::new(),
        }
    }

    /// Whether the checkpoint has `name` (always false for fresh weights).
    pub fn has(&self, name: &str) -> bool {
        match &self.source {
            Source::Fresh { .. } | Source::Placeholder => false,
            Source::Store { store, prefix } => store.contains(&format!("{prefix}{name}")),
        }
    }

    /// A matrix or embedding table.
    pub fn normal(&mut self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.make(name, shape, Fill::Normal)
    }

    /// A norm scale.
    pub fn ones(&mut self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.make(name, shape, Fill::Ones)
    }

    /// A bias.
    pub fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.make(name, shape, Fill::Zeros)
    }

    /// The weights made so far, in order.
    pub fn finish(self) -> Vec<(String, Weight)> {
        self.made
    }

    fn make(&mut self, name: &str, shape: &[usize], fill: Fill) -> Result<Weight> {
        let w = match &mut self.source {
            // Made as a variable in place: zeros that touch no memory (a copy would).
            Source::Placeholder => Weight::from_var(Var::zeros(shape, self.dtype, &self.device)?),
            Source::Store { store, prefix } => {
                Weight::new(store.load(&format!("{prefix}{name}"), shape, self.dtype, &self.device)?)?
            }
            Source::Fresh { rng, std } => Weight::new(match fill {
                Fill::Ones => Tensor::ones(shape, self.dtype, &self.device)?,
                Fill::Zeros => Tensor::zeros(shape, self.dtype, &self.device)?,
                Fill::Normal => {
                    let n: usize = shape.iter().product();
                    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * *std) as f32).collect();
                    Tensor::from_vec(v, shape, &self.device)?.to_dtype(self.dtype)?
                }
            })?,
        };
        self.made.push((name.to_string(), w.clone()));
        Ok(w)
    }
}
