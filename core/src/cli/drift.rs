//! `stagecraft drift`: is new data different from a reference? Two forms:
//!
//! - `drift --reference SPEC --current SPEC [--model M]`: two data specs;
//! - `drift RUN_DIR[:STAGE] --data SPEC`: the reference is that stage's training data
//!   (default: the run's last stage) with the run's tokenizer, and the hidden-state
//!   test uses that stage's model unless `--no-model`.
//!
//! Prints one line per test (statistic, effect, threshold, p-value, verdict; `--json`
//! for machines) and exits with [`DriftFound::EXIT_CODE`] (4) when any test flags
//! drift, so that a scheduled job can start a retraining. The tests and their defaults
//! are those of [`stagecraft_core::drift`].

use super::eval::{open_model, split_run_spec, stage_config, tokenizer, DEFAULT_SEQ_LEN};
use super::model::Opened;
use anyhow::Context;
use clap::Args;
use stagecraft_core::data::{load_source, Dataset, Tokenizer};
use stagecraft_core::drift::embed::{pooled_hidden, sample};
use stagecraft_core::drift::{compare, hidden_state_test, DriftConfig, DriftReport, Skipped, Test};
use stagecraft_core::pipeline::{config_tokenizer, run_config};
use stagecraft_core::rng::Rng;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct DriftArgs {
    /// A run directory, `RUN_DIR` or `RUN_DIR:STAGE`: the reference is that stage's
    /// `data.train` (default: the run's last stage), tokenized as the run did.
    #[arg(required_unless_present = "reference")]
    run: Option<String>,
    /// The reference data spec (`synthetic:add?n=200`, a `.txt` or `.jsonl` file).
    #[arg(long, conflicts_with = "run")]
    reference: Option<String>,
    /// The data to compare with the reference (same forms).
    #[arg(long, visible_alias = "data")]
    current: String,
    /// A model for the hidden-state (MMD) test: a model directory, `org/name` or
    /// `RUN_DIR[:STAGE]`. Default in the run form: the run's stage; else no MMD test.
    #[arg(long)]
    model: Option<String>,
    /// Run form: skip the hidden-state test (the stage's model is not loaded).
    #[arg(long, conflicts_with = "model")]
    no_model: bool,
    /// `bytes` or a tokenizer.json. Default: the run's, the model's, else bytes.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Tokens per example (longer ones are cut). Default: the stage's `seq_len`, else 128.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Examples per forward pass of the hidden-state test.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Run the model on this device: `cpu`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seed of the permutations and of the sample of embedded examples.
    #[arg(long, default_value_t = DriftConfig::default().seed)]
    seed: u64,
    /// Reshuffles per permutation test (p-values are at least 1 / (1 + N)).
    #[arg(long, default_value_t = DriftConfig::default().permutations)]
    permutations: usize,
    /// A test flags only when its p-value is below this.
    #[arg(long, default_value_t = DriftConfig::default().alpha)]
    alpha: f64,
    /// Token unigram Jensen–Shannon divergence (bits) above which drift is flagged.
    #[arg(long, default_value_t = DriftConfig::default().max_js)]
    max_js: f64,
    /// Kolmogorov–Smirnov D on sequence lengths above which drift is flagged.
    #[arg(long, default_value_t = DriftConfig::default().max_ks)]
    max_ks: f64,
    /// Cramér's V of the class-label chi-square test above which drift is flagged.
    #[arg(long, default_value_t = DriftConfig::default().max_cramers_v)]
    max_cramers_v: f64,
    /// MMD² of pooled hidden states above which drift is flagged.
    #[arg(long, default_value_t = DriftConfig::default().max_mmd)]
    max_mmd: f64,
    /// Examples per side embedded for the hidden-state test (a seeded sample).
    #[arg(long, default_value_t = DriftConfig::default().max_embedded)]
    max_embedded: usize,
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

impl DriftArgs {
    fn config(&self) -> DriftConfig {
        DriftConfig {
            alpha: self.alpha,
            permutations: self.permutations,
            seed: self.seed,
            max_js: self.max_js,
            max_ks: self.max_ks,
            max_cramers_v: self.max_cramers_v,
            max_mmd: self.max_mmd,
            max_embedded: self.max_embedded,
        }
    }
}

/// Some test flagged drift (`stagecraft` exits with [`DriftFound::EXIT_CODE`]).
#[derive(Debug)]
pub struct DriftFound {
    /// The flagged tests' names.
    tests: Vec<&'static str>,
}

impl DriftFound {
    /// The process exit code when drift is found.
    pub const EXIT_CODE: u8 = 4;
}

impl std::fmt::Display for DriftFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "drift found: {} over threshold", self.tests.join(", "))
    }
}

impl std::error::Error for DriftFound {}

/// Where the reference comes from: its spec, the directory it is relative to, and
/// the defaults a run's stage gives.
struct Reference {
    spec: String,
    base: PathBuf,
    /// The stage's `seq_len` (run form).
    seq_len: Option<usize>,
    /// The run's tokenizer (run form).
    tokenizer: Option<Tokenizer>,
    /// The stage's model spec `RUN_DIR:STAGE` (run form).
    model: Option<String>,
}

/// The reference of either form.
fn reference(args: &DriftArgs) -> anyhow::Result<Reference> {
    let Some(run) = &args.run else {
        let spec = args.reference.clone().context("give --reference SPEC or a run directory")?;
        return Ok(Reference { spec, base: PathBuf::from("."), seq_len: None, tokenizer: None, model: None });
    };
    let (dir, stage) =
        split_run_spec(run).with_context(|| format!("{run}: not a run directory (no config.toml and checkpoints/)"))?;
    let cfg = run_config(&dir)?;
    let stage = match stage {
        Some(s) => s,
        None => cfg.stages.last().map(|s| s.name.clone()).with_context(|| format!("{}: no stages", dir.display()))?,
    };
    let s = stage_config(&cfg, &stage).with_context(|| format!("{}", dir.display()))?;
    Ok(Reference {
        spec: s.data.train.clone(),
        base: cfg.base_dir(),
        seq_len: Some(s.seq_len),
        tokenizer: Some(config_tokenizer(&cfg)?),
        model: Some(format!("{}:{stage}", dir.display())),
    })
}

pub fn drift(args: DriftArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let reference = reference(&args)?;
    let model_spec = args.model.clone().or(if args.no_model { None } else { reference.model.clone() });
    let opened = model_spec.as_deref().map(|m| open_model(m, &[], &args.device)).transpose()?;
    let tokenizer = match (&opened, &args.tokenizer, &reference.tokenizer) {
        (Some(o), _, _) => tokenizer(args.tokenizer.as_deref(), model_spec.as_deref().unwrap_or_default(), o)?,
        (None, Some(spec), _) => Tokenizer::from_spec(spec)?,
        (None, None, Some(t)) => t.clone(),
        (None, None, None) => Tokenizer::bytes(),
    };
    let seq_len = args.seq_len.or(reference.seq_len).unwrap_or(DEFAULT_SEQ_LEN);
    anyhow::ensure!(seq_len >= 1 && args.batch_size >= 1, "--seq-len and --batch-size must be at least 1");
    let ref_data = load_source(&reference.spec, &tokenizer, &reference.base, seq_len)
        .with_context(|| format!("reference `{}`", reference.spec))?;
    let cur_data = load_source(&args.current, &tokenizer, &PathBuf::from("."), seq_len)
        .with_context(|| format!("--current `{}`", args.current))?;
    let mut report = compare(&ref_data, &cur_data, &cfg)?;
    match &opened {
        Some(o) => report.results.push(mmd(o, &ref_data, &cur_data, &args, &cfg)?),
        None => report.skipped.push(Skipped {
            test: Test::HiddenMmd,
            reason: if args.no_model { "--no-model" } else { "needs --model" }.into(),
        }),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    let flagged: Vec<&'static str> = report.results.iter().filter(|r| r.flagged).map(|r| r.test.name()).collect();
    match flagged.is_empty() {
        true => Ok(()),
        false => Err(DriftFound { tests: flagged }.into()),
    }
}

/// The hidden-state test: a seeded sample of each side through the model.
fn mmd(
    o: &Opened,
    reference: &Dataset,
    current: &Dataset,
    args: &DriftArgs,
    cfg: &DriftConfig,
) -> anyhow::Result<stagecraft_core::drift::TestResult> {
    let rng = Rng::new(cfg.seed).fork(0xE3BE);
    let device = &o.state.device;
    let embed = |d: &Dataset, stream: u64| -> anyhow::Result<Vec<Vec<f32>>> {
        let picked = sample(&d.examples, cfg.max_embedded, &mut rng.fork(stream));
        pooled_hidden(o.model.as_ref(), &o.adapters, &picked, args.batch_size, device)
            .with_context(|| format!("hidden states of `{}`", d.name))
    };
    Ok(hidden_state_test(&embed(reference, 0)?, &embed(current, 1)?, cfg)?)
}

fn print_table(r: &DriftReport) {
    println!("reference  {} ({} examples, {} tokens)", r.reference.name, r.reference.examples, r.reference.tokens);
    println!("current    {} ({} examples, {} tokens)", r.current.name, r.current.examples, r.current.tokens);
    println!(
        "flagged when p < {} and the effect is over its threshold ({} permutations, seed {})",
        r.alpha, r.permutations, r.seed
    );
    println!();
    println!(
        "{:<11} {:>10} {:>9} {:>10} {:>10}  {:<7} MEASURE",
        "TEST", "STATISTIC", "EFFECT", "THRESHOLD", "P-VALUE", "VERDICT"
    );
    for t in &r.results {
        let verdict = if t.flagged { "DRIFT" } else { "ok" };
        println!(
            "{:<11} {:>10.4} {:>9.4} {:>10.4} {:>10}  {verdict:<7} {}",
            t.test.name(),
            t.statistic,
            t.effect,
            t.threshold,
            p_value(t.p_value),
            t.test.effect_name()
        );
    }
    for s in &r.skipped {
        println!("{:<11} skipped: {}", s.test.name(), s.reason);
    }
}

/// A p-value for the table: four decimals, or scientific below 0.001.
fn p_value(p: f64) -> String {
    match p < 1e-3 {
        true => format!("{p:.2e}"),
        false => format!("{p:.4}"),
    }
}
