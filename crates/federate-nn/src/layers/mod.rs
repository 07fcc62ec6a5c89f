//! The layer kernels. Each works on `n` examples at once in NHWC and writes into buffers the
//! network's workspace owns; none allocates a buffer (a dense layer's input gradient builds
//! a list of row segments, one pointer per example and thread).

pub(crate) mod bias;
pub(crate) mod conv;
pub(crate) mod dense;
pub(crate) mod direct;
pub(crate) mod pointwise;
pub(crate) mod pool;
pub(crate) mod winograd;

use pulp::Simd;

/// One SIMD vector from the start of `x` (the kernels' unaligned vector load).
#[inline(always)]
pub(crate) fn load<S: Simd>(x: &[f32]) -> S::f32s {
    S::as_simd_f32s(&x[..S::F32_LANES]).0[0]
}

/// Writes the SIMD vector `v` at the start of `x`.
#[inline(always)]
pub(crate) fn store<S: Simd>(x: &mut [f32], v: S::f32s) {
    S::as_mut_simd_f32s(&mut x[..S::F32_LANES]).0[0] = v;
}
