//! `quickstart`: a low-rank update of linear layers, `y' = y + s·x·Dᵀ·Uᵀ` (the
//! core of LoRA), as a stagecraft adaptation-method plugin.
//!
//! For a linear site with `dims = [in, out]` and rank `r`, it creates two parameters:
//! `<site>.down` (`[r, in]`, random) and `<site>.up` (`[out, r]`, zeros, so a fresh
//! adapter changes nothing), and scales the update by `s = alpha / r`. It can be
//! merged: the folded weight is `W + s·U·D`.
//!
//! In a pipeline:
//! `adapters = [{ plugin = "quickstart", targets = ["q_proj", "v_proj"], r = 4 }]`.

use serde::Deserialize;
use stagecraft_sdk::prelude::*;
use std::collections::HashMap;

/// The adapter's table in a pipeline (every key but `plugin`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct QuickstartConfig {
    /// Linear sites to adapt: names (`q_proj`), globs, `re:` regexes or roles
    /// (`role:attn_q`). Required.
    pub targets: Vec<String>,
    /// Rank of the update. Default 4; > 0.
    #[serde(default = "default_r")]
    pub r: usize,
    /// The update is scaled by `alpha / r`. Default 8.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_r() -> usize {
    4
}

fn default_alpha() -> f64 {
    8.0
}

impl QuickstartConfig {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            bail!("targets must name at least one site pattern");
        }
        for t in &self.targets {
            validate_pattern(t)?;
        }
        if self.r == 0 {
            bail!("r must be > 0, got 0");
        }
        if !self.alpha.is_finite() {
            bail!("alpha must be a finite number, got {}", self.alpha);
        }
        Ok(())
    }

    /// The factor `s` the update is multiplied by.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// The parameters of one attached site.
#[derive(Debug, Clone, Copy)]
struct Factors {
    /// `[r, in]`.
    down: TensorHandle,
    /// `[out, r]`.
    up: TensorHandle,
}

/// The adapter: one pair of factors per attached site.
pub struct Quickstart {
    cfg: QuickstartConfig,
    sites: HashMap<String, Factors>,
}

impl Quickstart {
    fn factors(&self, site: &SiteInfo) -> Result<Factors> {
        match self.sites.get(site.name.as_str()) {
            Some(f) => Ok(*f),
            None => bail!("{}: site `{}` was not initialized", Self::NAME, site.name),
        }
    }

    /// `s·U·D`, `[out, in]`: the update as a change of the base weight.
    fn delta_weight<'h>(&self, host: Host<'h>, f: Factors) -> Result<Tensor<'h>> {
        let product = host.tensor(f.up).matmul(&host.tensor(f.down))?;
        product.affine(self.cfg.scaling(), 0.0)
    }
}

impl Plugin for Quickstart {
    const NAME: &'static str = "quickstart";
    const DESCRIPTION: &'static str = "a low-rank update of linear layers (LoRA-like)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = QuickstartConfig;

    fn new(cfg: Self::Config, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, sites: HashMap::new() })
    }
}

impl AdaptationMethod for Quickstart {
    fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        select_sites(host, &self.cfg.targets, sites, &[SiteKind::LINEAR], Hooks::POST)
    }

    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let &[fan_in, fan_out] = site.dims.as_slice() else {
            bail!(
                "{}: site `{}` has dims {:?}, expected [in, out]",
                Self::NAME,
                site.name,
                site.dims
            );
        };
        let r = self.cfg.r;
        let down_name = format!("{}.down", site.name);
        let down = host.new_param(&down_name, &[r, fan_in], Init::kaiming_uniform(fan_in))?;
        let up = host.new_param(&format!("{}.up", site.name), &[fan_out, r], Init::ZEROS)?;
        let factors = Factors { down: down.handle(), up: up.handle() };
        self.sites.insert(site.name.to_string(), factors);
        Ok(())
    }

    fn forward<'h>(
        &self,
        host: Host<'h>,
        site: &SiteInfo,
        x: Tensor<'h>,
        y: Tensor<'h>,
    ) -> Result<Tensor<'h>> {
        let f = self.factors(site)?;
        // [.., in] x [in, r] x [r, out]: a 2-d right-hand side broadcasts over x's batch.
        let low = x.matmul(&host.tensor(f.down).t()?)?;
        let delta = low.matmul(&host.tensor(f.up).t()?)?.affine(self.cfg.scaling(), 0.0)?;
        y.add(&delta)
    }

    fn merge_support(&self) -> MergeSupport {
        MergeSupport::YES
    }

    fn merge<'h>(&self, host: Host<'h>, site: &SiteInfo, weight: Tensor<'h>) -> Result<Tensor<'h>> {
        weight.add(&self.delta_weight(host, self.factors(site)?)?)
    }

    fn unmerge<'h>(
        &self,
        host: Host<'h>,
        site: &SiteInfo,
        weight: Tensor<'h>,
    ) -> Result<Tensor<'h>> {
        weight.sub(&self.delta_weight(host, self.factors(site)?)?)
    }
}

stagecraft_sdk::export_plugin! {
    id: quickstart,
    methods: [Quickstart],
    optimizers: [],
    stages: [],
}

#[cfg(test)]
mod tests {
    use super::QuickstartConfig as Config;

    /// The config parsed from JSON (the host sends the TOML table as JSON) and checked,
    /// or the error.
    fn config(json: &str) -> Result<Config, String> {
        let cfg: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.0)?;
        Ok(cfg)
    }

    #[test]
    fn defaults_give_the_scaling() {
        let cfg = config(r#"{ "targets": ["q_proj"] }"#).expect("valid config");
        assert_eq!((cfg.r, cfg.alpha), (4, 8.0));
        assert_eq!(cfg.scaling(), 2.0);
        assert_eq!(config(r#"{ "targets": ["q_proj"], "r": 16 }"#).map(|c| c.scaling()), Ok(0.5));
    }

    #[test]
    fn bad_configs_name_the_field() {
        assert!(
            config(r#"{ "targets": ["q_proj"], "r": 0 }"#).is_err_and(|e| e.starts_with("r must"))
        );
        assert!(config(r#"{ "targets": [] }"#).is_err_and(|e| e.starts_with("targets")));
        assert!(
            config(r#"{ "targets": ["q_proj"], "rank": 4 }"#).is_err_and(|e| e.contains("rank"))
        );
    }
}
