//! `completion`: next-token prediction on the completion only (instruction tuning,
//! supervised fine-tuning on prompt/completion pairs).
//!
//! As [`causal_lm`](crate::causal_lm), but the batch must carry `labels [b, s]` in which
//! the host has set prompt and padding tokens to -100, so only completion tokens count.
//! Metrics: `token_accuracy`, and `exact_match`: per example, 1 when the argmax at every
//! completion position is the right token (teacher-forced), over the examples that have
//! at least one completion token.
//!
//! ```
//! use stagecraft_stages::Completion;
//! use stagecraft_sdk::Plugin;
//! assert_eq!(Completion::NAME, "completion");
//! ```

use crate::config::LmConfig;
use crate::next_token::next_token_loss;
use stagecraft_sdk::prelude::*;

/// The completion-only language-modeling objective.
pub struct Completion {
    cfg: LmConfig,
}

impl Plugin for Completion {
    const NAME: &'static str = "completion";
    const DESCRIPTION: &'static str = "next-token cross-entropy over completion tokens only";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = LmConfig;

    fn new(cfg: LmConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(Completion { cfg })
    }
}

/// Each example's exact match: 1 when all its completion tokens are predicted right,
/// 0 when one is not, `None` for an example whose completion was truncated away.
fn exact_matches(correct: &[f32], tokens: &[f32]) -> Vec<Option<f64>> {
    correct.iter().zip(tokens).map(|(&c, &t)| (t > 0.0).then_some(if c == t { 1.0 } else { 0.0 })).collect()
}

impl Stage for Completion {
    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>> {
        let Some(labels) = batch.opt("labels") else {
            let have: Vec<&str> = batch.names().collect();
            bail!(
                "completion: the batch has no `labels` (it has: {}); this stage needs prompt/completion data, whose prompt tokens the host masks with -100 (use causal_lm for plain text)",
                have.join(", ")
            );
        };
        let lm = next_token_loss(
            host,
            Self::NAME,
            outputs.get("logits")?,
            labels.to_dtype(DType::I64)?,
            self.cfg.label_smoothing,
        )?;
        let mut metrics = vec![lm.token_accuracy()];
        metrics.extend(Metric::per_example("exact_match", &exact_matches(&lm.correct, &lm.tokens)));
        Ok(Loss { loss: lm.loss, per_example: Some(lm.per_example), metrics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_needs_every_completion_token_and_skips_empty_completions() {
        // Rows: all right; one wrong; no completion tokens (truncated away).
        assert_eq!(exact_matches(&[3.0, 2.0, 0.0], &[3.0, 3.0, 0.0]), [Some(1.0), Some(0.0), None]);
    }
}
