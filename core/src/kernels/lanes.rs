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

/// Folds `LANES`-element chunks of `a` and `b` (of one length) into `LANES`
/// accumulators with `step`, the tail into lane 0 onwards, then the accumulators with
/// `combine` in lane order. Chunks, not indices: with no bounds check in the loop, the
/// compiler turns each chunk's steps into one vector operation.
#[inline(always)]
fn fold(
    a: &[f32],
    b: &[f32],
    init: f32,
    step: impl Fn(f32, f32, f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b[..a.len()].chunks_exact(LANES));
    let tail = a_chunks.remainder().iter().zip(b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] = step(acc[lane], ca[lane], cb[lane]);
        }
    }
    for (lane, (&x, &y)) in tail.enumerate() {
        acc[lane] = step(acc[lane], x, y);
    }
    acc.into_iter().fold(init, combine)
}

/// `Σ row`.
#[inline(always)]
pub(crate) fn sum(row: &[f32]) -> f32 {
    fold(row, row, 0.0, |acc, x, _| acc + x, |a, b| a + b)
}

/// `Σ a·b` over two rows of the same length.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    fold(a, b, 0.0, |acc, x, y| acc + x * y, |x, y| x + y)
}

/// The largest element (`-∞` for an empty row; NaN elements are passed over, as
/// `f32::max` does). The comparison keeps the accumulator when the element is NaN,
/// which is the vector `max` instruction's rule, so the loop needs no NaN fix-up.
#[inline(always)]
pub(crate) fn max(row: &[f32]) -> f32 {
    fold(row, row, f32::NEG_INFINITY, |acc, x, _| if x > acc { x } else { acc }, f32::max)
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
