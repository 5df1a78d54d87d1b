//! Element-wise loops compiled for the CPU the program runs on.
//!
//! The crate is built for baseline x86-64 (SSE2), so a loop over `f32`s vectorizes
//! four lanes wide. [`vectorized`] runs a closure inside a function compiled for
//! AVX-512 (or AVX2 + FMA) when the CPU has it, chosen at run time (the `pulp` crate,
//! which the `gemm` crate's kernels dispatch with too); loops inlined into the closure
//! vectorize to that width. Results are the same on every path: the loops it wraps do
//! no reassociation the compiler could change (`lanes` fixes the order of sums), and
//! no fused multiply-add is formed from separate `*` and `+`.

/// Runs `f` compiled for the best instruction set the CPU has. Mark the closure
/// `#[inline(always)]` so that its loops are compiled inside the dispatched function.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

#[cfg(test)]
mod tests {
    use super::vectorized;
    use crate::kernels::{exp::exp, lanes, swiglu::silu_times};

    /// A softmax row and SwiGLU computed inside the dispatched function (AVX-512 or
    /// AVX2 on a CPU that has them) equal, bit for bit, the same loops run one element
    /// at a time in a function that is never inlined into it.
    #[test]
    fn dispatched_loops_give_the_same_bits_as_scalar_ones() {
        let x: Vec<f32> = (0..4099).map(|i| ((i * 7919 % 2000) as f32 - 1000.0) * 0.0137).collect();
        let u: Vec<f32> = x.iter().map(|v| 0.5 - v * 0.25).collect();

        #[inline(never)]
        fn scalar(x: &[f32], u: &[f32]) -> (Vec<f32>, Vec<f32>) {
            let max = lanes::max(x);
            let mut p: Vec<f32> = x.iter().map(|&v| std::hint::black_box(exp(v - max))).collect();
            let inv = 1.0 / lanes::sum(&p);
            p.iter_mut().for_each(|v| *v = std::hint::black_box(*v * inv));
            let y = x.iter().zip(u).map(|(&g, &u)| std::hint::black_box(silu_times(g, u))).collect();
            (p, y)
        }
        let (want_p, want_y) = scalar(&x, &u);

        let (mut p, mut y) = (x.clone(), vec![0f32; x.len()]);
        vectorized(
            #[inline(always)]
            || {
                let max = lanes::max(&p);
                p.iter_mut().for_each(|v| *v = exp(*v - max));
                let inv = 1.0 / lanes::sum(&p);
                p.iter_mut().for_each(|v| *v *= inv);
                y.iter_mut().zip(&x).zip(&u).for_each(|((y, &g), &u)| *y = silu_times(g, u));
            },
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p), bits(&want_p), "softmax");
        assert_eq!(bits(&y), bits(&want_y), "swiglu");
    }
}
