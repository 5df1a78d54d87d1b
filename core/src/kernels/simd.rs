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
