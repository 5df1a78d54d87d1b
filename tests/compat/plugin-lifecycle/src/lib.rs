//! `lifecycle_probe`: a next-token objective that checks what the host calls when.
//!
//! - It reads exactly the outputs of its `outputs` config (its `required_outputs`) and
//!   fails if it is given any other one.
//! - `on_step_end` must come once per optimizer step, with steps 1, 2, 3, ... of the
//!   stage; it returns `STOP` at step `stop_at_step`.
//! - `on_eval_end` counts evaluations and returns `ROLLBACK` at evaluation
//!   `rollback_at_eval`.
//! - Every batch reports the metrics `steps_seen` and `evals_seen` (hook calls so far),
//!   and evaluations of the own set `last_eval_loss` (the loss `on_eval_end` was told
//!   at the previous evaluation), so a test reads the calls back from `metrics.jsonl`.

use serde::Deserialize;
use stagecraft_sdk::prelude::*;

/// When to stop or roll back, and which outputs to ask for.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(crate = "stagecraft_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Returns `Control::STOP` from `on_step_end` at this step.
    #[serde(default)]
    pub stop_at_step: Option<u64>,
    /// Returns `Control::ROLLBACK` from `on_eval_end` at this (1-based) evaluation.
    #[serde(default)]
    pub rollback_at_eval: Option<u64>,
    /// `required_outputs` (default: logits).
    #[serde(default = "logits")]
    pub outputs: Vec<String>,
}

fn logits() -> Vec<String> {
    vec!["logits".into()]
}

/// See the crate docs.
pub struct LifecycleProbe {
    cfg: ProbeConfig,
    steps: u64,
    evals: u64,
    last_eval_loss: f64,
}

impl Plugin for LifecycleProbe {
    const NAME: &'static str = "lifecycle_probe";
    const DESCRIPTION: &'static str = "next-token loss that checks the host's hook calls";
    const VERSION: &'static str = "0.1.0";
    type Config = ProbeConfig;
    fn new(cfg: ProbeConfig, _host: Host<'_>) -> Result<Self> {
        Ok(LifecycleProbe { cfg, steps: 0, evals: 0, last_eval_loss: f64::NAN })
    }
}

impl Stage for LifecycleProbe {
    fn required_outputs(&self) -> Vec<String> {
        self.cfg.outputs.clone()
    }

    fn compute<'h>(&mut self, _host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>> {
        if let Some(extra) = outputs.names().find(|n| !self.cfg.outputs.iter().any(|o| o == n)) {
            bail!("lifecycle_probe was given `{extra}`, which it did not ask for");
        }
        let hidden = outputs.get("hidden").ok();
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
        if let Some(h) = hidden {
            // Reads `hidden` too (without changing the loss's value).
            loss = loss.add(&h.mean_all()?.affine(0.0, 0.0)?)?;
        }
        let metrics = vec![
            Metric::new("steps_seen", self.steps as f64, 1.0),
            Metric::new("evals_seen", self.evals as f64, 1.0),
            Metric::new("last_eval_loss", self.last_eval_loss, 1.0),
        ];
        Ok(Loss { loss, per_example: None, metrics })
    }

    fn on_step_end(&mut self, _host: Host<'_>, info: &StepInfo) -> Result<Control> {
        self.steps += 1;
        if info.step != self.steps {
            bail!("on_step_end: step {} after {} calls", info.step, self.steps - 1);
        }
        if !info.loss.is_finite() || info.lr <= 0.0 {
            bail!("on_step_end: loss {} lr {}", info.loss, info.lr);
        }
        Ok(if self.cfg.stop_at_step == Some(info.step) { Control::STOP } else { Control::CONTINUE })
    }

    fn on_eval_end(&mut self, _host: Host<'_>, metrics: &[Metric]) -> Result<Control> {
        self.evals += 1;
        let loss = metrics.iter().find(|m| m.name.as_str() == "loss");
        self.last_eval_loss = loss.map_or(f64::NAN, |m| m.sum / m.count);
        Ok(if self.cfg.rollback_at_eval == Some(self.evals) { Control::ROLLBACK } else { Control::CONTINUE })
    }
}

stagecraft_sdk::export_plugin! {
    id: compat_lifecycle,
    methods: [],
    optimizers: [],
    stages: [LifecycleProbe],
}
