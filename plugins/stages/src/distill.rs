//! `distill`: knowledge distillation (Hinton et al., 2015) — a student learns the
//! next-token task and the temperature-softened distribution of a frozen teacher.
//!
//! Reads `logits` (the student's) and `teacher_logits` (the teacher's on the same
//! batch; the stage names the teacher with `teacher = "STAGE"` or a model directory),
//! both `[b, s, v]`, and the batch's targets as [`causal_lm`](crate::causal_lm) does
//! (`labels` when present, else `input_ids` without padding). On the `n` positions with
//! a next-token target, with `p_T = softmax(z / T)`:
//!
//! - `kl` = mean over those positions of `KL(p_T(teacher) ‖ p_T(student))`;
//! - `task` = the next-token cross-entropy (as `causal_lm`);
//! - training loss = `alpha · T² · kl + (1 − alpha) · task` (the `T²` keeps the
//!   gradient's scale independent of `T`, as in the paper).
//!
//! Evaluation reports the student's own `task` loss as `loss` (so a distilled stage's
//! score compares with its teacher's stage, and retention gates measure the task), with
//! `kl`, `agreement` (the share of positions where student and teacher predict the same
//! token) and `token_accuracy` as metrics.
//!
//! ```toml
//! [[stages]]
//! name = "distill"
//! model = { arch = "llama", hidden_size = 32, num_layers = 2, num_heads = 2 }
//! teacher = "pretrain"
//! objective = { name = "distill", temperature = 2.0, alpha = 0.5 }
//! ```

use crate::causal_lm::targets;
use crate::config::DistillConfig;
use crate::next_token::{next_token_loss, IGNORE};
use stagecraft_sdk::prelude::*;

/// The distillation objective.
pub struct Distill {
    cfg: DistillConfig,
}

impl Plugin for Distill {
    const NAME: &'static str = "distill";
    const DESCRIPTION: &'static str = "KL to a frozen teacher's temperature-scaled logits, mixed with next-token loss";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = DistillConfig;

    fn new(cfg: DistillConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(Distill { cfg })
    }
}

/// The rows `[:, :-1]` of `[b, s, v]` logits as `[b·(s−1), v]` f32, divided by `t`.
fn scaled_rows<'h>(logits: &Tensor<'h>, n: usize, t: f64) -> Result<Tensor<'h>> {
    let (s, v) = (logits.dim(1)?, logits.dim(2)?);
    logits.narrow(1, 0, s - 1)?.reshape(&[n, v])?.to_dtype(DType::F32)?.affine(1.0 / t, 0.0)
}

impl Stage for Distill {
    fn required_outputs(&self) -> Vec<String> {
        vec!["logits".to_string(), "teacher_logits".to_string()]
    }

    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>> {
        let (student, teacher) = (outputs.get("logits")?, outputs.get("teacher_logits")?);
        let shape = student.shape()?;
        if teacher.shape()? != shape {
            bail!("distill: `teacher_logits` have shape {:?}, the student's `logits` {shape:?}", teacher.shape()?);
        }
        let targets = targets(host, &batch)?;
        let task = next_token_loss(host, Self::NAME, student, targets, 0.0)?;
        let (b, s) = (shape[0], shape[1]);
        let n = b * (s - 1);
        let t = self.cfg.temperature;

        // KL(p_teacher ‖ p_student) per position, on positions with a target only.
        let log_student = scaled_rows(&student, n, t)?.log_softmax(1)?;
        let log_teacher = scaled_rows(&teacher, n, t)?.log_softmax(1)?;
        let row_kl = log_teacher.exp()?.mul(&log_teacher.sub(&log_student)?)?.sum(&[1], false)?;
        let shifted = targets.narrow(1, 1, s - 1)?.reshape(&[n])?;
        let valid = shifted.compare(CmpOp::NE, &host.full(&[n], IGNORE as f64, DType::I64)?)?.to_dtype(DType::F32)?;
        let kl_sum = row_kl.mul(&valid)?.sum_all()?;
        let counted = valid.sum_all()?.to_scalar()?;
        let kl = kl_sum.affine(1.0 / counted.max(1.0), 0.0)?;

        let same = log_student.argmax(1, false)?.compare(CmpOp::EQ, &log_teacher.argmax(1, false)?)?;
        let agreed = same.to_dtype(DType::F32)?.mul(&valid)?.sum_all()?.to_scalar()?;
        let metrics = vec![
            task.token_accuracy(),
            Metric::new("kl", kl_sum.to_scalar()?, counted),
            Metric::new("agreement", agreed, counted),
        ];
        let loss = match host.is_training() {
            true => {
                let a = self.cfg.alpha;
                kl.affine(a * t * t, 0.0)?.add(&task.loss.affine(1.0 - a, 0.0)?)?
            }
            false => task.loss,
        };
        Ok(Loss { loss, per_example: Some(task.per_example), metrics })
    }
}
