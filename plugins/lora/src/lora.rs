//! LoRA on linear sites: `y' = y + dropout(x)·Aᵀ·Bᵀ · scaling`.
//!
//! Shapes for a linear site with `dims = [in, out]` and rank `r`:
//! - `<site>.lora_A.weight`: `[r, in]`, random (see [`LoraInit`]);
//! - `<site>.lora_B.weight`: `[out, r]`, zeros, so a fresh adapter changes nothing;
//! - `<site>.lora_magnitude_vector`: `[out]`, with `use_dora` only (see [`crate::dora`]);
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
use crate::dora;
use stagecraft_sdk::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// The SDK version whose hosts have `add_low_rank` (the update in one host op); on
/// older hosts the plugin composes it from `matmul`, `affine` and `add`.
const ADD_LOW_RANK_SINCE: SdkVersion = SdkVersion::new(1, 3, 0);

/// The factors of one attached site.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SiteFactors {
    /// `[r, in]`.
    pub a: TensorHandle,
    /// `[out, r]`.
    pub b: TensorHandle,
    /// `alpha / r` (or `/ √r`) for this site's rank and alpha.
    pub scaling: f64,
    /// DoRA's magnitude `[out]`.
    pub magnitude: Option<TensorHandle>,
}

/// The rank and alpha a site gets.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SiteShape {
    r: usize,
    alpha: f64,
}

/// A LoRA adapter: a low-rank update `B·A` added to each targeted linear site.
pub struct Lora {
    cfg: LoraConfig,
    init: LoraInit,
    /// Rank and alpha per selected site name (from `rank_pattern` / `alpha_pattern`).
    shapes: HashMap<String, SiteShape>,
    params: HashMap<String, SiteFactors>,
}

/// The value the patterns give a site, if any; two patterns giving it different values
/// is an error naming both.
fn pattern_value<T: PartialEq + Copy + std::fmt::Display>(
    field: &str,
    patterns: &BTreeMap<String, T>,
    site: &SiteInfo,
    role: SiteRole,
) -> Result<Option<T>> {
    let mut found: Option<(&str, T)> = None;
    for (p, v) in patterns {
        if !target_matches(p, site, role) {
            continue;
        }
        match found {
            Some((q, w)) if w != *v => bail!("{field}: `{q}` ({w}) and `{p}` ({v}) both match `{}`", site.name),
            _ => found = Some((p, *v)),
        }
    }
    Ok(found.map(|(_, v)| v))
}

impl Lora {
    /// The parameter names `(A, B)` of a site, PEFT-style.
    pub fn param_names(site: &str) -> (String, String) {
        (format!("{site}.lora_A.weight"), format!("{site}.lora_B.weight"))
    }

    /// The factors of an attached site.
    fn factors(&self, site: &SiteInfo) -> Result<SiteFactors> {
        match self.params.get(site.name.as_str()) {
            Some(f) => Ok(*f),
            None => bail!("lora has no parameters for site `{}` (it was not initialized)", site.name),
        }
    }

    /// `scaling · B·A`, `[out, in]`: the update folded into the base weight.
    fn delta_weight<'h>(&self, host: Host<'h>, f: &SiteFactors) -> Result<Tensor<'h>> {
        host.tensor(f.b).matmul(&host.tensor(f.a))?.affine(f.scaling, 0.0)
    }
}

/// `scale·(x·Aᵀ)·Bᵀ` op by op: what LoRA adds to `y` on hosts older than SDK 1.3,
/// and DoRA's update. On newer hosts `add_low_rank` gives `y` plus the same values (up
/// to float rounding) in one op.
pub fn low_rank_delta<'h>(x: &Tensor<'h>, a: &Tensor<'h>, b: &Tensor<'h>, scale: f64) -> Result<Tensor<'h>> {
    // [.., in] × [in, r] × [r, out]: the host's matmul broadcasts a 2-d right-hand side
    // over the leading dims of x.
    x.matmul(&a.t()?)?.matmul(&b.t()?)?.affine(scale, 0.0)
}

impl Plugin for Lora {
    const NAME: &'static str = "lora";
    const DESCRIPTION: &'static str = "low-rank adaptation of linear layers (LoRA, rsLoRA, DoRA)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = LoraConfig;

    fn new(cfg: LoraConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        let init = cfg.lora_init()?;
        Ok(Lora { init, cfg, shapes: HashMap::new(), params: HashMap::new() })
    }
}

impl AdaptationMethod for Lora {
    fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        let mut picked = select_sites(host, &self.cfg.targets, sites, &[SiteKind::LINEAR], Hooks::POST)?;
        if let Some(layers) = &self.cfg.layers_to_transform {
            picked.retain(|a| sites[a.site as usize].layer.into_option().is_some_and(|l| layers.contains(&l)));
            if picked.is_empty() {
                bail!("no targeted site is in layers_to_transform {layers:?}");
            }
        }
        let roles_needed =
            self.cfg.rank_pattern.keys().chain(self.cfg.alpha_pattern.keys()).any(|p| p.starts_with("role:"));
        for a in &picked {
            let site = &sites[a.site as usize];
            let role = if roles_needed { host.site_role(site)? } else { SiteRole::OTHER };
            let r = pattern_value("rank_pattern", &self.cfg.rank_pattern, site, role)?.unwrap_or(self.cfg.r);
            let alpha = pattern_value("alpha_pattern", &self.cfg.alpha_pattern, site, role)?.unwrap_or(self.cfg.alpha);
            self.shapes.insert(site.name.to_string(), SiteShape { r, alpha });
        }
        Ok(picked)
    }

    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let (fan_in, fan_out) = match site.dims.as_slice() {
            [i, o] => (*i, *o),
            d => bail!("lora: site `{}` has dims {d:?}, expected [in, out] of a linear layer", site.name),
        };
        let SiteShape { r, alpha } =
            self.shapes.get(site.name.as_str()).copied().unwrap_or(SiteShape { r: self.cfg.r, alpha: self.cfg.alpha });
        let a_init = match self.init {
            LoraInit::Kaiming => Init::kaiming_uniform(fan_in),
            LoraInit::Gaussian => Init::normal(0.0, 1.0 / r as f64),
        };
        let (a_name, b_name) = Lora::param_names(&site.name);
        let a = host.new_param(&a_name, &[r, fan_in], a_init)?.handle();
        let b = host.new_param(&b_name, &[fan_out, r], Init::ZEROS)?.handle();
        let mut f = SiteFactors { a, b, scaling: self.cfg.scaling(r, alpha), magnitude: None };
        if self.cfg.use_dora {
            f.magnitude = Some(dora::init_magnitude(host, site, &f)?);
        }
        self.params.insert(site.name.to_string(), f);
        Ok(())
    }

    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        let f = self.factors(site)?;
        let x = x.dropout(self.cfg.dropout)?;
        let (a, b) = (host.tensor(f.a), host.tensor(f.b));
        match f.magnitude {
            Some(m) => {
                let delta = low_rank_delta(&x, &a, &b, f.scaling)?;
                dora::forward(host, site, &f, host.tensor(m), x, y, delta, self.cfg.dropout > 0.0)
            }
            None if host.sdk_version() >= ADD_LOW_RANK_SINCE => host.add_low_rank(&y, &x, &a, &b, f.scaling),
            None => y.add(&low_rank_delta(&x, &a, &b, f.scaling)?),
        }
    }

    fn low_rank(&self, site: &SiteInfo) -> Option<LowRank> {
        // `forward` is exactly this update where nothing drops the input out and the
        // update is not DoRA's (whose scale depends on the updated weight's norms).
        let f = self.params.get(site.name.as_str())?;
        (f.magnitude.is_none() && self.cfg.dropout == 0.0).then_some(LowRank { a: f.a, b: f.b, scale: f.scaling })
    }

    fn merge_support(&self) -> MergeSupport {
        MergeSupport::YES
    }

    fn merge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        let f = self.factors(site)?;
        let updated = weight.add(&self.delta_weight(host, &f)?)?;
        match f.magnitude {
            Some(m) => dora::scale_rows(&updated, host.tensor(m)),
            None => Ok(updated),
        }
    }

    fn unmerge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        let f = self.factors(site)?;
        if f.magnitude.is_some() {
            bail!("lora: a DoRA merge of `{}` cannot be undone from the merged weight alone (the norms of the unmerged weight are lost)", site.name);
        }
        weight.sub(&self.delta_weight(host, &f)?)
    }
}
