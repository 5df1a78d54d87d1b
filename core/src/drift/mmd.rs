//! Maximum mean discrepancy between two sets of vectors (a model's pooled hidden
//! states), with a permutation p-value.
//!
//! The unbiased estimate is
//! MMD²_u = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j)
//! with the RBF kernel k(x, y) = exp(−‖x − y‖² / (2σ²)), σ² the median squared
//! distance between distinct pooled vectors (the median heuristic; 1 when that is 0).
//! It is about 0 when both sets come from one distribution (it can be slightly
//! negative) and at most 2. The kernel matrix of the pooled vectors is computed once:
//! memory and time per reshuffle are (n + m)².
//!
//! ```
//! use stagecraft_core::drift::mmd::{kernel_matrix, mmd2_unbiased};
//! let x = vec![vec![0.0f32], vec![0.1]];
//! let y = vec![vec![5.0f32], vec![5.1]];
//! let pooled: Vec<&[f32]> = x.iter().chain(&y).map(Vec::as_slice).collect();
//! let k = kernel_matrix(&pooled);
//! let order: Vec<usize> = (0..4).collect();
//! assert!(mmd2_unbiased(&k, &order, 2) > 0.5); // 0.80: two tight clouds far apart
//! ```

use super::permutation::permutation_p;
use super::Statistic;
use crate::rng::Rng;

/// The pooled vectors' RBF kernel matrix (row-major, `n × n`) with the median
/// heuristic bandwidth.
pub fn kernel_matrix(pooled: &[&[f32]]) -> Vec<f64> {
    let n = pooled.len();
    let mut d2 = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let s: f64 = pooled[i].iter().zip(pooled[j]).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
            d2[i * n + j] = s;
            d2[j * n + i] = s;
        }
    }
    let mut upper: Vec<f64> =
        (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).map(|(i, j)| d2[i * n + j]).collect();
    let median_d2 = median(&mut upper);
    let two_sigma2 = if median_d2 > 0.0 { 2.0 * median_d2 } else { 2.0 };
    d2.iter().map(|s| (-s / two_sigma2).exp()).collect()
}

/// The median of `v` (0 when empty); reorders `v`.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// MMD²_u of the items `order[..m]` against the rest, from the pooled kernel matrix
/// `k` (each group needs at least two items).
pub fn mmd2_unbiased(k: &[f64], order: &[usize], m: usize) -> f64 {
    let n = order.len();
    let (x, y) = order.split_at(m);
    let within = |g: &[usize]| -> f64 {
        let s: f64 = g
            .iter()
            .flat_map(|&i| g.iter().map(move |&j| (i, j)))
            .filter(|(i, j)| i != j)
            .map(|(i, j)| k[i * n + j])
            .sum();
        s / (g.len() * (g.len() - 1)) as f64
    };
    let across: f64 = x.iter().flat_map(|&i| y.iter().map(move |&j| k[i * n + j])).sum();
    within(x) + within(y) - 2.0 * across / (x.len() * y.len()) as f64
}

/// MMD²_u between `reference` and `current` (at least two vectors each, all of one
/// length) and its permutation p-value.
pub fn hidden_mmd(reference: &[Vec<f32>], current: &[Vec<f32>], permutations: usize, rng: &mut Rng) -> Statistic {
    let pooled: Vec<&[f32]> = reference.iter().chain(current).map(Vec::as_slice).collect();
    let k = kernel_matrix(&pooled);
    let m = reference.len();
    let identity: Vec<usize> = (0..pooled.len()).collect();
    let value = mmd2_unbiased(&k, &identity, m);
    let p_value = permutation_p(value, pooled.len(), permutations, rng, |order| mmd2_unbiased(&k, order, m));
    Statistic { value, p_value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmd_matches_numpy() {
        // python3 -c "
        // import numpy as np; from scipy.spatial.distance import pdist, squareform
        // x=np.array([[0,1],[1,1],[2,0],[0.5,0.2]]); y=np.array([[1,2],[2,2],[3,1]])
        // z=np.vstack([x,y]); d2=squareform(pdist(z,'sqeuclidean')); s2=np.median(pdist(z,'sqeuclidean'))
        // k=np.exp(-d2/(2*s2)); m=4; n=3; kx=k[:m,:m]; ky=k[m:,m:]; kxy=k[:m,m:]
        // print(float((kx.sum()-m)/(m*(m-1)) + (ky.sum()-n)/(n*(n-1)) - 2*kxy.mean()))"
        let x = vec![vec![0.0f32, 1.0], vec![1.0, 1.0], vec![2.0, 0.0], vec![0.5, 0.2]];
        let y = vec![vec![1.0f32, 2.0], vec![2.0, 2.0], vec![3.0, 1.0]];
        let s = hidden_mmd(&x, &y, 0, &mut Rng::new(0));
        assert!((s.value - 0.3718249594496227).abs() < 1e-6, "{}", s.value);
    }

    #[test]
    fn separated_clouds_have_a_small_p_and_one_cloud_a_large_one() {
        let mut rng = Rng::new(5);
        let mut cloud = |shift: f64| -> Vec<Vec<f32>> {
            (0..30).map(|_| (0..4).map(|_| (rng.normal() + shift) as f32).collect()).collect()
        };
        let (a, b, c) = (cloud(0.0), cloud(0.0), cloud(3.0));
        let same = hidden_mmd(&a, &b, 200, &mut Rng::new(1));
        let apart = hidden_mmd(&a, &c, 200, &mut Rng::new(1));
        assert!(same.p_value > 0.05, "{same:?}");
        assert!(apart.p_value < 0.01 && apart.value > 0.5, "{apart:?}");
    }
}
