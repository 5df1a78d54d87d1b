//! Config fuzzing: mutations of every example pipeline through `run --check`'s code
//! path (parse, validate, load and check everything, describe the plan) never panic,
//! never abort and answer each input in bounded time — an error or a plan.
//!
//! Each input is an example pipeline with one to four mutations: a value replaced by
//! one of a set of hostile values (zero, negative, huge, NaN, infinite, empty, of the
//! wrong type, a long string, another value of the same file), a number scaled, a key
//! deleted or added, a stage duplicated, dropped or moved, a data spec's numbers
//! replaced. proptest shrinks a failing input to its fewest mutations and prints it.
//!
//! Alongside: the absurd sizes that once aborted the process are refused with a memory
//! estimate, and a very large synthetic source is checked without generating it.
//!
//! `CONFIG_FUZZ_CASES` sets the number of inputs (default 300, as in CI), e.g.
//! `CONFIG_FUZZ_CASES=1000000 cargo test --release -p stagecraft-core --test config_fuzz -- --nocapture`;
//! `CONFIG_FUZZ_SEED` picks another sequence of inputs.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::pipeline::Pipeline;
use stagecraft_core::plugin::Registry;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use toml::Value;

/// The example pipelines, as `(file name, text)`.
const EXAMPLES: [(&str, &str); 4] = [
    ("default.toml", include_str!("../examples/pipelines/default.toml")),
    ("tiny.toml", include_str!("../examples/pipelines/tiny.toml")),
    ("reference.toml", include_str!("../examples/pipelines/reference.toml")),
    ("adapters.toml", include_str!("../examples/pipelines/adapters.toml")),
];

/// The longest any input may take to be answered: a hang fails, and so would a check
/// that grows with sizes it should not touch. (The slowest inputs seen, adapters of a
/// rank in the hundreds of thousands on a model of width 64, take about 10 s alone.)
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Values a careless or hostile config puts anywhere.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Integer(0)),
        Just(Value::Integer(-1)),
        Just(Value::Integer(1)),
        Just(Value::Integer(7)),
        Just(Value::Integer(1 << 20)),
        Just(Value::Integer(1 << 31)),
        Just(Value::Integer(1 << 40)),
        Just(Value::Integer(i64::MAX)),
        Just(Value::Integer(i64::MIN)),
        Just(Value::Float(0.0)),
        Just(Value::Float(-0.5)),
        Just(Value::Float(1e-300)),
        Just(Value::Float(1e300)),
        Just(Value::Float(f64::NAN)),
        Just(Value::Float(f64::INFINITY)),
        Just(Value::Float(f64::NEG_INFINITY)),
        Just(Value::Boolean(true)),
        Just(Value::String(String::new())),
        Just(Value::String("*".into())),
        Just(Value::String("../../etc/passwd".into())),
        Just(Value::String("synthetic:add?n=10000000&digits=18".into())),
        Just(Value::String("synthetic:arith_text?n=10000000&lines=1000&len=1000".into())),
        Just(Value::String("x".repeat(10_000))),
        Just(Value::Array(Vec::new())),
        Just(Value::Table(toml::Table::new())),
        "[a-z_]{1,12}".prop_map(Value::String),
    ]
}

/// Numbers written into data specs' options.
fn spec_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("1000".to_string()),
        Just("10000000".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1e9".to_string()),
        Just("nan".to_string()),
        Just(String::new()),
    ]
}

/// One change to a config. Indices pick among the file's leaves or stages, modulo their
/// number.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    /// Multiplies a number (`x 10^k`, or its negation).
    Scale(usize, i32, bool),
    /// Puts the value of one leaf in another's place.
    CopyLeaf(usize, usize),
    Delete(usize),
    AddKey(usize, String, Value),
    DuplicateStage(usize),
    DropStage(usize),
    MoveStage(usize, usize),
    /// Replaces the `k`-th number in the `i`-th string leaf.
    SpecNumber(usize, usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = 0usize..10_000;
    prop_oneof![
        4 => (i.clone(), hostile_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => (i.clone(), -3i32..12, any::<bool>()).prop_map(|(i, k, neg)| Mutation::Scale(i, k, neg)),
        1 => (i.clone(), i.clone()).prop_map(|(a, b)| Mutation::CopyLeaf(a, b)),
        1 => i.clone().prop_map(Mutation::Delete),
        1 => (i.clone(), "[a-z_]{1,10}", hostile_value()).prop_map(|(i, k, v)| Mutation::AddKey(i, k, v)),
        1 => i.clone().prop_map(Mutation::DuplicateStage),
        1 => i.clone().prop_map(Mutation::DropStage),
        1 => (i.clone(), i.clone()).prop_map(|(a, b)| Mutation::MoveStage(a, b)),
        2 => (i.clone(), 0usize..6, spec_number()).prop_map(|(i, k, n)| Mutation::SpecNumber(i, k, n)),
    ]
}

/// Paths to every leaf (a value that is not a table), tables and arrays entered.
fn leaves(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Table(t) => {
            for (k, child) in t {
                path.push(Step::Key(k.clone()));
                leaves(child, path, out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                path.push(Step::Index(i));
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'a>(root: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(root, |v, s| match (s, v) {
        (Step::Key(k), Value::Table(t)) => t.get_mut(k),
        (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

fn all_leaves(root: &Value) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    leaves(root, &mut Vec::new(), &mut out);
    out
}

fn stages(root: &mut Value) -> Option<&mut Vec<Value>> {
    root.get_mut("stages").and_then(Value::as_array_mut).filter(|s| !s.is_empty())
}

fn apply(root: &mut Value, m: &Mutation) {
    let paths = all_leaves(root);
    let pick = |i: usize| paths.get(i % paths.len().max(1)).cloned();
    match m {
        Mutation::Replace(i, v) => {
            if let Some(slot) = pick(*i).and_then(|p| at(root, &p)) {
                *slot = v.clone();
            }
        }
        Mutation::Scale(i, k, neg) => {
            let sign = if *neg { -1.0 } else { 1.0 };
            match pick(*i).and_then(|p| at(root, &p)) {
                Some(Value::Integer(n)) => *n = n.saturating_mul(10i64.saturating_pow(k.unsigned_abs())) * sign as i64,
                Some(Value::Float(x)) => *x *= 10f64.powi(*k) * sign,
                _ => {}
            }
        }
        Mutation::CopyLeaf(a, b) => {
            let value = pick(*a).and_then(|p| at(root, &p).map(|v| v.clone()));
            if let (Some(v), Some(slot)) = (value, pick(*b).and_then(|p| at(root, &p))) {
                *slot = v;
            }
        }
        Mutation::Delete(i) => {
            if let Some(path) = pick(*i) {
                if let Some((last, parent)) = path.split_last() {
                    match (at(root, parent), last) {
                        (Some(Value::Table(t)), Step::Key(k)) => {
                            t.remove(k);
                        }
                        (Some(Value::Array(a)), Step::Index(i)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
        }
        Mutation::AddKey(i, k, v) => {
            if let Some(parent) = pick(*i).and_then(|p| p.split_last().map(|(_, parent)| parent.to_vec())) {
                if let Some(Value::Table(t)) = at(root, &parent) {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        Mutation::DuplicateStage(i) => {
            if let Some(s) = stages(root) {
                let copy = s[i % s.len()].clone();
                s.push(copy);
            }
        }
        Mutation::DropStage(i) => {
            if let Some(s) = stages(root) {
                let k = i % s.len();
                s.remove(k);
            }
        }
        Mutation::MoveStage(a, b) => {
            if let Some(s) = stages(root) {
                let n = s.len();
                let st = s.remove(a % n);
                s.insert(b % n, st);
            }
        }
        Mutation::SpecNumber(i, k, n) => {
            let strings: Vec<Vec<Step>> = paths
                .iter()
                .filter(|p| matches!(at(&mut root.clone(), p), Some(Value::String(s)) if s.contains('=')))
                .cloned()
                .collect();
            if strings.is_empty() {
                return;
            }
            if let Some(Value::String(s)) = at(root, &strings[i % strings.len()]) {
                *s = replace_number(s, *k, n);
            }
        }
    }
}

/// `s` with its `k`-th run of digits (modulo their number) replaced by `n`.
fn replace_number(s: &str, k: usize, n: &str) -> String {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices().chain(std::iter::once((s.len(), ' '))) {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(b)) => {
                runs.push((b, i));
                start = None;
            }
            _ => {}
        }
    }
    match runs.get(k % runs.len().max(1)) {
        Some(&(b, e)) => format!("{}{n}{}", &s[..b], &s[e..]),
        None => s.to_string(),
    }
}

/// Runs one input through `run --check`'s code path.
fn check(file: &str, text: &str) -> Result<String, String> {
    let cfg = PipelineConfig::from_str(text, file, &[]).map_err(|e| e.to_string())?;
    let registry = Registry::with_builtins(std::env::temp_dir().join("stagecraft-fuzz-reports")).expect("registry");
    Pipeline::plan(&cfg, &registry).map_err(|e| e.to_string())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn mutated_example_pipelines_are_answered_without_panic_or_hang() {
    let cases = env_u64("CONFIG_FUZZ_CASES", 300) as u32;
    let seed = env_u64("CONFIG_FUZZ_SEED", 0);
    let examples_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    // Inputs answered by an error, and by a plan.
    let answers = std::cell::Cell::new([0u64; 2]);
    let strategy = (0..EXAMPLES.len(), proptest::collection::vec(mutation(), 1..=4));
    let result = runner.run(&strategy, |(example, mutations)| {
        let (name, text) = EXAMPLES[example];
        let mut root: Value = toml::from_str(text).expect("example parses");
        for m in &mutations {
            apply(&mut root, m);
        }
        let mutated = toml::to_string(&root).unwrap_or_default();
        let file = examples_dir.join(name).display().to_string();
        let t = Instant::now();
        let answer = check(&file, &mutated);
        let took = t.elapsed();
        prop_assert!(took < TIME_LIMIT, "{took:?} for\n{mutated}");
        if let Err(e) = &answer {
            prop_assert!(!e.is_empty() && !e.contains('\n'), "not one line: {e:?} for\n{mutated}");
        }
        let mut counts = answers.get();
        counts[usize::from(answer.is_ok())] += 1;
        answers.set(counts);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let answers = answers.get();
    println!("config fuzz: {cases} inputs (seed {seed}): {} plans, {} errors", answers[1], answers[0]);
    // The mutations must reach past parsing: some inputs are still valid pipelines.
    assert!(answers[1] > 0 && answers[0] > 0, "{answers:?}");
}

#[test]
fn mutations_change_what_they_name() {
    let mut root: Value = toml::from_str(EXAMPLES[0].1).expect("parses");
    let n = all_leaves(&root).len();
    apply(&mut root, &Mutation::DropStage(0));
    assert_eq!(stages(&mut root).map(|s| s.len()), Some(2));
    assert!(all_leaves(&root).len() < n);
    assert_eq!(replace_number("synthetic:add?n=300&digits=1", 1, "0"), "synthetic:add?n=300&digits=0");
    assert_eq!(replace_number("no digits", 3, "9"), "no digits");
}

/// `run --check` of the default pipeline with `overrides`: the answer and how long it took.
fn check_default(overrides: &[&str]) -> (Result<String, String>, Duration) {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let t = Instant::now();
    let answer = PipelineConfig::from_str(EXAMPLES[0].1, "default.toml", &overrides)
        .map_err(|e| e.to_string())
        .and_then(|cfg| {
            let registry =
                Registry::with_builtins(std::env::temp_dir().join("stagecraft-fuzz-reports")).expect("registry");
            Pipeline::plan(&cfg, &registry).map_err(|e| e.to_string())
        });
    (answer, t.elapsed())
}

#[test]
fn absurd_sizes_are_refused_by_a_memory_estimate_before_anything_is_allocated() {
    let cases = [
        ("model.vocab_size=1000000000000", "stage `pretrain` needs about"),
        ("model.hidden_size=100000", "stage `pretrain` needs about"),
        ("model.hidden_size=1099511627776", "needs more than 16 EiB"),
        ("model.intermediate_size=1099511627776", "needs about"),
        ("model.num_layers=1000000", "weights 738.1 GiB"),
        ("stages.pretrain.grad_accum=1000000000", "1000000000 micro-batches"),
        ("stages.pretrain.batch_size=1099511627776", "activations for 1099511627776 x 48 tokens"),
        ("stages.pretrain.seq_len=10000000", "activations for 32 x 10000000 tokens"),
        (
            "stages.adapt_sub.adapters.0.r=1000000000",
            "stage `adapt_sub`: adapter `lora`: plugin `lora` failed in `init_site(model.layers.0.self_attn.q_proj)`: op `new_param`: a tensor of shape [1000000000, 128]",
        ),
    ];
    for (set, expected) in cases {
        let (answer, took) = check_default(&[set]);
        let e = answer.expect_err(set);
        assert!(e.contains(expected) && e.contains("available") && !e.contains('\n'), "{set}: {e}");
        assert!(took < Duration::from_secs(5), "{set}: {took:?}");
    }
    // Ten million examples of many lines: checked from their first examples, in no time.
    let (plan, took) = check_default(&["stages.pretrain.data.train=\"synthetic:arith_text?n=10000000&lines=20\""]);
    let plan = plan.expect("plan");
    assert!(plan.contains("of 10000000 from synthetic:arith_text?n=10000000&lines=20"), "{plan}");
    assert!(plan.lines().any(|l| l.starts_with("memory: about ")), "{plan}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
