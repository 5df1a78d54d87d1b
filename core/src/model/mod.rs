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

mod arch;
mod bert;
mod bert_config;
mod builder;
pub mod hf;
pub mod hub_cache;
pub mod layers;
mod llama;
mod llama_config;
mod mlp;
mod parts;
mod sites;

pub use arch::Architecture;
pub use bert::Bert;
pub use bert_config::BertConfig;
pub use hf::{load_model, load_model_as};
pub use llama::Llama;
pub use llama_config::LlamaConfig;
pub use mlp::{MlpLm, MlpLmConfig};
pub use sites::{Adapters, SiteTable};

use crate::bail;
use crate::error::Result;
use crate::memory;
use candle_core::{Device, Tensor, Var};
use stagecraft_sdk::{ModelInfo, ModelSpec};
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
    /// A trainable weight of a variable made in place.
    pub(crate) fn from_var(var: Var) -> Self {
        Weight { var, trainable: std::rc::Rc::new(Cell::new(true)) }
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

/// Which optional outputs a forward pass computes (`hidden` always is, and `pooled`
/// where the model has a pooler): an objective that reads no `logits` spares the
/// language-model head, the largest product of a decoder with a big vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    /// `[batch, seq, vocab]` logits, for models with a head.
    pub logits: bool,
}

impl Outputs {
    /// Every output the model has.
    pub const ALL: Outputs = Outputs { logits: true };

    /// The outputs an objective names in `required_outputs` (`logits`, `hidden`,
    /// `pooled`).
    pub fn named(names: &[String]) -> Outputs {
        Outputs { logits: names.iter().any(|n| n == "logits") }
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

impl ModelOutput {
    /// The last `seq` positions of the per-position outputs: what is left when the
    /// virtual tokens an adapter prepended are dropped. `pooled` stays as computed.
    pub fn last_positions(self, seq: usize) -> Result<ModelOutput> {
        let len = self.hidden.dim(1)?;
        if len == seq {
            return Ok(self);
        }
        let cut = |t: &Tensor| t.narrow(1, len - seq, seq);
        Ok(ModelOutput {
            logits: self.logits.as_ref().map(cut).transpose()?,
            hidden: cut(&self.hidden)?,
            pooled: self.pooled,
        })
    }
}

/// A model with named sites.
pub trait Model {
    /// Architecture and sizes, as adaptation methods see them (`model_info`).
    fn spec(&self) -> ModelSpec;
    /// Every site, in model order, with its role.
    fn sites(&self) -> &SiteTable;
    /// Named base weights, Hugging Face names (`model.layers.0.mlp.up_proj.weight`).
    fn weights(&self) -> Vec<(String, Weight)>;
    /// Forward pass with every output; `input_ids` is `[batch, seq]` u32. Outputs have
    /// one position per input token: virtual tokens an adapter prepends (prompt tuning)
    /// are dropped, so objectives and evaluations see `[batch, seq, ..]` whatever is
    /// attached.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, adapters: &Adapters) -> Result<ModelOutput> {
        self.forward_outputs(input_ids, attention_mask, adapters, Outputs::ALL)
    }

    /// [`forward`](Self::forward) computing only the optional outputs in `outputs`.
    fn forward_outputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        adapters: &Adapters,
        outputs: Outputs,
    ) -> Result<ModelOutput>;

    /// `config.json` as transformers writes it for this model (`None`: not a
    /// transformers architecture). `eos_token_id` is the tokenizer's end of text.
    fn hf_config(&self, eos_token_id: Option<u32>) -> Option<serde_json::Value> {
        let _ = eos_token_id;
        None
    }

    /// The longest sequence the model takes, in tokens: the position table of an
    /// encoder, or the context a RoPE decoder's checkpoint was made for
    /// (`max_position_embeddings`). `None`: no known limit.
    fn context_length(&self) -> Option<usize> {
        Some(self.spec().max_positions).filter(|&n| n > 0)
    }

    /// Architecture and sizes, as objectives see them.
    fn info(&self) -> ModelInfo {
        let s = self.spec();
        ModelInfo { arch: s.arch, hidden: s.hidden, vocab: s.vocab, num_layers: s.num_layers, causal: s.causal }
    }

    /// The base tensors of the sites, `(site, "weight" | "bias", tensor)`, that plugins
    /// read with `site_weight`: each site's `<site>.weight` and `<site>.bias` among
    /// [`weights`](Self::weights).
    fn site_tensors(&self) -> Vec<(String, &'static str, Tensor)> {
        named_site_tensors(self.sites(), &self.weights())
    }
}

/// Refuses `batch × seq` tokens that `model` cannot take in one forward pass on
/// `device`, before anything is allocated: more tokens per row than its context length,
/// or activations beyond the memory the device has available.
pub fn check_sequence(model: &dyn Model, batch: usize, seq: usize, device: &Device) -> Result<()> {
    if let Some(ctx) = model.context_length().filter(|&ctx| seq > ctx) {
        bail!("{seq} tokens per sequence are more than the model's context length of {ctx}");
    }
    let need = memory::forward_bytes(&model.spec(), batch, seq);
    memory::ensure_fits(&format!("a forward pass over {batch} × {seq} tokens"), need, "activations", device)
}

/// Each site's `<site>.weight` and `<site>.bias` among `weights`.
pub(crate) fn named_site_tensors(
    sites: &SiteTable,
    weights: &[(String, Weight)],
) -> Vec<(String, &'static str, Tensor)> {
    let by_name: std::collections::HashMap<&str, &Weight> = weights.iter().map(|(n, w)| (n.as_str(), w)).collect();
    let mut out = Vec::new();
    for site in sites.infos() {
        for suffix in ["weight", "bias"] {
            if let Some(w) = by_name.get(format!("{}.{suffix}", site.name).as_str()) {
                out.push((site.name.to_string(), suffix, w.var().as_tensor().clone()));
            }
        }
    }
    out
}
