//! IA3 on linear sites.
//!
//! For a linear site with `dims = [in, out]`:
//! - a targeted site gets `<site>.ia3_l` `[out, 1]` and computes `y' = y ⊙ l`
//!   (bias included: `(x·Wᵀ + b) ⊙ l`);
//! - a feed-forward site gets `<site>.ia3_l` `[1, in]` and computes
//!   `y' = (x ⊙ l)·Wᵀ + b` (a pre-hook on the input).
//!
//! Merging folds `l` into the weight's rows (`W ⊙ l`, and `b ⊙ l`) or columns
//! (`W ⊙ lᵀ`, the bias unchanged). Names and shapes are PEFT's.

use crate::config::Ia3Config;
use stagecraft_sdk::prelude::*;
use std::collections::HashMap;

/// One attached site: its vector and whether it scales the input.
#[derive(Debug, Clone, Copy)]
struct Scale {
    l: TensorHandle,
    feedforward: bool,
}

/// An IA3 adapter.
pub struct Ia3 {
    cfg: Ia3Config,
    /// Names of the selected sites that are feed-forward.
    feedforward: Vec<String>,
    params: HashMap<String, Scale>,
}

impl Ia3 {
    fn scale(&self, site: &SiteInfo) -> Result<Scale> {
        match self.params.get(site.name.as_str()) {
            Some(s) => Ok(*s),
            None => bail!("ia3 has no vector for site `{}` (it was not initialized)", site.name),
        }
    }
}

impl Plugin for Ia3 {
    const NAME: &'static str = "ia3";
    const DESCRIPTION: &'static str = "learned rescaling of linear outputs or feed-forward inputs (IA3)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = Ia3Config;

    fn new(cfg: Ia3Config, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(Ia3 { cfg, feedforward: Vec::new(), params: HashMap::new() })
    }
}

impl AdaptationMethod for Ia3 {
    fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        let mut picked = select_sites(host, &self.cfg.targets, sites, &[SiteKind::LINEAR], Hooks::POST)?;
        if self.cfg.feedforward.is_empty() {
            return Ok(picked);
        }
        let ff = select_sites(host, &self.cfg.feedforward, sites, &[SiteKind::LINEAR], Hooks::PRE)?;
        for a in &ff {
            let Some(p) = picked.iter_mut().find(|p| p.site == a.site) else {
                bail!(
                    "feedforward matches `{}`, which targets does not: feed-forward sites must be targeted too",
                    sites[a.site as usize].name
                );
            };
            p.hooks = Hooks::PRE;
            self.feedforward.push(sites[a.site as usize].name.to_string());
        }
        Ok(picked)
    }

    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let (fan_in, fan_out) = match site.dims.as_slice() {
            [i, o] => (*i, *o),
            d => bail!("ia3: site `{}` has dims {d:?}, expected [in, out] of a linear layer", site.name),
        };
        let feedforward = self.feedforward.iter().any(|n| n == site.name.as_str());
        let shape = if feedforward { [1, fan_in] } else { [fan_out, 1] };
        let init = if self.cfg.init_ia3_weights { Init::ONES } else { Init::normal(0.0, 1.0) };
        let l = host.new_param(&format!("{}.ia3_l", site.name), &shape, init)?.handle();
        self.params.insert(site.name.to_string(), Scale { l, feedforward });
        Ok(())
    }

    fn forward_pre<'h>(&self, host: Host<'h>, site: &SiteInfo, x: Tensor<'h>) -> Result<Tensor<'h>> {
        let s = self.scale(site)?;
        x.mul(&host.tensor(s.l).reshape(&[site.dims[0]])?)
    }

    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        let s = self.scale(site)?;
        y.mul(&host.tensor(s.l).reshape(&[site.dims[1]])?)
    }

    fn merge_support(&self) -> MergeSupport {
        MergeSupport::YES
    }

    fn merge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        // `[out, 1]` scales the rows of W `[out, in]`, `[1, in]` its columns.
        weight.mul(&host.tensor(self.scale(site)?.l))
    }

    fn unmerge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        weight.div(&host.tensor(self.scale(site)?.l))
    }

    fn merge_bias<'h>(&self, host: Host<'h>, site: &SiteInfo, bias: Tensor<'h>) -> Result<Tensor<'h>> {
        let s = self.scale(site)?;
        if s.feedforward {
            return Ok(bias);
        }
        bias.mul(&host.tensor(s.l).reshape(&[site.dims[1]])?)
    }

    fn unmerge_bias<'h>(&self, host: Host<'h>, site: &SiteInfo, bias: Tensor<'h>) -> Result<Tensor<'h>> {
        let s = self.scale(site)?;
        if s.feedforward {
            return Ok(bias);
        }
        bias.div(&host.tensor(s.l).reshape(&[site.dims[1]])?)
    }
}
