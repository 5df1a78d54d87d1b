//! The objective's lifecycle as the host honours it: `on_step_end` after every
//! optimizer step, `on_eval_end` after every evaluation of the stage's own set,
//! `Control::STOP` ends the stage, `Control::ROLLBACK` restores its best state, and the
//! objective is given exactly the outputs it lists in `required_outputs`. The probe
//! objective (`tests/compat/plugin-lifecycle`) fails the run on a call out of order and
//! reports what it saw as metrics.

mod support;

use stagecraft_core::pipeline::StageEnd;
use stagecraft_core::report::{MetricRow, Split};
use std::path::Path;
use support::{events, lifecycle_probe, metrics, run_pipeline_with, try_pipeline};

/// A two-stage pipeline: `probe` (the probe objective with `probe_config`, evaluated
/// every `eval_every` steps) and `after`, which must still run.
fn pipeline(probe_config: &str, steps: u64, eval_every: u64, lr: f64) -> String {
    let data = r#"{ train = "synthetic:arith_text?n=64&digits=1", eval = "synthetic:arith_text?n=8&digits=1&seed=1" }"#;
    format!(
        r#"
[run]
name = "hooks"
seed = 11

[model]
arch = "llama"
hidden_size = 16
num_layers = 1
num_heads = 2

[[stages]]
name = "probe"
objective = {{ name = "lifecycle_probe"{probe_config} }}
data = {data}
optimizer = {{ lr = {lr} }}
max_steps = {steps}
eval_every = {eval_every}
batch_size = 8
seq_len = 24

[[stages]]
name = "after"
objective = "causal_lm"
data = {data}
optimizer = {{ lr = 1e-2 }}
max_steps = 2
batch_size = 8
seq_len = 24
"#
    )
}

/// The probe stage's evaluations of its own set, in order.
fn own_evals(run: &Path) -> Vec<MetricRow> {
    metrics(run)
        .into_iter()
        .filter(|r| r.split == Split::Eval && r.stage == "probe" && r.set.as_deref() == Some("probe"))
        .collect()
}

#[test]
fn hooks_come_after_every_step_and_every_own_evaluation() {
    let r = run_pipeline_with("hooks-order", &pipeline("", 6, 2, 1e-2), &[lifecycle_probe()]);
    let evals = own_evals(&r.dir);
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), [2, 4, 6]);
    for (k, e) in evals.iter().enumerate() {
        // Evaluated after the step's on_step_end, before its own on_eval_end.
        assert_eq!(e.metrics["steps_seen"], e.step as f64, "step {}", e.step);
        assert_eq!(e.metrics["evals_seen"], k as f64, "step {}", e.step);
    }
    // on_eval_end was told the previous evaluation's loss.
    assert_eq!(evals[1].metrics["last_eval_loss"], evals[0].metrics["loss"]);
    assert_eq!(evals[2].metrics["last_eval_loss"], evals[1].metrics["loss"]);
    assert_eq!(r.summary.stages[0].end, StageEnd::Budget);
}

#[test]
fn stop_from_on_step_end_ends_the_stage_and_the_pipeline_goes_on() {
    let r = run_pipeline_with("hooks-stop", &pipeline(", stop_at_step = 3", 10, 4, 1e-2), &[lifecycle_probe()]);
    let s = &r.summary.stages;
    assert_eq!((s[0].steps, s[0].end), (3, StageEnd::ObjectiveStop));
    assert_eq!((s[1].stage.as_str(), s[1].end), ("after", StageEnd::Budget));
    assert!(events(&r.dir).contains(&("probe".into(), 3, "objective".into())), "{:?}", events(&r.dir));
}

#[test]
fn rollback_from_on_eval_end_restores_the_best_evaluated_state() {
    // A learning rate high enough that some evaluation is worse than an earlier one.
    let lr = 0.3;
    let free = run_pipeline_with("hooks-free", &pipeline("", 8, 1, lr), &[lifecycle_probe()]);
    let losses: Vec<f64> = own_evals(&free.dir).iter().map(|e| e.metrics["loss"]).collect();
    let worse = (1..losses.len())
        .find(|&k| losses[k] > losses[..k].iter().copied().fold(f64::INFINITY, f64::min))
        .expect("some evaluation is worse than an earlier one (raise lr)");
    let best = losses[..=worse].iter().copied().fold(f64::INFINITY, f64::min);

    let config = format!(", rollback_at_eval = {}", worse + 1);
    let r = run_pipeline_with("hooks-rollback", &pipeline(&config, 8, 1, lr), &[lifecycle_probe()]);
    let s = &r.summary.stages[0];
    assert_eq!((s.steps, s.end), (worse as u64 + 1, StageEnd::ObjectiveRollback));
    let evals = own_evals(&r.dir);
    // The same trajectory up to the rollback, then the end-of-stage evaluation of the
    // restored state: the best loss, not the last one.
    let before: Vec<f64> = evals[..=worse].iter().map(|e| e.metrics["loss"]).collect();
    assert_eq!(before, losses[..=worse]);
    let end = evals.last().expect("end-of-stage evaluation").metrics["loss"];
    assert_eq!(end, best, "losses {losses:?}");
    assert_ne!(end, losses[worse]);
}

#[test]
fn the_objective_gets_exactly_the_outputs_it_lists() {
    // Asks for `hidden` as well: it gets both, and nothing else.
    let both = r#", outputs = ["logits", "hidden"]"#;
    run_pipeline_with("hooks-outputs", &pipeline(both, 2, 2, 1e-2), &[lifecycle_probe()]);
    // Lists no logits: the language-model head is not run, and the objective cannot
    // read them.
    let (_, result) =
        try_pipeline("hooks-no-logits", &pipeline(r#", outputs = ["hidden"]"#, 2, 2, 1e-2), &[lifecycle_probe()]);
    let err = result.expect_err("no logits were asked for");
    assert!(err.contains("has no `logits`") && err.contains("it has: hidden"), "{err}");
}
