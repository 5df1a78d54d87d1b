//! Regularization against forgetting (`regularize = { kind = "ewc" | "l2sp", ... }`):
//! with replay off, a stage that fine-tunes every weight on a new task forgets less of
//! the earlier stage's eval set with either penalty than without; the penalty is
//! logged; bad configurations are refused in one line.

mod support;

use stagecraft_core::config::PipelineConfig;
use stagecraft_core::report::Split;
use support::{metrics, run_pipeline};

/// Pretraining on arithmetic text, then fine-tuning every weight on addition with a
/// high learning rate and no replay: the pretraining loss rises.
fn two_stages(regularize: &str) -> String {
    format!(
        r#"
[run]
name = "forget"
seed = 5

[model]
arch = "llama"
hidden_size = 32
num_layers = 2
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=512&digits=1&lines=2", eval = "synthetic:arith_text?n=32&digits=1&lines=2&seed=1" }}
optimizer = {{ lr = 1e-2 }}
max_steps = 60
batch_size = 16
seq_len = 32

[[stages]]
name = "finetune_add"
objective = "completion"
data = {{ train = "synthetic:add?n=512&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2" }}
optimizer = {{ lr = 1e-2 }}
max_steps = 40
batch_size = 16
seq_len = 12
{regularize}
"#
    )
}

/// The last eval of `set` in stage `stage`: its loss.
fn eval_loss(rows: &[stagecraft_core::report::MetricRow], stage: &str, set: &str) -> f64 {
    rows.iter()
        .rev()
        .find(|r| r.split == Split::Eval && r.stage == stage && r.set.as_deref() == Some(set))
        .and_then(|r| r.metrics.get("loss").copied())
        .unwrap_or_else(|| panic!("no eval of {set} in {stage}"))
}

/// How much the pretraining eval loss rose over the fine-tuning stage, and the
/// fine-tuning stage's own eval loss.
fn forgetting_and_task(name: &str, regularize: &str) -> (f64, f64) {
    let run = run_pipeline(name, &two_stages(regularize));
    let rows = metrics(&run.dir);
    let before = eval_loss(&rows, "pretrain", "pretrain");
    let after = eval_loss(&rows, "finetune_add", "pretrain");
    (after - before, eval_loss(&rows, "finetune_add", "finetune_add"))
}

#[test]
fn ewc_and_l2sp_forget_less_than_plain_fine_tuning() {
    let (plain, plain_task) = forgetting_and_task("forget-plain", "");
    let (ewc, ewc_task) =
        forgetting_and_task("forget-ewc", r#"regularize = { kind = "ewc", lambda = 20000.0, fisher_batches = 4 }"#);
    let (l2sp, l2sp_task) = forgetting_and_task("forget-l2sp", r#"regularize = { kind = "l2sp", lambda = 0.1 }"#);
    println!("pretraining loss rise: plain {plain:.4}, ewc {ewc:.4}, l2sp {l2sp:.4}");
    println!("addition eval loss: plain {plain_task:.4}, ewc {ewc_task:.4}, l2sp {l2sp_task:.4}");
    assert!(plain > 1.0, "the plain stage should forget measurably: rise {plain}");
    assert!(ewc < 0.5 * plain, "EWC: rise {ewc} against {plain} without");
    assert!(l2sp < 0.5 * plain, "L2-SP: rise {l2sp} against {plain} without");
}

/// The default pipeline's first two stages with replay off (and 100 fine-tuning
/// steps): fine-tuning on addition raises the pretraining loss past the default's
/// retention gate; EWC holds it to a small part of that while the stage learns
/// addition as well.
#[test]
fn ewc_keeps_the_default_pipelines_pretraining_with_replay_off() {
    let default = include_str!("../examples/pipelines/default.toml");
    let two = &default[..default.rfind("[[stages]]").expect("three stages")];
    let base = two
        .replace(r#", replay = { from = "pretrain", ratio = 0.2 }"#, "")
        .replace("max_steps = 400\nbatch_size = 32\nseq_len = 16", "max_steps = 100\nbatch_size = 32\nseq_len = 16")
        .replace("eval_every = 100\nexit", "eval_every = 50\nexit");
    assert!(!base.contains("replay = ") && base.contains("max_steps = 100"), "the default pipeline changed: {base}");
    let with_ewc = base.replace(
        "gates = { retention",
        "regularize = { kind = \"ewc\", lambda = 1e6, fisher_batches = 8 }\ngates = { retention",
    );
    let at_100 = |name: &str, text: &str| {
        let rows = metrics(&run_pipeline(name, text).dir);
        let eval = |set: &str| {
            rows.iter()
                .find(|r| {
                    r.split == Split::Eval
                        && r.stage == "finetune_add"
                        && r.step == 100
                        && r.set.as_deref() == Some(set)
                })
                .map(|r| r.metrics.clone())
                .unwrap_or_else(|| panic!("{name}: no eval of {set} at step 100"))
        };
        let pretrained = eval_loss(&rows, "pretrain", "pretrain");
        (eval("pretrain")["loss"] - pretrained, eval("finetune_add")["exact_match"])
    };
    let (plain_rise, plain_em) = at_100("forget-default", &base);
    let (ewc_rise, ewc_em) = at_100("forget-default-ewc", &with_ewc);
    println!("after 100 steps of finetune_add: pretraining loss +{plain_rise:.3} (exact match {plain_em:.3}) without EWC, +{ewc_rise:.3} ({ewc_em:.3}) with");
    // Past the default's retention gate on pretraining (max_drop 0.5) without EWC...
    assert!(plain_rise > 0.5, "without replay the pretraining loss should rise: {plain_rise}");
    // ...and a small part of that with it, for the same exact match on addition.
    assert!(ewc_rise < 0.25 * plain_rise, "EWC: +{ewc_rise} against +{plain_rise}");
    assert!(ewc_em > plain_em - 0.15, "EWC should still learn addition: {ewc_em} against {plain_em}");
}

#[test]
fn the_penalty_is_logged_and_the_anchors_saved() {
    let run = run_pipeline("forget-logged", &two_stages(r#"regularize = { kind = "l2sp", lambda = 0.5 }"#));
    let rows = metrics(&run.dir);
    let penalties: Vec<f64> = rows
        .iter()
        .filter(|r| r.split == Split::Train && r.stage == "finetune_add")
        .map(|r| r.penalty.expect("a penalty on every step"))
        .collect();
    // The first step starts at the anchor; the weights then move away from it.
    assert_eq!(penalties[0], 0.0);
    assert!(penalties.iter().skip(1).all(|p| *p > 0.0), "{penalties:?}");
    assert!(rows.iter().filter(|r| r.stage == "pretrain").all(|r| r.penalty.is_none()));
    assert!(run.dir.join("anchors/finetune_add.safetensors").is_file());
}

#[test]
fn bad_regularize_configs_are_refused_in_one_line() {
    let cases = [
        (r#"regularize = { kind = "ewc", lambda = 0.0 }"#, "regularize.lambda must be a finite number > 0, got 0"),
        (r#"regularize = { kind = "ewc", lambda = 1e5, fisher_batches = 0 }"#, "regularize.fisher_batches must be at least 1"),
        (r#"regularize = { kind = "ewc", lambda = 1e5, from = ["later"] }"#, "regularize.from `later` is not an earlier stage"),
        (r#"regularize = { kind = "l2sp", lambda = 0.1, from = ["pretrain"] }"#, "regularize.from is for `ewc`"),
        (r#"regularize = { kind = "ewk", lambda = 1.0 }"#, "unknown variant `ewk`"),
        (r#"regularize = { kind = "ewc" }"#, "missing field `lambda`"),
        (
            "regularize = { kind = \"l2sp\", lambda = 0.1 }\ntrain = { unfreeze = [{ at_step = 5, modules = [\"model.layers.0\"] }] }",
            "regularize does not combine with train.unfreeze",
        ),
    ];
    for (extra, want) in cases {
        let err = PipelineConfig::from_str(&two_stages(extra), "p.toml", &[]).expect_err("refused").to_string();
        assert!(err.contains(want) && !err.contains('\n'), "{extra}: {err}");
        assert!(err.contains("finetune_add") || err.contains("p.toml:"), "names where: {err}");
    }
    // EWC in the first stage has no earlier stage to hold on to.
    let first =
        two_stages("").replacen("max_steps = 60", "max_steps = 60\nregularize = { kind = \"ewc\", lambda = 1e5 }", 1);
    let err = PipelineConfig::from_str(&first, "p.toml", &[]).expect_err("refused").to_string();
    assert!(err.contains("the first stage has none"), "{err}");
}
