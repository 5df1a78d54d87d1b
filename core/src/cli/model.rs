//! `stagecraft model sites`, `stagecraft forward`, `stagecraft generate`.

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use stagecraft_core::adapter::{load_peft, merge_into_base};
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::data::Tokenizer;
use stagecraft_core::device::resolve_device;
use stagecraft_core::generate::{generate_streaming, Request, Sampling};
use stagecraft_core::model::hub_cache::resolve_model_path;
use stagecraft_core::model::{check_sequence, load_model, Adapters, Model};
use stagecraft_core::pipeline::{config_model, open_stage, OpenedStage};
use stagecraft_core::plugin::{HostState, Registry};
use stagecraft_sdk::{SiteInfo, SiteKind};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Every site of a model where adaptation methods can attach: name, kind, dims,
    /// layer and role (what `role:<name>` targets match).
    Sites {
        /// Hugging Face model: a directory, or `org/name` (`org/name@revision`) in the
        /// local Hugging Face cache.
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        model: Option<PathBuf>,
        /// A pipeline config: the model its `[model]` table describes (fresh or `from`
        /// a directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// A model with adapters, as `forward` and `generate` take it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json + model.safetensors), or `org/name`
    /// (`org/name@revision`) in the local Hugging Face cache. Optional when an adapter
    /// is a run's stage: that stage's own model is used.
    #[arg(long)]
    pub(super) model: Option<PathBuf>,
    /// Adapters, applied in order: PEFT directories (LoRA, DoRA, IA3, prompt and prefix
    /// tuning), or a run's stage as `RUN_DIR:STAGE` (`RUN_DIR` alone: its last finished
    /// stage), with every adapter it ended with, from any plugin.
    #[arg(long = "adapter")]
    pub(super) adapters: Vec<String>,
    /// Merge the adapters into the base weights before running.
    #[arg(long)]
    pub(super) merge: bool,
    /// Run on this device: `cpu`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub(super) device: String,
}

/// Where an `--adapter` comes from.
enum AdapterSource {
    /// A PEFT directory.
    Peft(PathBuf),
    /// A stage of a run directory (`None`: its last finished stage).
    Run(PathBuf, Option<String>),
}

impl AdapterSource {
    fn parse(arg: &str) -> Self {
        let is_run = |p: &Path| p.join("config.toml").is_file() && p.join("checkpoints").is_dir();
        if is_run(Path::new(arg)) {
            return AdapterSource::Run(PathBuf::from(arg), None);
        }
        match arg.rsplit_once(':') {
            Some((dir, stage)) if is_run(Path::new(dir)) => {
                AdapterSource::Run(PathBuf::from(dir), Some(stage.to_string()))
            }
            _ => AdapterSource::Peft(PathBuf::from(arg)),
        }
    }
}

/// A model with its adapters, ready to run.
pub(super) struct Opened {
    pub model: Box<dyn Model>,
    pub adapters: Adapters,
    pub state: Rc<HostState>,
    /// The tokenizer of the run an adapter came from, if any.
    pub run_tokenizer: Option<Tokenizer>,
    /// The run stage whose model this is (no `--model`: the first `--adapter`'s).
    pub origin: Option<StageOrigin>,
    pub registry: Registry,
}

/// A run's stage whose model (and adapters) were opened.
pub(super) struct StageOrigin {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The stage's name.
    pub stage: String,
    /// The run's resolved config.
    pub config: PipelineConfig,
}

/// Attaches a run stage's adapters, with their trained values, to `model`.
fn attach_stage(
    opened: &OpenedStage,
    registry: &Registry,
    state: &Rc<HostState>,
    model: &dyn Model,
    adapters: &mut Adapters,
) -> anyhow::Result<()> {
    for (record, source) in opened.result.adapters.iter().zip(opened.adapters.methods()) {
        let m = registry.new_method(&record.plugin, &record.config, state)?;
        let k = adapters
            .attach(m, model.sites())
            .with_context(|| format!("adapter `{}` of stage `{}`", record.plugin, opened.stage))?;
        let trained: HashMap<String, Tensor> =
            source.params().into_iter().map(|p| (p.name, p.var.as_tensor().clone())).collect();
        for p in adapters.methods()[k].params() {
            let t = trained.get(&p.name).with_context(|| {
                format!("stage `{}` has no `{}` for adapter `{}`", opened.stage, p.name, record.plugin)
            })?;
            anyhow::ensure!(
                t.dims() == p.var.dims(),
                "adapter `{}` parameter `{}` is {:?} in stage `{}`, {:?} on this model",
                record.plugin,
                p.name,
                t.dims(),
                opened.stage,
                p.var.dims()
            );
            p.var.set(t)?;
        }
    }
    Ok(())
}

/// Loads the model and attaches (and maybe merges) the adapters.
pub(super) fn open(args: &ModelArgs) -> anyhow::Result<Opened> {
    let device = resolve_device(&args.device)?;
    let registry = super::registry()?;
    let sources: Vec<AdapterSource> = args.adapters.iter().map(|a| AdapterSource::parse(a)).collect();
    let mut stages = Vec::new();
    for s in &sources {
        if let AdapterSource::Run(dir, stage) = s {
            stages.push(open_stage(dir, stage.as_deref(), &registry, &device)?);
        }
    }
    let run_dir = sources.iter().find_map(|s| match s {
        AdapterSource::Run(dir, _) => Some(dir.clone()),
        AdapterSource::Peft(_) => None,
    });
    let origin = match (&args.model, run_dir, stages.first()) {
        (None, Some(run_dir), Some(first)) => {
            Some(StageOrigin { run_dir, stage: first.stage.clone(), config: first.config.clone() })
        }
        _ => None,
    };
    let (model, state, mut adapters, mut stages, run_tokenizer) = match &args.model {
        Some(dir) => {
            let model = load_model(&resolve_model_path(dir)?, &device)?;
            let state = Rc::new(HostState::new(device, DType::F32, 0));
            state.register_model(model.as_ref());
            let adapters = Adapters::none(model.sites().len());
            let tok = stages.first().map(|s| s.tokenizer.clone());
            (model, state, adapters, stages.into_iter(), tok)
        }
        None => {
            anyhow::ensure!(
                !stages.is_empty(),
                "--model is required unless an --adapter is a run's stage (RUN_DIR:STAGE)"
            );
            let first = stages.remove(0);
            let tok = Some(first.tokenizer.clone());
            (first.model, first.state, first.adapters, stages.into_iter(), tok)
        }
    };
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    state.set_training(false);
    let mut first_stage_used = args.model.is_none();
    for s in &sources {
        match s {
            AdapterSource::Peft(dir) => {
                load_peft(dir, &registry, &state, model.as_ref(), &mut adapters)?;
            }
            AdapterSource::Run(..) if first_stage_used => first_stage_used = false,
            AdapterSource::Run(..) => {
                let opened = stages.next().context("run stage opened above")?;
                attach_stage(&opened, &registry, &state, model.as_ref(), &mut adapters)?;
            }
        }
    }
    if args.merge {
        merge_into_base(model.as_ref(), &mut adapters)?;
    }
    Ok(Opened { model, adapters, state, run_tokenizer, origin, registry })
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
    /// Most tokens to add; beyond the model's context length is refused. Default: 64,
    /// or fewer when the context length leaves less room after the prompt.
    #[arg(long)]
    max_tokens: Option<usize>,
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
    let ModelCmd::Sites { model, config } = cmd;
    let m = match (model, config) {
        (Some(dir), _) => load_model(&resolve_model_path(&dir)?, &Device::Cpu)?,
        (None, Some(file)) => config_model(&PipelineConfig::from_file(&file, &[])?)?,
        (None, None) => anyhow::bail!("model sites: give --model DIR or --config FILE"),
    };
    let sites = m.sites();
    println!("{:<48} {:<13} {:<24} {:<6} ROLE", "NAME", "KIND", "SIZES", "LAYER");
    for (s, role) in sites.infos().iter().zip(sites.roles()) {
        let layer = s.layer.into_option().map_or("-".to_string(), |l| l.to_string());
        println!("{:<48} {:<13} {:<24} {layer:<6} {role}", s.name.as_str(), s.kind.to_string(), sizes(s));
    }
    Ok(())
}

/// A site's `dims` with the name of each size, e.g. `in 64, out 128` for a linear layer
/// (whose weight is `[out, in]`: the SDK gives linear sizes input first).
fn sizes(site: &SiteInfo) -> String {
    let names: &[&str] = match site.kind {
        SiteKind::LINEAR => &["in", "out"],
        SiteKind::EMBEDDING => &["vocab", "dim"],
        SiteKind::ATTN_KEY | SiteKind::ATTN_VALUE => &["kv_heads", "head_dim"],
        SiteKind::NORM => &["dim"],
        _ => &["hidden"],
    };
    let dims = site.dims.as_slice();
    if dims.len() != names.len() {
        return format!("{dims:?}");
    }
    names.iter().zip(dims).map(|(n, d)| format!("{n} {d}")).collect::<Vec<_>>().join(", ")
}

/// The token ids `forward` runs on, checked before any model work.
struct Input {
    /// `[batch, seq]` token ids, of an integer dtype.
    ids: Tensor,
    /// `[batch, seq]` (1 = attend, 0 = padding), if the file has one.
    mask: Option<Tensor>,
}

/// Reads `input_ids` (integer `[batch, seq]`, both at least 1) and an optional
/// `attention_mask` of the same shape; every problem is one line naming the file, the
/// tensor and its shape or dtype.
fn read_ids(path: &Path) -> anyhow::Result<Input> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let ids = t.remove("input_ids").with_context(|| format!("{}: no tensor `input_ids`", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: tensor `input_ids` {why}", path.display());
    if ids.rank() != 2 {
        return Err(bad(&format!("has shape {:?}; expected [batch, seq]", ids.dims())));
    }
    if ids.elem_count() == 0 {
        return Err(bad(&format!("has shape {:?}: batch and seq must both be at least 1", ids.dims())));
    }
    if !ids.dtype().is_int() {
        return Err(bad(&format!("is {:?} {:?}; expected integer token ids (I64)", ids.dtype(), ids.dims())));
    }
    let mask = t.remove("attention_mask");
    if let Some(m) = &mask {
        if m.dims() != ids.dims() {
            anyhow::bail!(
                "{}: `attention_mask` has shape {:?}, `input_ids` {:?}",
                path.display(),
                m.dims(),
                ids.dims()
            );
        }
    }
    Ok(Input { ids, mask })
}

/// Refuses an id outside `0..vocab` in `ids`, naming the file and its `[row, column]`.
fn check_vocab(path: &Path, ids: &Tensor, vocab: usize) -> anyhow::Result<()> {
    let seq = ids.dim(1)?;
    let values = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    if let Some((i, bad)) =
        values.into_iter().enumerate().find(|&(_, t)| usize::try_from(t).map_or(true, |t| t >= vocab))
    {
        anyhow::bail!(
            "{}: `input_ids`[{}, {}] = {bad} is outside the model's vocabulary of {vocab}",
            path.display(),
            i / seq,
            i % seq
        );
    }
    Ok(())
}

/// Refuses an `--out` that exists and is not a regular file (a symlink, a device, a
/// FIFO, a directory): the file is written beside it and renamed over it, which would
/// replace that node with a regular file.
fn check_out_file(path: &Path) -> anyhow::Result<()> {
    let kind = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => return Ok(()),
        Ok(m) => special_file_kind(m.file_type()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("{}: cannot check --out: {e}", path.display()),
    };
    anyhow::bail!("{}: --out is {kind}, not a regular file; refusing to replace it", path.display())
}

/// What a file that is not a regular file is, in words.
fn special_file_kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

pub fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    check_out_file(&args.out)?;
    let input = read_ids(&args.input)?;
    let Opened { model, adapters, state, .. } = open(&args.model)?;
    check_vocab(&args.input, &input.ids, model.info().vocab)?;
    let (batch, seq) = input.ids.dims2()?;
    check_sequence(model.as_ref(), batch, seq, &state.device)
        .with_context(|| format!("{}: `input_ids` {:?}", args.input.display(), input.ids.dims()))?;
    let ids = input.ids.to_dtype(DType::U32)?.to_device(&state.device)?;
    let mask = input.mask.map(|m| m.to_device(&state.device)).transpose()?;
    let out = model.forward(&ids, mask.as_ref(), &adapters)?;
    let (name, t) = match out.logits {
        Some(l) => ("logits", l),
        None => ("last_hidden_state", out.hidden),
    };
    let map = HashMap::from([(name.to_string(), t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)]);
    candle_core::safetensors::save(&map, &args.out).with_context(|| format!("{}: cannot write", args.out.display()))?;
    eprintln!("wrote {name} {:?} to {}", map[name].dims(), args.out.display());
    Ok(())
}

/// `--max-tokens` when not given: 64, or the room the context length leaves after the
/// prompt when that is less (said on stderr).
fn default_max_tokens(model: &dyn Model, prompt_len: usize) -> usize {
    const DEFAULT: usize = 64;
    match model.context_length().map(|ctx| ctx.saturating_sub(prompt_len)) {
        Some(room) if room > 0 && room < DEFAULT => {
            tracing::info!("generating at most {room} tokens: the model's context length is reached after that");
            room
        }
        _ => DEFAULT,
    }
}

/// Prints a continuation as its tokens come: each time, the text decoded so far past
/// what is already printed, holding back an unfinished UTF-8 character.
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: String,
}

impl TextStream<'_> {
    fn push(&mut self, id: u32) -> stagecraft_core::Result<()> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with(char::REPLACEMENT_CHARACTER) || !text.starts_with(&self.printed) {
            return Ok(());
        }
        let new = &text[self.printed.len()..];
        if !new.is_empty() {
            print_now(new)?;
            self.printed = text;
        }
        Ok(())
    }

    /// Prints the rest of the text of `ids` (the whole continuation) and a newline.
    fn finish(self, ids: &[u32]) -> anyhow::Result<()> {
        let text = self.tokenizer.decode(ids)?;
        let rest = text.strip_prefix(self.printed.as_str()).unwrap_or(&text);
        print_now(&format!("{rest}\n"))?;
        Ok(())
    }
}

/// Writes `text` to stdout and flushes it.
fn print_now(text: &str) -> stagecraft_core::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|error| stagecraft_core::Error::Io { path: "stdout".into(), error })
}

pub fn generate_cmd(args: GenerateArgs) -> anyhow::Result<()> {
    let Opened { model, adapters, state, run_tokenizer, .. } = open(&args.model)?;
    if !model.info().causal {
        anyhow::bail!(
            "cannot generate with `{}`: it is an encoder, which scores text but does not continue it \
             (`stagecraft forward` gives its hidden states)",
            model.info().arch
        );
    }
    let dir_tokenizer = match &args.model.model {
        Some(dir) => Tokenizer::for_model_dir(&resolve_model_path(dir)?)?,
        None => None,
    };
    let tokenizer = match &args.tokenizer {
        Some(spec) => Tokenizer::from_spec(spec)?,
        None => dir_tokenizer.or(run_tokenizer).unwrap_or_else(Tokenizer::bytes),
    };
    if matches!(tokenizer, Tokenizer::Bytes) && model.info().vocab < 256 {
        anyhow::bail!(
            "no tokenizer.json, and the byte tokenizer needs a vocabulary of at least 256 (model has {})",
            model.info().vocab
        );
    }
    let prompt = tokenizer.encode(&args.prompt)?;
    let max_tokens = args.max_tokens.unwrap_or_else(|| default_max_tokens(model.as_ref(), prompt.len()));
    let request = Request {
        prompt: &prompt,
        max_tokens,
        sampling: Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed },
        eos: tokenizer.eos_id(),
    };
    request.check(model.as_ref(), &state.device)?;
    print_now(&args.prompt)?;
    let mut stream = TextStream { tokenizer: &tokenizer, ids: Vec::new(), printed: String::new() };
    let out = generate_streaming(model.as_ref(), &adapters, &request, &state.device, |id| stream.push(id))?;
    stream.finish(&out)
}
