//! Misbehaving plugins, one per failure the host must survive: methods `panicky`
//! (panics in forward), `wrong_shape` (returns a tensor of the wrong shape), `forger`
//! (returns a handle it made up), `stale` (returns a temporary from an earlier step),
//! `thief` (tries to overwrite tensors it does not own), `bad_config` (rejects its
//! config), `panicky_new` and `panicky_init` (panic while being made), `bad_low_rank`
//! (declares a low-rank update whose factors have each other's shapes); the optimizer
//! `panicky_opt` and the objective `panicky_stage` (panic in their step and loss); and
//! `nan_loss`, an objective whose loss (or only its gradient) turns non-finite on chosen
//! steps.

use serde::Deserialize;
use stagecraft_sdk::prelude::*;
use std::cell::Cell;
use std::collections::HashMap;

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
faulty!(Thief, "thief", |self, host, _x, y| {
    // Every handle a table of this size can hold, first generation: the base weights'
    // and the other plugins' parameters among them.
    for slot in 0..4096u64 {
        if host.assign(&host.tensor(TensorHandle(slot)), &y).is_ok() {
            bail!("thief: overwrote the tensor in slot {slot}, which it does not own");
        }
    }
    Ok(y)
});
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

/// A method that panics while it is made.
pub struct PanickyNew;

impl Plugin for PanickyNew {
    const NAME: &'static str = "panicky_new";
    const DESCRIPTION: &'static str = "panics in new";
    const VERSION: &'static str = "0.1.0";
    type Config = Targets;
    fn new(_cfg: Targets, _host: Host<'_>) -> Result<Self> {
        panic!("deliberate panic in new")
    }
}

impl AdaptationMethod for PanickyNew {
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

/// A method that panics creating its parameters.
pub struct PanickyInit(Vec<String>);

impl Plugin for PanickyInit {
    const NAME: &'static str = "panicky_init";
    const DESCRIPTION: &'static str = "panics in init_site";
    const VERSION: &'static str = "0.1.0";
    type Config = Targets;
    fn new(cfg: Targets, _host: Host<'_>) -> Result<Self> {
        Ok(PanickyInit(cfg.targets))
    }
}

impl AdaptationMethod for PanickyInit {
    fn select_sites(&mut self, _host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        select_linear_sites(&self.0, sites, Hooks::POST)
    }
    fn init_site(&mut self, _host: Host<'_>, site: &SiteInfo) -> Result<()> {
        panic!("deliberate panic creating the parameters of {}", site.name)
    }
    fn forward<'h>(&self, _host: Host<'h>, _site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(y)
    }
}

/// Declares its (identity) hook as a low-rank update whose factors are swapped: `A`
/// `[out, 2]` and `B` `[2, in]` instead of `[2, in]` and `[out, 2]`.
pub struct BadLowRank {
    targets: Vec<String>,
    factors: HashMap<String, LowRank>,
}

impl Plugin for BadLowRank {
    const NAME: &'static str = "bad_low_rank";
    const DESCRIPTION: &'static str = "declares factors of the wrong shapes";
    const VERSION: &'static str = "0.1.0";
    type Config = Targets;
    fn new(cfg: Targets, _host: Host<'_>) -> Result<Self> {
        Ok(BadLowRank { targets: cfg.targets, factors: HashMap::new() })
    }
}

impl AdaptationMethod for BadLowRank {
    fn select_sites(&mut self, _host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>> {
        select_linear_sites(&self.targets, sites, Hooks::POST)
    }
    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()> {
        let &[fan_in, fan_out] = site.dims.as_slice() else { bail!("not a linear site") };
        let a = host.new_param(&format!("{}.a", site.name), &[fan_out, 2], Init::ZEROS)?.handle();
        let b = host.new_param(&format!("{}.b", site.name), &[2, fan_in], Init::ZEROS)?.handle();
        self.factors.insert(site.name.to_string(), LowRank { a, b, scale: 1.0 });
        Ok(())
    }
    fn forward<'h>(&self, _host: Host<'h>, _site: &SiteInfo, _x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(y)
    }
    fn low_rank(&self, site: &SiteInfo) -> Option<LowRank> {
        self.factors.get(site.name.as_str()).copied()
    }
}

/// No options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct Nothing {
    /// Ignored.
    #[serde(default)]
    pub lr: Option<f64>,
}

/// An optimizer that panics in its step.
pub struct PanickyOpt;

impl Plugin for PanickyOpt {
    const NAME: &'static str = "panicky_opt";
    const DESCRIPTION: &'static str = "panics in step";
    const VERSION: &'static str = "0.1.0";
    type Config = Nothing;
    fn new(_cfg: Nothing, _host: Host<'_>) -> Result<Self> {
        Ok(PanickyOpt)
    }
}

impl Optimizer for PanickyOpt {
    fn init(&mut self, _host: Host<'_>, _params: &[ParamSlot]) -> Result<()> {
        Ok(())
    }
    fn step(&mut self, _host: Host<'_>, _params: &[ParamSlot], step: u64) -> Result<()> {
        panic!("deliberate panic in step {step}")
    }
}

/// An objective that panics computing its loss.
pub struct PanickyStage;

impl Plugin for PanickyStage {
    const NAME: &'static str = "panicky_stage";
    const DESCRIPTION: &'static str = "panics in compute";
    const VERSION: &'static str = "0.1.0";
    type Config = Nothing;
    fn new(_cfg: Nothing, _host: Host<'_>) -> Result<Self> {
        Ok(PanickyStage)
    }
}

impl Stage for PanickyStage {
    fn compute<'h>(&mut self, _host: Host<'h>, _outputs: Named<'h>, _batch: Named<'h>) -> Result<Loss<'h>> {
        panic!("deliberate panic in compute")
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
    /// 1-based training calls of `compute` whose loss is finite but whose gradient is
    /// NaN (`+ sqrt(loss - loss)`: `d sqrt(u)/du` is infinite at 0, and the two paths
    /// back to the loss meet as `inf - inf`).
    #[serde(default)]
    pub nan_grad_at: Vec<u64>,
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
            if self.cfg.nan_grad_at.contains(&self.calls) {
                loss = loss.add(&loss.sub(&loss)?.sqrt()?)?;
            }
        }
        Ok(Loss { loss, per_example: None, metrics: Vec::new() })
    }
}

stagecraft_sdk::export_plugin! {
    id: compat_faulty,
    methods: [Panicky, WrongShape, Forger, Stale, Thief, BadConfig, PanickyNew, PanickyInit, BadLowRank],
    optimizers: [PanickyOpt],
    stages: [NanLoss, PanickyStage],
}
