//! Getting trained artifacts out of stagecraft.
//!
//! Stage checkpoints are training state (base weights, adapters, optimizer moments and
//! snapshots, mixed, under stagecraft's own keys). Exporting turns a finished stage
//! into clean artifacts other tools load:
//! - [`ExportFormat::Peft`]: each attached adapter as a PEFT directory
//!   (`adapter_config.json`, `adapter_model.safetensors`) that PEFT's
//!   `PeftModel.from_pretrained` loads. When the stage's base weights are not those of
//!   a Hugging Face directory on disk (a model pretrained from scratch, or fine-tuned in
//!   an earlier stage), the base is written too, as `<out>/base`, and the adapters
//!   point at it.
//! - [`ExportFormat::Merged`]: the adapters folded into the weights, as a plain
//!   Hugging Face directory (`config.json`, `model.safetensors`, tokenizer files).
//!
//! Every safetensors file carries its lineage in `__metadata__`: the base model's
//! sha256, the run directory, the stage and the adapters' resolved configs.

use crate::adapter::{merge_into_base, write_peft, ExportedAdapter, Lineage};
use crate::error::{Error, Result};
use crate::model::hf::{save_model_dir, SINGLE_FILE};
use crate::model::Model;
use crate::pipeline::OpenedStage;
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// PEFT adapter directories.
    Peft,
    /// A Hugging Face model directory with the adapters merged.
    Merged,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "peft" => Ok(ExportFormat::Peft),
            "merged" => Ok(ExportFormat::Merged),
            other => Err(format!("unknown format `{other}` (formats: peft, merged)")),
        }
    }
}

/// The lineage entries of an opened stage.
fn lineage(opened: &OpenedStage, run_dir: &Path, base_sha256: &str) -> Result<Lineage> {
    let mut entries = BTreeMap::new();
    entries.insert("stagecraft_version".into(), env!("CARGO_PKG_VERSION").into());
    entries.insert("stagecraft_run".into(), run_dir.display().to_string());
    entries.insert("stagecraft_stage".into(), opened.stage.clone());
    entries.insert("base_model_sha256".into(), base_sha256.into());
    let adapters = serde_json::to_string(&opened.result.adapters)
        .map_err(|e| Error::msg(format!("cannot record the stage's adapters: {e}")))?;
    entries.insert("stagecraft_adapters".into(), adapters);
    Ok(Lineage { entries })
}

/// The Hugging Face directory the stage's model was loaded from, if any: a stage's
/// `from`, or the pipeline's `[model] from`.
fn model_source(opened: &OpenedStage) -> Option<PathBuf> {
    opened
        .result
        .model_dir
        .clone()
        .or_else(|| opened.config.model.from.as_ref().map(|f| opened.config.base_dir().join(f)))
}

/// sha256 of a model directory's weights file, or a note saying there is none.
fn weights_sha256(dir: Option<&Path>) -> String {
    dir.map(|d| d.join(SINGLE_FILE))
        .filter(|p| p.is_file())
        .and_then(|p| crate::plugin::sha256_file(&p).ok())
        .unwrap_or_else(|| "none (weights built by the run)".into())
}

/// Whether the model's base weights are exactly those stored in `dir`.
fn same_as_dir(model: &dyn Model, dir: &Path) -> Result<bool> {
    let Ok(stored) = crate::model::load_model(dir, &Device::Cpu) else { return Ok(false) };
    let stored: BTreeMap<String, Vec<u32>> =
        stored.weights().into_iter().map(|(n, w)| Ok((n, bits(w.var().as_tensor())?))).collect::<Result<_>>()?;
    for (n, w) in model.weights() {
        if stored.get(&n) != Some(&bits(w.var().as_tensor())?) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn bits(t: &candle_core::Tensor) -> Result<Vec<u32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
}

/// Writes the stage's adapters as PEFT directories under `out` (`out` itself for one
/// adapter, `out/<k>-<plugin>` for several, in the order they apply). Returns the
/// directories written.
pub fn export_peft(opened: &OpenedStage, run_dir: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let methods = opened.adapters.methods();
    if methods.is_empty() {
        return Err(Error::msg(format!(
            "stage `{}` has no adapters to export as PEFT (it trained the base weights): use --format merged",
            opened.stage
        )));
    }
    let model = opened.model.as_ref();
    let source = model_source(opened);
    let mut written = Vec::new();
    let base = match source.as_deref() {
        Some(dir) if same_as_dir(model, dir)? => std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
        _ => {
            let base = out.join("base");
            let meta = lineage(opened, run_dir, &weights_sha256(source.as_deref()))?.entries;
            save_model_dir(model, &opened.tokenizer, source.as_deref(), &base, &meta)?;
            written.push(base.clone());
            std::fs::canonicalize(&base).unwrap_or(base)
        }
    };
    let sha = weights_sha256(Some(&base));
    for (k, (m, record)) in methods.iter().zip(&opened.result.adapters).enumerate() {
        let dir = if methods.len() == 1 { out.to_path_buf() } else { out.join(format!("{k}-{}", m.core.plugin)) };
        let config: serde_json::Value = serde_json::from_str(&record.config)
            .map_err(|e| Error::msg(format!("adapter `{}`: recorded config is not JSON: {e}", record.plugin)))?;
        write_peft(
            &dir,
            &ExportedAdapter { method: m, config: &config },
            model,
            &base.display().to_string(),
            &lineage(opened, run_dir, &sha)?,
        )?;
        written.push(dir);
    }
    Ok(written)
}

/// Merges the stage's adapters into its base weights and writes the result as a
/// Hugging Face directory in `out`.
pub fn export_merged(opened: &mut OpenedStage, run_dir: &Path, out: &Path) -> Result<()> {
    let source = model_source(opened);
    let meta = lineage(opened, run_dir, &weights_sha256(source.as_deref()))?.entries;
    merge_into_base(opened.model.as_ref(), &mut opened.adapters).map_err(|e| {
        Error::msg(format!("stage `{}` cannot be exported merged: {e}; export it with --format peft", opened.stage))
    })?;
    save_model_dir(opened.model.as_ref(), &opened.tokenizer, source.as_deref(), out, &meta)
}
