//! The examples and notes each subcommand's `--help` ends with. Every example runs as
//! written from the repository root after `cargo build --release --workspace`.

/// `stagecraft --help`: the exit codes.
pub const TOP: &str = "\
Exit codes:
  0  success
  1  error (bad config, missing file, bad plugin, a diverged run, ...): one line on stderr
  2  usage error (unknown flag, missing argument)
  3  a retention gate stopped the pipeline (the run directory has everything up to there)
  4  `drift` found drift: a test's p-value is under --alpha and its effect over its threshold

Run `stagecraft <COMMAND> --help` for examples.";

/// `stagecraft run --help`.
pub const RUN: &str = "\
Examples:
  stagecraft run                                              # the built-in default pipeline
  stagecraft run examples/pipelines/tiny.toml --seed 7
  stagecraft run examples/pipelines/default.toml --check      # plan and checks, trains nothing
  stagecraft run examples/pipelines/default.toml --set stages.finetune_add.max_steps=100
  stagecraft run --resume runs/tiny/20261130-101500           # continue an interrupted run
  stagecraft run my.toml --until finetune --run-dir runs/base # only the stages up to finetune
  stagecraft run my.toml --from runs/base --after finetune    # the later stages, from its end
  stagecraft run my.toml --pause-at finetune:200 --run-dir runs/p   # stop there, resumable
  stagecraft run --resume runs/p --adjust optimizer.lr=1e-3   # go on with a new learning rate";

/// `stagecraft plugin --help`.
pub const PLUGIN: &str = "\
Examples:
  stagecraft plugin list
  stagecraft plugin inspect target/release/libstagecraft_lora.so
  stagecraft plugin new scaler --kind method --dir /tmp/scaler";

/// `stagecraft model --help`.
pub const MODEL: &str = "\
Examples:
  stagecraft model sites --model tests/fixtures/llama-tiny/base
  stagecraft model sites --config examples/pipelines/default.toml";

/// `stagecraft forward --help`.
pub const FORWARD: &str = "\
Examples:
  stagecraft forward --model tests/fixtures/llama-tiny/base --adapter tests/fixtures/llama-tiny/lora \\
      --input tests/fixtures/llama-tiny/reference.safetensors --out logits.safetensors
  stagecraft forward --adapter runs/adapters/20261130-101500:bottleneck --input in.safetensors --out out.safetensors";

/// `stagecraft generate --help`.
pub const GENERATE: &str = "\
Examples:
  stagecraft generate --model tests/fixtures/llama-tiny/base --prompt \"text\" --max-tokens 32
  stagecraft generate --adapter runs/default/20261130-101500:adapt_sub --prompt \"3-1=\" --max-tokens 4";

/// `stagecraft export --help`.
pub const EXPORT: &str = "\
Examples:
  stagecraft export runs/adapters/20261130-101500 --stage lora --out lora-peft
  stagecraft export runs/adapters/20261130-101500 --stage dora --out dora-model --format merged";

/// `stagecraft merge --help`.
pub const MERGE: &str = "\
Examples:
  stagecraft merge --model tests/fixtures/llama-tiny/base --adapter tests/fixtures/llama-tiny/lora --out merged
  stagecraft merge --model tests/fixtures/llama-tiny/base --adapter tests/fixtures/llama-tiny/lora \\
      --adapter tests/fixtures/llama-tiny/rslora --combine svd --rank 4 --out combined";

/// `stagecraft bench --help`.
pub const BENCH: &str = "\
Examples:
  stagecraft bench --workload w1 --mode lora --steps 10
  stagecraft bench --workload w2 --mode full --steps 4 --profile
  stagecraft bench --workload w1 --torch python3       # PyTorch + PEFT on the same shapes, in the same run
  stagecraft bench --workload w2 --steps 4 --torch python3 --rounds 3   # alternated 3 times, the median round";

/// `stagecraft drift --help`.
pub const DRIFT: &str = "\
Examples:
  stagecraft drift --reference 'synthetic:add?n=200&seed=1' --current 'synthetic:add?n=200&seed=2'     # exit 0
  stagecraft drift --reference 'synthetic:add?n=200&seed=1' --current 'synthetic:reverse?n=200&seed=2' # exit 4
  stagecraft drift --reference train.jsonl --current new.jsonl --model tests/fixtures/llama-tiny/base
  stagecraft drift runs/demo/20261130-101500:finetune --data new.jsonl --max-js 0.2

Flagged when p < --alpha (0.01) and the effect is over its threshold: token JS divergence
(bits) > --max-js 0.1, length KS D > --max-ks 0.2, label Cramér's V > --max-cramers-v 0.2,
hidden-state MMD² > --max-mmd 0.05 (on at most --max-embedded 256 examples per side).
Exit codes: 0 no drift, 4 drift found, 1 an error.";

pub const COMPARE: &str = "\
Examples:
  stagecraft compare runs/default/20261201-101500 runs/default/20261201-113000
  stagecraft compare runs/a runs/b --metric loss --html ab.html
  stagecraft compare runs/a runs/b --json

Each run's last evaluation of every eval set is paired example by example (from the
run's examples/ files: no re-run). B - A with a paired bootstrap 95% interval
(--resamples 10000, --seed 0); `better` / `worse` when the interval excludes 0 on
that side (lower is better for loss), else `no evidence`.";

/// `stagecraft search --help`.
pub const SEARCH: &str = "\
Examples:
  stagecraft search examples/pipelines/default.toml --space examples/search/default_space.toml
  stagecraft search my.toml --space space.toml --trials 12 --budget 20000 --dir search/my

The space file names, per stage, `--set` keys inside the stage with a distribution:
  [stages.finetune]
  \"optimizer.lr\" = { log_uniform = [1e-4, 1e-2] }
  batch_size = { choice = [16, 32] }
Trial 0 of each stage has the pipeline's own values. Everything goes to --dir:
trials.jsonl, trials/, best.toml, best.json, report.html.

`mode = \"pbt\"` in [search] trains each stage with a population instead
(population-based training: the worst copy the best's state and perturb its
optimizer keys and dropout every `pbt.interval` steps):
  stagecraft search examples/pipelines/default.toml --space examples/search/pbt_space.toml --dir search-pbt";
