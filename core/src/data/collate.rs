//! Collation: examples → a [`Batch`] of tensors, right-padded to the longest example.
//!
//! | field | shape, dtype | value |
//! |---|---|---|
//! | `input_ids` | `[b, s]` u32 | ids, then `pad_id` |
//! | `attention_mask` | `[b, s]` u32 | 1 on real tokens, 0 on padding; a packed row numbers its examples 1, 2, ... |
//! | `labels` | `[b, s]` i64 | completion rows: their labels; text rows: their ids; -100 on padding (absent for classification) |
//! | `class_labels` | `[b]` i64 | classification only |
//!
//! Text and completion rows may share a batch (a text row is all targets, as a
//! completion with an empty prompt); classification rows only share with their own kind.
//!
//! ```
//! use stagecraft_core::data::{collate, Example};
//! use candle_core::Device;
//! let a = Example::from_ids(vec![5, 6, 7]);
//! let b = Example::from_ids(vec![8]);
//! let batch = collate(&[&a, &b], 0, &Device::Cpu).unwrap();
//! assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), [[5, 6, 7], [8, 0, 0]]);
//! let labels = batch.labels.unwrap().to_vec2::<i64>().unwrap();
//! assert_eq!(labels, [[5, 6, 7], [8, -100, -100]]);
//! ```

use super::example::IGNORE;
use super::{DataKind, Example};
use crate::bail;
use crate::error::{Error, Result};
use crate::train::Batch;
use candle_core::{Device, Tensor};

/// Pads `examples` into one batch on `device`.
pub fn collate(examples: &[&Example], pad_id: u32, device: &Device) -> Result<Batch> {
    let Some(first) = examples.first() else {
        return Err(Error::msg("collate: no examples"));
    };
    let classification = first.kind() == DataKind::Classification;
    let seq = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let rows = examples.len();
    let mut ids = Vec::with_capacity(rows * seq);
    let mut mask = Vec::with_capacity(rows * seq);
    let mut labels = Vec::with_capacity(rows * seq);
    let mut classes = Vec::with_capacity(rows);
    for (row, ex) in examples.iter().enumerate() {
        let n = ex.ids.len();
        if n == 0 {
            bail!("collate: example {row} has no tokens");
        }
        if (ex.kind() == DataKind::Classification) != classification {
            return Err(Error::msg(format!(
                "collate: example {row} is {} data, example 0 is {}; they cannot share a batch",
                ex.kind(),
                first.kind()
            )));
        }
        let pad = seq - n;
        ids.extend(ex.ids.iter().copied().chain(std::iter::repeat_n(pad_id, pad)));
        mask.extend(example_numbers(ex).chain(std::iter::repeat_n(0, pad)));
        match (&ex.labels, ex.class_label) {
            (_, Some(c)) => classes.push(c),
            (Some(l), None) if l.len() != n => {
                return Err(Error::msg(format!("collate: example {row} has {} labels for {n} tokens", l.len())))
            }
            (Some(l), None) => labels.extend(l.iter().copied()),
            (None, None) => labels.extend(ex.ids.iter().map(|&i| i64::from(i))),
        }
        if !classification {
            labels.extend(std::iter::repeat_n(IGNORE, pad));
        }
    }
    let grid = |v: Vec<u32>| Tensor::from_vec(v, (rows, seq), device);
    Ok(Batch {
        input_ids: grid(ids)?,
        attention_mask: Some(grid(mask)?),
        labels: if classification { None } else { Some(Tensor::from_vec(labels, (rows, seq), device)?) },
        class_labels: if classification { Some(Tensor::from_vec(classes, rows, device)?) } else { None },
        replay_from: None,
    })
}

/// Each token's example number in its row: 1 throughout, or 1, 2, ... over a packed
/// row's examples.
fn example_numbers(ex: &Example) -> Box<dyn Iterator<Item = u32> + '_> {
    if ex.packed.is_empty() {
        return Box::new(std::iter::repeat_n(1, ex.ids.len()));
    }
    Box::new(ex.packed.iter().zip(1u32..).flat_map(|(&len, k)| std::iter::repeat_n(k, len as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Tokenizer;

    #[test]
    fn completion_rows_keep_their_labels_and_pads_never_count() -> Result<()> {
        let t = Tokenizer::bytes();
        let a = Example::completion(&t, "1+1=", "2\n", 16)?;
        let b = Example::completion(&t, "10+10=", "20\n", 16)?;
        let text = Example::from_ids(vec![7, 8]);
        let batch = collate(&[&a, &b, &text], 0, &Device::Cpu)?;
        assert_eq!(batch.input_ids.dims(), [3, 9]);
        let mask = batch.attention_mask.as_ref().map(|m| m.to_vec2::<u32>()).transpose()?.unwrap_or_default();
        assert_eq!(mask[0], [1, 1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(mask[2].iter().sum::<u32>(), 2);
        let labels = batch.labels.as_ref().map(|l| l.to_vec2::<i64>()).transpose()?.unwrap_or_default();
        assert_eq!(labels[0], [-100, -100, -100, -100, 50, 10, -100, -100, -100]);
        assert_eq!(labels[1][6..], [50, 48, 10]);
        assert_eq!(labels[2], [7, 8, -100, -100, -100, -100, -100, -100, -100]);
        assert!(batch.class_labels.is_none());
        assert_eq!(batch.input_ids.to_vec2::<u32>()?[0][6..], [0, 0, 0]);
        Ok(())
    }

    #[test]
    fn a_packed_row_numbers_its_examples_in_the_mask() -> Result<()> {
        let (rows, _) = crate::data::pack(&[Example::from_ids(vec![1, 2, 3]), Example::from_ids(vec![4, 5])], 6)?;
        let batch = collate(&[&rows[0], &Example::from_ids(vec![9])], 0, &Device::Cpu)?;
        let mask = batch.attention_mask.as_ref().map(|m| m.to_vec2::<u32>()).transpose()?.unwrap_or_default();
        assert_eq!(mask, [vec![1, 1, 1, 2, 2], vec![1, 0, 0, 0, 0]]);
        let labels = batch.labels.as_ref().map(|l| l.to_vec2::<i64>()).transpose()?.unwrap_or_default();
        assert_eq!(labels[0], [-100, 2, 3, -100, 5]);
        Ok(())
    }

    #[test]
    fn classification_rows_give_class_labels_and_refuse_other_kinds() -> Result<()> {
        let t = Tokenizer::bytes();
        let a = Example::classified(&t, "good", 1, 8)?;
        let b = Example::classified(&t, "bad", 0, 8)?;
        let batch = collate(&[&a, &b], 0, &Device::Cpu)?;
        assert_eq!(batch.input_ids.dims(), [2, 4]);
        assert!(batch.labels.is_none());
        assert_eq!(batch.class_labels.as_ref().map(|c| c.to_vec1::<i64>()).transpose()?, Some(vec![1, 0]));
        let text = Example::from_ids(vec![1]);
        let e = collate(&[&a, &text], 0, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "collate: example 1 is text data, example 0 is classification; they cannot share a batch");
        assert!(collate(&[], 0, &Device::Cpu).is_err());
        Ok(())
    }
}
