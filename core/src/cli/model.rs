//! `stagecraft model sites`, `stagecraft forward`, `stagecraft generate`.

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use stagecraft_core::adapter::{load_peft, merge_into_base};
use stagecraft_core::data::Tokenizer;
use stagecraft_core::generate::{generate, Sampling};
use stagecraft_core::model::{load_model, Adapters, Model};
use stagecraft_core::plugin::{search_path, HostState, Registry};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Every site of a model where adaptation methods can attach: name, kind, dims, layer.
    Sites {
        /// Hugging Face model directory.
        #[arg(long)]
        model: PathBuf,
    },
}

/// A model with adapters, as `forward` and `generate` take it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter directories, applied in order.
    #[arg(long = "adapter")]
    adapters: Vec<PathBuf>,
    /// Merge the adapters into the base weights before running.
    #[arg(long)]
    merge: bool,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// safetensors file with `input_ids` (I64 [batch, seq]) and optional `attention_mask`.
    #[arg(long)]
    input: PathBuf,
    /// Where to write `logits` (decoders) or `last_hidden_state` (encoders), F32.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Most tokens to add.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `bytes` or a tokenizer.json (default: the model directory's tokenizer.json,
    /// else bytes).
    #[arg(long)]
    tokenizer: Option<String>,
}

pub fn sites(cmd: ModelCmd) -> anyhow::Result<()> {
    let ModelCmd::Sites { model } = cmd;
    let m = load_model(&model, &Device::Cpu)?;
    println!("{:<48} {:<13} {:<14} LAYER", "NAME", "KIND", "DIMS");
    for s in m.sites().infos() {
        let layer = s.layer.into_option().map_or("-".to_string(), |l| l.to_string());
        println!("{:<48} {:<13} {:<14} {layer}", s.name.as_str(), s.kind.to_string(), format!("{:?}", s.dims.as_slice()));
    }
    Ok(())
}

/// Loads the model and attaches (and maybe merges) the adapters.
fn open(args: &ModelArgs) -> anyhow::Result<(Box<dyn Model>, Adapters, Rc<HostState>, Registry)> {
    let device = Device::Cpu;
    let model = load_model(&args.model, &device)?;
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    let state = Rc::new(HostState::new(device, DType::F32, 0));
    state.set_training(false);
    state.register_model(model.as_ref());
    let mut registry = Registry::with_builtins(super::report_dir())?;
    for e in registry.load_dirs(&search_path()) {
        tracing::warn!("{e}");
    }
    let mut adapters = Adapters::none(model.sites().len());
    for dir in &args.adapters {
        load_peft(dir, &registry, &state, model.as_ref(), &mut adapters)?;
    }
    if args.merge {
        merge_into_base(model.as_ref(), &mut adapters)?;
    }
    Ok((model, adapters, state, registry))
}

fn read_ids(path: &Path) -> anyhow::Result<(Tensor, Option<Tensor>)> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let ids = t.remove("input_ids").with_context(|| format!("{}: no tensor `input_ids`", path.display()))?;
    if ids.rank() != 2 || !matches!(ids.dtype(), DType::I64 | DType::U32) {
        anyhow::bail!("{}: `input_ids` must be I64 [batch, seq], found {:?} {:?}", path.display(), ids.dtype(), ids.dims());
    }
    let mask = t.remove("attention_mask");
    if let Some(m) = &mask {
        if m.dims() != ids.dims() {
            anyhow::bail!("{}: `attention_mask` has shape {:?}, `input_ids` {:?}", path.display(), m.dims(), ids.dims());
        }
    }
    Ok((ids.to_dtype(DType::U32)?, mask))
}

pub fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let (model, adapters, _state, _reg) = open(&args.model)?;
    let (ids, mask) = read_ids(&args.input)?;
    let vocab = model.info().vocab as u32;
    if let Some(bad) = ids.flatten_all()?.to_vec1::<u32>()?.into_iter().find(|&t| t >= vocab) {
        anyhow::bail!("{}: token id {bad} is outside the model's vocabulary of {vocab}", args.input.display());
    }
    let out = model.forward(&ids, mask.as_ref(), &adapters)?;
    let (name, t) = match out.logits {
        Some(l) => ("logits", l),
        None => ("last_hidden_state", out.hidden),
    };
    let map = HashMap::from([(name.to_string(), t.to_dtype(DType::F32)?)]);
    candle_core::safetensors::save(&map, &args.out).with_context(|| format!("{}: cannot write", args.out.display()))?;
    eprintln!("wrote {name} {:?} to {}", map[name].dims(), args.out.display());
    Ok(())
}

pub fn generate_cmd(args: GenerateArgs) -> anyhow::Result<()> {
    let (model, adapters, state, _reg) = open(&args.model)?;
    let tokenizer = match &args.tokenizer {
        Some(spec) => Tokenizer::from_spec(spec)?,
        None => Tokenizer::for_model_dir(&args.model.model)?.unwrap_or_else(Tokenizer::bytes),
    };
    if matches!(tokenizer, Tokenizer::Bytes) && model.info().vocab < 256 {
        anyhow::bail!("{}: no tokenizer.json, and the byte tokenizer needs a vocabulary of at least 256 (model has {})", args.model.model.display(), model.info().vocab);
    }
    let prompt = tokenizer.encode(&args.prompt)?;
    let sampling = Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
    let out = generate(model.as_ref(), &adapters, &prompt, args.max_tokens, &sampling, tokenizer.eos_id(), &state.device)?;
    println!("{}{}", args.prompt, tokenizer.decode(&out)?);
    Ok(())
}
