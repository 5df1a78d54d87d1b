//! Models whose every linear, embedding and block output is a named *site* where
//! adaptation plugins attach.
//!
//! A model owns its base weights as candle [`Var`]s ([`Weight`]); whether a weight is
//! trainable is a flag read at each forward: frozen weights enter the graph detached,
//! so backward computes no gradient for them. Plugins see the site list through the
//! SDK ([`SiteInfo`](stagecraft_sdk::SiteInfo)) and attach through [`Adapters`].
//!
//! Models: [`MlpLm`] (tests and examples), [`Llama`] (decoder) and [`Bert`] (encoder),
//! built fresh from a config or loaded from a Hugging Face directory ([`load_model`]).

mod bert;
mod bert_config;
mod builder;
pub mod hf;
pub mod layers;
mod llama;
mod llama_config;
mod mlp;
mod parts;
mod sites;

pub use bert::Bert;
pub use bert_config::BertConfig;
pub use hf::{load_model, load_model_as};
pub use llama::Llama;
pub use llama_config::LlamaConfig;
pub use mlp::{MlpLm, MlpLmConfig};
pub use sites::{Adapters, SiteTable};

use crate::error::Result;
use crate::plugin::HostState;
use candle_core::{Tensor, Var};
use stagecraft_sdk::ModelInfo;
use std::cell::Cell;

/// A base weight: a var plus a trainable flag.
#[derive(Debug, Clone)]
pub struct Weight {
    var: Var,
    trainable: std::rc::Rc<Cell<bool>>,
}

impl Weight {
    /// A trainable weight.
    pub fn new(t: Tensor) -> Result<Self> {
        Ok(Weight { var: Var::from_tensor(&t)?, trainable: std::rc::Rc::new(Cell::new(true)) })
    }
    /// The tensor to compute with: tracked when trainable, detached when frozen.
    pub fn get(&self) -> Tensor {
        if self.trainable.get() {
            self.var.as_tensor().clone()
        } else {
            self.var.as_tensor().detach()
        }
    }
    /// The var (for optimizers and checkpoints).
    pub fn var(&self) -> &Var {
        &self.var
    }
    /// Whether it is trained.
    pub fn is_trainable(&self) -> bool {
        self.trainable.get()
    }
    /// Freezes or unfreezes it.
    pub fn set_trainable(&self, on: bool) {
        self.trainable.set(on);
    }
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `[batch, seq, vocab]` for language models.
    pub logits: Option<Tensor>,
    /// Last hidden states `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// Pooled sequence representation `[batch, hidden]`, for encoders with a pooler.
    pub pooled: Option<Tensor>,
}

/// A model with named sites.
pub trait Model {
    /// Architecture and sizes, as stages see them.
    fn info(&self) -> ModelInfo;
    /// Every site, in model order.
    fn sites(&self) -> &SiteTable;
    /// Named base weights, Hugging Face names (`model.layers.0.mlp.up_proj.weight`).
    fn weights(&self) -> Vec<(String, Weight)>;
    /// Forward pass; `input_ids` is `[batch, seq]` u32.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, adapters: &Adapters) -> Result<ModelOutput>;

    /// Makes linear sites' base tensors visible to plugins (`site_weight`).
    fn register_site_tensors(&self, state: &HostState) {
        let weights = self.weights();
        for site in self.sites().infos() {
            for (suffix, key) in [("weight", "weight"), ("bias", "bias")] {
                let full = format!("{}.{suffix}", site.name);
                if let Some((_, w)) = weights.iter().find(|(n, _)| *n == full) {
                    state.register_site_tensor(&site.name, key, w.var().as_tensor().clone());
                }
            }
        }
    }
}
