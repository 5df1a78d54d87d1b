//! Reductions over a row that the compiler turns into SIMD code.
//!
//! `iter().sum()` over f32 adds one element after the other (floating-point addition is
//! not associative, so the compiler keeps that order) and cannot use vector adds. Here
//! each of [`LANES`] accumulators takes every `LANES`-th element and the accumulators
//! are combined at the end: a fixed order, so the result is the same on every run and
//! whatever the number of threads, and the loop becomes one vector operation per
//! `LANES` elements.

/// Accumulators per reduction: one AVX register of f32.
const LANES: usize = 8;

/// Folds `LANES`-element chunks into `LANES` accumulators with `step`, the tail into
/// lane 0 onwards, then the accumulators with `combine` in lane order.
#[inline(always)]
fn fold(len: usize, init: f32, step: impl Fn(f32, usize) -> f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let whole = len / LANES * LANES;
    for base in (0..whole).step_by(LANES) {
        for (lane, a) in acc.iter_mut().enumerate() {
            *a = step(*a, base + lane);
        }
    }
    for (lane, i) in (whole..len).enumerate() {
        acc[lane] = step(acc[lane], i);
    }
    acc.into_iter().fold(init, combine)
}

/// `Σ row`.
#[inline]
pub(crate) fn sum(row: &[f32]) -> f32 {
    fold(row.len(), 0.0, |a, i| a + row[i], |a, b| a + b)
}

/// `Σ a·b` over two rows of the same length.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    fold(a.len(), 0.0, |acc, i| acc + a[i] * b[i], |x, y| x + y)
}

/// The largest element (`-∞` for an empty row; NaN elements are passed over, as
/// `f32::max` does).
#[inline]
pub(crate) fn max(row: &[f32]) -> f32 {
    fold(row.len(), f32::NEG_INFINITY, |a, i| a.max(row[i]), f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_their_plain_forms() {
        for len in [0, 1, 7, 8, 9, 37, 256] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 5) as f32 - 2.0).collect();
            // Small integers and quarters: every order of addition gives the exact sum.
            assert_eq!(sum(&a), a.iter().sum::<f32>(), "sum of {len}");
            assert_eq!(dot(&a, &b), a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>(), "dot of {len}");
            assert_eq!(max(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max), "max of {len}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
    }
}
