//! Small matrix products on the calling thread, for fused ops that run many of them in
//! parallel (one attention head per task).
//!
//! candle's matmul runs every product on all threads; for a 128×64 · 64×128 head that
//! costs more in synchronization than in arithmetic (15 GFLOP/s on 2 cores, against
//! over 100 for large products). Here each product runs on one thread through the same
//! `gemm` crate (runtime-dispatched AVX2/FMA kernels), and the caller spreads
//! independent products over rayon's pool.
//!
//! This file holds the crate's only `unsafe` outside `main`: the call into `gemm`,
//! which takes raw pointers and strides. Every view is bounds-checked first, and the
//! destination is a `&mut` slice, so it cannot alias an operand.

use candle_core::{bail, Result};

/// A strided matrix view into a slice: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix whose rows are `row_stride` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        View { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        View { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Whether every element it names lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst = a·b` (or `dst += a·b` with `accumulate`), `dst` row-major `a.rows × b.cols`
/// with rows `dst_row_stride` apart, on the calling thread.
pub(crate) fn matmul(dst: &mut [f32], dst_row_stride: usize, a: View<'_>, b: View<'_>, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        bail!("gemm: {m}×{k} times {}×{n}", b.rows)
    }
    let dst_in_bounds = m == 0 || n == 0 || (m - 1) * dst_row_stride + n <= dst.len();
    if !(a.in_bounds() && b.in_bounds() && dst_in_bounds) || (n > dst_row_stride && m > 1) {
        bail!("gemm: a view reaches outside its slice")
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_row_stride..][..n].fill(0.0));
        }
        return Ok(());
    }
    let stride = |s: usize| s as isize;
    // SAFETY: the three views were checked above to stay inside their slices for
    // `m × k`, `k × n` and `m × n` elements with these strides; `dst` is borrowed
    // mutably, so it cannot overlap `a` or `b`, and its rows (stride ≥ n) do not
    // overlap each other. `gemm` reads `dst` only when `read_dst` is set.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(dst_row_stride),
            accumulate,
            a.data.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_and_transposed_products() -> Result<()> {
        // a = [[1, 2], [3, 4]] stored with a padding column; b = [[5, 6], [7, 8]]ᵀ.
        let a = [1.0, 2.0, 0.0, 3.0, 4.0, 0.0];
        let b = [5.0, 7.0, 6.0, 8.0];
        let mut dst = [0f32; 6];
        matmul(&mut dst, 3, View::rows(&a, 2, 2, 3), View::rows(&b, 2, 2, 2).t(), false)?;
        assert_eq!(dst, [19.0, 22.0, 0.0, 43.0, 50.0, 0.0]);
        matmul(&mut dst, 3, View::rows(&a, 2, 2, 3), View::rows(&b, 2, 2, 2).t(), true)?;
        assert_eq!(dst, [38.0, 44.0, 0.0, 86.0, 100.0, 0.0]);
        Ok(())
    }

    #[test]
    fn views_past_their_slices_are_refused() {
        let a = [1f32; 4];
        let mut dst = [0f32; 4];
        assert!(matmul(&mut dst, 2, View::rows(&a, 3, 2, 2), View::rows(&a, 2, 2, 2), false).is_err());
        assert!(matmul(&mut dst[..3], 2, View::rows(&a, 2, 2, 2), View::rows(&a, 2, 2, 2), false).is_err());
    }
}
