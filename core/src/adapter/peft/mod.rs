//! The PEFT adapter format, both ways.
//!
//! A PEFT directory holds `adapter_config.json` and `adapter_model.safetensors`. Site
//! adapters (LoRA, DoRA, IA3) key their tensors like
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`: without the
//! `base_model.model.` prefix, exactly the local name the plugin gives the parameter.
//! Prompt and prefix tuning store one `prompt_embeddings` tensor, unprefixed.
//!
//! Reading translates the config into the plugin's ([`PeftType::to_plugin`]), attaches
//! the plugin (which creates its parameters) and overwrites every parameter from the
//! file, requiring an exact match of names and shapes. Writing goes the other way
//! from an attached instance ([`write_peft`]), with the resolved sites and ranks spelled
//! out, so that PEFT rebuilds exactly what trained.
//!
//! Unknown config keys are ignored on read (PEFT adds keys every release); options that
//! change the computation and that the plugin does not implement are errors. Only
//! long-standing keys are written.

mod ia3;
mod lora;
mod prompt;

use crate::error::io;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, MethodInstance, Registry};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};
use stagecraft_sdk::{ModelSpec, SiteInfo, SiteRole};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// PEFT's key prefix in adapter files.
pub const PEFT_KEY_PREFIX: &str = "base_model.model.";
/// The config file of a PEFT directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

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
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, format!("cannot read: {e}")))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| err(&cfg_path, format!("invalid JSON: {e}")))?;
        let st_path = dir.join(WEIGHTS_FILE);
        if !st_path.exists() {
            let bin = dir.join("adapter_model.bin");
            return Err(if bin.exists() {
                err(&bin, "pickle adapter files are not supported; save with safe_serialization=True")
            } else {
                err(&st_path, "missing")
            });
        }
        let raw =
            candle_core::safetensors::load(&st_path, device).map_err(|e| err(&st_path, format!("cannot load: {e}")))?;
        let mut tensors = HashMap::new();
        for (k, t) in raw {
            let name = k.strip_prefix(PEFT_KEY_PREFIX).unwrap_or(&k).to_string();
            tensors.insert(name, t);
        }
        Ok(PeftAdapter { dir: dir.to_path_buf(), config, tensors })
    }

    /// `peft_type` from the config.
    pub fn peft_type(&self) -> Result<&str> {
        self.config
            .get("peft_type")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&self.dir.join(CONFIG_FILE), "no `peft_type`"))
    }
}

/// The PEFT methods stagecraft reads and writes, each with its first-party plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    /// `LORA` (with `use_rslora` and `use_dora`): the `lora` plugin.
    Lora,
    /// `IA3`: the `ia3` plugin.
    Ia3,
    /// `PROMPT_TUNING`: the `prompt_tuning` plugin.
    PromptTuning,
    /// `PREFIX_TUNING`: the `prefix_tuning` plugin.
    PrefixTuning,
}

impl PeftType {
    const ALL: [PeftType; 4] = [PeftType::Lora, PeftType::Ia3, PeftType::PromptTuning, PeftType::PrefixTuning];

    /// PEFT's name (`LORA`).
    pub fn peft_name(self) -> &'static str {
        match self {
            PeftType::Lora => "LORA",
            PeftType::Ia3 => "IA3",
            PeftType::PromptTuning => "PROMPT_TUNING",
            PeftType::PrefixTuning => "PREFIX_TUNING",
        }
    }

    /// The plugin that implements it.
    pub fn plugin(self) -> &'static str {
        match self {
            PeftType::Lora => "lora",
            PeftType::Ia3 => "ia3",
            PeftType::PromptTuning => "prompt_tuning",
            PeftType::PrefixTuning => "prefix_tuning",
        }
    }

    /// The type of a PEFT name.
    pub fn from_peft_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.peft_name() == name)
    }

    /// The type a plugin writes, if it has a PEFT format.
    pub fn for_plugin(plugin: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.plugin() == plugin)
    }

    /// Whether tensors are keyed by site (and so carry the `base_model.model.` prefix).
    fn prefixed(self) -> bool {
        matches!(self, PeftType::Lora | PeftType::Ia3)
    }

    /// The plugin's JSON config for a PEFT config.
    pub fn to_plugin(self, config: &Value, cfg_path: &Path) -> Result<Value> {
        let cfg =
            PeftConfig { map: config.as_object().ok_or_else(|| err(cfg_path, "not a JSON object"))?, path: cfg_path };
        match self {
            PeftType::Lora => lora::to_plugin(&cfg),
            PeftType::Ia3 => ia3::to_plugin(&cfg),
            PeftType::PromptTuning => prompt::prompt_to_plugin(&cfg),
            PeftType::PrefixTuning => prompt::prefix_to_plugin(&cfg),
        }
    }
}

/// A PEFT config being read, with its file for errors.
pub(crate) struct PeftConfig<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl PeftConfig<'_> {
    /// A key's value; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn bool(&self, key: &str) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(false)
    }
    fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.get(key).and_then(Value::as_f64).unwrap_or(default)
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.error(format!("`{key}` is missing or not a whole number")))
    }
    fn error(&self, msg: impl std::fmt::Display) -> Error {
        err(self.path, msg)
    }
    /// An error when `key` holds something other than its default.
    fn refuse(&self, key: &str, why: &str, plugin: &str) -> Result<()> {
        let set = match self.get(key) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => s != "none",
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(self.error(format!("`{key}`: {why} is not supported by the {plugin} plugin")));
        }
        Ok(())
    }
    /// `target_modules`-like keys: a list of names, or a string PEFT reads as a regular
    /// expression over the whole module name.
    fn patterns(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.error(format!("`{key}` must hold strings"))))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(Value::String(s)) => Ok(Some(vec![format!("re:{s}")])),
            Some(_) => Err(self.error(format!("`{key}` must be a list of names or a regular expression"))),
        }
    }
}

/// The plugin name and its JSON config for a PEFT adapter config.
pub fn peft_to_plugin(config: &Value, cfg_path: &Path) -> Result<(String, Value)> {
    let name = config.get("peft_type").and_then(Value::as_str).unwrap_or("");
    let t = match PeftType::from_peft_name(name) {
        Some(t) => t,
        None if name.is_empty() => return Err(err(cfg_path, "no `peft_type`")),
        None => {
            let known: Vec<&str> = PeftType::ALL.iter().map(|t| t.peft_name()).collect();
            return Err(err(
                cfg_path,
                format!(
                    "peft_type `{name}` has no adaptation-method plugin that reads it (supported: {})",
                    known.join(", ")
                ),
            ));
        }
    };
    Ok((t.plugin().to_string(), t.to_plugin(config, cfg_path)?))
}

/// The plugin name and JSON config a PEFT directory loads as.
pub fn plugin_config_of(dir: &Path) -> Result<(String, Value)> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, format!("cannot read: {e}")))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| err(&cfg_path, format!("invalid JSON: {e}")))?;
    peft_to_plugin(&config, &cfg_path)
}

/// Reads a PEFT adapter directory and attaches it to `model` through its plugin, with
/// the file's values. Returns the index of the new method in `adapters`.
pub fn load_peft(
    dir: &Path,
    registry: &Registry,
    state: &Rc<HostState>,
    model: &dyn Model,
    adapters: &mut Adapters,
) -> Result<usize> {
    let peft = PeftAdapter::read(dir, &state.device)?;
    let cfg_path = dir.join(CONFIG_FILE);
    let st_path = dir.join(WEIGHTS_FILE);
    let (plugin, cfg) = peft_to_plugin(&peft.config, &cfg_path)?;
    let method = registry.new_method(&plugin, &cfg.to_string(), state).map_err(|e| err(&cfg_path, e))?;
    let k = adapters.attach(method, model.sites()).map_err(|e| err(&cfg_path, e))?;
    let key = |name: &str| {
        if PeftType::for_plugin(&plugin).is_some_and(PeftType::prefixed) {
            format!("{PEFT_KEY_PREFIX}{name}")
        } else {
            name.to_string()
        }
    };
    let mut unused: std::collections::BTreeSet<&str> = peft.tensors.keys().map(String::as_str).collect();
    for p in &adapters.methods()[k].params() {
        let t = peft.tensors.get(&p.name).ok_or_else(|| err(&st_path, format!("missing tensor `{}`", key(&p.name))))?;
        if t.dims() != p.var.dims() {
            return Err(err(
                &st_path,
                format!(
                    "tensor `{}` has shape {:?}, expected {:?} (wrong base model?)",
                    key(&p.name),
                    t.dims(),
                    p.var.dims()
                ),
            ));
        }
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(err(&st_path, format!("tensor `{}` has unsupported dtype {:?}", key(&p.name), t.dtype())));
        }
        p.var.set(&t.to_dtype(p.var.dtype())?)?;
        unused.remove(p.name.as_str());
    }
    if let Some(extra) = unused.first() {
        return Err(err(
            &st_path,
            format!("tensor `{}` matches no parameter of the `{plugin}` adapter (wrong base model?)", key(extra)),
        ));
    }
    Ok(k)
}

/// An attached adapter as [`write_peft`] needs it.
pub struct ExportedAdapter<'a> {
    /// The instance (its sites and parameters).
    pub method: &'a MethodInstance,
    /// Its plugin config, as given in the pipeline.
    pub config: &'a Value,
}

/// What goes into the safetensors `__metadata__` besides PEFT's `format: pt`: where
/// the adapter comes from.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// `key → value` pairs (base model sha256, run, stage, resolved adapter config).
    pub entries: BTreeMap<String, String>,
}

/// The view of the model an exporter needs: sites with their roles, and the shape.
pub(crate) struct ModelView<'a> {
    pub sites: Vec<(&'a SiteInfo, SiteRole)>,
    pub spec: ModelSpec,
}

/// Writes an attached adapter as a PEFT directory (`adapter_config.json` and
/// `adapter_model.safetensors`). `base_model` goes into `base_model_name_or_path`.
pub fn write_peft(
    dir: &Path,
    adapter: &ExportedAdapter<'_>,
    model: &dyn Model,
    base_model: &str,
    lineage: &Lineage,
) -> Result<()> {
    let plugin = adapter.method.core.plugin.as_str();
    let t = PeftType::for_plugin(plugin).ok_or_else(|| {
        let known: Vec<&str> = PeftType::ALL.iter().map(|t| t.plugin()).collect();
        Error::msg(format!("adapter `{plugin}` has no PEFT format (PEFT formats exist for: {}); export it with --format merged, or use it as RUN_DIR:STAGE", known.join(", ")))
    })?;
    let infos = model.sites().infos();
    let view = ModelView {
        sites: adapter
            .method
            .attachments()
            .iter()
            .map(|a| (&infos[a.site as usize], model.sites().roles()[a.site as usize]))
            .collect(),
        spec: model.spec(),
    };
    let params: BTreeMap<String, Tensor> =
        adapter.method.params().into_iter().map(|p| (p.name, p.var.as_tensor().clone())).collect();
    let mut config = match t {
        PeftType::Lora => lora::from_plugin(adapter.config, &view, &params)?,
        PeftType::Ia3 => ia3::from_plugin(adapter.config, &view, &params)?,
        PeftType::PromptTuning => prompt::prompt_from_plugin(adapter.config, &view)?,
        PeftType::PrefixTuning => prompt::prefix_from_plugin(adapter.config, &view)?,
    };
    let tensors = match t {
        PeftType::PrefixTuning => prompt::prefix_tensors(adapter.method, &params)?,
        _ => params,
    };
    let task_type = if view.spec.causal { "CAUSAL_LM" } else { "FEATURE_EXTRACTION" };
    let common = json!({
        "peft_type": t.peft_name(),
        "task_type": if t.prefixed() { Value::Null } else { task_type.into() },
        "base_model_name_or_path": base_model,
        "inference_mode": true,
        "revision": null,
    });
    if let (Some(c), Some(m)) = (config.as_object_mut(), common.as_object()) {
        c.extend(m.clone());
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cfg_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).map_err(|e| err(&cfg_path, e))?;
    std::fs::write(&cfg_path, text + "\n").map_err(io(&cfg_path))?;
    let keyed: BTreeMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (if t.prefixed() { format!("{PEFT_KEY_PREFIX}{k}") } else { k }, v)).collect();
    let mut meta: HashMap<String, String> = lineage.entries.clone().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    write_safetensors(&dir.join(WEIGHTS_FILE), &keyed, meta)
}

/// Writes tensors (contiguous, as stored) with `__metadata__`.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let contiguous = tensors.iter().map(|(k, t)| Ok((k.clone(), t.contiguous()?))).collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(contiguous.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata), path)
        .map_err(|e| err(path, format!("cannot write: {e}")))
}

/// A site name as a PEFT pattern key that matches exactly that module (PEFT matches
/// `(.*\.)?(KEY)$` from the start of the module name).
fn exact_pattern(site: &str) -> String {
    site.replace('.', r"\.")
}
