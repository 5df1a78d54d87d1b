//! LoRA on linear sites: `y' = y + dropout(x)·Aᵀ·Bᵀ · scaling`.
//!
//! Shapes for a linear site with `dims = [in, out]` and rank `r`:
//! - `<site>.lora_A.weight`: `[r, in]`, random (see [`LoraInit`]);
//! - `<site>.lora_B.weight`: `[out, r]`, zeros, so a fresh adapter changes nothing;
//! - `x`: `[.., in]`, `y`: `[.., out]`;
//! - merged weight: `W + scaling · B·A`, `[out, in]` like the base weight.
//!
//! The names and shapes are PEFT's, so an adapter saved by the host loads in PEFT
//! after prefixing `base_model.model.`.
//!
//! ```
//! use stagecraft_lora::{Lora, LoraConfig};
//! use stagecraft_sdk::Plugin;
//!
//! assert_eq!(Lora::NAME, "lora");
//! assert_eq!(Lora::param_names("model.layers.0.self_attn.q_proj").0,
//!            "model.layers.0.self_attn.q_proj.lora_A.weight");
//! ```

use crate::config::{LoraConfig, LoraInit};
use stagecraft_sdk::prelude::*;
use std::collections::HashMap;

/// A LoRA adapter: a low-rank update `B·A` added to each targeted linear site.
pub struct Lora {
    cfg: LoraConfig,
    scaling: f64,
    init: LoraInit,
    /// `(A, B)` per site name.
    params: HashMap<String, (TensorHandle, TensorHandle)>,
}

impl Lora {
    /// The parameter names `(A, B)` of a site, PEFT-style.
    pub fn param_names(site: &str) -> (String, String) {
        (format!("{site}.lora_A.weight"), format!("{site}.lora_B.weight"))
    }

    /// The `(A, B)` tensors of an attached site.
    fn factors<'h>(&self, host: Host<'h>, site: &SiteInfo) -> Result<(Tensor<'h>, Tensor<'h>)> {
        match self.params.get(site.name.as_str()) {
            Some(&(a, b)) => Ok((host.tensor(a), host.tensor(b))),
            None => bail!("lora has no parameters for site `{}` (it was not initialized)", site.name),
        }
    }

    /// `scaling · B·A`, `[out, in]`: the update folded into the base weight.
    fn delta_weight<'h>(&self, host: Host<'h>, site: &SiteInfo) -> Result<Tensor<'h>> {
        let (a, b) = self.factors(host, site)?;
        b.matmul(&a)?.affine(self.scaling, 0.0)
    }
}

impl Plugin for Lora {
    const NAME: &'static str = "lora";
    const DESCRIPTION: &'static str = "low-rank adaptation of linear layers (LoRA, rsLoRA)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = LoraConfig;

    fn new(cfg: LoraConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        let init = cfg.lora_init()?;
        Ok(Lora { scaling: cfg.scaling(), init, cfg, params: HashMap::new() })
    }
}

impl AdaptationMethod for Lora {
    fn select_sites(&mut self, _host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        select_linear_sites(&self.cfg.targets, sites, Hooks::POST)
    }

    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let (fan_in, fan_out) = match site.dims.as_slice() {
            [i, o] => (*i, *o),
            d => bail!("lora: site `{}` has dims {d:?}, expected [in, out] of a linear layer", site.name),
        };
        let r = self.cfg.r;
        let a_init = match self.init {
            LoraInit::Kaiming => Init::kaiming_uniform(fan_in),
            LoraInit::Gaussian => Init::normal(0.0, 1.0 / r as f64),
        };
        let (a_name, b_name) = Lora::param_names(&site.name);
        let a = host.new_param(&a_name, &[r, fan_in], a_init)?;
        let b = host.new_param(&b_name, &[fan_out, r], Init::ZEROS)?;
        self.params.insert(site.name.to_string(), (a.handle(), b.handle()));
        Ok(())
    }

    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        let (a, b) = self.factors(host, site)?;
        // [.., in] × [in, r] × [r, out]: the host's matmul broadcasts a 2-d right-hand
        // side over the leading dims of x.
        let delta = x.dropout(self.cfg.dropout)?.matmul(&a.t()?)?.matmul(&b.t()?)?;
        y.add(&delta.affine(self.scaling, 0.0)?)
    }

    fn merge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        weight.add(&self.delta_weight(host, site)?)
    }

    fn unmerge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        weight.sub(&self.delta_weight(host, site)?)
    }
}
