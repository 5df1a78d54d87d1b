//! Packing: short examples share a row and still see only themselves.
//!
//! A packed row gives every example the logits it has alone (rotary positions depend
//! only on distances, and the mask keeps attention inside each example), its loss is
//! the examples' token-weighted loss alone, a stage with `packing = true` trains on
//! fewer, fuller rows, and what cannot be packed is refused before training.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::data::{collate, pack, Example};
use stagecraft_core::model::{Adapters, Llama, LlamaConfig, Model};
use stagecraft_core::pipeline::Pipeline;
use stagecraft_core::train::Trainer;
use support::{builtins, max_abs_diff, metrics, run_pipeline, state, try_pipeline};

fn llama() -> Llama {
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2
    }))
    .expect("config");
    Llama::new(&cfg, 7, &Device::Cpu).expect("model")
}

/// Three examples of different lengths, one of them a completion.
fn examples() -> Vec<Example> {
    let completion =
        Example { labels: Some(vec![-100, -100, -100, 40, 41, 42]), ..Example::from_ids(vec![3, 9, 27, 40, 41, 42]) };
    vec![Example::from_ids(vec![5, 17, 33, 2, 60]), completion, Example::from_ids(vec![11, 12, 13, 14, 15, 16, 17, 18])]
}

fn logits(model: &Llama, rows: &[&Example]) -> Tensor {
    let batch = collate(rows, 0, &Device::Cpu).expect("collate");
    let out = model.forward(&batch.input_ids, batch.attention_mask.as_ref(), &Adapters::none(model.sites().len()));
    out.expect("forward").logits.expect("logits")
}

#[test]
fn a_packed_row_gives_each_example_the_logits_it_has_alone() {
    let model = llama();
    let examples = examples();
    let (rows, stats) = pack(&examples, 24).expect("pack");
    assert_eq!((rows.len(), stats.tokens), (1, 19), "one row holds all three");
    // With a padded row beside it, so padding and packing meet in one batch.
    let packed = logits(&model, &[&rows[0], &examples[0]]);
    let mut at = 0;
    for (k, &len) in rows[0].packed.iter().enumerate() {
        let len = len as usize;
        let alone_ex = examples.iter().find(|e| e.ids == rows[0].ids[at..at + len]).expect("an example");
        let alone = logits(&model, &[alone_ex]).squeeze(0).expect("row");
        let inside = packed.get(0).and_then(|r| r.narrow(0, at, len)).expect("segment");
        let d = max_abs_diff(&inside, &alone);
        assert!(d < 1e-4, "example {k} (tokens {at}..{}): logits differ by {d}", at + len);
        at += len;
    }
    // The same row without the packing mask: the second example would see the first.
    let later = rows[0].packed[0] as usize;
    let unmasked = logits(&model, &[&Example::from_ids(rows[0].ids.clone())]).squeeze(0).expect("row");
    let masked = packed.get(0).expect("row 0");
    let part = |t: &Tensor| t.narrow(0, later, 3).expect("the second example's first tokens");
    let leak = max_abs_diff(&part(&unmasked), &part(&masked));
    assert!(leak > 1e-3, "without the packing mask the second example sees the first ({leak})");
}

#[test]
fn a_packed_rows_loss_is_its_examples_token_weighted_loss_alone() {
    let reg = builtins();
    let st = state();
    let trainer = || {
        let objective = reg.new_objective("causal_lm", "{}", &st).expect("objective");
        let opt = reg.new_optimizer("sgd", r#"{"lr": 0.1, "momentum": 0.0}"#, &st).expect("sgd");
        let model = llama();
        let adapters = Adapters::none(model.sites().len());
        Trainer::new(st.clone(), Box::new(model), adapters, objective, opt).expect("trainer")
    };
    let examples = examples();
    let (rows, _) = pack(&examples, 24).expect("pack");
    let mut t = trainer();
    let packed = t.eval_batch(&collate(&[&rows[0]], 0, &Device::Cpu).expect("collate")).expect("eval").0;
    let (mut sum, mut targets) = (0.0, 0.0);
    for e in &examples {
        let alone = t.eval_batch(&collate(&[e], 0, &Device::Cpu).expect("collate")).expect("eval").0;
        let n = e.labels.as_ref().map_or(e.ids.len() - 1, |l| l[1..].iter().filter(|&&x| x != -100).count()) as f64;
        sum += alone * n;
        targets += n;
    }
    let want = sum / targets;
    assert!((packed - want).abs() < 1e-5, "packed loss {packed}, examples alone {want}");
}

fn packed_stage(arch: &str, extra: &str) -> String {
    format!(
        r#"
[run]
seed = 3
[model]
arch = "{arch}"
hidden_size = 16
num_layers = 1
num_heads = 2
[[stages]]
name = "lm"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=8&digits=1&seed=1", packing = true }}
optimizer = {{ lr = 3e-3 }}
epochs = 1
batch_size = 4
seq_len = 64
{extra}"#
    )
}

#[test]
fn a_packed_stage_trains_on_fewer_fuller_rows_and_says_so() {
    let text = packed_stage("llama", "");
    let cfg = PipelineConfig::from_str(&text, "packed.toml", &[]).expect("config");
    let plan = Pipeline::plan(&cfg, &builtins()).expect("plan");
    let line = plan.lines().find(|l| l.contains("packed 64 examples into")).unwrap_or_else(|| panic!("{plan}"));
    let rows: usize =
        line.split("into ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).expect("rows");
    assert!(rows < 16, "64 short examples fit in far fewer rows of 64 tokens: {line}");
    let steps = rows.div_ceil(4);
    assert!(
        plan.contains(&format!("{steps} steps x 4 packed rows (")) && plan.contains(&format!("of {rows} from")),
        "{plan}"
    );

    let run = run_pipeline("packed", &text);
    assert_eq!(run.summary.stages[0].steps as usize, steps, "an epoch is a pass over the packed rows");
    let rows = metrics(&run.dir);
    assert!(rows.iter().any(|r| r.set.as_deref() == Some("lm") && r.metrics["loss"].is_finite()), "eval runs unpacked");
}

#[test]
fn what_cannot_be_packed_is_refused_before_training() {
    let (run, result) = try_pipeline("packed-bert", &packed_stage("bert", ""), &[]);
    let err = result.expect_err("an encoder cannot pack");
    assert!(err.contains("stage `lm`: packing = true needs a decoder") && !err.contains('\n'), "{err}");
    assert!(!run.join("metrics.jsonl").exists(), "nothing trained");
}
