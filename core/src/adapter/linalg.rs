//! The small dense linear algebra that combining LoRA adapters needs, in f64 on the
//! host: a thin QR factorization (Householder) and a singular value decomposition
//! (one-sided Jacobi). The matrices are as small as the adapters' ranks, so clarity
//! wins over speed.
//!
//! ```
//! use stagecraft_core::adapter::linalg::{svd, Mat};
//! let m = Mat::from_rows(&[vec![3.0, 0.0], vec![0.0, -2.0]]);
//! let (_, s, _) = svd(&m);
//! assert!((s[0] - 3.0).abs() < 1e-12 && (s[1] - 2.0).abs() < 1e-12);
//! ```

/// A row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows × cols` values, row after row.
    pub data: Vec<f64>,
}

impl Mat {
    /// All zeros.
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// The identity.
    pub fn eye(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        (0..n).for_each(|i| m.set(i, i, 1.0));
        m
    }

    /// From rows of equal length.
    pub fn from_rows(rows: &[Vec<f64>]) -> Mat {
        let cols = rows.first().map_or(0, Vec::len);
        Mat { rows: rows.len(), cols, data: rows.iter().flatten().copied().collect() }
    }

    /// Element `(r, c)`.
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    /// Sets element `(r, c)`.
    pub fn set(&mut self, r: usize, c: usize, v: f64) {
        self.data[r * self.cols + c] = v;
    }

    /// The transpose.
    pub fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.set(c, r, self.at(r, c));
            }
        }
        out
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul of {}x{} by {}x{}", self.rows, self.cols, other.rows, other.cols);
        let mut out = Mat::zeros(self.rows, other.cols);
        for r in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(r, k);
                if a != 0.0 {
                    for c in 0..other.cols {
                        out.data[r * other.cols + c] += a * other.at(k, c);
                    }
                }
            }
        }
        out
    }

    /// The first `n` columns (zero columns beyond the matrix's own).
    pub fn first_cols(&self, n: usize) -> Mat {
        let mut out = Mat::zeros(self.rows, n);
        for r in 0..self.rows {
            for c in 0..n.min(self.cols) {
                out.set(r, c, self.at(r, c));
            }
        }
        out
    }
}

/// Thin QR of an `m × n` matrix: `Q` `m × k` with orthonormal columns and `R` `k × n`
/// upper triangular, `k = min(m, n)`, `A = Q·R` (Householder reflections).
pub fn qr(a: &Mat) -> (Mat, Mat) {
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    let mut r = a.clone();
    let mut reflectors: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        let norm = (j..m).map(|i| r.at(i, j).powi(2)).sum::<f64>().sqrt();
        let mut v: Vec<f64> = (j..m).map(|i| r.at(i, j)).collect();
        if norm > 0.0 {
            v[0] += if v[0] >= 0.0 { norm } else { -norm };
        }
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv > 0.0 {
            // R ← (I − 2vvᵀ/vᵀv) R, on rows j.. and columns j..
            for c in j..n {
                let dot: f64 = (j..m).map(|i| v[i - j] * r.at(i, c)).sum();
                let f = 2.0 * dot / vv;
                for i in j..m {
                    let x = r.at(i, c) - f * v[i - j];
                    r.set(i, c, x);
                }
            }
        }
        reflectors.push(v);
    }
    // Q = H₀ H₁ … H_{k−1} applied to the first k columns of the identity.
    let mut q = Mat::eye(m).first_cols(k);
    for (j, v) in reflectors.iter().enumerate().rev() {
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv == 0.0 {
            continue;
        }
        for c in 0..k {
            let dot: f64 = (j..m).map(|i| v[i - j] * q.at(i, c)).sum();
            let f = 2.0 * dot / vv;
            for i in j..m {
                let x = q.at(i, c) - f * v[i - j];
                q.set(i, c, x);
            }
        }
    }
    let mut rk = Mat::zeros(k, n);
    for i in 0..k {
        for c in i..n {
            rk.set(i, c, r.at(i, c));
        }
    }
    (q, rk)
}

/// SVD of an `m × n` matrix: `U` `m × k`, singular values (descending, ≥ 0) and `V`
/// `n × k`, `k = min(m, n)`, with `A = U·diag(s)·Vᵀ` (one-sided Jacobi on the
/// columns, to convergence in f64).
pub fn svd(a: &Mat) -> (Mat, Vec<f64>, Mat) {
    if a.rows < a.cols {
        let (u, s, v) = svd(&a.t());
        return (v, s, u);
    }
    let (m, n) = (a.rows, a.cols);
    let mut w = a.clone();
    let mut v = Mat::eye(n);
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (w.at(i, p), w.at(i, q));
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for mat in [&mut w, &mut v] {
                    for i in 0..mat.rows {
                        let (x, y) = (mat.at(i, p), mat.at(i, q));
                        mat.set(i, p, c * x - s * y);
                        mat.set(i, q, s * x + c * y);
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..n).map(|c| (0..m).map(|i| w.at(i, c).powi(2)).sum::<f64>().sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));
    let (mut u, mut vs, mut s) = (Mat::zeros(m, n), Mat::zeros(n, n), Vec::with_capacity(n));
    for (dst, &src) in order.iter().enumerate() {
        let sigma = norms[src];
        s.push(sigma);
        for i in 0..m {
            u.set(i, dst, if sigma > 0.0 { w.at(i, src) / sigma } else { 0.0 });
        }
        for i in 0..n {
            vs.set(i, dst, v.at(i, src));
        }
    }
    (u, s, vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut x = seed;
        let data = (0..rows * cols)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Mat { rows, cols, data }
    }

    fn max_diff(a: &Mat, b: &Mat) -> f64 {
        a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn qr_reconstructs_with_orthonormal_q() {
        for (m, n) in [(7, 3), (3, 7), (5, 5)] {
            let a = pseudo_random(m, n, (m * 10 + n) as u64);
            let (q, r) = qr(&a);
            assert!(max_diff(&q.matmul(&r), &a) < 1e-12, "{m}x{n}");
            let k = m.min(n);
            assert!(max_diff(&q.t().matmul(&q), &Mat::eye(k)) < 1e-12);
            assert!((0..k).all(|i| (0..i).all(|c| r.at(i, c) == 0.0)), "R upper triangular");
        }
    }

    #[test]
    fn svd_reconstructs_with_sorted_values_and_orthonormal_factors() {
        for (m, n) in [(6, 4), (4, 6), (5, 5)] {
            let a = pseudo_random(m, n, (m * 7 + n) as u64);
            let (u, s, v) = svd(&a);
            let k = m.min(n);
            let mut us = u.clone();
            for i in 0..us.rows {
                for (c, sigma) in s.iter().enumerate().take(k) {
                    us.set(i, c, u.at(i, c) * sigma);
                }
            }
            assert!(max_diff(&us.matmul(&v.t()), &a) < 1e-10, "{m}x{n}");
            assert!(s.windows(2).all(|w| w[0] >= w[1]) && s.iter().all(|x| *x >= 0.0));
            assert!(max_diff(&u.t().matmul(&u), &Mat::eye(k)) < 1e-10);
            assert!(max_diff(&v.t().matmul(&v), &Mat::eye(k)) < 1e-10);
        }
    }

    #[test]
    fn svd_of_a_rank_one_matrix_has_one_nonzero_value() {
        let a = Mat::from_rows(&[vec![1.0, 2.0], vec![2.0, 4.0], vec![3.0, 6.0]]);
        let (_, s, _) = svd(&a);
        assert!((s[0] - 70f64.sqrt()).abs() < 1e-12 && s[1].abs() < 1e-12, "{s:?}");
    }
}
