//! `causal_lm`: next-token prediction on every real token (pretraining, continued
//! pretraining, plain-text fine-tuning).
//!
//! Reads `input_ids [b, s]` and, when present, `attention_mask [b, s]` (1 = real token)
//! and `labels [b, s]` (i64, -100 = no loss) from the batch, and `logits [b, s, v]` from
//! the model. Targets are `labels` when the batch has them, else `input_ids` with -100
//! where `attention_mask` is 0. Loss, `per_example` and `token_accuracy` are those of
//! [`next_token`](crate::next_token).
//!
//! ```
//! use stagecraft_stages::CausalLm;
//! use stagecraft_sdk::Plugin;
//! assert_eq!(CausalLm::NAME, "causal_lm");
//! ```

use crate::config::LmConfig;
use crate::next_token::{next_token_loss, IGNORE};
use stagecraft_sdk::prelude::*;

/// The causal language-modeling objective.
pub struct CausalLm {
    cfg: LmConfig,
}

impl Plugin for CausalLm {
    const NAME: &'static str = "causal_lm";
    const DESCRIPTION: &'static str = "next-token cross-entropy over all real tokens";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = LmConfig;

    fn new(cfg: LmConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(CausalLm { cfg })
    }
}

/// `labels` if the batch has them, else `input_ids` with padding set to -100; i64.
pub(crate) fn targets<'h>(host: Host<'h>, batch: &Named<'h>) -> Result<Tensor<'h>> {
    if let Some(labels) = batch.opt("labels") {
        return labels.to_dtype(DType::I64);
    }
    let ids = batch.get("input_ids")?.to_dtype(DType::I64)?;
    let Some(mask) = batch.opt("attention_mask") else {
        return Ok(ids);
    };
    let shape = ids.shape()?;
    let mask_shape = mask.shape()?;
    if mask_shape != shape {
        bail!("causal_lm: batch `attention_mask` has shape {mask_shape:?}, but `input_ids` has {shape:?}");
    }
    let padding = mask.compare(CmpOp::EQ, &host.full(&shape, 0.0, mask.dtype()?)?)?;
    host.where_cond(&padding, &host.full(&shape, IGNORE as f64, DType::I64)?, &ids)
}

impl Stage for CausalLm {
    fn compute<'h>(&mut self, host: Host<'h>, outputs: Named<'h>, batch: Named<'h>) -> Result<Loss<'h>> {
        let targets = targets(host, &batch)?;
        let lm = next_token_loss(host, Self::NAME, outputs.get("logits")?, targets, self.cfg.label_smoothing)?;
        Ok(Loss { loss: lm.loss, per_example: Some(lm.per_example), metrics: vec![lm.token_accuracy()] })
    }
}
