//! The stage runner's controls, each checked on what it changes: a bad plugin or target
//! fails before training; layer-wise LR decay, unfreezing and weight decay move exactly
//! the weights they should; an exit threshold, epochs and gradient accumulation set
//! where a stage ends; the anomaly guard restores, retries and gives up.

mod support;

use stagecraft_core::config::PipelineConfig;
use stagecraft_core::pipeline::{Pipeline, StageEnd};
use stagecraft_core::plugin::Registry;
use stagecraft_core::report::Split;
use std::collections::BTreeMap;
use support::{bits, checkpoint_tensors, events, metrics, run_pipeline, scratch, try_pipeline};

fn three_stages() -> String {
    r#"
[run]
name = "t"
seed = 3

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=8&digits=1&seed=1" }
optimizer = { lr = 3e-3 }
max_steps = 3
batch_size = 8
seq_len = 24

[[stages]]
name = "adapt_add"
objective = "completion"
data = { train = "synthetic:add?n=64&digits=1", eval = "synthetic:add?n=8&digits=1&seed=2" }
optimizer = { lr = 1e-2 }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 2, alpha = 4, init = "gaussian" }]
max_steps = 3
batch_size = 8
seq_len = 12

[[stages]]
name = "adapt_sub"
objective = "completion"
data = { train = "synthetic:sub?n=64&digits=1", eval = "synthetic:sub?n=8&digits=1&seed=3", replay = { from = "adapt_add", ratio = 0.25 } }
optimizer = { lr = 1e-2 }
handoff = { adapters = "merge" }
max_steps = 3
batch_size = 8
seq_len = 12
"#
    .to_string()
}

#[test]
fn a_bad_plugin_fails_before_training() {
    let dir = scratch("pipe-bad");
    for (text, want) in [
        (three_stages().replace(r#"plugin = "lora""#, r#"plugin = "loraa""#), "no method plugin named `loraa`"),
        (
            three_stages().replace("targets = [\"q_proj\", \"v_proj\"]", "targets = [\"q_proj\"], rank = 4"),
            "unknown field `rank`",
        ),
        (
            three_stages().replace("optimizer = { lr = 3e-3 }", "optimizer = { name = \"adamz\", lr = 3e-3 }"),
            "no optimizer plugin named `adamz`",
        ),
        (three_stages().replace("synthetic:add?n=64", "synthetic:addd?n=64"), "addd"),
        (
            three_stages().replace("synthetic:add?n=64&digits=1", "nowhere/missing.jsonl"),
            "data source `nowhere/missing.jsonl`: no such file",
        ),
    ] {
        let cfg = PipelineConfig::from_str(&text, "t.toml", &[]).expect("parses");
        let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
        let err = Pipeline::new(cfg, reg, &dir.join("run"), true).err().expect("must fail").to_string();
        assert!(err.contains(want) && !err.contains('\n'), "{err}");
        assert!(!dir.join("run/metrics.jsonl").exists(), "nothing trained");
    }
}

#[test]
fn a_target_matching_no_site_fails_before_training() {
    let (run, result) = try_pipeline(
        "pipe-target",
        &three_stages().replace("targets = [\"q_proj\", \"v_proj\"]", "targets = [\"qq_proj\"]"),
        &[],
    );
    let err = result.expect_err("must fail");
    assert!(err.contains("stage `adapt_add`") && err.contains("`qq_proj` matches no linear site"), "{err}");
    assert!(metrics(&run).is_empty(), "nothing trained");
}

/// One causal-LM stage `ft` of `steps` SGD steps (no momentum) on a fresh 2-layer Llama.
fn one_stage_of(lr: f64, steps: u64, extra: &str) -> String {
    one_stage_with(&format!("{{ name = \"sgd\", lr = {lr}, momentum = 0.0 }}"), steps, extra)
}

/// One causal-LM stage `ft` with the `optimizer` table given.
fn one_stage_with(optimizer: &str, steps: u64, extra: &str) -> String {
    format!(
        r#"
[run]
seed = 5
[model]
arch = "llama"
hidden_size = 16
num_layers = 2
num_heads = 2
[[stages]]
name = "ft"
objective = "causal_lm"
data = {{ train = "synthetic:arith_text?n=32&digits=1", eval = "synthetic:arith_text?n=16&digits=1&seed=9" }}
optimizer = {optimizer}
max_steps = {steps}
batch_size = 8
seq_len = 16
{extra}
"#
    )
}

fn one_stage(lr: f64, extra: &str) -> String {
    one_stage_of(lr, 1, extra)
}

/// The values of every tensor of stage `ft`'s checkpoint.
fn stage_weights(name: &str, text: &str) -> BTreeMap<String, Vec<f32>> {
    let run = run_pipeline(name, text);
    checkpoint_tensors(&run.dir, "ft")
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32 values")))
        .collect()
}

#[test]
fn layerwise_lr_decay_scales_each_layers_update() {
    // One SGD step from the same start: W = W0 - lr·m·g, with m the layer's multiplier.
    let a = stage_weights("llrd-a", &one_stage(0.1, ""));
    let c = stage_weights("llrd-c", &one_stage(0.2, ""));
    let b = stage_weights("llrd-b", &one_stage(0.1, "train = { layer_lr_decay = 0.5 }"));
    let ratio = |name: &str| -> f64 {
        let (wa, wb, wc) = (&a[name], &b[name], &c[name]);
        // W0 = 2·W_A − W_C; the ratio of updates is (W_B − W0) / (W_A − W0).
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..wa.len() {
            let w0 = 2.0 * wa[i] as f64 - wc[i] as f64;
            num += (wb[i] as f64 - w0) * (wa[i] as f64 - w0);
            den += (wa[i] as f64 - w0).powi(2);
        }
        num / den
    };
    for (name, want) in [
        ("model.lm_head.weight", 1.0),
        ("model.model.layers.1.mlp.up_proj.weight", 1.0),
        ("model.model.layers.0.mlp.up_proj.weight", 0.5),
        ("model.model.embed_tokens.weight", 0.25),
    ] {
        let got = ratio(name);
        assert!((got - want).abs() < 1e-2, "{name}: update ratio {got}, expected {want}");
    }
}

#[test]
fn unfreezing_starts_training_at_the_step_after_the_given_one() {
    // `at_step = 2`: the layer is frozen for steps 1 and 2 and trains from step 3.
    let unfreeze =
        r#"train = { freeze = ["model.layers.0"], unfreeze = [{ at_step = 2, modules = ["model.layers.0"] }] }"#;
    let frozen = r#"train = { freeze = ["model.layers.0"] }"#;
    let run = |name: &str, extra: &str, steps: u64| stage_weights(name, &one_stage_of(0.1, steps, extra));
    let l0 = "model.model.layers.0.mlp.up_proj.weight";
    // Never trained = its initial value (every run starts from the same seeded init).
    let init = run("unfreeze-init", frozen, 2);
    assert_eq!(run("unfreeze-at-2-of-2", unfreeze, 2)[l0], init[l0], "still frozen at step 2");
    assert_ne!(run("unfreeze-at-2-of-3", unfreeze, 3)[l0], init[l0], "trains at step 3");
    // Unfrozen from the start is never frozen.
    let early = run("unfreeze-0", &unfreeze.replace("at_step = 2", "at_step = 0"), 4);
    assert_eq!(early[l0], run("unfreeze-none", "train = { freeze = [] }", 4)[l0]);
}

#[test]
fn weight_decay_leaves_biases_and_norms_alone() {
    // One AdamW step on a model with biases and norm weights, with and without weight
    // decay: the gradient step is the same, so only decayed tensors may differ.
    let base = support::fixture("llama-tied", "base");
    let text = |wd: f64| {
        one_stage_with(&format!("{{ lr = 1e-2, weight_decay = {wd} }}"), 1, &format!("from = \"{}\"", base.display()))
    };
    let (plain, decayed) = (run_pipeline("wd-0", &text(0.0)), run_pipeline("wd-1", &text(0.5)));
    let (plain, decayed) = (checkpoint_tensors(&plain.dir, "ft"), checkpoint_tensors(&decayed.dir, "ft"));
    let (mut exempt, mut decays) = (0, 0);
    for (name, t) in plain.iter().filter(|(k, _)| k.starts_with("model.")) {
        if t.rank() == 1 {
            assert!(name.ends_with(".bias") || name.contains("norm"), "{name}");
            assert_eq!(bits(t), bits(&decayed[name]), "{name}: biases and norm weights are not decayed");
            exempt += 1;
        } else {
            assert_ne!(bits(t), bits(&decayed[name]), "{name}: matrices are decayed");
            decays += 1;
        }
    }
    assert!(exempt >= 10 && decays >= 10, "{exempt} exempt, {decays} decayed");
}

#[test]
fn an_exit_threshold_ends_the_stage_at_the_first_evaluation_past_it() {
    let budget = one_stage_of(0.5, 16, "eval_every = 2");
    let full = run_pipeline("exit-none", &budget);
    assert_eq!(full.summary.stages[0].end, StageEnd::Budget);
    let evals: Vec<(u64, f64)> = metrics(&full.dir)
        .iter()
        .filter(|r| r.set.as_deref() == Some("ft"))
        .map(|r| (r.step, r.metrics["loss"]))
        .collect();
    // A threshold the loss first crosses at an evaluation in the middle of the stage.
    let (k, at_k) = evals.iter().copied().skip(2).find(|&(_, l)| l < evals[0].1 - 0.05).expect("the loss falls");
    assert!(k < 16, "{evals:?}");
    let before = evals.iter().take_while(|(s, _)| *s < k).map(|e| e.1).fold(f64::INFINITY, f64::min);
    let threshold = (at_k + before) / 2.0;
    assert!(at_k < threshold && threshold < before, "{evals:?}");
    let exit = run_pipeline("exit", &format!("{budget}exit = {{ metric = \"eval.loss\", below = {threshold} }}\n"));
    assert_eq!(
        (exit.summary.stages[0].steps, &exit.summary.stages[0].end),
        (k, &StageEnd::Exit),
        "eval losses {evals:?}, threshold {threshold}"
    );
}

#[test]
fn epochs_are_a_budget_counted_in_optimizer_steps() {
    // 32 training examples, batches of 8: 4 steps an epoch; 2 with two micro-batches.
    let epochs = |extra: &str| one_stage_of(0.1, 1, &format!("epochs = 2\n{extra}")).replace("max_steps = 1\n", "");
    let plain = run_pipeline("epochs", &epochs(""));
    assert_eq!((plain.summary.stages[0].steps, &plain.summary.stages[0].end), (8, &StageEnd::Budget));
    let accum = run_pipeline("epochs-accum", &epochs("grad_accum = 2"));
    assert_eq!(accum.summary.stages[0].steps, 4);
    let steps: Vec<u64> =
        metrics(&accum.dir).iter().filter(|r| r.set.is_none() && r.loss.is_some()).map(|r| r.step).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
}

fn faulty(
    name: &str,
    objective: &str,
    extra: &str,
    steps: u64,
) -> (std::path::PathBuf, Result<stagecraft_core::pipeline::RunSummary, String>) {
    let text = one_stage_of(0.05, steps, extra)
        .replace("objective = \"causal_lm\"", &format!("objective = {{ name = \"nan_loss\", {objective} }}"));
    try_pipeline(name, &text, &[&support::compat().faulty])
}

#[test]
fn an_injected_nan_restores_the_last_good_state_and_continues() {
    let (run, result) = faulty("nan", "nan_at = [14]", "", 30);
    assert_eq!(result.expect("recovers and finishes").stages[0].steps, 30);
    let rows = metrics(&run);
    let nan_rows = rows.iter().filter(|r| r.loss.is_some_and(f64::is_nan)).count();
    assert_eq!(nan_rows, 1, "the NaN step is logged once");
    assert_eq!(events(&run).iter().filter(|e| e.2 == "anomaly").count(), 1);
    let log = stagecraft_core::report::EventLog::read(&run.join("events.jsonl")).expect("events");
    assert!(
        log.iter().any(|e| e.kind == stagecraft_core::report::EventKind::Anomaly
            && e.step == 14
            && e.message.contains("restored step 10")),
        "{log:?}"
    );
    // Restored to step 10 (the last good state) and retrained from there at half the LR.
    let lrs: Vec<f64> =
        rows.iter().filter(|r| r.step == 12 && r.loss.is_some_and(f64::is_finite)).filter_map(|r| r.lr).collect();
    assert_eq!(lrs.len(), 2, "step 12 ran twice: {lrs:?}");
    assert!((lrs[1] - lrs[0] * 0.5).abs() < 1e-12);
}

#[test]
fn a_non_finite_gradient_under_a_finite_loss_is_caught_too() {
    let (run, result) = faulty("nan-grad", "nan_grad_at = [14]", "", 20);
    assert_eq!(result.expect("recovers and finishes").stages[0].steps, 20);
    let log = stagecraft_core::report::EventLog::read(&run.join("events.jsonl")).expect("events");
    let anomaly: Vec<_> = log.iter().filter(|e| e.kind == stagecraft_core::report::EventKind::Anomaly).collect();
    assert_eq!(anomaly.len(), 1, "{log:?}");
    assert!(
        anomaly[0].step == 14
            && anomaly[0].message.contains("gradient")
            && anomaly[0].message.contains("restored step 10"),
        "{anomaly:?}"
    );
    let at_12 = metrics(&run).iter().filter(|r| r.step == 12 && r.set.is_none()).count();
    assert_eq!(at_12, 2, "restored to step 10 and retrained");
}

#[test]
fn the_guard_gives_up_after_max_recoveries_and_keeps_the_records() {
    // NaN at the 4th, 5th and 6th training call: step 4, then step 1 twice after each
    // restore to the start. Two recoveries are allowed; the third anomaly ends the run.
    let (run, result) = faulty("give-up", "nan_at = [4, 5, 6]", "anomaly = { max_recoveries = 2 }", 20);
    let err = result.expect_err("the stage fails");
    assert!(err.contains("stage `ft`") && err.contains("2 recoveries"), "{err}");
    let anomalies = events(&run).into_iter().filter(|e| e.2 == "anomaly").count();
    assert_eq!(anomalies, 2, "two recoveries were made");
    let steps: Vec<u64> = metrics(&run).iter().filter(|r| r.set.is_none()).map(|r| r.step).collect();
    assert_eq!(&steps[..3], [1, 2, 3], "the rows before the failure are kept: {steps:?}");
}

#[test]
fn a_loss_spike_is_rolled_back_unless_within_the_margin() {
    for (margin, recovered) in [(0.5, true), (1000.0, false)] {
        let (run, result) = faulty(
            &format!("spike-{margin}"),
            "spike_at = [14]",
            &format!("anomaly = {{ spike_margin = {margin} }}"),
            20,
        );
        assert_eq!(result.expect("finishes").stages[0].steps, 20);
        let rows = metrics(&run);
        let at_14: Vec<f64> = rows.iter().filter(|r| r.step == 14 && r.set.is_none()).filter_map(|r| r.loss).collect();
        let at_12 = rows.iter().filter(|r| r.step == 12 && r.set.is_none()).count();
        if recovered {
            assert_eq!(at_14.len(), 2, "the spike is logged, then step 14 runs again: {at_14:?}");
            assert!(at_14[0] > 10.0 * at_14[1], "{at_14:?}");
            assert_eq!(at_12, 2, "restored to step 10");
        } else {
            assert_eq!((at_14.len(), at_12), (1, 1), "a jump smaller than the margin is not a spike");
        }
    }
}

#[test]
fn a_stage_with_replay_logs_its_task_and_replay_losses_apart() {
    let run = run_pipeline("pipe-split", &three_stages());
    let train: Vec<_> = metrics(&run.dir).into_iter().filter(|r| r.split == Split::Train).collect();
    for r in &train {
        let split = (r.task_loss, r.replay_loss);
        if r.stage == "adapt_sub" {
            let (task, replay) = (split.0.expect("task loss"), split.1.expect("replay loss"));
            assert!(task.is_finite() && replay.is_finite() && task > 0.0 && replay > 0.0, "{r:?}");
            // 6 task rows and 2 replayed ones: the step's loss lies between the two parts'.
            let (lo, hi) = (task.min(replay), task.max(replay));
            let loss = r.loss.expect("loss");
            assert!(lo - 0.05 <= loss && loss <= hi + 0.05, "loss {loss} outside [{lo}, {hi}]");
        } else {
            assert_eq!(split, (None, None), "stage `{}` replays nothing", r.stage);
        }
    }
    assert_eq!(train.iter().filter(|r| r.stage == "adapt_sub").count(), 3);
}

#[test]
fn augmentation_changes_what_a_stage_trains_on_the_same_way_every_run() {
    let plain = one_stage_of(0.1, 3, "");
    let augmented =
        one_stage_of(0.1, 3, "augment = [{ kind = \"token_dropout\", p = 0.2 }, { kind = \"swap\", p = 0.2 }]");
    let losses = |name: &str, text: &str| -> Vec<u64> {
        let run = run_pipeline(name, text);
        metrics(&run.dir).iter().filter(|r| r.split == Split::Train).map(|r| r.loss.expect("loss").to_bits()).collect()
    };
    let (a, b, c) = (losses("aug-none", &plain), losses("aug-1", &augmented), losses("aug-2", &augmented));
    assert_eq!(b, c, "the same seed draws the same augmentations");
    assert_ne!(a[1..], b[1..], "augmented rows train differently");

    let err = try_pipeline(
        "aug-bad",
        &one_stage_of(0.1, 1, "augment = [{ kind = \"token_mask\", p = 0.1, token = 999 }]"),
        &[],
    );
    let err = err.1.expect_err("a mask token past the vocabulary");
    assert!(err.contains("stage `ft`") && err.contains("token 999 is not in the vocabulary (256 tokens)"), "{err}");
    for (extra, want) in [
        ("augment = [{ kind = \"token_dropout\", p = 1.5 }]", "augment `token_dropout`: p must be in [0, 1), got 1.5"),
        ("augment = [{ kind = \"shuffle\", p = 0.1 }]", "unknown variant `shuffle`"),
    ] {
        let err = PipelineConfig::from_str(&one_stage_of(0.1, 1, extra), "t.toml", &[]).expect_err(extra).to_string();
        assert!(err.contains(want) && !err.contains('\n'), "{err}");
    }
}
