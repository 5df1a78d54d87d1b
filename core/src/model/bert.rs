//! [`Bert`]: a trainable BERT-style encoder with a named site at every linear.
//!
//! `LayerNorm(word + token_type + position) → [post-LayerNorm blocks] × layers`, each
//! block `a = LN(x + out(attn(x)))`, `y = LN(a + down(gelu(up(a))))`, with a padding
//! (not causal) attention mask and an optional pooler `tanh(pooler.dense(h[:, 0]))`.
//! Token types are all 0. Sites, in order, with Hugging Face names:
//! `embeddings.word_embeddings` (embedding), `embeddings.input_embeds` (word
//! embeddings before positions are added; a longer output prepends virtual tokens),
//! `embeddings.LayerNorm`, then per layer `i` under `encoder.layer.{i}`:
//! `attention.self.{query,key,value}`, `attention.self.key_states` / `.value_states`
//! (a longer output prepends prefix keys/values), `attention.output.dense`,
//! `attention.sublayer` (the attention sublayer's output before the residual add),
//! `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`,
//! `output.sublayer` (the MLP sublayer's output), `output.LayerNorm`,
//! `encoder.layer.{i}` (block output); then `pooler.dense`.
//!
//! Positions: virtual tokens prepended at `embeddings.input_embeds` take the first
//! positions; with a key/value prefix (prefix tuning) every token's position starts
//! after it, as Hugging Face's BERT does after a cache of that length. The per-position
//! outputs drop the virtual tokens; the pooler reads the first position of the full
//! sequence, as under PEFT.
//!
//! ```
//! # use candle_core::{Device, Tensor};
//! # use stagecraft_core::model::{Adapters, Bert, BertConfig, Model};
//! let cfg: BertConfig = serde_json::from_str(r#"{"vocab_size": 32, "hidden_size": 16,
//!     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24,
//!     "pooler": true}"#).expect("config");
//! let model = Bert::new(&cfg, 0, &Device::Cpu)?;
//! let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;
//! let out = model.forward(&ids, None, &Adapters::none(model.sites().len()))?;
//! assert_eq!(out.pooled.expect("pooled").dims(), &[1, 16]);
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

use super::builder::WeightBuilder;
use super::hf::{WeightStore, CONFIG_FILE};
use super::layers::{attention, attention_mask, extend_mask};
use super::parts::{NormKind, Place, SiteLinear, SiteNorm};
use super::{Adapters, BertConfig, Model, ModelOutput, Outputs, SiteTable, Weight};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use stagecraft_sdk::{ModelSpec, SiteKind, SiteRole};
use std::path::Path;

/// One encoder block.
struct Layer {
    query: SiteLinear,
    key: SiteLinear,
    value: SiteLinear,
    key_site: usize,
    value_site: usize,
    attn_out: SiteLinear,
    attn_out_site: usize,
    attn_norm: SiteNorm,
    up: SiteLinear,
    down: SiteLinear,
    mlp_out_site: usize,
    out_norm: SiteNorm,
    out_site: usize,
}

/// The encoder.
pub struct Bert {
    cfg: BertConfig,
    sites: SiteTable,
    weights: Vec<(String, Weight)>,
    word: (usize, Weight),
    input_site: usize,
    position: Weight,
    token_type: Weight,
    embed_norm: SiteNorm,
    layers: Vec<Layer>,
    pooler: Option<SiteLinear>,
}

impl Layer {
    fn build(b: &mut WeightBuilder, sites: &mut SiteTable, cfg: &BertConfig, l: usize) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let n = |suffix: &str| format!("encoder.layer.{l}{suffix}");
        let kv_dims = [cfg.num_attention_heads, cfg.head_dim()];
        let lin = |b: &mut WeightBuilder, sites: &mut SiteTable, suffix: &str, role, dims| {
            SiteLinear::build(b, sites, Place::block(&n(suffix), role, l), dims, true)
        };
        let norm = |b: &mut WeightBuilder, sites: &mut SiteTable, suffix: &str, role| {
            SiteNorm::build(b, sites, Place::block(&n(suffix), role, l), NormKind::Layer, h, eps)
        };
        Ok(Layer {
            query: lin(b, sites, ".attention.self.query", SiteRole::ATTN_Q, (h, h))?,
            key: lin(b, sites, ".attention.self.key", SiteRole::ATTN_K, (h, h))?,
            value: lin(b, sites, ".attention.self.value", SiteRole::ATTN_V, (h, h))?,
            key_site: sites.add(
                &n(".attention.self.key_states"),
                SiteKind::ATTN_KEY,
                SiteRole::KEY_STATES,
                &kv_dims,
                Some(l),
                false,
            ),
            value_site: sites.add(
                &n(".attention.self.value_states"),
                SiteKind::ATTN_VALUE,
                SiteRole::VALUE_STATES,
                &kv_dims,
                Some(l),
                false,
            ),
            attn_out: lin(b, sites, ".attention.output.dense", SiteRole::ATTN_O, (h, h))?,
            attn_out_site: sites.add(
                &n(".attention.sublayer"),
                SiteKind::ATTN_OUTPUT,
                SiteRole::ATTN_OUTPUT,
                &[h],
                Some(l),
                false,
            ),
            attn_norm: norm(b, sites, ".attention.output.LayerNorm", SiteRole::ATTN_NORM)?,
            up: lin(b, sites, ".intermediate.dense", SiteRole::MLP_UP, (h, i))?,
            down: lin(b, sites, ".output.dense", SiteRole::MLP_DOWN, (i, h))?,
            mlp_out_site: sites.add(
                &n(".output.sublayer"),
                SiteKind::MLP_OUTPUT,
                SiteRole::MLP_OUTPUT,
                &[h],
                Some(l),
                false,
            ),
            out_norm: norm(b, sites, ".output.LayerNorm", SiteRole::MLP_NORM)?,
            out_site: sites.add(&n(""), SiteKind::BLOCK_OUTPUT, SiteRole::BLOCK_OUTPUT, &[h], Some(l), false),
        })
    }

    /// `x` is `[b, seq, hidden]`, `pad` the `[b, seq]` padding mask and `mask` its
    /// additive form.
    fn forward(
        &self,
        cfg: &BertConfig,
        x: &Tensor,
        pad: Option<&Tensor>,
        mask: Option<&Tensor>,
        a: &Adapters,
    ) -> Result<Tensor> {
        let ctx = self.attention(cfg, x, pad, mask, a)?;
        let attn = a.post(self.attn_out_site, x, a.dropout(&self.attn_out.forward(a, &ctx)?)?)?;
        let h = self.attn_norm.forward(a, &(attn + x)?)?;
        let inner = self.up.forward(a, &h)?.gelu_erf()?;
        let mlp = a.post(self.mlp_out_site, &h, a.dropout(&self.down.forward(a, &inner)?)?)?;
        let y = self.out_norm.forward(a, &(mlp + &h)?)?;
        a.post(self.out_site, x, y)
    }

    fn attention(
        &self,
        cfg: &BertConfig,
        x: &Tensor,
        pad: Option<&Tensor>,
        mask: Option<&Tensor>,
        a: &Adapters,
    ) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let (nh, hd) = (cfg.num_attention_heads, cfg.head_dim());
        let heads = |t: Tensor| t.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous();
        let q = heads(self.query.forward(a, x)?)?;
        let k = heads(self.key.forward(a, x)?)?;
        let v = heads(self.value.forward(a, x)?)?;
        let k = a.post(self.key_site, &k, k.clone())?;
        let v = a.post(self.value_site, &v, v.clone())?;
        let kv_len = k.dim(2)?;
        let prefixed;
        let mask = if kv_len == s {
            mask
        } else {
            let pad = extend_mask(pad, b, kv_len)?;
            prefixed = attention_mask(pad.as_ref(), b, s, kv_len, false, x.device())?;
            prefixed.as_ref()
        };
        let o = attention(&q, &k, &v, mask, 1.0 / (hd as f64).sqrt(), a.precision())?;
        Ok(o.transpose(1, 2)?.reshape((b, s, h))?)
    }
}

impl Bert {
    /// A freshly initialized f32 model: matrices and embeddings
    /// `normal(0, initializer_range)` drawn from `seed`, LayerNorm scales ones, biases zeros.
    pub fn new(cfg: &BertConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        Self::build(cfg, WeightBuilder::fresh(seed, cfg.initializer_range, DType::F32, device))
    }

    /// A model of this shape with all-zero weights (see [`WeightBuilder::placeholder`]):
    /// its sites and shapes, for checks, at no cost.
    pub fn placeholder(cfg: &BertConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        Self::build(cfg, WeightBuilder::placeholder(DType::F32, device))
    }

    /// Loads a Hugging Face checkpoint directory with weights in `dtype`. Tensor names
    /// may carry a `bert.` prefix (checkpoints of task models); the pooler is built when
    /// the checkpoint has `pooler.dense.weight`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let mut cfg = BertConfig::from_hf_file(&dir.join(CONFIG_FILE))?;
        let store = WeightStore::open(dir)?;
        let prefix = if !store.contains("embeddings.word_embeddings.weight")
            && store.contains("bert.embeddings.word_embeddings.weight")
        {
            "bert."
        } else {
            ""
        };
        let b = WeightBuilder::from_store(&store, prefix, dtype, device);
        cfg.pooler = b.has("pooler.dense.weight");
        let model = Self::build(&cfg, b)?;
        super::hf::warn_unused(&store, &format!("{prefix}encoder.layer."), cfg.num_hidden_layers);
        Ok(model)
    }

    fn build(cfg: &BertConfig, mut b: WeightBuilder) -> Result<Self> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let mut sites = SiteTable::default();
        let word = (
            sites.add("embeddings.word_embeddings", SiteKind::EMBEDDING, SiteRole::EMBED_TOKENS, &[v, h], None, false),
            b.normal("embeddings.word_embeddings.weight", &[v, h])?,
        );
        let input_site =
            sites.add("embeddings.input_embeds", SiteKind::INPUT_EMBEDS, SiteRole::INPUT_EMBEDS, &[h], None, false);
        let position = b.normal("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let token_type = b.normal("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let embed_norm = SiteNorm::build(
            &mut b,
            &mut sites,
            Place::top("embeddings.LayerNorm", SiteRole::EMBED_NORM),
            NormKind::Layer,
            h,
            cfg.layer_norm_eps,
        )?;
        let layers =
            (0..cfg.num_hidden_layers).map(|l| Layer::build(&mut b, &mut sites, cfg, l)).collect::<Result<Vec<_>>>()?;
        let pooler = if cfg.pooler {
            Some(SiteLinear::build(&mut b, &mut sites, Place::top("pooler.dense", SiteRole::POOLER), (h, h), true)?)
        } else {
            None
        };
        Ok(Bert {
            cfg: cfg.clone(),
            sites,
            weights: b.finish(),
            word,
            input_site,
            position,
            token_type,
            embed_norm,
            layers,
            pooler,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Forward from word embeddings `[batch, len, hidden]` (after the
    /// `embeddings.input_embeds` site), with every position in the outputs.
    /// `attention_mask` is `[batch, seq]` with `seq <= len`: the `len - seq` leading
    /// positions are virtual tokens, always attended to. Positions run from the
    /// key/value prefix the adapters declare (`kv_prefix_len`, usually 0); token types
    /// are 0.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        adapters: &Adapters,
    ) -> Result<ModelOutput> {
        let (b, len, _) = embeds.dims3()?;
        let past = adapters.kv_prefix_len();
        if past + len > self.cfg.max_position_embeddings {
            return Err(Error::msg(format!(
                "bert input has {} positions, more than max_position_embeddings {}",
                past + len,
                self.cfg.max_position_embeddings
            )));
        }
        let x = embeds.broadcast_add(&self.token_type.get().narrow(0, 0, 1)?)?;
        let x = x.broadcast_add(&self.position.get().narrow(0, past, len)?)?;
        let mut x = adapters.dropout(&self.embed_norm.forward(adapters, &x)?)?;
        let pad = extend_mask(attention_mask, b, len)?;
        let mask = super::layers::attention_mask(pad.as_ref(), b, len, len, false, embeds.device())?;
        for layer in &self.layers {
            x = layer.forward(&self.cfg, &x, pad.as_ref(), mask.as_ref(), adapters)?;
        }
        let pooled = match &self.pooler {
            Some(p) => Some(p.forward(adapters, &x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok(ModelOutput { logits: None, hidden: x, pooled })
    }
}

impl Model for Bert {
    fn spec(&self) -> ModelSpec {
        self.cfg.spec()
    }

    fn hf_config(&self, _eos_token_id: Option<u32>) -> Option<serde_json::Value> {
        Some(self.cfg.to_hf_json())
    }

    fn sites(&self) -> &SiteTable {
        &self.sites
    }

    fn weights(&self) -> Vec<(String, Weight)> {
        self.weights.clone()
    }

    /// BERT has no head here: `outputs` changes nothing.
    fn forward_outputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        adapters: &Adapters,
        _outputs: Outputs,
    ) -> Result<ModelOutput> {
        adapters.begin_forward()?;
        let (b, s) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let x = self.word.1.get().index_select(&ids, 0)?.reshape((b, s, self.cfg.hidden_size))?;
        let x = adapters.post(self.word.0, input_ids, x)?;
        let x = adapters.post(self.input_site, &x, x.clone())?;
        if x.dim(1)? < s {
            return Err(Error::msg(format!(
                "site embeddings.input_embeds returned {} positions for {s} tokens",
                x.dim(1)?
            )));
        }
        self.forward_embeds(&x, attention_mask, adapters)?.last_positions(s)
    }
}
