//! Dense (fully connected) layers' backward pass. The forward pass is one GEMM and a bias,
//! written where the network runs it.

use crate::layers::bias::bias_grad;
use crate::matmul::{Op, matmul, matmul_nt_dots, matmul_tn_split};

/// A dense layer's backward pass: weight and bias gradients (summed over the batch), and the
/// input gradient when asked. `dims` is (inputs, outputs, batch).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dims: (usize, usize, usize),
    w: &[f32],
    x: &[f32],
    dy: &[f32],
    gw: &mut [f32],
    gbias: &mut [f32],
    dx: Option<&mut [f32]>,
    partial: &mut [f32],
    threads: usize,
) {
    let (input, output, n) = dims;
    if n >= 256 {
        matmul_tn_split(input, output, n, gw, x, dy, partial, threads);
    } else {
        matmul(input, output, n, gw, x, Op::T, dy, Op::N, false, 1.0, threads);
    }
    bias_grad(dy, gbias, threads);
    if let Some(dx) = dx {
        input_grad(n, input, output, dx, dy, w, threads);
    }
}

/// A dense layer's input gradient `dx = dy·Wᵀ` (`dims` as in [`backward`]): as dot
/// products for the batches training uses (see `matmul_nt_dots`), through gemm for long
/// batches, where its repacking of W pays off.
pub(crate) fn input_grad(n: usize, input: usize, output: usize, dx: &mut [f32], dy: &[f32], w: &[f32], threads: usize) {
    if n <= DOTS_UP_TO {
        matmul_nt_dots(n, input, output, dx, dy, w, threads);
    } else {
        matmul(n, input, output, dx, dy, Op::N, w, Op::T, false, 1.0, threads);
    }
}

/// The longest batch whose dense input gradients are formed as dot products.
const DOTS_UP_TO: usize = 64;
