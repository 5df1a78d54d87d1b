//! Two-sample Kolmogorov–Smirnov test on sequence lengths.
//!
//! D = sup_x |F_ref(x) - F_cur(x)| over the two empirical distribution functions (ties
//! handled by stepping over each distinct value at once), and the asymptotic
//! Kolmogorov p-value P(K >= √(n m / (n + m)) · D). D lies in [0, 1]: the largest gap
//! between the fractions of examples at most a given length.
//!
//! ```
//! use stagecraft_core::drift::ks::ks_statistic;
//! assert_eq!(ks_statistic(&[1, 2, 3], &[4, 5]), 1.0);
//! assert_eq!(ks_statistic(&[3, 1, 2], &[2, 3, 1]), 0.0);
//! ```

use super::special::kolmogorov_sf;
use super::Statistic;

/// The two-sample KS statistic D of `a` and `b` (neither empty).
pub fn ks_statistic(a: &[usize], b: &[usize]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] == x {
            i += 1;
        }
        while j < b.len() && b[j] == x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// D for the lengths of `reference` and `current` (neither empty) and its asymptotic
/// p-value.
pub fn length_ks(reference: &[usize], current: &[usize]) -> Statistic {
    let value = ks_statistic(reference, current);
    let (n, m) = (reference.len() as f64, current.len() as f64);
    let p_value = kolmogorov_sf((n * m / (n + m)).sqrt() * value);
    Statistic { value, p_value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_matches_scipy() {
        // python3 -c "import numpy as np; from scipy.stats import ks_2samp, kstwobign; a=[3,5,5,6,7,7,7,9,12,4]; b=[5,6,8,8,9,9,10,11,12,13,14,7]; d=ks_2samp(a,b).statistic; print(float(d), float(kstwobign.sf(np.sqrt(len(a)*len(b)/(len(a)+len(b)))*d)))"
        let a = [3, 5, 5, 6, 7, 7, 7, 9, 12, 4];
        let b = [5, 6, 8, 8, 9, 9, 10, 11, 12, 13, 14, 7];
        let s = length_ks(&a, &b);
        assert!((s.value - 0.55).abs() < 1e-12, "{}", s.value);
        assert!((s.p_value - 0.0737626336003375).abs() < 1e-10, "{}", s.p_value);
    }

    #[test]
    fn same_lengths_have_d_zero_and_p_one() {
        let s = length_ks(&[4, 5, 6, 6], &[6, 5, 4, 6, 4, 5, 6, 6]);
        assert_eq!(s.value, 0.0);
        assert_eq!(s.p_value, 1.0);
    }
}
