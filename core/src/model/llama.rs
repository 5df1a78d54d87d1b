//! [`Llama`]: a trainable Llama-style decoder with a named site at every linear.
//!
//! `embed → [x + attn(rms(x))] → [x + mlp(rms(x))] × layers → rms → lm_head`, with
//! RoPE (`rotate_half` convention), grouped-query attention, a SwiGLU MLP
//! (`down(silu(gate(x)) · up(x))`) and a tied or separate head. Sites, in order, with
//! Hugging Face names: `model.embed_tokens` (embedding), `model.input_embeds` (input
//! embeddings; a longer output prepends virtual tokens), then per layer `i`
//! `model.layers.{i}.input_layernorm`, `.self_attn.{q,k,v}_proj`,
//! `.self_attn.key_states` / `.value_states` (after RoPE; a longer output prepends
//! prefix keys/values), `.self_attn.o_proj`, `.self_attn` (the attention sublayer's
//! output, before the residual add), `.post_attention_layernorm`,
//! `.mlp.{gate,up,down}_proj`, `.mlp` (the MLP sublayer's output), `model.layers.{i}`
//! (block output); then `model.norm` and `lm_head`.
//!
//! Positions: virtual tokens prepended at `model.input_embeds` take the first
//! positions, as Hugging Face models given `inputs_embeds` do. Keys prepended at
//! `key_states` are used as they are (they carry no rotation of their own), and
//! every token then takes positions after them — as after a key/value cache of that
//! length, which is how PEFT's prefix tuning runs. The outputs drop the virtual
//! tokens: one position per input token.
//!
//! ```
//! # use candle_core::{Device, Tensor};
//! # use stagecraft_core::model::{Adapters, Llama, LlamaConfig, Model};
//! let cfg: LlamaConfig = serde_json::from_str(r#"{"vocab_size": 32, "hidden_size": 16,
//!     "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2}"#).expect("config");
//! let model = Llama::new(&cfg, 0, &Device::Cpu)?;
//! let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;
//! let out = model.forward(&ids, None, &Adapters::none(model.sites().len()))?;
//! assert_eq!(out.logits.expect("logits").dims(), &[1, 3, 32]);
//! # Ok::<(), stagecraft_core::Error>(())
//! ```

use super::builder::WeightBuilder;
use super::hf::{WeightStore, CONFIG_FILE};
use super::layers::{attention_mask, extend_mask, Rope, RopeTables};
use super::parts::{NormKind, Place, SiteLinear, SiteNorm};
use super::{named_site_tensors, Adapters, LlamaConfig, Model, ModelOutput, Outputs, SiteTable, Weight};
use crate::bail;
use crate::device::Precision;
use crate::error::Result;
use crate::kernels::attention::{attention_heads, attention_rows};
use crate::kernels::decoder_block::{attention_block, mlp_block, AttentionWeights, MlpWeights};
use crate::kernels::gated_mlp::gated_mlp_in;
use crate::kernels::linear::{linear_onto, LowRank};
use crate::kernels::rope::split_heads;
use crate::kernels::swiglu::swiglu;
use candle_core::{DType, Device, Tensor};
use stagecraft_sdk::{ModelSpec, SiteKind, SiteRole};
use std::path::Path;

/// The untied head's weight in a checkpoint.
const LM_HEAD: &str = "lm_head.weight";

/// One decoder block.
struct Layer {
    input_norm: SiteNorm,
    q: SiteLinear,
    k: SiteLinear,
    v: SiteLinear,
    key_site: usize,
    value_site: usize,
    o: SiteLinear,
    attn_out_site: usize,
    post_norm: SiteNorm,
    gate: SiteLinear,
    up: SiteLinear,
    down: SiteLinear,
    mlp_out_site: usize,
    out_site: usize,
}

/// The decoder.
pub struct Llama {
    cfg: LlamaConfig,
    sites: SiteTable,
    weights: Vec<(String, Weight)>,
    embed: (usize, Weight),
    input_site: usize,
    layers: Vec<Layer>,
    norm: SiteNorm,
    head: SiteLinear,
    rope: Rope,
}

impl Layer {
    fn build(b: &mut WeightBuilder, sites: &mut SiteTable, cfg: &LlamaConfig, l: usize) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        let kv_dims = [cfg.kv_heads(), cfg.head_dim()];
        let n = |suffix: &str| format!("model.layers.{l}{suffix}");
        let lin = |b: &mut WeightBuilder, sites: &mut SiteTable, suffix: &str, role, dims, bias| {
            SiteLinear::build(b, sites, Place::block(&n(suffix), role, l), dims, bias)
        };
        Ok(Layer {
            input_norm: SiteNorm::build(
                b,
                sites,
                Place::block(&n(".input_layernorm"), SiteRole::ATTN_NORM, l),
                NormKind::Rms,
                h,
                eps,
            )?,
            q: lin(b, sites, ".self_attn.q_proj", SiteRole::ATTN_Q, (h, q_out), ab)?,
            k: lin(b, sites, ".self_attn.k_proj", SiteRole::ATTN_K, (h, kv_out), ab)?,
            v: lin(b, sites, ".self_attn.v_proj", SiteRole::ATTN_V, (h, kv_out), ab)?,
            key_site: sites.add(
                &n(".self_attn.key_states"),
                SiteKind::ATTN_KEY,
                SiteRole::KEY_STATES,
                &kv_dims,
                Some(l),
                false,
            ),
            value_site: sites.add(
                &n(".self_attn.value_states"),
                SiteKind::ATTN_VALUE,
                SiteRole::VALUE_STATES,
                &kv_dims,
                Some(l),
                false,
            ),
            o: lin(b, sites, ".self_attn.o_proj", SiteRole::ATTN_O, (q_out, h), ab)?,
            attn_out_site: sites.add(
                &n(".self_attn"),
                SiteKind::ATTN_OUTPUT,
                SiteRole::ATTN_OUTPUT,
                &[h],
                Some(l),
                false,
            ),
            post_norm: SiteNorm::build(
                b,
                sites,
                Place::block(&n(".post_attention_layernorm"), SiteRole::MLP_NORM, l),
                NormKind::Rms,
                h,
                eps,
            )?,
            gate: lin(b, sites, ".mlp.gate_proj", SiteRole::MLP_GATE, (h, i), mb)?,
            up: lin(b, sites, ".mlp.up_proj", SiteRole::MLP_UP, (h, i), mb)?,
            down: lin(b, sites, ".mlp.down_proj", SiteRole::MLP_DOWN, (i, h), mb)?,
            mlp_out_site: sites.add(&n(".mlp"), SiteKind::MLP_OUTPUT, SiteRole::MLP_OUTPUT, &[h], Some(l), false),
            out_site: sites.add(&n(""), SiteKind::BLOCK_OUTPUT, SiteRole::BLOCK_OUTPUT, &[h], Some(l), false),
        })
    }

    /// `x` is `[b, seq, hidden]`; `pad` the `[b, seq]` padding mask (if any) and `mask`
    /// the additive causal mask for `seq` keys.
    fn forward(
        &self,
        cfg: &LlamaConfig,
        rope: &RopeTables,
        x: &Tensor,
        pad: Option<&Tensor>,
        mask: Option<&Tensor>,
        a: &Adapters,
    ) -> Result<Tensor> {
        let x1 = match self.attention_updates(a)? {
            Some(updates) => {
                let (norm, q, k, v, o) = (
                    self.input_norm.weight.get(),
                    self.q.weight.get(),
                    self.k.weight.get(),
                    self.v.weight.get(),
                    self.o.weight.get(),
                );
                let w = AttentionWeights {
                    norm: &norm,
                    eps: self.input_norm.eps,
                    q: &q,
                    k: &k,
                    v: &v,
                    o: &o,
                    updates: updates.each_ref().map(Vec::as_slice),
                    heads: (cfg.num_attention_heads, cfg.kv_heads()),
                    rope: Some(rope.cos_sin()),
                    mask,
                    scale: 1.0 / (cfg.head_dim() as f64).sqrt(),
                };
                attention_block(x, &w)?
            }
            None => {
                let h = self.input_norm.forward(a, x)?;
                let heads = self.attention_heads(cfg, rope, &h, pad, mask, a)?;
                residual_block(a, x, &h, &self.o, &heads, self.attn_out_site)?
            }
        };
        let y = match self.mlp_updates(a)? {
            Some(updates) => {
                let (norm, gate, up, down) =
                    (self.post_norm.weight.get(), self.gate.weight.get(), self.up.weight.get(), self.down.weight.get());
                let updates = updates.each_ref().map(Vec::as_slice);
                let w = MlpWeights { norm: &norm, eps: self.post_norm.eps, gate: &gate, up: &up, down: &down, updates };
                mlp_block(&x1, &w)?
            }
            None => {
                let h = self.post_norm.forward(a, &x1)?;
                let m = self.gated_mlp_in(a, &h)?;
                residual_block(a, &x1, &h, &self.down, &m, self.mlp_out_site)?
            }
        };
        a.post(self.out_site, x, y)
    }

    /// The low-rank updates of q, k, v and o when the attention block runs as one op
    /// ([`attention_block`]): on [`block_updates`]' terms.
    fn attention_updates(&self, a: &Adapters) -> Result<Option<[Vec<LowRank>; 4]>> {
        let sites = [self.input_norm.site, self.key_site, self.value_site, self.attn_out_site];
        block_updates(a, &sites, [&self.q, &self.k, &self.v, &self.o])
    }

    /// The low-rank updates of gate, up and down when the MLP block runs as one op
    /// ([`mlp_block`]), on the same terms.
    fn mlp_updates(&self, a: &Adapters) -> Result<Option<[Vec<LowRank>; 3]>> {
        block_updates(a, &[self.post_norm.site, self.mlp_out_site], [&self.gate, &self.up, &self.down])
    }

    /// `silu(gate(h)) · up(h)`: one fused op when no adapter hooks either site (and
    /// neither has a bias), else the two sites with their adapters.
    fn gated_mlp_in(&self, a: &Adapters, h: &Tensor) -> Result<Tensor> {
        let (g, u) = (&self.gate, &self.up);
        let plain = a.precision() == Precision::Fp32
            && !a.hooks(g.site)
            && !a.hooks(u.site)
            && g.bias.is_none()
            && u.bias.is_none();
        let m = match plain {
            true => gated_mlp_in(h, &g.weight.get(), &u.weight.get())?,
            false => swiglu(&g.forward(a, h)?, &u.forward(a, h)?)?,
        };
        Ok(m)
    }

    /// The attention heads' output `[b, s, heads·head_dim]`, before the output
    /// projection.
    fn attention_heads(
        &self,
        cfg: &LlamaConfig,
        rope: &RopeTables,
        h: &Tensor,
        pad: Option<&Tensor>,
        mask: Option<&Tensor>,
        a: &Adapters,
    ) -> Result<Tensor> {
        let (b, s, _) = h.dims3()?;
        let (nh, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let scale = 1.0 / (hd as f64).sqrt();
        if !a.hooks(self.key_site) && !a.hooks(self.value_site) {
            // Keys and values as the projections give them: the split into heads and
            // the rotation happen inside the attention op.
            let (q, k, v) = (self.q.forward(a, h)?, self.k.forward(a, h)?, self.v.forward(a, h)?);
            let tables = rope.cos_sin();
            return Ok(attention_rows(&q, &k, &v, (nh, kvh), Some(tables), mask, scale, a.precision())?);
        }
        let q = rope.heads(&self.q.forward(a, h)?, nh)?;
        let k = rope.heads(&self.k.forward(a, h)?, kvh)?;
        let v = split_heads(&self.v.forward(a, h)?, kvh)?;
        let k = a.post(self.key_site, &k, k.clone())?;
        let v = a.post(self.value_site, &v, v.clone())?;
        let kv_len = k.dim(2)?;
        let prefixed;
        let mask = if kv_len == s {
            mask
        } else {
            let pad = extend_mask(pad, b, kv_len)?;
            prefixed = attention_mask(pad.as_ref(), b, s, kv_len, true, h.device())?;
            prefixed.as_ref()
        };
        Ok(attention_heads(&q, &k, &v, mask, scale, a.precision())?)
    }
}

/// Each projection's low-rank updates when a block can run as one op: f32, nothing
/// drops out, no adapter hooks its other `sites`, its `projections` have no bias, and
/// the adapters hook each projection only through declared low-rank updates
/// ([`Adapters::low_rank`]; LoRA's). `None` otherwise.
fn block_updates<const N: usize>(
    a: &Adapters,
    sites: &[usize],
    projections: [&SiteLinear; N],
) -> Result<Option<[Vec<LowRank>; N]>> {
    let plain = a.precision() == Precision::Fp32
        && !a.has_dropout()
        && sites.iter().all(|&s| !a.hooks(s))
        && projections.iter().all(|p| p.bias.is_none());
    if !plain {
        return Ok(None);
    }
    let mut updates = Vec::with_capacity(N);
    for p in projections {
        match a.low_rank(p.site)? {
            Some(u) => updates.push(u),
            None => return Ok(None),
        }
    }
    Ok(updates.try_into().ok())
}

/// `residual + post(out_site, dropout(proj(z)))`, the end of an attention or MLP block
/// whose input was `h`. Where nothing hooks or drops out between the projection and the
/// addition (and the projection has no bias), the product is accumulated onto the
/// residual in one op ([`linear_onto`]).
fn residual_block(
    a: &Adapters,
    residual: &Tensor,
    h: &Tensor,
    proj: &SiteLinear,
    z: &Tensor,
    out_site: usize,
) -> Result<Tensor> {
    let plain = a.precision() == Precision::Fp32
        && !a.has_dropout()
        && !a.hooks(proj.site)
        && !a.hooks(out_site)
        && proj.bias.is_none();
    if plain {
        return Ok(linear_onto(z, &proj.weight.get(), residual)?);
    }
    let y = a.dropout(&proj.forward(a, z)?)?;
    Ok((residual + a.post(out_site, h, y)?)?)
}

impl Llama {
    /// A freshly initialized f32 model: matrices `normal(0, initializer_range)` drawn
    /// from `seed`, norm scales ones, biases zeros.
    pub fn new(cfg: &LlamaConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        Self::build(cfg, WeightBuilder::fresh(seed, cfg.initializer_range, DType::F32, device))
    }

    /// A model of this shape with all-zero weights (see [`WeightBuilder::placeholder`]):
    /// its sites and shapes, for checks, at no cost.
    pub fn placeholder(cfg: &LlamaConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        Self::build(cfg, WeightBuilder::placeholder(DType::F32, device))
    }

    /// Loads a Hugging Face checkpoint directory (`config.json`, `model.safetensors` or
    /// a sharded index) with weights in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = LlamaConfig::from_hf_file(&dir.join(CONFIG_FILE))?;
        let store = WeightStore::open(dir)?;
        let model = Self::build(&cfg, WeightBuilder::from_store(&store, "", dtype, device))?;
        if cfg.tie_word_embeddings && store.contains(LM_HEAD) {
            model.check_stored_head(&store)?;
        }
        super::hf::warn_unused(&store, "model.layers.", cfg.num_hidden_layers);
        Ok(model)
    }

    /// A tied model whose checkpoint also stores `lm_head.weight`: harmless when it is
    /// the embedding table again (some tools save both), refused when it differs, since
    /// tying would silently replace the head the files describe.
    fn check_stored_head(&self, store: &WeightStore) -> Result<()> {
        let embed = self.embed.1.var().as_tensor();
        let head = store.load(LM_HEAD, embed.dims(), embed.dtype(), embed.device())?;
        let diff = (head - embed)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if diff != 0.0 {
            bail!(
                "{}: `{LM_HEAD}` differs from `model.embed_tokens.weight` (by up to {diff}), but {CONFIG_FILE} has \
                 tie_word_embeddings = true, which would ignore it: set tie_word_embeddings to false to use this head",
                store.listing().display()
            );
        }
        Ok(())
    }

    fn build(cfg: &LlamaConfig, mut b: WeightBuilder) -> Result<Self> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let mut sites = SiteTable::default();
        let embed = (
            sites.add("model.embed_tokens", SiteKind::EMBEDDING, SiteRole::EMBED_TOKENS, &[v, h], None, false),
            b.normal("model.embed_tokens.weight", &[v, h])?,
        );
        let input_site =
            sites.add("model.input_embeds", SiteKind::INPUT_EMBEDS, SiteRole::INPUT_EMBEDS, &[h], None, false);
        let layers =
            (0..cfg.num_hidden_layers).map(|l| Layer::build(&mut b, &mut sites, cfg, l)).collect::<Result<Vec<_>>>()?;
        let norm = SiteNorm::build(
            &mut b,
            &mut sites,
            Place::top("model.norm", SiteRole::FINAL_NORM),
            NormKind::Rms,
            h,
            cfg.rms_norm_eps,
        )?;
        let head = if cfg.tie_word_embeddings {
            let site = sites.add("lm_head", SiteKind::LINEAR, SiteRole::LM_HEAD, &[h, v], None, false);
            SiteLinear { site, weight: embed.1.clone(), bias: None }
        } else {
            SiteLinear::build(&mut b, &mut sites, Place::top("lm_head", SiteRole::LM_HEAD), (h, v), false)?
        };
        let rope = Rope::new(cfg.head_dim(), cfg.rope_theta)?;
        Ok(Llama { cfg: cfg.clone(), sites, weights: b.finish(), embed, input_site, layers, norm, head, rope })
    }

    /// Its configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Forward from input embeddings `[batch, len, hidden]` (after the
    /// `model.input_embeds` site), with every position in the outputs.
    /// `attention_mask` is `[batch, seq]` with `seq <= len`: the `len - seq` leading
    /// positions are virtual tokens, always attended to. Positions start after the
    /// key/value prefix the adapters declare (`kv_prefix_len`). The head runs only
    /// when `outputs` asks for logits.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        adapters: &Adapters,
        outputs: Outputs,
    ) -> Result<ModelOutput> {
        let (b, len, _) = embeds.dims3()?;
        let pad = extend_mask(attention_mask, b, len)?;
        let mask = super::layers::attention_mask(pad.as_ref(), b, len, len, true, embeds.device())?;
        let rope = self.rope.tables(adapters.kv_prefix_len(), len, embeds.dtype(), embeds.device())?;
        let mut x = embeds.clone();
        for layer in &self.layers {
            x = layer.forward(&self.cfg, &rope, &x, pad.as_ref(), mask.as_ref(), adapters)?;
        }
        let hidden = self.norm.forward(adapters, &x)?;
        let logits = outputs.logits.then(|| self.head.forward(adapters, &hidden)).transpose()?;
        Ok(ModelOutput { logits, hidden, pooled: None })
    }
}

impl Model for Llama {
    fn spec(&self) -> ModelSpec {
        self.cfg.spec()
    }

    fn context_length(&self) -> Option<usize> {
        self.cfg.max_position_embeddings.filter(|&n| n > 0)
    }

    fn sites(&self) -> &SiteTable {
        &self.sites
    }

    fn weights(&self) -> Vec<(String, Weight)> {
        self.weights.clone()
    }

    fn forward_outputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        adapters: &Adapters,
        outputs: Outputs,
    ) -> Result<ModelOutput> {
        adapters.begin_forward()?;
        let (b, s) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let x = self.embed.1.get().index_select(&ids, 0)?.reshape((b, s, self.cfg.hidden_size))?;
        let x = adapters.post(self.embed.0, input_ids, x)?;
        let x = adapters.post(self.input_site, &x, x.clone())?;
        let x = adapters.dropout(&x)?;
        if x.dim(1)? < s {
            bail!("site model.input_embeds returned {} positions for {s} tokens", x.dim(1)?);
        }
        self.forward_embeds(&x, attention_mask, adapters, outputs)?.last_positions(s)
    }

    fn hf_config(&self, eos_token_id: Option<u32>) -> Option<serde_json::Value> {
        Some(self.cfg.to_hf_json(eos_token_id))
    }

    fn site_tensors(&self) -> Vec<(String, &'static str, Tensor)> {
        let mut out = named_site_tensors(&self.sites, &self.weights);
        // A tied head has no weight of its own: it is the embedding table.
        if self.cfg.tie_word_embeddings {
            out.push(("lm_head".to_string(), "weight", self.head.weight.var().as_tensor().clone()));
        }
        out
    }
}
