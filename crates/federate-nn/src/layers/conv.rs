//! 2-D convolution in NHWC: im2col with one row per output pixel, then one GEMM.
//!
//! Weights are stored `[kh, kw, in, out]`, which is exactly the `[k·k·in, out]` matrix the
//! im2col rows multiply, so the forward pass writes the NHWC output directly.

use rayon::prelude::*;

use crate::Shape;
use crate::matmul::{Op, matmul, matmul_tn_split};

/// Geometry of one convolution.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    pub input: Shape,
    pub output: Shape,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv {
    /// Length of one im2col row (`k·k·in`).
    pub fn row_len(&self) -> usize {
        self.kernel * self.kernel * self.input.c
    }
    /// Weight values.
    pub fn weight_len(&self) -> usize {
        self.row_len() * self.output.c
    }
    /// im2col values for `n` examples.
    pub fn cols_len(&self, n: usize) -> usize {
        n * self.output.h * self.output.w * self.row_len()
    }

    /// For output column `ox`, the kernel columns that land inside the input, and the first
    /// input column they read.
    fn kx_range(&self, o: usize, size: usize) -> (usize, usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let lo = (-start).max(0) as usize;
        let hi = ((size as isize - start).max(0) as usize).min(self.kernel);
        let first = (start + lo as isize).max(0) as usize;
        (lo, hi.max(lo), first)
    }

    fn im2col(&self, x: &[f32], cols: &mut [f32], n: usize) {
        let (s, o) = (self.input, self.output);
        let row = self.row_len();
        let kc = self.kernel * s.c;
        let img_rows = o.h * o.w * row;
        cols[..n * img_rows].par_chunks_mut(img_rows).zip(x.par_chunks(s.size())).for_each(|(dst, src)| {
            for oy in 0..o.h {
                let (ky_lo, ky_hi, iy0) = self.kx_range(oy, s.h);
                for ox in 0..o.w {
                    let (kx_lo, kx_hi, ix0) = self.kx_range(ox, s.w);
                    let r = &mut dst[(oy * o.w + ox) * row..][..row];
                    r[..ky_lo * kc].fill(0.0);
                    r[ky_hi * kc..].fill(0.0);
                    for ky in ky_lo..ky_hi {
                        let seg = &mut r[ky * kc..(ky + 1) * kc];
                        seg[..kx_lo * s.c].fill(0.0);
                        seg[kx_hi * s.c..].fill(0.0);
                        let iy = iy0 + ky - ky_lo;
                        let from = (iy * s.w + ix0) * s.c;
                        let len = (kx_hi - kx_lo) * s.c;
                        seg[kx_lo * s.c..kx_hi * s.c].copy_from_slice(&src[from..from + len]);
                    }
                }
            }
        });
    }

    fn col2im(&self, cols: &[f32], dx: &mut [f32], n: usize) {
        let (s, o) = (self.input, self.output);
        let row = self.row_len();
        let kc = self.kernel * s.c;
        let img_rows = o.h * o.w * row;
        dx[..n * s.size()].par_chunks_mut(s.size()).zip(cols.par_chunks(img_rows)).for_each(|(dst, src)| {
            dst.fill(0.0);
            for oy in 0..o.h {
                let (ky_lo, ky_hi, iy0) = self.kx_range(oy, s.h);
                for ox in 0..o.w {
                    let (kx_lo, kx_hi, ix0) = self.kx_range(ox, s.w);
                    let r = &src[(oy * o.w + ox) * row..][..row];
                    for ky in ky_lo..ky_hi {
                        let seg = &r[ky * kc + kx_lo * s.c..ky * kc + kx_hi * s.c];
                        let iy = iy0 + ky - ky_lo;
                        let from = (iy * s.w + ix0) * s.c;
                        for (d, v) in dst[from..from + seg.len()].iter_mut().zip(seg) {
                            *d += v;
                        }
                    }
                }
            }
        });
    }

    /// `y = conv(x) + b` for `n` examples (`b = None`: without the bias, which a fused
    /// ReLU-and-pool adds); `cols` receives the im2col matrix.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        w: &[f32],
        b: Option<&[f32]>,
        x: &[f32],
        y: &mut [f32],
        cols: &mut [f32],
        n: usize,
        threads: usize,
    ) {
        let m = n * self.output.h * self.output.w;
        let cout = self.output.c;
        self.im2col(x, cols, n);
        matmul(m, cout, self.row_len(), y, cols, Op::N, w, Op::N, false, 1.0, threads);
        if let Some(b) = b {
            add_bias(&mut y[..m * cout], b);
        }
    }

    /// Weight and bias gradients from `dy`, and `dx` when asked. `cols` must still hold the
    /// forward im2col matrix; it is overwritten with `dy·Wᵀ` when `dx` is computed.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: &mut [f32],
        dx: Option<&mut [f32]>,
        cols: &mut [f32],
        partial: &mut [f32],
        n: usize,
        threads: usize,
    ) {
        let m = n * self.output.h * self.output.w;
        let cout = self.output.c;
        let row = self.row_len();
        matmul_tn_split(row, cout, m, dw, cols, dy, partial, threads);
        bias_grad(&dy[..m * cout], db);
        if let Some(dx) = dx {
            self.input_grad(w, dy, dx, cols, n, threads);
        }
    }

    /// `dx` from `dy`; overwrites `cols` with `dy·Wᵀ`.
    pub fn input_grad(&self, w: &[f32], dy: &[f32], dx: &mut [f32], cols: &mut [f32], n: usize, threads: usize) {
        let m = n * self.output.h * self.output.w;
        let row = self.row_len();
        matmul(m, row, self.output.c, cols, dy, Op::N, w, Op::T, false, 1.0, threads);
        self.col2im(cols, dx, n);
    }
}

/// Adds `b` to every row of `y` (rows of `b.len()` values).
pub(crate) fn add_bias(y: &mut [f32], b: &[f32]) {
    let c = b.len();
    let rows_per = (16384 / c).max(1);
    y.par_chunks_mut(rows_per * c).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(c) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    });
}

/// `db = Σ_rows dy`, summed in a fixed order.
pub(crate) fn bias_grad(dy: &[f32], db: &mut [f32]) {
    let c = db.len();
    db.fill(0.0);
    for row in dy.chunks_exact(c) {
        for (d, v) in db.iter_mut().zip(row) {
            *d += v;
        }
    }
}
