//! Deterministic epoch-based sampling of a dataset's indices, resumable exactly.
//!
//! Epoch `e` visits every index once, in a Fisher–Yates shuffle drawn from
//! `Rng::new(seed).fork(e)`; with [`Order::Curriculum`] epoch 0 instead goes from the
//! easiest example to the hardest (a stable sort on [`Example::difficulty`](super::Example),
//! ties in source order) and later epochs are shuffled. A batch that reaches the end of
//! an epoch is filled from the start of the next one (so an index can appear twice in
//! that one batch). [`SamplerState`] is all a checkpoint needs: a sampler restored from
//! it yields exactly the batches the original would have.
//!
//! ```
//! use stagecraft_core::data::Sampler;
//! let mut s = Sampler::new(5, 42);
//! let first = s.next_batch(3);
//! let saved = s.state();
//! let next = s.next_batch(4); // 2 from epoch 0, then 2 from epoch 1
//! assert_eq!(s.epoch(), 1);
//! let mut r = Sampler::restore(5, &saved, &[]).unwrap();
//! assert_eq!(r.next_batch(4), next);
//! assert_eq!(first.len(), 3);
//! ```

use crate::bail;
use crate::error::{Error, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// The order of the training data (a stage's `data.order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Shuffled every epoch (default).
    #[default]
    Shuffled,
    /// Curriculum: epoch 0 from easy to hard (the difficulty field, else length), later
    /// epochs shuffled.
    #[serde(alias = "by_difficulty")]
    Curriculum,
}

/// Where a sampler is, for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    /// Epoch the next index comes from (= full passes completed).
    pub epoch: u64,
    /// Position of the next index in that epoch's order, `< len`.
    pub cursor: usize,
    /// The sampler's seed.
    pub seed: u64,
    /// The order of epoch 0.
    #[serde(default)]
    pub order: Order,
    /// Dataset length the state belongs to (a resume with other data is refused).
    pub len: usize,
}

/// A deterministic sampler over `0..len`.
#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    seed: u64,
    order: Order,
    epoch: u64,
    cursor: usize,
    /// The current epoch's order.
    perm: Vec<usize>,
    /// Epoch 0's order under [`Order::Curriculum`]; empty otherwise.
    curriculum: Vec<usize>,
}

impl Sampler {
    /// A shuffling sampler over `0..len` at the start of epoch 0.
    pub fn new(len: usize, seed: u64) -> Sampler {
        let mut s = Sampler {
            len,
            seed,
            order: Order::Shuffled,
            epoch: 0,
            cursor: 0,
            perm: Vec::new(),
            curriculum: Vec::new(),
        };
        s.perm = s.order_of(0);
        s
    }

    /// The same sampler with epoch 0 in `order`; `difficulties` (one per index) are
    /// read for [`Order::Curriculum`] only. The current position is kept.
    pub fn with_order(mut self, order: Order, difficulties: &[f64]) -> Result<Sampler> {
        self.curriculum = match order {
            Order::Shuffled => Vec::new(),
            Order::Curriculum => {
                if difficulties.len() != self.len {
                    return Err(Error::msg(format!(
                        "curriculum: {} difficulties for {} examples",
                        difficulties.len(),
                        self.len
                    )));
                }
                let mut idx: Vec<usize> = (0..self.len).collect();
                idx.sort_by(|&a, &b| difficulties[a].total_cmp(&difficulties[b]));
                idx
            }
        };
        self.order = order;
        self.perm = self.order_of(self.epoch);
        Ok(self)
    }

    /// The sampler a checkpoint saved, over a dataset of `len` examples (with their
    /// `difficulties` if the state's order is [`Order::Curriculum`]; else `&[]`).
    pub fn restore(len: usize, state: &SamplerState, difficulties: &[f64]) -> Result<Sampler> {
        if state.len != len {
            bail!("sampler state is for {} examples, the dataset has {len}", state.len);
        }
        if state.cursor >= len.max(1) {
            return Err(Error::msg(format!(
                "sampler state cursor {} is past the dataset's {len} examples",
                state.cursor
            )));
        }
        let s = Sampler { epoch: state.epoch, cursor: state.cursor, ..Sampler::new(len, state.seed) };
        s.with_order(state.order, difficulties)
    }

    /// The state to save.
    pub fn state(&self) -> SamplerState {
        SamplerState { epoch: self.epoch, cursor: self.cursor, seed: self.seed, order: self.order, len: self.len }
    }

    /// The epoch the next index comes from (= full passes completed).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of indices sampled from.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to sample (every batch is then empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next `batch_size` indices, continuing into the next epoch where this one ends.
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(batch_size);
        if self.len == 0 {
            return out;
        }
        while out.len() < batch_size {
            let take = (batch_size - out.len()).min(self.len - self.cursor);
            out.extend_from_slice(&self.perm[self.cursor..self.cursor + take]);
            self.cursor += take;
            if self.cursor == self.len {
                self.epoch += 1;
                self.cursor = 0;
                self.perm = self.order_of(self.epoch);
            }
        }
        out
    }

    /// The order of `epoch`.
    fn order_of(&self, epoch: u64) -> Vec<usize> {
        if epoch == 0 && self.order == Order::Curriculum {
            return self.curriculum.clone();
        }
        let mut rng = Rng::new(self.seed).fork(epoch);
        let mut perm: Vec<usize> = (0..self.len).collect();
        for i in (1..self.len).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        perm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_permutation(xs: &[usize], len: usize) -> bool {
        let mut v = xs.to_vec();
        v.sort_unstable();
        v == (0..len).collect::<Vec<_>>()
    }

    #[test]
    fn every_epoch_visits_every_index_once() {
        let mut s = Sampler::new(10, 3);
        // 10 batches of 3 = exactly 3 epochs, with batches straddling epoch ends.
        let all: Vec<usize> = (0..10).flat_map(|_| s.next_batch(3)).collect();
        assert_eq!(s.epoch(), 3);
        for epoch in all.chunks(10) {
            assert!(is_permutation(epoch, 10), "{epoch:?}");
        }
        assert_ne!(all[..10], all[10..20], "epochs are reshuffled");
        assert_ne!(all[..10], (0..10).collect::<Vec<_>>()[..]);
        let mut other = Sampler::new(10, 4);
        assert_ne!(other.next_batch(10), all[..10]);
        assert!(Sampler::new(0, 1).next_batch(4).is_empty());
    }

    #[test]
    fn restored_sampler_yields_the_same_batches() -> Result<()> {
        for (order, diff) in [(Order::Shuffled, vec![]), (Order::Curriculum, (0..7).map(|i| (i % 3) as f64).collect())]
        {
            let mut a = Sampler::new(7, 11).with_order(order, &diff)?;
            a.next_batch(5);
            let json = serde_json::to_string(&a.state()).map_err(Error::msg)?;
            let state: SamplerState = serde_json::from_str(&json).map_err(Error::msg)?;
            let mut b = Sampler::restore(7, &state, &diff)?;
            for bs in [1, 4, 7, 9, 2, 16] {
                assert_eq!(a.next_batch(bs), b.next_batch(bs));
            }
            assert_eq!(a.state(), b.state());
        }
        let st = Sampler::new(7, 1).state();
        assert_eq!(
            Sampler::restore(8, &st, &[]).err().map(|e| e.to_string()).unwrap_or_default(),
            "sampler state is for 7 examples, the dataset has 8"
        );
        let bad = SamplerState { cursor: 7, ..st };
        assert!(Sampler::restore(7, &bad, &[]).is_err());
        Ok(())
    }

    #[test]
    fn curriculum_goes_easy_to_hard_then_shuffles() -> Result<()> {
        let diff = [3.0, 1.0, 2.0, 1.0, 0.5, 3.0];
        let mut s = Sampler::new(6, 0).with_order(Order::Curriculum, &diff)?;
        assert_eq!(s.next_batch(6), vec![4, 1, 3, 2, 0, 5]);
        let later: Vec<usize> = (0..4).flat_map(|_| s.next_batch(6)).collect();
        assert!(later.chunks(6).all(|e| is_permutation(e, 6)));
        assert!(later.chunks(6).any(|e| e != [4, 1, 3, 2, 0, 5]));
        assert!(Sampler::new(6, 0).with_order(Order::Curriculum, &diff[..3]).is_err());
        Ok(())
    }
}
