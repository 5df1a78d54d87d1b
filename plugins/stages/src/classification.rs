//! `classification`: a linear head on one vector per sequence, trained with
//! cross-entropy (sentiment, NLI, topic labels, ...).
//!
//! `init` creates the head: `classifier.weight [num_classes, hidden]` (normal, std
//! 0.02, as Hugging Face's `initializer_range`) and `classifier.bias [num_classes]`
//! (zeros). `compute` pools the model's output to `[b, hidden]` ([`crate::pooling`]),
//! takes `logits = pooled·Wᵀ + bias` (`[b, num_classes]`), and compares them with the
//! batch's `class_labels [b]` (i64 or u32, in `[0, num_classes)`). Loss: mean
//! cross-entropy (f32); `per_example`: each row's cross-entropy; metric `accuracy`.
//!
//! ```
//! use stagecraft_stages::Classification;
//! use stagecraft_sdk::Plugin;
//! assert_eq!(Classification::NAME, "classification");
//! ```

use crate::config::{ClassificationConfig, Pooling};
use crate::next_token::IGNORE;
use crate::pooling::pool;
use stagecraft_sdk::prelude::*;

/// The sequence classification objective and its head.
pub struct Classification {
    cfg: ClassificationConfig,
    pooling: Pooling,
    /// Whether the model is a decoder (decides `auto` pooling); set by `init`.
    causal: bool,
    /// `(weight, bias)`, created by `init`.
    head: Option<(TensorHandle, TensorHandle)>,
}

impl Plugin for Classification {
    const NAME: &'static str = "classification";
    const DESCRIPTION: &'static str = "linear classification head with cross-entropy over class labels";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = ClassificationConfig;

    fn new(cfg: ClassificationConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        let pooling = cfg.pooling()?;
        Ok(Classification { cfg, pooling, causal: false, head: None })
    }
}

/// Checks that every label is a class index below `num_classes`; they come back as
/// f32, exact for any realistic class count.
fn check_labels(labels: &[f32], num_classes: usize) -> Result<()> {
    for (row, &label) in labels.iter().enumerate() {
        if label < 0.0 || label.fract() != 0.0 || label as usize >= num_classes {
            bail!("classification: batch `class_labels` has {label} at row {row}, outside [0, {num_classes}) (num_classes)");
        }
    }
    Ok(())
}

impl Stage for Classification {
    fn init(&mut self, host: Host<'_>, model: &ModelInfo) -> Result<()> {
        let classes = self.cfg.num_classes;
        let weight = host.new_param("classifier.weight", &[classes, model.hidden], Init::normal(0.0, 0.02))?;
        let bias = host.new_param("classifier.bias", &[classes], Init::ZEROS)?;
        self.head = Some((weight.handle(), bias.handle()));
        self.causal = model.causal;
        Ok(())
    }

    /// `auto` takes the pooler's output where the model has one, else pools `hidden`.
    fn required_outputs(&self) -> Vec<String> {
        let names: &[&str] = match self.pooling {
            Pooling::Pooled => &["pooled"],
            Pooling::Auto => &["pooled", "hidden"],
            _ => &["hidden"],
        };
        names.iter().map(|n| n.to_string()).collect()
    }

    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>> {
        let Some((weight, bias)) = self.head else {
            bail!("classification: the head does not exist yet (init was not called)");
        };
        let pooled = pool(host, self.pooling, self.causal, &outputs, &batch)?;
        let logits = pooled.matmul(&host.tensor(weight).t()?)?.add(&host.tensor(bias))?.to_dtype(DType::F32)?;
        let rows = logits.dim(0)?;

        let labels = batch.get("class_labels")?;
        if labels.shape()? != [rows] {
            bail!("classification: batch `class_labels` has shape {:?}, expected [{rows}]", labels.shape()?);
        }
        check_labels(&labels.to_vec_f32()?, self.cfg.num_classes)?;
        let labels = labels.to_dtype(DType::I64)?;

        // Every label is a class index, so IGNORE never matches and all rows count.
        let per_row = logits.cross_entropy(&labels, IGNORE)?;
        let loss = per_row.mean_all()?;
        let predicted = logits.argmax(1, false)?.to_dtype(DType::I64)?;
        let correct = predicted.compare(CmpOp::EQ, &labels)?.to_dtype(DType::F32)?.to_vec_f32()?;
        let correct: Vec<Option<f64>> = correct.iter().map(|&c| Some(c as f64)).collect();
        Ok(Loss { loss, per_example: Some(per_row), metrics: Metric::per_example("accuracy", &correct) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_must_be_class_indices() {
        assert!(check_labels(&[0.0, 2.0, 1.0], 3).is_ok());
        let e = check_labels(&[0.0, 3.0], 3).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(e, "classification: batch `class_labels` has 3 at row 1, outside [0, 3) (num_classes)");
        assert!(check_labels(&[-100.0], 3).is_err());
    }
}
