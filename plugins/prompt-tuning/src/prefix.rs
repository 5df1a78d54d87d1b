//! Prefix tuning: learned keys and values prepended at every attention layer.
//!
//! With `n` virtual tokens, `L` layers and key/value width `T = kv_heads × head_dim`,
//! the prefixes of all layers are one table `[n, L·2·T]` (PEFT's `prompt_embeddings`,
//! laid out as PEFT's `past_key_values`): layer `l`'s keys are columns
//! `[2l·T, (2l+1)·T)`, its values the next `T`, each viewed as `[n, kv_heads, head_dim]`.
//! Without `prefix_projection` the table is the parameter; with it, the table is
//! `Linear₂(tanh(Linear₀(embedding)))` (parameters `embedding.weight` `[n, T]`,
//! `transform.{0,2}.{weight,bias}`, PEFT's names), computed once per forward pass in
//! `begin_forward` and sliced at each layer. At a key or value site `[b, kv_heads, s,
//! head_dim]` the layer's prefix is broadcast over the batch and prepended:
//! `[b, kv_heads, n + s, head_dim]`; the host then gives real tokens positions after
//! the `n` prefix positions, as a cache would.

use crate::config::PrefixTuningConfig;
use stagecraft_sdk::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// The trainable parameters.
#[derive(Debug, Clone, Copy)]
enum Params {
    /// The prefix table itself, `[n, L·2·T]`.
    Table(TensorHandle),
    /// The reparameterization: `embedding` `[n, T]` → `w0 [E, T]`, `b0 [E]` → tanh →
    /// `w2 [L·2·T, E]`, `b2 [L·2·T]`.
    Mlp { embedding: TensorHandle, w0: TensorHandle, b0: TensorHandle, w2: TensorHandle, b2: TensorHandle },
}

/// What the model looks like to the prefixes.
#[derive(Debug, Clone, Copy)]
struct Shape {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Shape {
    /// `T`, the width of one layer's keys (or values).
    fn width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// A prefix-tuning adapter.
pub struct PrefixTuning {
    cfg: PrefixTuningConfig,
    zero: bool,
    shape: Option<Shape>,
    params: Option<Params>,
    /// Per attached site: its layer and whether it holds values (else keys).
    slots: HashMap<String, (usize, bool)>,
    /// The table of this forward pass (a temporary), from `begin_forward`.
    table: RefCell<Option<TensorHandle>>,
}

impl PrefixTuning {
    fn shape(&self) -> Result<Shape> {
        self.shape.ok_or_else(|| Error::msg("prefix_tuning: used before select_sites"))
    }

    fn create_params(&self, host: Host<'_>, shape: Shape) -> Result<Params> {
        let (n, t) = (self.cfg.num_virtual_tokens, shape.width());
        let full = shape.layers * 2 * t;
        if !self.cfg.prefix_projection {
            let init = if self.zero { Init::ZEROS } else { Init::normal(0.0, 1.0) };
            return Ok(Params::Table(host.new_param("prompt_embeddings", &[n, full], init)?.handle()));
        }
        let e = self.cfg.encoder_hidden_size.unwrap_or(t);
        // nn.Embedding and nn.Linear defaults, as PEFT's encoder starts.
        let bound = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
        let last = |fan_in: usize| if self.zero { Init::ZEROS } else { Init::uniform(-bound(fan_in), bound(fan_in)) };
        Ok(Params::Mlp {
            embedding: host.new_param("embedding.weight", &[n, t], Init::normal(0.0, 1.0))?.handle(),
            w0: host.new_param("transform.0.weight", &[e, t], Init::kaiming_uniform(t))?.handle(),
            b0: host.new_param("transform.0.bias", &[e], Init::uniform(-bound(t), bound(t)))?.handle(),
            w2: host.new_param("transform.2.weight", &[full, e], last(e))?.handle(),
            b2: host.new_param("transform.2.bias", &[full], last(e))?.handle(),
        })
    }

    /// The prefix table `[n, L·2·T]` from the parameters.
    fn compute_table<'h>(&self, host: Host<'h>) -> Result<Tensor<'h>> {
        match self.params {
            Some(Params::Table(t)) => Ok(host.tensor(t)),
            Some(Params::Mlp { embedding, w0, b0, w2, b2 }) => {
                let h = host.tensor(embedding).matmul(&host.tensor(w0).t()?)?.add(&host.tensor(b0))?.tanh()?;
                h.matmul(&host.tensor(w2).t()?)?.add(&host.tensor(b2))
            }
            None => bail!("prefix_tuning: forward before init_site"),
        }
    }
}

impl Plugin for PrefixTuning {
    const NAME: &'static str = "prefix_tuning";
    const DESCRIPTION: &'static str = "learned key/value prefixes at every attention layer (prefix tuning)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = PrefixTuningConfig;

    fn new(cfg: PrefixTuningConfig, _host: Host<'_>) -> Result<Self> {
        let zero = cfg.zero_init()?;
        Ok(PrefixTuning { cfg, zero, shape: None, params: None, slots: HashMap::new(), table: RefCell::new(None) })
    }
}

impl AdaptationMethod for PrefixTuning {
    fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        let spec = host.model_info()?;
        let shape = Shape { layers: spec.num_layers, kv_heads: spec.num_kv_heads, head_dim: spec.head_dim };
        let mut picked = Vec::new();
        for (i, s) in sites.iter().enumerate() {
            let is_value = match s.kind {
                SiteKind::ATTN_KEY => false,
                SiteKind::ATTN_VALUE => true,
                _ => continue,
            };
            let Some(layer) = s.layer.into_option() else { bail!("attention site `{}` is in no layer", s.name) };
            if s.dims.as_slice() != [shape.kv_heads, shape.head_dim] {
                bail!(
                    "attention site `{}` has dims {:?}, but the model has {} key/value heads of {}",
                    s.name,
                    s.dims.as_slice(),
                    shape.kv_heads,
                    shape.head_dim
                );
            }
            self.slots.insert(s.name.to_string(), (layer as usize, is_value));
            picked.push(Attachment { site: i as u32, hooks: Hooks::POST });
        }
        if picked.is_empty() {
            bail!("prefix tuning needs attention key/value sites, the model has none");
        }
        self.shape = Some(shape);
        Ok(picked)
    }

    fn init_site(&mut self, host: Host<'_>, _site: &SiteInfo) -> Result<()> {
        // One table serves every layer: made at the first site.
        if self.params.is_none() {
            self.params = Some(self.create_params(host, self.shape()?)?);
        }
        Ok(())
    }

    fn begin_forward(&self, host: Host<'_>) -> Result<()> {
        *self.table.borrow_mut() = Some(self.compute_table(host)?.handle());
        Ok(())
    }

    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        let Some(table) = *self.table.borrow() else { bail!("prefix_tuning: the host did not call begin_forward") };
        let Some(&(layer, is_value)) = self.slots.get(site.name.as_str()) else {
            bail!("prefix_tuning is not attached to `{}`", site.name)
        };
        let shape = self.shape()?;
        let (n, t) = (self.cfg.num_virtual_tokens, shape.width());
        let b = y.dim(0)?;
        let column = (2 * layer + usize::from(is_value)) * t;
        let prefix =
            host.tensor(table).narrow(1, column, t)?.reshape(&[n, shape.kv_heads, shape.head_dim])?.transpose(0, 1)?;
        let prefix = prefix
            .reshape(&[1, shape.kv_heads, n, shape.head_dim])?
            .broadcast_as(&[b, shape.kv_heads, n, shape.head_dim])?
            .to_dtype(y.dtype()?)?;
        host.cat(&[prefix, y], 2)
    }

    fn kv_prefix_len(&self) -> usize {
        self.cfg.num_virtual_tokens
    }

    fn merge_support(&self) -> MergeSupport {
        MergeSupport::NO
    }
}
