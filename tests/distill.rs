//! Distillation through the SDK: a stage with its own fresh (smaller) `model` learns
//! from a frozen `teacher` (an earlier stage) with the `distill` objective.
//!
//! The example pipeline distils a pretrained Llama into one a sixth of its size, and the
//! distilled student ends with a lower loss than the same student trained on the same
//! data alone, on both eval sets; its KL to the teacher falls and its agreement with the
//! teacher rises over the stage. A `teacher` no objective reads and an objective that
//! reads `teacher_logits` without a teacher are refused before anything trains, a
//! teacher with another vocabulary when the student's stage starts, and an unknown
//! teacher when the config is read, each naming the stage.

mod support;

use stagecraft_core::config::PipelineConfig;
use stagecraft_core::report::{MetricRow, Split};
use support::{checkpoint_tensors, metrics, root, run_pipeline, try_pipeline};

fn example() -> String {
    std::fs::read_to_string(root().join("examples/pipelines/distill.toml")).expect("examples/pipelines/distill.toml")
}

/// Stage `stage`'s last evaluation of set `set`: metric `name`.
fn last_eval(rows: &[MetricRow], stage: &str, set: &str, name: &str) -> f64 {
    let row = rows
        .iter()
        .rev()
        .find(|r| r.split == Split::Eval && r.stage == stage && r.set.as_deref() == Some(set))
        .unwrap_or_else(|| panic!("no evaluation of `{set}` in stage `{stage}`"));
    row.metrics[name]
}

fn parameters(run: &std::path::Path, stage: &str) -> usize {
    checkpoint_tensors(run, stage).values().map(|t| t.elem_count()).sum()
}

#[test]
fn the_example_distils_a_pretrained_teacher_into_a_smaller_student_that_beats_training_alone() {
    let run = run_pipeline("distill-example", &example());
    let rows = metrics(&run.dir);
    let (teacher, student) = (parameters(&run.dir, "teacher"), parameters(&run.dir, "student"));
    assert!(student * 5 < teacher, "the student ({student} values) should be far smaller than the teacher ({teacher})");
    assert_eq!(parameters(&run.dir, "student_alone"), student, "both students have the same architecture");

    for set in ["student", "teacher"] {
        let (distilled, alone) =
            (last_eval(&rows, "student", set, "loss"), last_eval(&rows, "student_alone", set, "loss"));
        assert!(distilled < alone, "on `{set}`: distilled {distilled} should beat trained alone {alone}");
    }
    let own: Vec<&MetricRow> = rows
        .iter()
        .filter(|r| r.split == Split::Eval && r.stage == "student" && r.set.as_deref() == Some("student"))
        .collect();
    let (first, last) = (own.first().expect("evaluations"), own.last().expect("evaluations"));
    assert!(own.len() >= 3, "{} evaluations", own.len());
    assert!(last.metrics["kl"] < first.metrics["kl"] / 4.0, "KL {} -> {}", first.metrics["kl"], last.metrics["kl"]);
    assert!(last.metrics["agreement"] > first.metrics["agreement"], "agreement should rise");
    // The training loss mixes in the KL term; the evaluation's `loss` is the task alone.
    let train_loss = rows.iter().rev().find(|r| r.stage == "student" && r.split == Split::Train).and_then(|r| r.loss);
    assert!(train_loss.is_some_and(f64::is_finite), "{train_loss:?}");
}

#[test]
fn a_teacher_nothing_reads_a_distillation_without_one_and_a_vocabulary_mismatch_are_refused() {
    let text = example().replace("max_steps = 200", "max_steps = 6");
    let cases = [
        (
            text.replace(
                r#"objective = { name = "distill", temperature = 2.0, alpha = 0.5 }"#,
                r#"objective = "causal_lm""#,
            ),
            "stage `student`: `teacher = \"teacher\"` is set, but objective `causal_lm` does not read `teacher_logits`",
        ),
        (
            text.replace("teacher = \"teacher\"\n", ""),
            "stage `student`: objective `distill` reads `teacher_logits`: give its stage a `teacher`",
        ),
        (
            text.replace("hidden_size = 32, num_layers = 2", "hidden_size = 32, vocab_size = 300, num_layers = 2"),
            "stage `student`: teacher `teacher` has a vocabulary of 256, the student 300",
        ),
    ];
    for (i, (config, want)) in cases.iter().enumerate() {
        let (_, result) = try_pipeline(&format!("distill-refused-{i}"), config, &[]);
        let err = result.expect_err(want);
        assert!(err.contains(want), "case {i}: {err}");
    }
    let unknown = text.replace("teacher = \"teacher\"", "teacher = \"nowhere\"");
    let err = PipelineConfig::from_str(&unknown, "distill.toml", &[]).expect_err("unknown teacher").to_string();
    assert!(
        err.contains("stage `student`: teacher `nowhere` is neither an earlier stage nor a model directory"),
        "{err}"
    );
}
