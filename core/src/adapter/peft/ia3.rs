//! `IA3` ↔ the `ia3` plugin.
//!
//! Written adapters list the full names of every scaled site in `target_modules`, and
//! of the feed-forward ones (whose vector is `[1, in]`) in `feedforward_modules`.

use super::{ModelView, PeftConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The plugin config of a PEFT `IA3Config`.
pub(super) fn to_plugin(cfg: &PeftConfig<'_>) -> Result<Value> {
    cfg.refuse("fan_in_fan_out", "a transposed (Conv1D) base layer", "ia3")?;
    for key in ["modules_to_save", "exclude_modules"] {
        cfg.refuse(key, "this option", "ia3")?;
    }
    let targets = cfg.patterns("target_modules")?.ok_or_else(|| cfg.error("`target_modules` is missing"))?;
    let feedforward = cfg.patterns("feedforward_modules")?.unwrap_or_default();
    Ok(json!({ "targets": targets, "feedforward": feedforward }))
}

/// The PEFT `IA3Config` of an attached `ia3` instance.
pub(super) fn from_plugin(_config: &Value, model: &ModelView<'_>, params: &BTreeMap<String, Tensor>) -> Result<Value> {
    let (mut targets, mut feedforward) = (Vec::new(), Vec::new());
    for (site, _) in &model.sites {
        let l = params
            .get(&format!("{}.ia3_l", site.name))
            .ok_or_else(|| Error::msg(format!("ia3 adapter has no `{}.ia3_l`", site.name)))?;
        targets.push(site.name.to_string());
        if l.dims().first() == Some(&1) && l.dims() != [1, 1] {
            feedforward.push(site.name.to_string());
        }
    }
    targets.sort();
    feedforward.sort();
    Ok(json!({
        "target_modules": targets,
        "feedforward_modules": feedforward,
        "fan_in_fan_out": false,
        "init_ia3_weights": true,
        "modules_to_save": null,
    }))
}
