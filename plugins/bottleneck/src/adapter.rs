//! A bottleneck adapter at a sublayer-output site `[batch, seq, hidden]`:
//! `y' = y + up(act(down(y)))`, with `down` `[hidden/f, hidden]` and `up`
//! `[hidden, hidden/f]` (plus biases), `f` the reduction factor.
//!
//! Parameters, per site: `<site>.adapter_down.weight` / `.bias` and
//! `<site>.adapter_up.weight` / `.bias`. `up` starts at zero, so the adapter starts as
//! the identity and the first step's gradient reaches `up` only.

use crate::config::{Activation, BottleneckConfig, Variant};
use stagecraft_sdk::prelude::*;
use std::collections::HashMap;

/// One site's projections.
#[derive(Debug, Clone, Copy)]
struct Projections {
    down_w: TensorHandle,
    down_b: TensorHandle,
    up_w: TensorHandle,
    up_b: TensorHandle,
}

/// A bottleneck adapter.
pub struct Bottleneck {
    cfg: BottleneckConfig,
    variant: Variant,
    activation: Activation,
    params: HashMap<String, Projections>,
}

impl Plugin for Bottleneck {
    const NAME: &'static str = "bottleneck";
    const DESCRIPTION: &'static str = "bottleneck adapters after attention and/or MLP sublayers (Houlsby, Pfeiffer)";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = BottleneckConfig;

    fn new(cfg: BottleneckConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(Bottleneck { variant: cfg.variant()?, activation: cfg.activation()?, cfg, params: HashMap::new() })
    }
}

impl AdaptationMethod for Bottleneck {
    fn select_sites(&mut self, _host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        let kinds: &[SiteKind] = match self.variant {
            Variant::Houlsby => &[SiteKind::ATTN_OUTPUT, SiteKind::MLP_OUTPUT],
            Variant::Pfeiffer => &[SiteKind::MLP_OUTPUT],
        };
        let in_layers = |s: &SiteInfo| match (&self.cfg.layers, s.layer.into_option()) {
            (None, _) => true,
            (Some(ls), Some(l)) => ls.contains(&l),
            (Some(_), None) => false,
        };
        let picked: Vec<Attachment> = sites
            .iter()
            .enumerate()
            .filter(|(_, s)| kinds.contains(&s.kind) && in_layers(s))
            .map(|(i, _)| Attachment { site: i as u32, hooks: Hooks::POST })
            .collect();
        if picked.is_empty() {
            let want: Vec<&str> = kinds.iter().filter_map(|k| k.name()).collect();
            bail!(
                "the model has no {} site{}",
                want.join(" or "),
                self.cfg.layers.as_ref().map(|l| format!(" in layers {l:?}")).unwrap_or_default()
            );
        }
        Ok(picked)
    }

    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let hidden = site.dims[0];
        let inner = (hidden / self.cfg.reduction_factor).max(1);
        let name = |p: &str| format!("{}.adapter_{p}", site.name);
        let down_init = match self.cfg.init_std {
            Some(std) => Init::normal(0.0, std),
            None => Init::kaiming_uniform(hidden),
        };
        let p = Projections {
            down_w: host.new_param(&name("down.weight"), &[inner, hidden], down_init)?.handle(),
            down_b: host.new_param(&name("down.bias"), &[inner], Init::ZEROS)?.handle(),
            up_w: host.new_param(&name("up.weight"), &[hidden, inner], Init::ZEROS)?.handle(),
            up_b: host.new_param(&name("up.bias"), &[hidden], Init::ZEROS)?.handle(),
        };
        self.params.insert(site.name.to_string(), p);
        Ok(())
    }

    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        let Some(p) = self.params.get(site.name.as_str()) else {
            bail!("bottleneck has no parameters for `{}`", site.name)
        };
        let h = y.matmul(&host.tensor(p.down_w).t()?)?.add(&host.tensor(p.down_b))?;
        let h = match self.activation {
            Activation::Relu => h.relu()?,
            Activation::Silu => h.silu()?,
            Activation::Gelu => h.gelu()?,
            Activation::Tanh => h.tanh()?,
        };
        y.add(&h.matmul(&host.tensor(p.up_w).t()?)?.add(&host.tensor(p.up_b))?)
    }

    fn merge_support(&self) -> MergeSupport {
        MergeSupport::NO
    }
}
