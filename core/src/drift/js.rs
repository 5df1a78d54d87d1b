//! Token unigram Jensen–Shannon divergence between two data sets, with a permutation
//! p-value.
//!
//! Each side's token counts, normalized, are distributions P and Q over the token ids
//! either side uses; JS(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M) with M = ½ (P + Q), in bits,
//! so it lies in [0, 1]: 0 for the same unigram frequencies, 1 for disjoint
//! vocabularies. The p-value reshuffles whole examples (not tokens) between the sides.
//!
//! ```
//! use stagecraft_core::drift::js::js_divergence;
//! assert_eq!(js_divergence(&[1.0, 0.0], &[0.0, 1.0]), 1.0);
//! assert_eq!(js_divergence(&[2.0, 2.0], &[1.0, 1.0]), 0.0);
//! ```

use super::permutation::permutation_p;
use super::Statistic;
use crate::rng::Rng;
use std::collections::HashMap;

/// JS divergence (base 2) of the distributions proportional to counts `p` and `q`
/// (same length; each with a positive total).
pub fn js_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (tp, tq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    let mut js = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / tp, b / tq);
        let m = 0.5 * (a + b);
        if a > 0.0 {
            js += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            js += 0.5 * b * (b / m).log2();
        }
    }
    js.clamp(0.0, 1.0)
}

/// Each example's token counts over a dense numbering of the tokens seen anywhere:
/// `(token index, count)` pairs, and the number of distinct tokens.
fn example_counts(examples: &[&[u32]]) -> (Vec<Vec<(usize, f64)>>, usize) {
    let mut index: HashMap<u32, usize> = HashMap::new();
    let counts = examples
        .iter()
        .map(|ids| {
            let mut c: HashMap<usize, f64> = HashMap::new();
            for id in *ids {
                let next = index.len();
                *c.entry(*index.entry(*id).or_insert(next)).or_default() += 1.0;
            }
            c.into_iter().collect()
        })
        .collect();
    (counts, index.len())
}

/// The JS divergence between the token counts of the examples `order[..n_ref]` and
/// those of the rest; `total` is the sum of all.
fn split_js(counts: &[Vec<(usize, f64)>], total: &[f64], order: &[usize], n_ref: usize) -> f64 {
    let mut a = vec![0.0; total.len()];
    for &i in &order[..n_ref] {
        for &(t, c) in &counts[i] {
            a[t] += c;
        }
    }
    let b: Vec<f64> = total.iter().zip(&a).map(|(t, a)| t - a).collect();
    js_divergence(&a, &b)
}

/// The token unigram JS divergence of `reference` and `current` (token ids per
/// example, none empty on either side as a whole) and its permutation p-value.
pub fn token_js(reference: &[&[u32]], current: &[&[u32]], permutations: usize, rng: &mut Rng) -> Statistic {
    let pooled: Vec<&[u32]> = reference.iter().chain(current).copied().collect();
    let (counts, vocab) = example_counts(&pooled);
    let mut total = vec![0.0; vocab];
    for &(t, c) in counts.iter().flatten() {
        total[t] += c;
    }
    let n_ref = reference.len();
    let identity: Vec<usize> = (0..pooled.len()).collect();
    let value = split_js(&counts, &total, &identity, n_ref);
    let p_value =
        permutation_p(value, pooled.len(), permutations, rng, |order| split_js(&counts, &total, order, n_ref));
    Statistic { value, p_value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_matches_scipy() {
        // python3 -c "from scipy.spatial.distance import jensenshannon as j; print(float(j([5,3,2,0],[1,3,4,2],base=2)**2))"
        let js = js_divergence(&[5.0, 3.0, 2.0, 0.0], &[1.0, 3.0, 4.0, 2.0]);
        assert!((js - 0.22950452328914683).abs() < 1e-12, "{js}");
    }

    #[test]
    fn identical_sets_have_js_zero_and_p_one() {
        let a: Vec<Vec<u32>> = (0..20).map(|i| vec![i % 5, 7, 9]).collect();
        let refs: Vec<&[u32]> = a.iter().map(Vec::as_slice).collect();
        let s = token_js(&refs, &refs, 100, &mut Rng::new(1));
        assert_eq!(s.value, 0.0);
        assert_eq!(s.p_value, 1.0);
    }

    #[test]
    fn disjoint_vocabularies_have_js_one_and_a_small_p() {
        let a: Vec<Vec<u32>> = (0..20).map(|i| vec![i % 5, 1, 2]).collect();
        let b: Vec<Vec<u32>> = (0..20).map(|i| vec![10 + i % 5, 11, 12]).collect();
        let ra: Vec<&[u32]> = a.iter().map(Vec::as_slice).collect();
        let rb: Vec<&[u32]> = b.iter().map(Vec::as_slice).collect();
        let s = token_js(&ra, &rb, 200, &mut Rng::new(1));
        assert_eq!(s.value, 1.0);
        assert!((s.p_value - 1.0 / 201.0).abs() < 1e-12, "{}", s.p_value);
    }
}
