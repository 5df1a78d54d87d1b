//! The read side of the PEFT adapter format.
//!
//! A PEFT directory holds `adapter_config.json` and `adapter_model.safetensors`, with
//! keys like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. Without
//! the `base_model.model.` prefix that is exactly the parameter name the LoRA plugin
//! gives the site's A matrix, so loading is: translate the config into the plugin's,
//! attach the plugin (which creates its parameters), then overwrite every parameter
//! from the file, requiring an exact match of names and shapes.
//!
//! Unknown config keys are ignored (PEFT adds keys every release); options that change
//! the computation and that the plugin does not implement are errors.

use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, Registry};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// PEFT's key prefix in adapter files.
pub const PEFT_KEY_PREFIX: &str = "base_model.model.";

/// A PEFT adapter directory, read.
#[derive(Debug)]
pub struct PeftAdapter {
    /// The directory.
    pub dir: PathBuf,
    /// `adapter_config.json`.
    pub config: Value,
    /// Tensors by parameter name (prefix stripped).
    pub tensors: HashMap<String, Tensor>,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::msg(format!("{}: {msg}", path.display()))
}

impl PeftAdapter {
    /// Reads a PEFT directory.
    pub fn read(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, format!("cannot read: {e}")))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| err(&cfg_path, format!("invalid JSON: {e}")))?;
        let st_path = dir.join("adapter_model.safetensors");
        if !st_path.exists() {
            let bin = dir.join("adapter_model.bin");
            return Err(if bin.exists() {
                err(&bin, "pickle adapter files are not supported; save with safe_serialization=True")
            } else {
                err(&st_path, "missing")
            });
        }
        let raw = candle_core::safetensors::load(&st_path, device).map_err(|e| err(&st_path, format!("cannot load: {e}")))?;
        let mut tensors = HashMap::new();
        for (k, t) in raw {
            let name = k.strip_prefix(PEFT_KEY_PREFIX).unwrap_or(&k).to_string();
            tensors.insert(name, t);
        }
        Ok(PeftAdapter { dir: dir.to_path_buf(), config, tensors })
    }

    /// `peft_type` from the config.
    pub fn peft_type(&self) -> Result<&str> {
        self.config.get("peft_type").and_then(Value::as_str).ok_or_else(|| err(&self.dir.join("adapter_config.json"), "no `peft_type`"))
    }
}

/// The plugin name and its JSON config for a PEFT adapter config.
pub fn peft_to_plugin(config: &Value, cfg_path: &Path) -> Result<(String, Value)> {
    let get = |k: &str| config.get(k).filter(|v| !v.is_null());
    let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("");
    match peft_type {
        "LORA" => {
            let unsupported = |key: &str, why: &str| err(cfg_path, format!("`{key}`: {why} is not supported by the lora plugin"));
            if get("use_dora").and_then(Value::as_bool) == Some(true) {
                return Err(unsupported("use_dora", "DoRA"));
            }
            if get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
                return Err(unsupported("fan_in_fan_out", "a transposed (Conv1D) base layer"));
            }
            if get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") {
                return Err(unsupported("bias", "training biases"));
            }
            for key in ["rank_pattern", "alpha_pattern"] {
                if get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                    return Err(unsupported(key, "a per-module rank or alpha"));
                }
            }
            for key in ["layers_to_transform", "modules_to_save", "trainable_token_indices"] {
                if get(key).is_some_and(|v| v.as_array().map_or(true, |a| !a.is_empty())) {
                    return Err(unsupported(key, "this option"));
                }
            }
            let targets = match get("target_modules") {
                Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| err(cfg_path, "`target_modules` must hold strings"))).collect::<Result<Vec<_>>>()?,
                // A string is a regular expression PEFT full-matches against module names.
                Some(Value::String(s)) => vec![format!("re:{s}")],
                _ => return Err(err(cfg_path, "`target_modules` is missing")),
            };
            let r = get("r").and_then(Value::as_u64).ok_or_else(|| err(cfg_path, "`r` is missing"))?;
            let alpha = get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
            Ok((
                "lora".into(),
                json!({
                    "targets": targets,
                    "r": r,
                    "alpha": alpha,
                    "dropout": get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
                    "use_rslora": get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
                }),
            ))
        }
        "" => Err(err(cfg_path, "no `peft_type`")),
        other => Err(err(cfg_path, format!("peft_type `{other}` has no adaptation-method plugin that reads it (supported: LORA)"))),
    }
}

/// Reads a PEFT adapter directory and attaches it to `model` through its plugin, with
/// the file's values. Returns the index of the new method in `adapters`.
pub fn load_peft(dir: &Path, registry: &Registry, state: &Rc<HostState>, model: &dyn Model, adapters: &mut Adapters) -> Result<usize> {
    let peft = PeftAdapter::read(dir, &state.device)?;
    let cfg_path = dir.join("adapter_config.json");
    let st_path = dir.join("adapter_model.safetensors");
    let (plugin, cfg) = peft_to_plugin(&peft.config, &cfg_path)?;
    let method = registry.new_method(&plugin, &cfg.to_string(), state)?;
    let k = adapters.attach(method, model.sites()).map_err(|e| err(&cfg_path, e))?;
    let params = adapters.methods()[k].params();
    let mut unused: std::collections::BTreeSet<&str> = peft.tensors.keys().map(String::as_str).collect();
    for p in &params {
        let t = peft.tensors.get(&p.name).ok_or_else(|| err(&st_path, format!("missing tensor `{PEFT_KEY_PREFIX}{}`", p.name)))?;
        if t.dims() != p.var.dims() {
            return Err(err(&st_path, format!("tensor `{PEFT_KEY_PREFIX}{}` has shape {:?}, expected {:?}", p.name, t.dims(), p.var.dims())));
        }
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(err(&st_path, format!("tensor `{PEFT_KEY_PREFIX}{}` has unsupported dtype {:?}", p.name, t.dtype())));
        }
        p.var.set(&t.to_dtype(p.var.dtype())?)?;
        unused.remove(p.name.as_str());
    }
    if let Some(extra) = unused.first() {
        return Err(err(&st_path, format!("tensor `{PEFT_KEY_PREFIX}{extra}` matches no parameter of the `{plugin}` adapter (wrong base model?)")));
    }
    Ok(k)
}
