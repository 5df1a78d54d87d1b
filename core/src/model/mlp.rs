//! `MlpLm`: a small residual-MLP language model for tests, benchmarks and examples.
//!
//! `embed → [x + down(gelu(up(x)))] × layers → lm_head`, with Hugging Face-style
//! names (`model.layers.0.mlp.up_proj`; `model.layers.0.mlp` is the MLP's output
//! before the residual add), so LoRA and other methods attach to it exactly
//! as to a Llama. It has no attention (each position is predicted from its own token),
//! which keeps plugin tests fast and exact.

use super::{Adapters, Model, ModelOutput, Outputs, SiteTable, Weight};
use crate::error::{Error, Result};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor};
use stagecraft_sdk::{ModelSpec, SiteKind, SiteRole};

/// Sizes of an [`MlpLm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpLmConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub intermediate: usize,
    /// Number of residual blocks.
    pub layers: usize,
}

struct Block {
    up: (usize, Weight),
    down: (usize, Weight),
    mlp_site: usize,
    out_site: usize,
}

/// The model.
pub struct MlpLm {
    cfg: MlpLmConfig,
    sites: SiteTable,
    embed: (usize, Weight),
    blocks: Vec<Block>,
    head: (usize, Weight),
}

fn normal(rng: &mut Rng, shape: &[usize], std: f64, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

impl MlpLm {
    /// A freshly initialized model (normal(0, 0.02) weights from `seed`).
    pub fn new(cfg: MlpLmConfig, seed: u64, device: &Device) -> Result<Self> {
        if cfg.vocab == 0 || cfg.hidden == 0 || cfg.intermediate == 0 {
            return Err(Error::msg("mlp model sizes must be > 0"));
        }
        let mut rng = Rng::new(seed);
        let mut sites = SiteTable::default();
        let (h, i, v) = (cfg.hidden, cfg.intermediate, cfg.vocab);
        let embed = (
            sites.add("model.embed_tokens", SiteKind::EMBEDDING, SiteRole::EMBED_TOKENS, &[v, h], None, false),
            Weight::new(normal(&mut rng, &[v, h], 0.02, device)?)?,
        );
        let mut blocks = Vec::new();
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let up =
                sites.add(&format!("{p}.mlp.up_proj"), SiteKind::LINEAR, SiteRole::MLP_UP, &[h, i], Some(l), false);
            let down =
                sites.add(&format!("{p}.mlp.down_proj"), SiteKind::LINEAR, SiteRole::MLP_DOWN, &[i, h], Some(l), false);
            let mlp_site =
                sites.add(&format!("{p}.mlp"), SiteKind::MLP_OUTPUT, SiteRole::MLP_OUTPUT, &[h], Some(l), false);
            let out_site = sites.add(&p, SiteKind::BLOCK_OUTPUT, SiteRole::BLOCK_OUTPUT, &[h], Some(l), false);
            blocks.push(Block {
                up: (up, Weight::new(normal(&mut rng, &[i, h], 0.02, device)?)?),
                down: (down, Weight::new(normal(&mut rng, &[h, i], 0.02, device)?)?),
                mlp_site,
                out_site,
            });
        }
        let head = (
            sites.add("lm_head", SiteKind::LINEAR, SiteRole::LM_HEAD, &[h, v], None, false),
            Weight::new(normal(&mut rng, &[v, h], 0.02, device)?)?,
        );
        Ok(MlpLm { cfg, sites, embed, blocks, head })
    }

    /// Its sizes.
    pub fn config(&self) -> MlpLmConfig {
        self.cfg
    }
}

impl Model for MlpLm {
    fn spec(&self) -> ModelSpec {
        let c = self.cfg;
        ModelSpec {
            arch: "mlp".into(),
            hidden: c.hidden,
            vocab: c.vocab,
            num_layers: c.layers,
            num_heads: 0,
            num_kv_heads: 0,
            head_dim: 0,
            intermediate: c.intermediate,
            causal: true,
            max_positions: 0,
        }
    }

    fn sites(&self) -> &SiteTable {
        &self.sites
    }

    fn weights(&self) -> Vec<(String, Weight)> {
        let mut w = vec![("model.embed_tokens.weight".to_string(), self.embed.1.clone())];
        for (l, b) in self.blocks.iter().enumerate() {
            w.push((format!("model.layers.{l}.mlp.up_proj.weight"), b.up.1.clone()));
            w.push((format!("model.layers.{l}.mlp.down_proj.weight"), b.down.1.clone()));
        }
        w.push(("lm_head.weight".to_string(), self.head.1.clone()));
        w
    }

    fn forward_outputs(
        &self,
        input_ids: &Tensor,
        _attention_mask: Option<&Tensor>,
        adapters: &Adapters,
        outputs: Outputs,
    ) -> Result<ModelOutput> {
        adapters.begin_forward()?;
        let (b, s) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let x = self.embed.1.get().index_select(&ids, 0)?.reshape((b, s, self.cfg.hidden))?;
        let mut x = adapters.post(self.embed.0, input_ids, x)?;
        for blk in &self.blocks {
            let h = adapters.linear(blk.up.0, &x, &blk.up.1.get(), None)?.gelu_erf()?;
            let h = adapters.linear(blk.down.0, &h, &blk.down.1.get(), None)?;
            let y = (&x + adapters.post(blk.mlp_site, &x, h)?)?;
            x = adapters.post(blk.out_site, &x, y)?;
        }
        let head = |x: &Tensor| adapters.linear(self.head.0, x, &self.head.1.get(), None);
        let logits = outputs.logits.then(|| head(&x)).transpose()?;
        Ok(ModelOutput { logits, hidden: x, pooled: None })
    }
}
