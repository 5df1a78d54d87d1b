//! Small matrix products on the calling thread, for fused ops that run many of them in
//! parallel (one attention head per task).
//!
//! candle's matmul runs every product on all threads; for a 128×64 · 64×128 head that
//! costs more in synchronization than in arithmetic (15 GFLOP/s on 2 cores, against
//! over 100 for large products). Here each product runs on one thread through the same
//! `gemm` crate (runtime-dispatched AVX-512 / AVX2 kernels), and the caller spreads
//! independent products over rayon's pool: separate products, blocks of rows
//! (`&mut` chunks), or blocks of columns ([`split_columns`]).
//!
//! This file holds the crate's only `unsafe` outside `main`: the call into `gemm`,
//! which takes raw pointers and strides, the column blocks, and output matrices
//! allocated without zeroing ([`unwritten_matrix`]). Every view is
//! bounds-checked first, and a destination is a `&mut` slice or a block of one, so it
//! cannot alias an operand or another block.

use candle_core::{bail, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Its columns `c0..c1` (no copy).
    pub fn columns(self, c0: usize, c1: usize) -> Self {
        let data = if c1 > c0 { &self.data[c0 * self.col_stride..] } else { &self.data[..0] };
        View { data, cols: c1 - c0, ..self }
    }

    /// Whether every element it names lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// Each product `a·b` of `products` restricted to the columns `c` of its result (the
/// columns of `b`): the products a block of columns writes.
pub(crate) fn column_products<'v>(
    products: &[(View<'v>, View<'v>)],
    c: std::ops::Range<usize>,
) -> Vec<(View<'v>, View<'v>)> {
    products.iter().map(|(a, b)| (*a, b.columns(c.start, c.end))).collect()
}

/// A block of whole columns `c0..c1` of a row-major matrix, writable on its own thread
/// while other threads write the other blocks ([`split_columns`]).
///
/// Splitting a product's output by columns gives each thread half of the right-hand
/// matrix to pack instead of all of it: for `x·Wᵀ`, whose `W` the `gemm` crate packs
/// because it is read across its rows, ~10% faster than splitting by rows (W2's
/// forward products, 2 threads).
pub(crate) struct Columns<'a> {
    ptr: *mut f32,
    rows: usize,
    row_stride: usize,
    c0: usize,
    c1: usize,
    _dst: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a block only reaches its own columns of the matrix it was split from, which
// stays mutably borrowed for the blocks' lifetime; blocks never overlap.
#[allow(unsafe_code)]
unsafe impl Send for Columns<'_> {}

/// `dst` (row-major, `rows × n`) as `parts` blocks of whole columns, as even as
/// possible (widths rounded to 16 columns: whole AVX-512 lanes), in column order.
pub(crate) fn split_columns(dst: &mut [f32], rows: usize, n: usize, parts: usize) -> Vec<Columns<'_>> {
    assert!(dst.len() >= rows * n, "gemm: {rows}×{n} columns of a {}-element slice", dst.len());
    let width = column_width(n, parts);
    let ptr = dst.as_mut_ptr();
    (0..n)
        .step_by(width)
        .map(|c0| Columns { ptr, rows, row_stride: n, c0, c1: (c0 + width).min(n), _dst: std::marker::PhantomData })
        .collect()
}

/// The width of `parts` even blocks of `n` columns, rounded up to whole AVX-512 lanes.
fn column_width(n: usize, parts: usize) -> usize {
    n.div_ceil(parts.max(1)).next_multiple_of(16).min(n).max(1)
}

impl Columns<'_> {
    /// The columns it covers.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.c0..self.c1
    }

    /// Row `r` of the block, writable.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "gemm: row {r} of a {}-row block", self.rows);
        // SAFETY: row `r`'s columns `c0..c1` lie inside the matrix (checked in
        // `split_columns`) and belong to this block only; `self` is borrowed mutably
        // for the slice's lifetime.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(r * self.row_stride + self.c0), self.c1 - self.c0)
        }
    }

    /// `block = a·b` (or `+=` with `accumulate`), on the calling thread; `b` has the
    /// block's width.
    pub fn matmul(&mut self, a: View<'_>, b: View<'_>, accumulate: bool) -> Result<()> {
        let (m, n) = (a.rows, b.cols);
        if m != self.rows || n != self.c1 - self.c0 {
            bail!("gemm: a {m}×{n} product into a {}×{} block", self.rows, self.c1 - self.c0)
        }
        // SAFETY: as in `row_mut`, the block's elements are in bounds and its own.
        #[allow(unsafe_code)]
        unsafe {
            product(self.ptr.add(self.c0), self.row_stride, a, b, accumulate)
        }
    }
}

/// A new row-major `rows × n` matrix that products write in blocks, allocated without
/// zeroing: a GEMM that does not accumulate overwrites its destination, so zeroing it
/// first is a wasted pass over memory (for W2's products, ~600 MiB a step).
///
/// `fill` gets the matrix as [`Unwritten`], splits it into disjoint blocks and writes
/// each with [`Block::write`]; only when the blocks' products have covered every
/// element is the matrix returned (otherwise an error, and nothing uninitialized is
/// ever read).
pub(crate) fn unwritten_matrix(
    rows: usize,
    n: usize,
    fill: impl FnOnce(Unwritten<'_>) -> Result<()>,
) -> Result<Vec<f32>> {
    let len = rows * n;
    let mut buf: Vec<f32> = Vec::with_capacity(len);
    let written = AtomicUsize::new(0);
    fill(Unwritten { ptr: buf.as_mut_ptr(), rows, n, written: &written, _dst: std::marker::PhantomData })?;
    let done = written.load(Ordering::Acquire);
    if done != len {
        bail!("gemm: blocks wrote {done} of a {rows}×{n} matrix's {len} elements")
    }
    // SAFETY: the blocks are disjoint (`Unwritten::columns` / `rows` split the matrix
    // once, and each block is consumed by its write) and their writes covered `len`
    // elements, so every element of the capacity is initialized.
    #[allow(unsafe_code)]
    unsafe {
        buf.set_len(len)
    };
    Ok(buf)
}

/// A matrix of [`unwritten_matrix`], before it is split into blocks.
pub(crate) struct Unwritten<'a> {
    ptr: *mut f32,
    rows: usize,
    n: usize,
    written: &'a AtomicUsize,
    _dst: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Unwritten<'a> {
    /// `parts` blocks of whole columns, as even as possible (widths rounded to 16
    /// columns), in column order: see [`Columns`] for why a product splits this way.
    pub fn columns(self, parts: usize) -> Vec<Block<'a>> {
        let width = column_width(self.n, parts);
        (0..self.n).step_by(width).map(|c0| self.block(0, self.rows, c0, (c0 + width).min(self.n))).collect()
    }

    /// Blocks of `block_rows` whole rows (the last may be shorter), in row order.
    pub fn rows(self, block_rows: usize) -> Vec<Block<'a>> {
        let step = block_rows.max(1);
        (0..self.rows).step_by(step).map(|r0| self.block(r0, (r0 + step).min(self.rows), 0, self.n)).collect()
    }

    fn block(&self, r0: usize, r1: usize, c0: usize, c1: usize) -> Block<'a> {
        Block {
            // In bounds: r0 < rows and c0 < n, or the matrix is empty and the offset 0.
            ptr: self.ptr.wrapping_add(r0 * self.n + c0),
            rows: r1 - r0,
            cols: c1 - c0,
            row_stride: self.n,
            r0,
            c0,
            written: self.written,
            _dst: std::marker::PhantomData,
        }
    }
}

/// A block of an [`Unwritten`] matrix: rows `r0..r0 + rows`, columns `c0..c0 + cols`.
pub(crate) struct Block<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    row_stride: usize,
    r0: usize,
    c0: usize,
    written: &'a AtomicUsize,
    _dst: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: as for `Columns`: a block reaches only its own elements of a matrix that
// stays borrowed for the blocks' lifetime; blocks never overlap.
#[allow(unsafe_code)]
unsafe impl Send for Block<'_> {}

impl<'a> Block<'a> {
    /// The matrix's rows it covers.
    pub fn row_range(&self) -> std::ops::Range<usize> {
        self.r0..self.r0 + self.rows
    }

    /// The matrix's columns it covers.
    pub fn col_range(&self) -> std::ops::Range<usize> {
        self.c0..self.c0 + self.cols
    }

    /// The block `= Σ a·b` over `terms`, on the calling thread: the first product
    /// overwrites it, the others accumulate onto it. Returns the block, now readable.
    pub fn write(self, terms: &[(View<'_>, View<'_>)]) -> Result<Written<'a>> {
        if terms.is_empty() {
            bail!("gemm: a block written with no product")
        }
        for (i, (a, b)) in terms.iter().enumerate() {
            if a.rows != self.rows || b.cols != self.cols {
                bail!("gemm: a {}×{} product into a {}×{} block", a.rows, b.cols, self.rows, self.cols)
            }
            // SAFETY: the block's rows of `cols` elements `row_stride` apart lie inside
            // the matrix's capacity and belong to this block only; the first product
            // writes every one of them before any accumulating product reads them.
            #[allow(unsafe_code)]
            unsafe {
                product(self.ptr, self.row_stride, *a, *b, i > 0)?
            };
        }
        self.written.fetch_add(self.rows * self.cols, Ordering::Release);
        Ok(Written { ptr: self.ptr, cols: self.cols, row_stride: self.row_stride, rows: self.rows, _dst: self._dst })
    }
}

/// A [`Block`] its products have written.
pub(crate) struct Written<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    row_stride: usize,
    _dst: std::marker::PhantomData<&'a mut [f32]>,
}

impl Written<'_> {
    /// Row `r` of the block.
    pub fn row(&self, r: usize) -> &[f32] {
        assert!(r < self.rows, "gemm: row {r} of a {}-row block", self.rows);
        // SAFETY: the block's own elements, in bounds and initialized by `Block::write`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ptr.add(r * self.row_stride), self.cols)
        }
    }
}

/// `dst = a·b` (or `dst += a·b` with `accumulate`), `dst` row-major `a.rows × b.cols`
/// with rows `dst_row_stride` apart, on the calling thread.
pub(crate) fn matmul(dst: &mut [f32], dst_row_stride: usize, a: View<'_>, b: View<'_>, accumulate: bool) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    if m > 0 && n > 0 && (m - 1) * dst_row_stride + n > dst.len() {
        bail!("gemm: a view reaches outside its slice")
    }
    // SAFETY: `dst` was checked above to hold `m` rows of `n` elements `dst_row_stride`
    // apart; it is borrowed mutably, so it cannot overlap `a` or `b`.
    #[allow(unsafe_code)]
    unsafe {
        product(dst.as_mut_ptr(), dst_row_stride, a, b, accumulate)
    }
}

/// The call into `gemm` for `dst = a·b` (`+=` with `accumulate`) after checking the
/// operands' views.
///
/// # Safety
/// `dst` must be valid for writes of `a.rows` rows of `b.cols` elements,
/// `dst_row_stride ≥ b.cols` apart, that nothing else reads or writes meanwhile.
#[allow(unsafe_code)]
unsafe fn product(dst: *mut f32, dst_row_stride: usize, a: View<'_>, b: View<'_>, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        bail!("gemm: {m}×{k} times {}×{n}", b.rows)
    }
    if !(a.in_bounds() && b.in_bounds()) || (n > dst_row_stride && m > 1) {
        bail!("gemm: a view reaches outside its slice")
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            // Raw writes: `dst` may not be initialized yet (`unwritten_matrix`).
            (0..m).for_each(|i| std::ptr::write_bytes(dst.add(i * dst_row_stride), 0, n));
        }
        return Ok(());
    }
    let stride = |s: usize| s as isize;
    // SAFETY: `a` and `b` were checked above to stay inside their slices for `m × k`
    // and `k × n` elements with these strides; the caller vouches for `dst`, whose rows
    // (stride ≥ n) do not overlap each other. `gemm` reads `dst` only when `read_dst`
    // is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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
    fn column_blocks_cover_the_product_once() -> Result<()> {
        let (m, k, n) = (5, 7, 37);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.5).collect();
        let (a, b) = (View::rows(&a, m, k, k), View::rows(&b, k, n, n));
        let mut whole = vec![0f32; m * n];
        matmul(&mut whole, n, a, b, false)?;
        for parts in [1, 2, 3, 8, 64] {
            let mut dst = vec![f32::NAN; m * n];
            let blocks = split_columns(&mut dst, m, n, parts);
            let widths: Vec<usize> = blocks.iter().map(|c| c.range().len()).collect();
            assert_eq!(widths.iter().sum::<usize>(), n, "{parts} parts: {widths:?}");
            for mut cols in blocks {
                let c = cols.range();
                cols.matmul(a, b.columns(c.start, c.end), false)?;
                assert_eq!(cols.row_mut(m - 1), &whole[(m - 1) * n + c.start..][..c.len()]);
            }
            assert_eq!(dst, whole, "{parts} parts");
        }
        Ok(())
    }

    /// An overwriting product never reads its destination (in every shape class the
    /// `gemm` crate dispatches on), so an unzeroed one is safe to write into.
    #[test]
    fn overwriting_products_ignore_what_the_destination_held() -> Result<()> {
        for (m, k, n) in [(1, 1, 1), (1, 9, 40), (33, 9, 1), (5, 1, 17), (70, 64, 96), (3, 300, 2)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.25).collect();
            let (a, b) = (View::rows(&a, m, k, k), View::rows(&b, k, n, n));
            let mut zeroed = vec![0f32; m * n];
            matmul(&mut zeroed, n, a, b, false)?;
            let mut poisoned = vec![f32::NAN; m * n];
            matmul(&mut poisoned, n, a, b, false)?;
            assert_eq!(poisoned, zeroed, "{m}×{k}×{n}");
        }
        Ok(())
    }

    #[test]
    fn unwritten_matrices_are_whole_products() -> Result<()> {
        let (m, k, n) = (9, 6, 35);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 3) as f32 * 0.5).collect();
        let (a, b) = (View::rows(&a, m, k, k), View::rows(&b, k, n, n));
        let mut twice = vec![0f32; m * n];
        matmul(&mut twice, n, a, b, false)?;
        matmul(&mut twice, n, a, b, true)?;
        let by_columns = unwritten_matrix(m, n, |dst| {
            dst.columns(3).into_iter().try_for_each(|blk| {
                let c = blk.col_range();
                let c = b.columns(c.start, c.end);
                blk.write(&[(a, c), (a, c)]).map(drop)
            })
        })?;
        assert_eq!(by_columns, twice);
        let by_rows = unwritten_matrix(m, n, |dst| {
            dst.rows(4).into_iter().try_for_each(|blk| {
                let (r0, rows) = (blk.row_range().start, blk.row_range().len());
                let rows = View::rows(&a.data[r0 * k..], rows, k, k);
                let blk = blk.write(&[(rows, b), (rows, b)])?;
                assert_eq!(blk.row(0), &twice[r0 * n..][..n]);
                Ok(())
            })
        })?;
        assert_eq!(by_rows, twice);
        Ok(())
    }

    #[test]
    fn a_matrix_with_a_block_left_unwritten_is_refused() {
        let a = [1f32; 4];
        let (a, b) = (View::rows(&a, 2, 2, 2), View::rows(&a, 2, 2, 2));
        let half = unwritten_matrix(4, 2, |dst| {
            dst.rows(2).into_iter().take(1).try_for_each(|blk| blk.write(&[(a, b)]).map(drop))
        });
        let err = half.expect_err("half a matrix written");
        assert!(err.to_string().contains("wrote 4 of a 4×2 matrix's 8 elements"), "{err}");
    }

    #[test]
    fn views_past_their_slices_are_refused() {
        let a = [1f32; 4];
        let mut dst = [0f32; 4];
        assert!(matmul(&mut dst, 2, View::rows(&a, 3, 2, 2), View::rows(&a, 2, 2, 2), false).is_err());
        assert!(matmul(&mut dst[..3], 2, View::rows(&a, 2, 2, 2), View::rows(&a, 2, 2, 2), false).is_err());
    }
}
