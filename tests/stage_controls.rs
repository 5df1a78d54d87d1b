//! Stage starting points and stage controls: `from` an earlier stage or a Hugging Face
//! directory, optimizer carry-over, gate and early-stopping patience, model dropout,
//! and resuming past a corrupt checkpoint.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::checkpoint::TENSORS_FILE;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::model::{Adapters, Llama, LlamaConfig, Model};
use stagecraft_core::pipeline::{RunSummary, StageEnd};
use std::path::PathBuf;
use support::{bits, checkpoint_bits as tensors, root, run_pipeline, with_prefix as only};

const HEAD: &str = r#"
[run]
name = "t"
seed = 7

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2
"#;

/// A stage on one-digit addition (completion) or arithmetic text (causal LM).
fn stage(name: &str, objective: &str, steps: u64, extra: &str) -> String {
    let data = match objective {
        "causal_lm" => {
            r#"{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=8&digits=1&seed=1" }"#
        }
        _ => r#"{ train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=16&digits=1&seed=2" }"#,
    };
    let seq = if objective == "causal_lm" { 24 } else { 12 };
    format!("\n[[stages]]\nname = \"{name}\"\nobjective = \"{objective}\"\ndata = {data}\noptimizer = {{ lr = 1e-2 }}\nmax_steps = {steps}\nbatch_size = 8\nseq_len = {seq}\n{extra}\n")
}

fn run(name: &str, text: &str) -> (PathBuf, RunSummary) {
    let r = run_pipeline(name, text);
    (r.dir, r.summary)
}

#[test]
fn from_an_earlier_stage_starts_from_its_result_with_its_adapters() {
    let lora =
        r#"adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 2, alpha = 4, init = "gaussian" }]"#;
    let text = [
        HEAD.to_string(),
        stage("pre", "causal_lm", 3, ""),
        stage("a", "completion", 3, lora),
        stage("c", "completion", 2, "handoff = { adapters = \"merge\" }"),
        stage("d", "completion", 2, "from = \"a\"\nhandoff = { adapters = \"stack\" }\nadapters = [{ plugin = \"lora\", targets = [\"up_proj\"], r = 2, alpha = 4 }]"),
    ]
    .concat();
    let (run, summary) = run("from-stage", &text);
    assert_eq!(summary.stages.len(), 4);
    let (a, c, d) = (tensors(&run, "a"), tensors(&run, "c"), tensors(&run, "d"));
    assert_eq!(only(&d, "model."), only(&a, "model."), "d starts from a's base, frozen under its adapters");
    assert_ne!(only(&c, "model."), only(&a, "model."), "c trained (and merged) past a");
    assert_eq!(only(&d, "adapter.0."), only(&a, "adapter.0."), "a's adapter is back, stacked and frozen");
    assert_eq!(only(&d, "adapter.1.").len(), 2, "d's own adapter is added");
}

#[test]
fn from_a_model_directory_loads_it_and_later_stages_can_branch_back_to_either() {
    let dir = root().join("tests/fixtures/llama-tiny/base");
    let lora = r#"adapters = [{ plugin = "lora", targets = ["q_proj"], r = 2, alpha = 4 }]"#;
    let text = [
        HEAD.to_string(),
        stage("pre", "causal_lm", 2, ""),
        stage("hf", "completion", 2, &format!("from = \"{}\"\n{lora}", dir.display())),
        stage("back", "completion", 1, &format!("from = \"pre\"\n{lora}")),
        stage("again", "completion", 1, "from = \"hf\"\nhandoff = { adapters = \"continue\" }"),
    ]
    .concat();
    let (run, _) = run("from-dir", &text);
    let want = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).expect("fixture");
    for stage in ["hf", "again"] {
        let got = tensors(&run, stage);
        assert_eq!(only(&got, "model.").len(), want.len());
        for (name, t) in &want {
            assert_eq!(
                got[&format!("model.{name}")],
                bits(t),
                "{stage}: {name}: the stage runs on the loaded (frozen) model"
            );
        }
    }
    let (pre, back) = (tensors(&run, "pre"), tensors(&run, "back"));
    assert_eq!(only(&back, "model."), only(&pre, "model."), "branching back to the fresh model's lineage");
}

#[test]
fn carrying_the_optimizer_continues_its_state_and_step_count() {
    let text = |policy: &str| {
        [
            HEAD.to_string(),
            stage("pre", "causal_lm", 3, ""),
            stage("next", "causal_lm", 2, &format!("handoff = {{ optimizer = \"{policy}\" }}")),
        ]
        .concat()
    };
    let meta = |run: &PathBuf| {
        stagecraft_core::checkpoint::load(&run.join("checkpoints/next"), &Device::Cpu).expect("checkpoint").meta
            ["optimizer_updates"]
            .as_u64()
    };
    let (carry, _) = run("carry", &text("carry"));
    let (reset, _) = run("reset", &text("reset"));
    assert_eq!(meta(&carry), Some(5), "carried: AdamW's bias correction sees step 5");
    assert_eq!(meta(&reset), Some(2));
    let (c, r) = (tensors(&carry, "next"), tensors(&reset, "next"));
    assert_ne!(only(&c, "optimizer."), only(&r, "optimizer."), "carried moments keep the first stage's history");
    assert_ne!(only(&c, "model."), only(&r, "model."));
}

fn gate_config(patience: u32) -> String {
    let lora = r#"adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj", "up_proj", "down_proj"], r = 4, alpha = 64 }]"#;
    let gate = format!("gates = {{ retention = {{ stage = \"add\", max_drop = 0.0, metric = \"loss\", patience = {patience} }} }}\neval_every = 1");
    [
        HEAD.to_string(),
        stage("add", "completion", 3, ""),
        stage("more", "completion", 10, &format!("{lora}\n{gate}")).replace("lr = 1e-2", "lr = 0.5"),
    ]
    .concat()
}

#[test]
fn gate_patience_tolerates_failing_evaluations_then_rolls_back() {
    let (strict_run, strict) = run("gate-0", &gate_config(0));
    assert_eq!((strict.stages[1].steps, &strict.stages[1].end), (1, &StageEnd::GateRollback));
    let (run, patient) = run("gate-2", &gate_config(2));
    assert_eq!(
        (patient.stages[1].steps, &patient.stages[1].end),
        (3, &StageEnd::GateRollback),
        "two failures tolerated, the third acts"
    );
    // Both roll back to the same stage start, one after one step, one after three:
    // every tensor — base, adapter, optimizer moments — must be the start's.
    let (s, p) = (tensors(&strict_run, "more"), tensors(&run, "more"));
    assert_eq!(s, p, "the stage start, restored after one failing evaluation or after three");
    assert!(only(&p, "optimizer.").values().all(|v| v.iter().all(|&x| x == 0)), "no optimizer history");
    let events = stagecraft_core::report::EventLog::read(&run.join("events.jsonl")).expect("events");
    let kinds: Vec<(&str, u64)> =
        events.iter().filter(|e| e.stage == "more").map(|e| (e.kind.as_str(), e.step)).collect();
    assert_eq!(kinds, [("gate", 1), ("gate", 2), ("rollback", 3), ("end", 3)]);
    assert!(std::fs::read_to_string(run.join("report.html")).expect("report").contains("<td>rollback</td>"));
}

#[test]
fn early_stopping_restores_the_best_evaluation() {
    let exit = "eval_every = 1\nexit = { metric = \"eval.loss\", patience = 2 }\noptimizer = { name = \"sgd\", lr = 4.0, momentum = 0.9 }";
    let text =
        [HEAD.to_string(), stage("lm", "causal_lm", 40, exit).replace("optimizer = { lr = 1e-2 }\n", "")].concat();
    let (run, summary) = run("patience", &text);
    assert_eq!(summary.stages[0].end, StageEnd::Patience, "{:?}", summary.stages);
    let rows = support::metrics(&run);
    let losses: Vec<f64> =
        rows.iter().filter(|r| r.set.as_deref() == Some("lm")).filter_map(|r| r.metrics.get("loss").copied()).collect();
    let (during, last) = losses.split_at(losses.len() - 1);
    let best = during.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(last[0], best, "the stage ends on its best evaluation: {losses:?}");
    assert!(during.len() >= 3 && during[during.len() - 1] > best);
}

#[test]
fn model_dropout_is_seeded_and_off_in_evaluation() {
    let st = support::state();
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({ "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2 })).expect("config");
    let model = Llama::new(&cfg, 1, &Device::Cpu).expect("model");
    let ids = Tensor::new(&[[1u32, 5, 7, 9]], &Device::Cpu).expect("ids");
    let logits = |a: &Adapters| bits(&model.forward(&ids, None, a).expect("forward").logits.expect("logits"));
    let plain = logits(&Adapters::none(model.sites().len()));
    let mut dropped = Adapters::none(model.sites().len());
    dropped.set_dropout(0.3, st.clone());
    st.set_training(false);
    assert_eq!(logits(&dropped), plain, "evaluation ignores dropout");
    st.set_training(true);
    st.rng.borrow_mut().set_state(99);
    let first = logits(&dropped);
    assert_ne!(first, plain);
    st.rng.borrow_mut().set_state(99);
    assert_eq!(logits(&dropped), first, "masks come from the seeded RNG");

    let text =
        |p: f64| [HEAD.to_string(), stage("lm", "causal_lm", 3, &format!("train = {{ dropout = {p} }}"))].concat();
    let (a, b, none) = (run("dropout-a", &text(0.2)).0, run("dropout-b", &text(0.2)).0, run("dropout-0", &text(0.0)).0);
    assert_eq!(tensors(&a, "lm"), tensors(&b, "lm"), "same seed, same run");
    assert_ne!(only(&tensors(&a, "lm"), "model."), only(&tensors(&none, "lm"), "model."));
}

#[test]
fn resume_skips_a_corrupt_checkpoint_and_finishes_identically() {
    let text = [
        HEAD.to_string(),
        stage("pre", "causal_lm", 3, ""),
        stage("add", "completion", 6, "eval_every = 2\ntrain = { dropout = 0.1 }"),
    ]
    .concat();
    let (run, _) = run("corrupt", &text);
    let whole = tensors(&run, "add");
    // The newest checkpoint (the end of `add`) is truncated: resume reports it, falls
    // back to the last in-stage checkpoint (step 4) and trains the rest again.
    let file = run.join("checkpoints/add").join(TENSORS_FILE);
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    let summary = support::resume_pipeline(&run);
    assert_eq!(summary.stages.last().map(|s| s.steps), Some(6));
    assert_eq!(tensors(&run, "add"), whole, "bit-identical to the uninterrupted run");
    assert_eq!(support::resumes(&run), [("add".to_string(), 4, Some("resume".to_string()))]);
}

#[test]
fn stage_config_errors_name_the_field() {
    for (extra, want) in [
        ("train = { dropout = 1.5 }", "train.dropout must be in [0, 1)"),
        ("gates = { retention = { stage = \"pre\", max_drop = 0.1, patience = -1 } }", "patience"),
        ("anomaly = { spike_margin = -1.0 }", "anomaly.spike_margin"),
        (
            "gates.retention = [{ stage = \"pre\", max_drop = 0.1 }, { stage = \"pre\", maxdrop = 0.1 }]",
            "stages[1].gates.retention[1].maxdrop: unknown field `maxdrop`",
        ),
        (
            "gates.retention = [{ stage = \"later\", max_drop = 0.1 }]",
            "gates.retention.stage `later` is not an earlier stage",
        ),
        ("from = \"nowhere\"", "from `nowhere` is neither an earlier stage nor a model directory"),
    ] {
        let text = [HEAD.to_string(), stage("pre", "causal_lm", 1, ""), stage("next", "causal_lm", 1, extra)].concat();
        let err = PipelineConfig::from_str(&text, "t.toml", &[]).expect_err(extra).to_string();
        assert!(err.contains(want) && err.contains("t.toml") && !err.contains('\n'), "{extra}: {err}");
    }
}
