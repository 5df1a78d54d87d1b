//! `PROMPT_TUNING` ↔ `prompt_tuning`, `PREFIX_TUNING` ↔ `prefix_tuning`.
//!
//! Both store one `prompt_embeddings` tensor. For prefix tuning it is the flattened
//! key/value table `[n, layers·2·kv_width]`: a prefix trained with the MLP
//! reparameterization is written as the table the MLP computes (what PEFT itself
//! saves), with `prefix_projection: false`, and reads back as a plain table.

use super::{ModelView, PeftConfig};
use crate::error::{Error, Result};
use crate::plugin::MethodInstance;
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn single_submodule(cfg: &PeftConfig<'_>, plugin: &str) -> Result<()> {
    match cfg.get("num_transformer_submodules").and_then(Value::as_u64) {
        None | Some(1) => Ok(()),
        Some(n) => Err(cfg.error(format!(
            "`num_transformer_submodules` {n}: encoder-decoder prompts are not supported by the {plugin} plugin"
        ))),
    }
}

/// The plugin config of a PEFT `PromptTuningConfig` (the values come from the file, so
/// the init is irrelevant: `random`).
pub(super) fn prompt_to_plugin(cfg: &PeftConfig<'_>) -> Result<Value> {
    single_submodule(cfg, "prompt_tuning")?;
    Ok(json!({ "num_virtual_tokens": cfg.usize("num_virtual_tokens")? }))
}

/// The plugin config of a PEFT `PrefixTuningConfig`: always a plain table (see the
/// module docs).
pub(super) fn prefix_to_plugin(cfg: &PeftConfig<'_>) -> Result<Value> {
    single_submodule(cfg, "prefix_tuning")?;
    Ok(json!({ "num_virtual_tokens": cfg.usize("num_virtual_tokens")? }))
}

fn virtual_tokens(config: &Value) -> Result<u64> {
    config
        .get("num_virtual_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::msg("adapter config has no num_virtual_tokens"))
}

/// The PEFT `PromptTuningConfig` of an attached `prompt_tuning` instance.
pub(super) fn prompt_from_plugin(config: &Value, model: &ModelView<'_>) -> Result<Value> {
    Ok(json!({
        "num_virtual_tokens": virtual_tokens(config)?,
        "token_dim": model.spec.hidden,
        "num_transformer_submodules": 1,
        "num_attention_heads": model.spec.num_heads,
        "num_layers": model.spec.num_layers,
        "prompt_tuning_init": "RANDOM",
        "modules_to_save": null,
    }))
}

/// The PEFT `PrefixTuningConfig` of an attached `prefix_tuning` instance (PEFT's
/// heads and width are the key/value ones under grouped-query attention).
pub(super) fn prefix_from_plugin(config: &Value, model: &ModelView<'_>) -> Result<Value> {
    let width = model.spec.num_kv_heads * model.spec.head_dim;
    Ok(json!({
        "num_virtual_tokens": virtual_tokens(config)?,
        "token_dim": width,
        "num_transformer_submodules": 1,
        "num_attention_heads": model.spec.num_kv_heads,
        "num_layers": model.spec.num_layers,
        "encoder_hidden_size": width,
        "prefix_projection": false,
        "modules_to_save": null,
    }))
}

/// `prompt_embeddings`: the table itself, or the table the MLP computes from the
/// instance's parameters.
pub(super) fn prefix_tensors(
    method: &MethodInstance,
    params: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    if let Some(t) = params.get("prompt_embeddings") {
        return Ok(BTreeMap::from([("prompt_embeddings".to_string(), t.clone())]));
    }
    let get = |k: &str| {
        params.get(k).ok_or_else(|| Error::msg(format!("prefix_tuning adapter `{}` has no `{k}`", method.core.plugin)))
    };
    let hidden = get("embedding.weight")?
        .matmul(&get("transform.0.weight")?.t()?)?
        .broadcast_add(get("transform.0.bias")?)?
        .tanh()?;
    let table = hidden.matmul(&get("transform.2.weight")?.t()?)?.broadcast_add(get("transform.2.bias")?)?;
    Ok(BTreeMap::from([("prompt_embeddings".to_string(), table)]))
}
