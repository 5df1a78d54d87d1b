//! A batch as the model and the objective see it.

use candle_core::Tensor;

/// One batch. Field names are what objective plugins look up.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]`, 1 for real tokens, 0 for padding.
    pub attention_mask: Option<Tensor>,
    /// `[batch, seq]` i64 targets, -100 where no loss is taken.
    pub labels: Option<Tensor>,
    /// `[batch]` class ids.
    pub class_labels: Option<Tensor>,
    /// Rows from this index on are replayed from earlier stages' data (the loss is then
    /// also reported for the two parts); `None`: every row is the stage's own.
    pub replay_from: Option<usize>,
}

impl Batch {
    /// A batch of token ids only.
    pub fn tokens(input_ids: Tensor) -> Self {
        Batch { input_ids, attention_mask: None, labels: None, class_labels: None, replay_from: None }
    }

    /// The named fields, for an objective plugin.
    pub fn named(&self) -> Vec<(&str, &Tensor)> {
        let mut v = vec![("input_ids", &self.input_ids)];
        if let Some(t) = &self.attention_mask {
            v.push(("attention_mask", t));
        }
        if let Some(t) = &self.labels {
            v.push(("labels", t));
        }
        if let Some(t) = &self.class_labels {
            v.push(("class_labels", t));
        }
        v
    }
}
