//! Misbehaving adaptation methods, one per failure the host must survive:
//! `panicky` (panics in forward), `wrong_shape` (returns a tensor of the wrong shape),
//! `forger` (returns a handle it made up), `stale` (returns a temporary from an
//! earlier step), `bad_config` (rejects its config); and `nan_loss`, an objective whose
//! loss turns NaN on chosen steps.

use serde::Deserialize;
use stagecraft_sdk::prelude::*;
use std::cell::Cell;

/// Which sites to attach to.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Site patterns.
    pub targets: Vec<String>,
}

macro_rules! faulty {
    ($ty:ident, $name:literal, |$self_:ident, $host:ident, $x:ident, $y:ident| $body:expr) => {
        /// A misbehaving method.
        #[allow(dead_code)]
        pub struct $ty {
            targets: Vec<String>,
            last: Cell<Option<TensorHandle>>,
        }
        impl Plugin for $ty {
            const NAME: &'static str = $name;
            const DESCRIPTION: &'static str = "misbehaves on purpose";
            const VERSION: &'static str = "0.1.0";
            type Config = Targets;
            fn new(cfg: Targets, _host: Host<'_>) -> Result<Self> {
                Ok($ty { targets: cfg.targets, last: Cell::new(None) })
            }
        }
        impl AdaptationMethod for $ty {
            fn select_sites(&mut self, _host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
                select_linear_sites(&self.targets, sites, Hooks::POST)
            }
            fn init_site(&mut self, _host: Host<'_>, _site: &SiteInfo) -> Result<()> {
                Ok(())
            }
            fn forward<'h>(&$self_, $host: Host<'h>, _site: &SiteInfo, $x: Tensor<'h>, $y: Tensor<'h>) -> Result<Tensor<'h>> {
                $body
            }
        }
    };
}

faulty!(Panicky, "panicky", |self, _host, _x, _y| panic!("deliberate panic in forward"));
faulty!(WrongShape, "wrong_shape", |self, _host, _x, y| y.narrow(2, 0, 1));
faulty!(Forger, "forger", |self, host, _x, _y| Ok(host.tensor(TensorHandle(0x0000_0007_0000_0003))));
faulty!(Stale, "stale", |self, host, _x, y| {
    let out = match self.last.get() {
        Some(h) => host.tensor(h),
        None => y,
    };
    self.last.set(Some(y.handle()));
    Ok(out)
});

/// Rejects every config.
pub struct BadConfig;

impl Plugin for BadConfig {
    const NAME: &'static str = "bad_config";
    const DESCRIPTION: &'static str = "rejects its config";
    const VERSION: &'static str = "0.1.0";
    type Config = Targets;
    fn new(cfg: Targets, _host: Host<'_>) -> Result<Self> {
        bail!("targets: expected at most 0 patterns, got {}", cfg.targets.len())
    }
}

impl AdaptationMethod for BadConfig {
    fn select_sites(&mut self, _host: Host<'_>, _sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        Ok(Vec::new())
    }
    fn init_site(&mut self, _host: Host<'_>, _site: &SiteInfo) -> Result<()> {
        Ok(())
    }
    fn forward<'h>(&self, _host: Host<'h>, _site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(y)
    }
}


/// When to return a NaN loss, or a loss (and gradient) 20 times too large.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct NanConfig {
    /// 1-based training calls of `compute` that return NaN.
    #[serde(default)]
    pub nan_at: Vec<u64>,
    /// 1-based training calls of `compute` whose loss is scaled by 20.
    #[serde(default)]
    pub spike_at: Vec<u64>,
}

/// A next-token loss that turns NaN or spikes on chosen training calls (the anomaly
/// guard's tests).
pub struct NanLoss {
    cfg: NanConfig,
    calls: u64,
}

impl Plugin for NanLoss {
    const NAME: &'static str = "nan_loss";
    const DESCRIPTION: &'static str = "next-token loss with injected NaNs";
    const VERSION: &'static str = "0.1.0";
    type Config = NanConfig;
    fn new(cfg: NanConfig, _host: Host<'_>) -> Result<Self> {
        Ok(NanLoss { cfg, calls: 0 })
    }
}

impl Stage for NanLoss {
    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>> {
        let logits = outputs.get("logits")?;
        let ids = batch.get("input_ids")?;
        let (b, s, v) = match logits.shape()?.as_slice() {
            &[b, s, v] => (b, s, v),
            d => bail!("logits have shape {d:?}"),
        };
        let n = b * (s - 1);
        let pred = logits.narrow(1, 0, s - 1)?.reshape(&[n, v])?;
        let tgt = ids.narrow(1, 1, s - 1)?.reshape(&[n])?;
        let mut loss = pred.cross_entropy(&tgt, -100)?.mean_all()?;
        if host.is_training() {
            self.calls += 1;
            if self.cfg.nan_at.contains(&self.calls) {
                loss = loss.affine(f64::NAN, 0.0)?;
            }
            if self.cfg.spike_at.contains(&self.calls) {
                loss = loss.affine(20.0, 0.0)?;
            }
        }
        Ok(Loss { loss, per_example: None, metrics: Vec::new() })
    }
}

stagecraft_sdk::export_plugin! {
    id: compat_faulty,
    methods: [Panicky, WrongShape, Forger, Stale, BadConfig],
    optimizers: [],
    stages: [NanLoss],
}
