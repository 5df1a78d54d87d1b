//! Chi-square test of homogeneity on class-label counts, with Cramér's V as its
//! effect size.
//!
//! The 2 × K table holds each side's count of each class seen on either side;
//! χ² = Σ (O - E)² / E with E from the margins, K - 1 degrees of freedom, and
//! V = √(χ² / N) (N examples in all; the table has two rows), which lies in [0, 1]
//! whatever N is: 0 for the same class proportions, 1 for classes that never overlap.
//!
//! ```
//! use stagecraft_core::drift::chi2::label_chi2;
//! let t = label_chi2(&[0, 0, 1, 1], &[0, 1, 0, 1]);
//! assert_eq!((t.statistic, t.dof, t.p_value, t.cramers_v), (0.0, 1, 1.0, 0.0));
//! ```

use super::special::chi2_sf;
use std::collections::BTreeMap;

/// The chi-square test's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// Pearson's χ² statistic.
    pub statistic: f64,
    /// Degrees of freedom: classes seen, minus one.
    pub dof: usize,
    /// P(χ²_dof >= statistic); 1 when only one class is seen.
    pub p_value: f64,
    /// Cramér's V, in [0, 1].
    pub cramers_v: f64,
}

/// The test on the class labels of `reference` and `current` (neither empty).
pub fn label_chi2(reference: &[i64], current: &[i64]) -> ChiSquare {
    let mut table: BTreeMap<i64, [f64; 2]> = BTreeMap::new();
    for (side, labels) in [reference, current].into_iter().enumerate() {
        for l in labels {
            table.entry(*l).or_default()[side] += 1.0;
        }
    }
    let rows = [reference.len() as f64, current.len() as f64];
    let n = rows[0] + rows[1];
    let statistic: f64 = table
        .values()
        .flat_map(|col| {
            let total = col[0] + col[1];
            (0..2).map(move |side| {
                let expected = rows[side] * total / n;
                (col[side] - expected).powi(2) / expected
            })
        })
        .sum();
    let dof = table.len().saturating_sub(1);
    let p_value = if dof == 0 { 1.0 } else { chi2_sf(statistic, dof) };
    ChiSquare { statistic, dof, p_value, cramers_v: (statistic / n).sqrt().min(1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_matches_scipy() {
        // python3 -c "from scipy.stats import chi2_contingency as c; r=c([[30,50,20],[45,30,25]], correction=False); print(float(r.statistic), r.dof, float(r.pvalue))"
        let a: Vec<i64> = [(0, 30), (1, 50), (2, 20)].iter().flat_map(|&(c, k)| std::iter::repeat_n(c, k)).collect();
        let b: Vec<i64> = [(0, 45), (1, 30), (2, 25)].iter().flat_map(|&(c, k)| std::iter::repeat_n(c, k)).collect();
        let t = label_chi2(&a, &b);
        assert!((t.statistic - 8.555555555555557).abs() < 1e-10, "{}", t.statistic);
        assert_eq!(t.dof, 2);
        assert!((t.p_value - 0.0138734577625275).abs() < 1e-10, "{}", t.p_value);
        assert!((t.cramers_v - (8.555555555555557f64 / 200.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn classes_that_never_overlap_have_v_one() {
        let t = label_chi2(&[0; 40], &[1; 40]);
        assert!((t.cramers_v - 1.0).abs() < 1e-12);
        assert!(t.p_value < 1e-15);
    }
}
