//! Prompt tuning: `num_virtual_tokens` learned embeddings prepended to the input
//! embeddings of every sequence.
//!
//! The method attaches to the model's input-embeddings site (`[batch, seq, hidden]`)
//! and returns `[batch, n + seq, hidden]`: `prompt_embeddings` `[n, hidden]` (PEFT's
//! name and shape) broadcast over the batch, then the tokens. It cannot be merged into
//! weights.

use crate::config::{PromptInit, PromptTuningConfig};
use stagecraft_sdk::prelude::*;

/// A prompt-tuning adapter.
pub struct PromptTuning {
    cfg: PromptTuningConfig,
    init: PromptInit,
    /// The token embedding site (`[vocab, hidden]`), for starting from the vocabulary.
    embed_site: Option<SiteInfo>,
    prompt: Option<TensorHandle>,
}

/// splitmix64: a small, seedable generator for the vocabulary sample.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl PromptTuning {
    /// The token ids whose embeddings the prompt starts from (vocabulary or text init).
    fn init_ids(&self, host: Host<'_>, vocab: usize) -> Result<Vec<i64>> {
        let n = self.cfg.num_virtual_tokens;
        match self.init {
            PromptInit::SampleVocab => {
                let mut state = host.seed() ^ 0x7072_6f6d_7074;
                Ok((0..n).map(|_| (splitmix64(&mut state) % vocab as u64) as i64).collect())
            }
            PromptInit::Text => {
                let text = self.cfg.init_text.as_deref().unwrap_or_default();
                let ids = host.encode(text)?;
                if ids.is_empty() {
                    bail!("init_text `{text}` has no tokens");
                }
                // Repeated, then cut to n: PEFT's rule.
                Ok(ids.iter().cycle().take(n).map(|&t| t as i64).collect())
            }
            PromptInit::Random => bail!("random init needs no token ids"),
        }
    }
}

impl Plugin for PromptTuning {
    const NAME: &'static str = "prompt_tuning";
    const DESCRIPTION: &'static str = "learned virtual-token embeddings prepended to the input (prompt tuning)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = PromptTuningConfig;

    fn new(cfg: PromptTuningConfig, _host: Host<'_>) -> Result<Self> {
        let init = cfg.prompt_init()?;
        Ok(PromptTuning { cfg, init, embed_site: None, prompt: None })
    }
}

impl AdaptationMethod for PromptTuning {
    fn select_sites(&mut self, _host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        let inputs: Vec<usize> =
            sites.iter().enumerate().filter(|(_, s)| s.kind == SiteKind::INPUT_EMBEDS).map(|(i, _)| i).collect();
        let &[site] = inputs.as_slice() else {
            bail!("prompt tuning needs exactly one input-embeddings site, the model has {}", inputs.len());
        };
        if self.init != PromptInit::Random {
            let embed = sites.iter().find(|s| s.kind == SiteKind::EMBEDDING).ok_or_else(|| {
                Error::msg("init from the vocabulary needs a token embedding site, the model has none")
            })?;
            self.embed_site = Some(embed.clone());
        }
        Ok(vec![Attachment { site: site as u32, hooks: Hooks::POST }])
    }

    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let (n, hidden) = (self.cfg.num_virtual_tokens, site.dims[0]);
        let prompt = match &self.embed_site {
            None => host.new_param("prompt_embeddings", &[n, hidden], Init::normal(0.0, 1.0))?,
            Some(embed) => {
                // The parameter first: the host refuses a size that cannot fit before the
                // init ids (as many as virtual tokens) are drawn.
                let p = host.new_param("prompt_embeddings", &[n, hidden], Init::ZEROS)?;
                let vocab = embed.dims[0];
                let ids = self.init_ids(host, vocab)?;
                if let Some(bad) = ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
                    bail!("init token id {bad} is outside the embedding table of {vocab} rows");
                }
                let table = host.site_weight(&embed.name, "weight")?;
                let rows = table.index_select(&host.from_i64(&ids, &[n])?, 0)?;
                host.assign(&p, &rows)?;
                p
            }
        };
        self.prompt = Some(prompt.handle());
        Ok(())
    }

    fn forward<'h>(&self, host: Host<'h>, _site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        let Some(prompt) = self.prompt else { bail!("prompt_tuning: forward before init_site") };
        let (b, h) = (y.dim(0)?, y.dim(2)?);
        let n = self.cfg.num_virtual_tokens;
        let virtual_tokens = host.tensor(prompt).reshape(&[1, n, h])?.broadcast_as(&[b, n, h])?.to_dtype(y.dtype()?)?;
        host.cat(&[virtual_tokens, y], 1)
    }

    fn merge_support(&self) -> MergeSupport {
        MergeSupport::NO
    }
}
