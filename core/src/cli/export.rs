//! `stagecraft export` and `stagecraft merge`.

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Args;
use stagecraft_core::adapter::{
    combine_lora, load_peft, merge_into_base, plugin_config_of, write_peft, Combine, ExportedAdapter, Lineage,
    LoraInput,
};
use stagecraft_core::data::Tokenizer;
use stagecraft_core::export::{export_merged, export_peft, ExportFormat};
use stagecraft_core::model::hf::save_model_dir;
use stagecraft_core::model::hub_cache::resolve_model_path;
use stagecraft_core::model::{load_model, Adapters};
use stagecraft_core::pipeline::open_stage;
use stagecraft_core::plugin::HostState;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run directory (`runs/<name>/<timestamp>`).
    run_dir: PathBuf,
    /// The stage (default: the last one that finished).
    #[arg(long)]
    stage: Option<String>,
    /// Where to write.
    #[arg(long)]
    out: PathBuf,
    /// `peft`: each adapter as a PEFT directory (with the base model next to it when
    /// the stage's base is not a Hugging Face directory on disk); `merged`: one Hugging
    /// Face model directory with the adapters folded in.
    #[arg(long, default_value = "peft")]
    format: ExportFormat,
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let registry = super::registry()?;
    let mut opened = open_stage(&args.run_dir, args.stage.as_deref(), &registry, &Device::Cpu)?;
    let run_dir = std::fs::canonicalize(&args.run_dir).unwrap_or_else(|_| args.run_dir.clone());
    match args.format {
        ExportFormat::Peft => {
            for dir in export_peft(&opened, &run_dir, &args.out)? {
                println!("wrote {}", dir.display());
            }
        }
        ExportFormat::Merged => {
            export_merged(&mut opened, &run_dir, &args.out)?;
            println!("wrote {}", args.out.display());
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The Hugging Face model the adapters were trained on: a directory, or `org/name`
    /// (`org/name@revision`) in the local Hugging Face cache.
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter directories, applied (and merged) in order.
    #[arg(long = "adapter", required = true)]
    adapters: Vec<PathBuf>,
    /// Where to write: a model directory, or with --combine an adapter directory.
    #[arg(long)]
    out: PathBuf,
    /// Combine LoRA adapters into one LoRA adapter instead of merging them into the
    /// model: `cat` (their exact weighted sum, rank = the sum of ranks) or `svd` (the
    /// weighted sum truncated to --rank by SVD).
    #[arg(long)]
    combine: Option<String>,
    /// Rank of the combined adapter (`--combine svd`).
    #[arg(long)]
    rank: Option<usize>,
    /// One weight per adapter for --combine (default: all 1).
    #[arg(long, value_delimiter = ',')]
    weights: Vec<f64>,
}

pub fn merge(args: MergeArgs) -> anyhow::Result<()> {
    let registry = super::registry()?;
    let device = Device::Cpu;
    let model_dir = resolve_model_path(&args.model)?;
    let model = load_model(&model_dir, &device)?;
    let state = Rc::new(HostState::new(device, DType::F32, 0));
    state.set_training(false);
    state.register_model(model.as_ref());
    let mut adapters = Adapters::none(model.sites().len());
    for dir in &args.adapters {
        load_peft(dir, &registry, &state, model.as_ref(), &mut adapters)?;
    }
    let mut meta = BTreeMap::new();
    meta.insert("stagecraft_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
    meta.insert(
        "merged_adapters".to_string(),
        args.adapters.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    );
    let Some(how) = &args.combine else {
        anyhow::ensure!(args.rank.is_none() && args.weights.is_empty(), "--rank and --weights go with --combine");
        merge_into_base(model.as_ref(), &mut adapters)?;
        let tokenizer = Tokenizer::for_model_dir(&model_dir)?.unwrap_or_else(Tokenizer::bytes);
        save_model_dir(model.as_ref(), &tokenizer, Some(&model_dir), &args.out, &meta)?;
        println!("wrote {}", args.out.display());
        return Ok(());
    };
    let combine = match (how.as_str(), args.rank) {
        ("cat", None) => Combine::Cat,
        ("svd", Some(rank)) => Combine::Svd { rank },
        ("cat", Some(_)) => anyhow::bail!("--combine cat keeps every rank: --rank goes with --combine svd"),
        ("svd", None) => anyhow::bail!("--combine svd needs --rank"),
        (other, _) => anyhow::bail!("--combine `{other}`: use `cat` or `svd`"),
    };
    let weights = if args.weights.is_empty() { vec![1.0; args.adapters.len()] } else { args.weights.clone() };
    anyhow::ensure!(
        weights.len() == args.adapters.len(),
        "--weights has {} values for {} adapters",
        weights.len(),
        args.adapters.len()
    );
    let configs = args.adapters.iter().map(|d| plugin_config_of(d).map(|(_, c)| c)).collect::<Result<Vec<_>, _>>()?;
    let inputs = LoraInput::all(&adapters, &configs, &weights);
    let combined =
        combine_lora(&inputs, combine, &registry, &state, model.as_ref()).context("cannot combine the adapters")?;
    meta.insert("combine".to_string(), format!("{how} weights {weights:?}"));
    let exported = ExportedAdapter { method: &combined.method, config: &combined.config };
    write_peft(&args.out, &exported, model.as_ref(), &args.model.display().to_string(), &Lineage { entries: meta })?;
    println!("wrote {}", args.out.display());
    Ok(())
}
