//! Packing: short language-model examples put together into rows of up to `seq_len`
//! tokens, so a batch holds few padding tokens (`data = { ..., packing = true }`).
//!
//! Rows are filled best-fit decreasing (longest example first, each into the row with
//! the least room that still fits it), which is deterministic and leaves rows nearly
//! full. Attention stays inside each example: a packed row's attention mask numbers
//! its examples 1, 2, ... (see [`crate::model::layers::attention_mask`]), and the first
//! token of every example takes no loss, so nothing is predicted across a boundary.
//! Positions are not restarted: rotary attention depends only on the distance between
//! tokens, so an example sees what it would alone.
//!
//! ```
//! use stagecraft_core::data::{pack, Example};
//! let ex = |n: u32| Example::from_ids((0..n).collect());
//! let (rows, stats) = pack(&[ex(5), ex(3), ex(2), ex(6)], 8).unwrap();
//! assert_eq!(rows.len(), 2);
//! assert_eq!(rows[0].packed, vec![2, 6]); // each row in source order
//! assert_eq!(rows[1].packed, vec![5, 3]);
//! assert_eq!((stats.examples, stats.rows, stats.tokens), (4, 2, 16));
//! ```

use std::collections::BTreeSet;

use super::example::{DataKind, Dataset, Example, IGNORE};
use crate::error::{Context, Error, Result};

/// What packing did to a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackingStats {
    /// Examples before packing.
    pub examples: usize,
    /// Rows after packing.
    pub rows: usize,
    /// Tokens in all rows.
    pub tokens: usize,
    /// The longest a row may be.
    pub row_len: usize,
}

impl PackingStats {
    /// The share of the rows' `row_len` slots that hold tokens.
    pub fn fill(&self) -> f64 {
        self.tokens as f64 / (self.rows * self.row_len).max(1) as f64
    }
}

impl std::fmt::Display for PackingStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "packed {} examples into {} rows of up to {} tokens ({:.0}% filled)",
            self.examples,
            self.rows,
            self.row_len,
            100.0 * self.fill()
        )
    }
}

/// `examples` (each already within `row_len` tokens) packed into rows of up to
/// `row_len` tokens. Classification examples cannot be packed.
pub fn pack(examples: &[Example], row_len: usize) -> Result<(Vec<Example>, PackingStats)> {
    if let Some(long) = examples.iter().find(|e| e.ids.len() > row_len) {
        return Err(Error::msg(format!(
            "packing: an example of {} tokens is longer than a row ({row_len})",
            long.ids.len()
        )));
    }
    if examples.iter().any(|e| e.class_label.is_some() || !e.packed.is_empty()) {
        return Err(Error::msg("packing is for language-model data, not classification or packed rows"));
    }
    let rows: Vec<Example> = best_fit_decreasing(examples, row_len).iter().map(|r| join(examples, r)).collect();
    let stats = PackingStats {
        examples: examples.len(),
        rows: rows.len(),
        tokens: rows.iter().map(|r| r.ids.len()).sum(),
        row_len,
    };
    Ok((rows, stats))
}

/// A data set's examples packed into rows of up to `row_len` tokens.
pub fn pack_dataset(data: &Dataset, row_len: usize) -> Result<Dataset> {
    if data.kind == DataKind::Classification {
        return Err(Error::msg(format!(
            "`{}`: packing = true is for language-model data, and this is classification data",
            data.name
        )));
    }
    let (examples, stats) = pack(&data.examples, row_len).with_context(|| format!("`{}`", data.name))?;
    Ok(Dataset { examples, packing: Some(stats), ..data.clone() })
}

/// Which examples go in which row: indices into `examples`, each row in source order.
fn best_fit_decreasing(examples: &[Example], row_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].ids.len()));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // (room left, row): the row with the least room that fits is the first at or past
    // the example's length.
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let len = examples[i].ids.len();
        let row = match room.range((len, 0)..).next().copied() {
            Some(free) => {
                room.remove(&free);
                free
            }
            None => {
                rows.push(Vec::new());
                (row_len, rows.len() - 1)
            }
        };
        rows[row.1].push(i);
        room.insert((row.0 - len, row.1));
    }
    for r in &mut rows {
        r.sort_unstable();
    }
    rows
}

/// One row of `members`: their tokens in order, every token a target except each
/// example's first (and a completion's prompt).
fn join(examples: &[Example], members: &[usize]) -> Example {
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut packed = Vec::with_capacity(members.len());
    let mut difficulty = f64::MIN;
    for &i in members {
        let e = &examples[i];
        let start = labels.len();
        ids.extend_from_slice(&e.ids);
        match &e.labels {
            Some(l) => labels.extend_from_slice(l),
            None => labels.extend(e.ids.iter().map(|&t| i64::from(t))),
        }
        labels[start] = IGNORE;
        packed.push(e.ids.len() as u32);
        difficulty = difficulty.max(e.difficulty);
    }
    Example { ids, labels: Some(labels), class_label: None, difficulty, packed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ids: &[u32]) -> Example {
        Example::from_ids(ids.to_vec())
    }

    #[test]
    fn rows_keep_every_token_once_and_mask_each_examples_first_target() -> Result<()> {
        let completion = Example { labels: Some(vec![IGNORE, IGNORE, 7, 8]), ..text(&[5, 6, 7, 8]) };
        let examples = vec![text(&[1, 2, 3]), completion, text(&[9, 10])];
        let (rows, stats) = pack(&examples, 7)?;
        assert_eq!(rows.len(), 2);
        // Longest first: [5,6,7,8] + [1,2,3] fill 7; [9,10] goes alone.
        assert_eq!(rows[0].ids, vec![1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(rows[0].packed, vec![3, 4]);
        assert_eq!(rows[0].labels.as_deref(), Some(&[IGNORE, 2, 3, IGNORE, IGNORE, 7, 8][..]));
        assert_eq!(rows[1].labels.as_deref(), Some(&[IGNORE, 10][..]));
        assert_eq!((stats.tokens, stats.rows), (9, 2));
        assert!((stats.fill() - 9.0 / 14.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn best_fit_puts_an_example_where_it_leaves_the_least_room() {
        let ex: Vec<Example> = [6u32, 5, 3, 2].iter().map(|&n| text(&vec![1; n as usize])).collect();
        // 6 and 5 open two rows (room 2 and 3); 3 fits only the second, 2 the first.
        assert_eq!(best_fit_decreasing(&ex, 8), vec![vec![0, 3], vec![1, 2]]);
    }

    #[test]
    fn classification_and_too_long_examples_are_refused() {
        let class = Example { class_label: Some(1), ..text(&[1, 2]) };
        assert!(pack(&[class], 4).expect_err("classification").to_string().contains("classification"));
        let e = pack(&[text(&[1, 2, 3, 4, 5])], 4).expect_err("too long").to_string();
        assert!(e.contains("5 tokens is longer than a row (4)"), "{e}");
    }
}
