//! Replay: batches that mix a stage's own training data with a fixed fraction from
//! earlier stages' training data, against forgetting.
//!
//! A [`Mixture`] has a primary dataset and replay sources `(dataset, ratio)`. Of a batch
//! of `b` examples, replay source `i` gives `max(1, round(ratio_i * b))` when
//! `ratio_i > 0` (rounding half away from zero: 0.1 of 16 → 2, 0.05 of 16 → 1) and 0
//! when `ratio_i = 0`; the primary gives the rest, at least one. Each ratio is in
//! `[0, 1)` and they sum to less than 1. A batch lists the primary's examples first,
//! then each replay source's in order.
//!
//! Every source has its own [`Sampler`], seeded with `Rng::new(seed).fork(i)` (the
//! primary is source 0, replay source `i` is `i + 1`); the primary may follow a
//! curriculum, replay sources are shuffled. [`MixtureState`] holds all the samplers.
//!
//! ```
//! use stagecraft_core::data::{load_source, Mixture, Order, Tokenizer};
//! use std::{path::Path, sync::Arc};
//! let t = Tokenizer::bytes();
//! let load = |s| Arc::new(load_source(s, &t, Path::new("."), 32).unwrap());
//! let mut m = Mixture::new(load("synthetic:sub?n=100"), vec![(load("synthetic:add?n=50"), 0.1)], 7, Order::Shuffled).unwrap();
//! assert_eq!(m.counts(16).unwrap(), vec![14, 2]);
//! assert_eq!(m.next_batch(16).unwrap().len(), 16);
//! ```

use super::{DataKind, Dataset, Example, Order, Sampler, SamplerState};
use crate::bail;
use crate::error::{Context, Error, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One source of a mixture.
#[derive(Debug, Clone)]
struct Source {
    data: Arc<Dataset>,
    /// Fraction of each batch; 0 for the primary (it takes the rest).
    ratio: f64,
    sampler: Sampler,
}

/// A primary dataset mixed with replay sources.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// The primary first, then the replay sources.
    sources: Vec<Source>,
}

/// One source's saved position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceState {
    /// The dataset's name (its spec).
    pub name: String,
    /// Its fraction of each batch (0 for the primary).
    pub ratio: f64,
    /// Its sampler.
    pub sampler: SamplerState,
}

/// A mixture's saved position: the primary's first, then each replay source's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureState {
    /// One per source.
    pub sources: Vec<SourceState>,
}

fn compatible(a: DataKind, b: DataKind) -> bool {
    (a == DataKind::Classification) == (b == DataKind::Classification)
}

fn check(primary: &Dataset, replay: &[(Arc<Dataset>, f64)]) -> Result<()> {
    for ds in std::iter::once(primary).chain(replay.iter().map(|(d, _)| &**d)) {
        if ds.is_empty() {
            bail!("data source `{}` has no examples", ds.name);
        }
    }
    for (ds, ratio) in replay {
        if !(0.0..1.0).contains(ratio) {
            bail!("replay `{}`: ratio {ratio} is not in [0, 1)", ds.name);
        }
        if !compatible(primary.kind, ds.kind) {
            return Err(Error::msg(format!(
                "replay `{}` is {} data, which cannot share batches with `{}` ({} data)",
                ds.name, ds.kind, primary.name, primary.kind
            )));
        }
    }
    let total: f64 = replay.iter().map(|(_, r)| r).sum();
    if total >= 1.0 {
        bail!("replay ratios sum to {total}, which leaves nothing of `{}`", primary.name);
    }
    Ok(())
}

impl Mixture {
    /// A mixture at the start of every source, from `seed`; the primary's first epoch in
    /// `order`.
    pub fn new(primary: Arc<Dataset>, replay: Vec<(Arc<Dataset>, f64)>, seed: u64, order: Order) -> Result<Mixture> {
        check(&primary, &replay)?;
        let root = Rng::new(seed);
        let seed_of = |i: usize| root.fork(i as u64).next_u64();
        let first = Sampler::new(primary.len(), seed_of(0)).with_order(order, &primary.difficulties())?;
        let mut sources = vec![Source { sampler: first, data: primary, ratio: 0.0 }];
        for (i, (data, ratio)) in replay.into_iter().enumerate() {
            sources.push(Source { sampler: Sampler::new(data.len(), seed_of(i + 1)), data, ratio });
        }
        Ok(Mixture { sources })
    }

    /// The mixture a checkpoint saved, over the same datasets and ratios.
    pub fn restore(primary: Arc<Dataset>, replay: Vec<(Arc<Dataset>, f64)>, state: &MixtureState) -> Result<Mixture> {
        check(&primary, &replay)?;
        let all: Vec<(Arc<Dataset>, f64)> = std::iter::once((primary, 0.0)).chain(replay).collect();
        if state.sources.len() != all.len() {
            return Err(Error::msg(format!(
                "mixture state has {} sources, the stage has {}",
                state.sources.len(),
                all.len()
            )));
        }
        let mut sources = Vec::with_capacity(all.len());
        for ((data, ratio), saved) in all.into_iter().zip(&state.sources) {
            if saved.name != data.name || saved.ratio != ratio {
                return Err(Error::msg(format!(
                    "mixture state has source `{}` at ratio {}, the stage has `{}` at ratio {ratio}",
                    saved.name, saved.ratio, data.name
                )));
            }
            let sampler = Sampler::restore(data.len(), &saved.sampler, &data.difficulties())
                .with_context(|| format!("source `{}`", data.name))?;
            sources.push(Source { data, ratio, sampler });
        }
        Ok(Mixture { sources })
    }

    /// The state to save.
    pub fn state(&self) -> MixtureState {
        MixtureState {
            sources: self
                .sources
                .iter()
                .map(|s| SourceState { name: s.data.name.clone(), ratio: s.ratio, sampler: s.sampler.state() })
                .collect(),
        }
    }

    /// How many examples of a batch of `batch_size` each source gives, primary first.
    pub fn counts(&self, batch_size: usize) -> Result<Vec<usize>> {
        let replay: Vec<usize> = self.sources[1..]
            .iter()
            .map(|s| if s.ratio > 0.0 { ((s.ratio * batch_size as f64).round() as usize).max(1) } else { 0 })
            .collect();
        let taken: usize = replay.iter().sum();
        if taken >= batch_size {
            return Err(Error::msg(format!(
                "a batch of {batch_size} leaves no room for `{}` after {taken} replay examples; raise the batch size",
                self.sources[0].data.name
            )));
        }
        Ok(std::iter::once(batch_size - taken).chain(replay).collect())
    }

    /// Where a batch of `batch_size` from [`Mixture::next_batch`] switches from the
    /// primary's rows to replayed ones; `None` when nothing is replayed.
    pub fn replay_from(&self, batch_size: usize) -> Result<Option<usize>> {
        if self.sources.len() == 1 {
            return Ok(None);
        }
        Ok(Some(self.counts(batch_size)?[0]))
    }

    /// The next batch: the primary's examples, then each replay source's.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<Vec<&Example>> {
        let counts = self.counts(batch_size)?;
        let picks: Vec<Vec<usize>> =
            self.sources.iter_mut().zip(&counts).map(|(s, &k)| s.sampler.next_batch(k)).collect();
        Ok(self.sources.iter().zip(picks).flat_map(|(s, idx)| idx.into_iter().map(|i| &s.data.examples[i])).collect())
    }

    /// The primary's epoch (full passes over the stage's own data).
    pub fn epoch(&self) -> u64 {
        self.sources[0].sampler.epoch()
    }

    /// The primary dataset.
    pub fn primary(&self) -> &Dataset {
        &self.sources[0].data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` one-token text examples whose token is `tag`, numbered by difficulty.
    fn data(name: &str, n: usize, tag: u32) -> Arc<Dataset> {
        let examples = (0..n).map(|i| Example::from_ids(vec![tag]).with_difficulty(i as f64)).collect();
        Arc::new(Dataset {
            name: name.into(),
            kind: DataKind::Text,
            examples,
            sha256: None,
            label_names: vec![],
            format: None,
            packing: None,
        })
    }

    #[test]
    fn batches_follow_the_ratios() -> Result<()> {
        let mut m = Mixture::new(
            data("p", 40, 1),
            vec![(data("a", 9, 2), 0.1), (data("b", 5, 3), 0.02), (data("c", 5, 4), 0.0)],
            1,
            Order::Shuffled,
        )?;
        assert_eq!(m.counts(16)?, vec![13, 2, 1, 0]);
        assert_eq!(m.counts(10)?, vec![8, 1, 1, 0]);
        assert!(m.counts(2).is_err());
        for _ in 0..5 {
            let tags: Vec<u32> = m.next_batch(16)?.iter().map(|e| e.ids[0]).collect();
            assert_eq!(tags, [vec![1; 13], vec![2; 2], vec![3]].concat());
        }
        assert_eq!(m.epoch(), 1);
        Ok(())
    }

    #[test]
    fn restored_mixture_continues_identically() -> Result<()> {
        let (p, r) = (data("p", 23, 1), data("r", 7, 2));
        let mut a = Mixture::new(p.clone(), vec![(r.clone(), 0.25)], 5, Order::Curriculum)?;
        a.next_batch(8)?;
        let json = serde_json::to_string(&a.state()).map_err(Error::msg)?;
        let state: MixtureState = serde_json::from_str(&json).map_err(Error::msg)?;
        let mut b = Mixture::restore(p.clone(), vec![(r.clone(), 0.25)], &state)?;
        for _ in 0..10 {
            let x: Vec<f64> = a.next_batch(8)?.iter().map(|e| e.difficulty).collect();
            let y: Vec<f64> = b.next_batch(8)?.iter().map(|e| e.difficulty).collect();
            assert_eq!(x, y);
        }
        assert!(Mixture::restore(p.clone(), vec![(r.clone(), 0.5)], &state).is_err());
        assert!(Mixture::restore(p, vec![], &state).is_err());
        Ok(())
    }

    #[test]
    fn curriculum_applies_to_the_primary_and_sources_differ_in_seed() -> Result<()> {
        let mut m = Mixture::new(data("p", 6, 1), vec![(data("r", 6, 2), 0.5)], 0, Order::Curriculum)?;
        let first: Vec<f64> = m.next_batch(6)?.iter().map(|e| e.difficulty).collect();
        assert_eq!(first[..3], [0.0, 1.0, 2.0]);
        let seeds: Vec<u64> = m.state().sources.iter().map(|s| s.sampler.seed).collect();
        assert_ne!(seeds[0], seeds[1]);
        Ok(())
    }

    #[test]
    fn bad_mixtures_are_refused() {
        let err = |replay: Vec<(Arc<Dataset>, f64)>| {
            Mixture::new(data("p", 4, 1), replay, 0, Order::Shuffled).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(err(vec![(data("a", 4, 1), 1.0)]), "replay `a`: ratio 1 is not in [0, 1)");
        assert_eq!(
            err(vec![(data("a", 4, 1), 0.6), (data("b", 4, 1), 0.5)]),
            "replay ratios sum to 1.1, which leaves nothing of `p`"
        );
        assert_eq!(err(vec![(data("a", 0, 1), 0.1)]), "data source `a` has no examples");
        let mut cls = (*data("c", 2, 1)).clone();
        cls.kind = DataKind::Classification;
        assert_eq!(
            err(vec![(Arc::new(cls), 0.1)]),
            "replay `c` is classification data, which cannot share batches with `p` (text data)"
        );
    }
}
