//! `LORA` ↔ the `lora` plugin (LoRA, rsLoRA, DoRA, per-site ranks and alphas).
//!
//! PEFT's `rank_pattern` / `alpha_pattern` keys are regular expressions matched as
//! `(.*\.)?(KEY)$` from the start of a module name; they read as `re:` patterns.
//! Written adapters spell out what trained: `target_modules` lists every adapted site
//! by its full name, and every site whose rank or alpha differs from `r` /
//! `lora_alpha` gets an exact pattern.

use super::{exact_pattern, ModelView, PeftConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use stagecraft_sdk::target_matches;
use std::collections::BTreeMap;

/// PEFT's pattern key as a `re:` target pattern with PEFT's matching rule.
fn pattern_from_peft(key: &str) -> String {
    format!(r"re:(?:.*\.)?(?:{key})")
}

/// The plugin config of a PEFT `LoraConfig`.
pub(super) fn to_plugin(cfg: &PeftConfig<'_>) -> Result<Value> {
    let refuse = |key: &str, why: &str| cfg.refuse(key, why, "lora");
    refuse("fan_in_fan_out", "a transposed (Conv1D) base layer")?;
    refuse("bias", "training biases")?;
    refuse("lora_bias", "a bias on lora_B")?;
    for key in ["modules_to_save", "trainable_token_indices", "exclude_modules", "layer_replication"] {
        refuse(key, "this option")?;
    }
    let targets = cfg.patterns("target_modules")?.ok_or_else(|| cfg.error("`target_modules` is missing"))?;
    let mut out = json!({
        "targets": targets,
        "r": cfg.usize("r")?,
        "alpha": cfg.f64_or("lora_alpha", 8.0),
        "dropout": cfg.f64_or("lora_dropout", 0.0),
        "use_rslora": cfg.bool("use_rslora"),
        "use_dora": cfg.bool("use_dora"),
    });
    for (peft_key, ours) in [("rank_pattern", "rank_pattern"), ("alpha_pattern", "alpha_pattern")] {
        if let Some(map) = cfg.get(peft_key).and_then(Value::as_object).filter(|m| !m.is_empty()) {
            let translated: Map<String, Value> = map.iter().map(|(k, v)| (pattern_from_peft(k), v.clone())).collect();
            out[ours] = Value::Object(translated);
        }
    }
    match cfg.get("layers_to_transform") {
        None => {}
        Some(Value::Number(n)) => out["layers_to_transform"] = json!([n]),
        Some(v @ Value::Array(_)) => out["layers_to_transform"] = v.clone(),
        Some(_) => return Err(cfg.error("`layers_to_transform` must be a layer index or a list of them")),
    }
    Ok(out)
}

/// The PEFT `LoraConfig` of an attached `lora` instance.
pub(super) fn from_plugin(config: &Value, model: &ModelView<'_>, params: &BTreeMap<String, Tensor>) -> Result<Value> {
    let r = config.get("r").and_then(Value::as_u64).unwrap_or(8) as usize;
    let alpha = config.get("alpha").and_then(Value::as_f64).unwrap_or(16.0);
    let alpha_pattern: BTreeMap<String, f64> =
        config.get("alpha_pattern").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    let mut targets = Vec::new();
    let (mut ranks, mut alphas) = (Map::new(), Map::new());
    for (site, role) in &model.sites {
        targets.push(site.name.to_string());
        let a = params
            .get(&format!("{}.lora_A.weight", site.name))
            .ok_or_else(|| Error::msg(format!("lora adapter has no `{}.lora_A.weight`", site.name)))?;
        let site_r = a.dim(0)?;
        if site_r != r {
            ranks.insert(exact_pattern(&site.name), json!(site_r));
        }
        if let Some((_, v)) = alpha_pattern.iter().find(|(p, _)| target_matches(p, site, *role)) {
            if *v != alpha {
                alphas.insert(exact_pattern(&site.name), json!(v));
            }
        }
    }
    targets.sort();
    Ok(json!({
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": config.get("dropout").and_then(Value::as_f64).unwrap_or(0.0),
        "target_modules": targets,
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "use_rslora": config.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        "use_dora": config.get("use_dora").and_then(Value::as_bool).unwrap_or(false),
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
    }))
}
