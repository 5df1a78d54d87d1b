//! Permutation p-values: how often a statistic computed on the pooled examples,
//! reshuffled into two groups of the original sizes, is at least the observed one.
//!
//! p = (1 + #{statistic on a reshuffle >= observed}) / (1 + P): never 0, so a test
//! with P = 200 reshuffles reports at least 1/201 ≈ 0.005 (keep `alpha` above that).
//! Reshuffles come from the seeded [`Rng`], so a report is reproducible.
//!
//! ```
//! use stagecraft_core::drift::permutation::permutation_p;
//! use stagecraft_core::rng::Rng;
//! // A statistic that never reaches the observed value: the smallest p there is.
//! let p = permutation_p(1.0, 4, 99, &mut Rng::new(0), |_order| 0.0);
//! assert!((p - 0.01).abs() < 1e-12);
//! ```

use crate::rng::Rng;

/// Shuffles `order` in place (Fisher–Yates).
pub fn shuffle(order: &mut [usize], rng: &mut Rng) {
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
}

/// The permutation p-value of `observed` over `permutations` reshuffles of `n` pooled
/// items; `statistic` gets each reshuffled order of `0..n` (its first items are the
/// reference group). Values within 1e-12 (relative) of `observed` count as reaching
/// it, so identical groups give p = 1 despite rounding.
pub fn permutation_p(
    observed: f64,
    n: usize,
    permutations: usize,
    rng: &mut Rng,
    mut statistic: impl FnMut(&[usize]) -> f64,
) -> f64 {
    let reach = observed - 1e-12 * observed.abs().max(1e-12);
    let mut order: Vec<usize> = (0..n).collect();
    let mut at_least = 0usize;
    for _ in 0..permutations {
        shuffle(&mut order, rng);
        if statistic(&order) >= reach {
            at_least += 1;
        }
    }
    (1 + at_least) as f64 / (1 + permutations) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, &mut Rng::new(3));
        shuffle(&mut b, &mut Rng::new(3));
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort_unstable();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_statistic_always_reached_gives_p_one() {
        assert_eq!(permutation_p(0.5, 10, 20, &mut Rng::new(1), |_| 0.5), 1.0);
    }
}
