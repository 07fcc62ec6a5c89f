//! 2-D convolution in NHWC as GEMMs over cache-sized tiles of im2col rows.
//!
//! An im2col row holds the `k·k·in` inputs one output pixel sees; weights are stored
//! `[kh, kw, in, out]`, exactly the `[k·k·in, out]` matrix those rows multiply, so the forward
//! product writes the NHWC output directly. The im2col matrix is never built for the whole
//! batch: each thread takes a contiguous range of examples and walks it in tiles of rows small
//! enough to stay in its core's cache ([`TILE_FLOATS`]). Forward: build a tile, multiply it.
//! Backward: build it again for the weight gradient, then reuse the same buffer for the input
//! gradient's rows and scatter them back (col2im) while they are still in cache. This is an
//! implicit GEMM with the gather done a tile at a time; a true one would pack the GEMM's
//! operand straight from the NHWC input, which the `gemm` crate (it packs its own operands)
//! does not allow. Against the whole-batch im2col matrix (20 MB for the CNN's conv2 at batch
//! 32, written once and read three times per step from memory), each thread now needs one
//! tile (≤ 512 KB) and the gathers run out of cache.
//!
//! Two shapes take other forms, chosen in [`Conv::forward`] and [`Conv::backward`]: 5×5
//! 'same' convolutions with stride 1 and channels in whole vectors go through Winograd
//! F(2×2, 5×5) (`layers/winograd/`), and layers whose outputs see ≤ 75 values (a first layer
//! on one to three channels) through a direct kernel for the forward pass and the weight
//! gradient (`layers/direct.rs`). Both use the same per-thread slots of the scratch.
//!
//! Deterministic for a fixed thread count: the example ranges and tiles depend only on the
//! batch size and the thread count, and the per-thread weight-gradient sums are added in
//! thread order.

use rayon::prelude::*;

use crate::Shape;
use crate::layers::bias::{add_bias, bias_grad};
use crate::layers::direct;
use crate::layers::winograd::{CHANNEL_MULTIPLE, Winograd};
use crate::matmul::{Op, add_partials, matmul};

/// Values in one thread's im2col tile: 512 KB, half the L2 cache of the CNN's reference
/// machines (a whole L2 on older ones), leaving room for the weights' packed panels.
const TILE_FLOATS: usize = 128 * 1024;

/// Geometry of one convolution.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    pub input: Shape,
    pub output: Shape,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

/// The kernel positions along one axis that land inside the input, and the first input
/// position they read: `(lo, hi, first)`.
type Span = (usize, usize, usize);

/// How a batch is shared among threads: `groups` contiguous ranges of `per` examples (the
/// last may be shorter).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Split {
    pub per: usize,
    pub groups: usize,
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
    /// Output pixels per example (im2col rows per example).
    fn pixels(&self) -> usize {
        self.output.h * self.output.w
    }
    /// im2col rows per tile.
    fn tile_rows(&self) -> usize {
        (TILE_FLOATS / self.row_len()).max(1)
    }
    /// Values of one tile.
    pub fn tile_len(&self) -> usize {
        self.tile_rows() * self.row_len()
    }
    /// The tiles `(r0, r1)` of `rows` im2col rows.
    fn tiles(&self, rows: usize) -> impl Iterator<Item = (usize, usize)> {
        let tr = self.tile_rows();
        (0..rows).step_by(tr).map(move |r0| (r0, (r0 + tr).min(rows)))
    }

    /// The Winograd form of this convolution's forward pass, when it has one: 5×5 kernels,
    /// stride 1, 'same' padding, channel counts in whole SIMD vectors.
    fn winograd(&self) -> Option<Winograd> {
        let (i, o) = (self.input, self.output);
        let fits = self.kernel == 5 && self.stride == 1 && self.pad == 2 && (i.h, i.w) == (o.h, o.w);
        (fits && i.c % CHANNEL_MULTIPLE == 0 && o.c % CHANNEL_MULTIPLE == 0)
            .then(|| Winograd::new(i.h, i.w, i.c, o.c, self.tile_len()))
    }

    /// Whether this convolution runs in the direct form ([`direct`]: few values per output).
    fn direct(&self) -> bool {
        direct::applies(self, self.slot_len())
    }

    /// One thread's share of the scratch: an im2col tile, or a Winograd chunk's buffers when
    /// those are larger.
    fn slot_len(&self) -> usize {
        let tile = self.tile_len();
        self.winograd().map_or(tile, |g| tile.max(g.buffer_len()))
    }

    /// Scratch values this layer needs with `threads` threads: one slot each, then the
    /// Winograd kernels when the layer has them.
    pub fn scratch_len(&self, threads: usize) -> usize {
        threads.max(1) * self.slot_len() + self.winograd().map_or(0, |g| g.kernel_len())
    }

    /// Splits `scratch` into the threads' slots and the room for the Winograd kernels.
    fn kernel_room<'s>(&self, scratch: &'s mut [f32]) -> (&'s mut [f32], &'s mut [f32]) {
        let room = self.winograd().map_or(0, |g| g.kernel_len());
        let at = scratch.len().checked_sub(room).expect("conv scratch holds the Winograd kernels");
        scratch.split_at_mut(at)
    }

    /// The batch's split among at most `threads` threads, as many as `scratch` has slots for.
    pub fn split(&self, n: usize, threads: usize, scratch: usize) -> Split {
        let most = threads.min(scratch / self.slot_len()).clamp(1, n.max(1));
        let per = n.div_ceil(most).max(1);
        Split { per, groups: n.div_ceil(per) }
    }

    /// For output column `ox`, the kernel columns that land inside the input, and the first
    /// input column they read.
    fn kx_range(&self, o: usize, size: usize) -> Span {
        let start = (o * self.stride) as isize - self.pad as isize;
        let lo = (-start).max(0) as usize;
        let hi = ((size as isize - start).max(0) as usize).min(self.kernel);
        let first = (start + lo as isize).max(0) as usize;
        (lo, hi.max(lo), first)
    }

    /// Calls `f(i, example, rows, cols)` for im2col rows `r0..r1` (row `r` is output pixel
    /// `r mod pixels` of example `r / pixels`; `i = r − r0`), with the kernel rows and columns
    /// that land inside the input ([`Conv::kx_range`]). Walks the pixels in order instead of
    /// dividing per row, which cost as much as a short row's copy.
    #[inline(always)]
    fn for_rows(&self, r0: usize, r1: usize, mut f: impl FnMut(usize, usize, Span, Span)) {
        let (s, o, px) = (self.input, self.output, self.pixels());
        if r0 >= r1 {
            return;
        }
        let (mut e, p) = (r0 / px, r0 % px);
        let (mut oy, mut ox) = (p / o.w, p % o.w);
        let mut ys = self.kx_range(oy, s.h);
        for i in 0..r1 - r0 {
            f(i, e, ys, self.kx_range(ox, s.w));
            ox += 1;
            if ox == o.w {
                ox = 0;
                oy += 1;
                if oy == o.h {
                    oy = 0;
                    e += 1;
                }
                ys = self.kx_range(oy, s.h);
            }
        }
    }

    /// im2col rows `r0..r1` of the examples in `x` into `cols`.
    fn im2col_rows(&self, x: &[f32], cols: &mut [f32], r0: usize, r1: usize) {
        let s = self.input;
        let (row, kc) = (self.row_len(), self.kernel * s.c);
        self.for_rows(r0, r1, |i, e, (ky_lo, ky_hi, iy0), (kx_lo, kx_hi, ix0)| {
            let dst = &mut cols[i * row..(i + 1) * row];
            let src = &x[e * s.size()..(e + 1) * s.size()];
            zero(&mut dst[..ky_lo * kc]);
            zero(&mut dst[ky_hi * kc..]);
            let len = (kx_hi - kx_lo) * s.c;
            for ky in ky_lo..ky_hi {
                let seg = &mut dst[ky * kc..(ky + 1) * kc];
                zero(&mut seg[..kx_lo * s.c]);
                zero(&mut seg[kx_hi * s.c..]);
                let from = ((iy0 + ky - ky_lo) * s.w + ix0) * s.c;
                copy_short(&mut seg[kx_lo * s.c..kx_hi * s.c], &src[from..from + len]);
            }
        });
    }

    /// Adds im2col-shaped rows `r0..r1` (in `cols`) back onto the input positions they came
    /// from in `dx` (the examples of the rows' range).
    fn col2im_rows(&self, cols: &[f32], dx: &mut [f32], r0: usize, r1: usize) {
        let s = self.input;
        let (row, kc) = (self.row_len(), self.kernel * s.c);
        self.for_rows(r0, r1, |i, e, (ky_lo, ky_hi, iy0), (kx_lo, kx_hi, ix0)| {
            let src = &cols[i * row..(i + 1) * row];
            let dst = &mut dx[e * s.size()..(e + 1) * s.size()];
            for ky in ky_lo..ky_hi {
                let seg = &src[ky * kc + kx_lo * s.c..ky * kc + kx_hi * s.c];
                let from = ((iy0 + ky - ky_lo) * s.w + ix0) * s.c;
                for (d, v) in dst[from..from + seg.len()].iter_mut().zip(seg) {
                    *d += v;
                }
            }
        });
    }

    /// `y = conv(x) + b` for `n` examples (`b = None`: without the bias, which a fused
    /// ReLU-and-pool adds). `scratch` holds the threads' tiles ([`Conv::scratch_len`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        w: &[f32],
        b: Option<&[f32]>,
        x: &[f32],
        y: &mut [f32],
        scratch: &mut [f32],
        n: usize,
        threads: usize,
    ) {
        let (cout, row, isz) = (self.output.c, self.row_len(), self.input.size());
        let (slots, kernel) = self.kernel_room(scratch);
        let sp = self.split(n, threads, slots.len());
        if let Some(geo) = self.winograd() {
            geo.transform_kernel(w, false, kernel);
            geo.convolve(x, kernel, y, slots, self.slot_len(), n, sp.per);
            if let Some(b) = b {
                add_bias(&mut y[..n * self.pixels() * cout], b);
            }
            return;
        }
        if self.direct() {
            direct::forward(self, w, x, y, slots, self.slot_len(), n, sp.per);
            if let Some(b) = b {
                add_bias(&mut y[..n * self.pixels() * cout], b);
            }
            return;
        }
        let out = sp.per * self.pixels() * cout;
        y[..n * self.pixels() * cout]
            .par_chunks_mut(out)
            .zip(slots.par_chunks_mut(self.slot_len()))
            .enumerate()
            .for_each(|(g, (yg, tile))| {
                let xg = &x[g * sp.per * isz..];
                let rows = yg.len() / cout;
                for (r0, r1) in self.tiles(rows) {
                    self.im2col_rows(xg, tile, r0, r1);
                    let yt = &mut yg[r0 * cout..r1 * cout];
                    matmul(r1 - r0, cout, row, yt, tile, Op::N, w, Op::N, false, 1.0, 1);
                }
            });
        if let Some(b) = b {
            add_bias(&mut y[..n * self.pixels() * cout], b);
        }
    }

    /// Weight and bias gradients from `dy` (and the layer's input `x`), and `dx` when asked.
    /// `partial` must hold `threads − 1` weight gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &[f32],
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: &mut [f32],
        dx: Option<&mut [f32]>,
        scratch: &mut [f32],
        partial: &mut [f32],
        n: usize,
        threads: usize,
    ) {
        let wl = self.weight_len();
        let threads = threads.min(1 + partial.len() / wl);
        bias_grad(&dy[..n * self.pixels() * self.output.c], db, threads);
        if n == 0 {
            dw[..wl].fill(0.0);
            return;
        }
        let (slots, kernel) = self.kernel_room(scratch);
        let sp = self.split(n, threads, slots.len());
        if let Some(geo) = self.winograd() {
            geo.kernel_grad(x, dy, &mut dw[..wl], slots, self.slot_len(), n, sp.per);
            if let Some(dx) = dx {
                self.winograd_input_grad(w, dy, dx, slots, kernel, n, sp);
            }
            return;
        }
        // Each thread's weight gradient: the first into dw, the others into `partial`.
        let mut outs: Vec<&mut [f32]> = vec![&mut dw[..wl]];
        outs.extend(partial[..(sp.groups - 1) * wl].chunks_mut(wl));
        if self.direct() {
            direct::weight_grad(self, x, dy, outs, slots, self.slot_len(), n, sp.per);
            add_partials(&mut dw[..wl], partial, sp.groups - 1);
            if let Some(dx) = dx {
                self.tiles_backward(w, &[], dy, None, Some(dx), slots, n, sp);
            }
            return;
        }
        self.tiles_backward(w, x, dy, Some(outs), dx, slots, n, sp);
        add_partials(&mut dw[..wl], partial, sp.groups - 1);
    }

    /// `dx` from `dy` alone (no weight gradient).
    pub fn input_grad(&self, w: &[f32], dy: &[f32], dx: &mut [f32], scratch: &mut [f32], n: usize, threads: usize) {
        let (slots, kernel) = self.kernel_room(scratch);
        let sp = self.split(n, threads, slots.len());
        if self.winograd().is_some() {
            self.winograd_input_grad(w, dy, dx, slots, kernel, n, sp);
        } else {
            self.tiles_backward(w, &[], dy, None, Some(dx), slots, n, sp);
        }
    }

    /// `dx` through the Winograd form: the same convolution of `dy` with the kernel rotated
    /// 180° and its channels swapped.
    #[allow(clippy::too_many_arguments)]
    fn winograd_input_grad(
        &self,
        w: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        slots: &mut [f32],
        kernel: &mut [f32],
        n: usize,
        sp: Split,
    ) {
        if let Some(geo) = self.winograd().map(Winograd::transposed) {
            geo.transform_kernel(w, true, kernel);
            geo.convolve(dy, kernel, dx, slots, self.slot_len(), n, sp.per);
        }
    }

    /// The backward pass over each thread's examples, tile by tile: the weight gradient into
    /// that thread's `gw` (when given; needs `x`), and the input gradient into `dx`.
    #[allow(clippy::too_many_arguments)]
    fn tiles_backward(
        &self,
        w: &[f32],
        x: &[f32],
        dy: &[f32],
        gw: Option<Vec<&mut [f32]>>,
        dx: Option<&mut [f32]>,
        scratch: &mut [f32],
        n: usize,
        sp: Split,
    ) {
        let (cout, row, isz, px) = (self.output.c, self.row_len(), self.input.size(), self.pixels());
        let mut gws: Vec<Option<&mut [f32]>> = match gw {
            Some(v) => v.into_iter().map(Some).collect(),
            None => (0..sp.groups).map(|_| None).collect(),
        };
        let mut dxs: Vec<Option<&mut [f32]>> = match dx {
            Some(d) => d[..n * isz].chunks_mut(sp.per * isz).map(Some).collect(),
            None => (0..sp.groups).map(|_| None).collect(),
        };
        gws.truncate(sp.groups);
        dxs.truncate(sp.groups);
        gws.into_par_iter().zip(dxs).zip(scratch.par_chunks_mut(self.slot_len())).enumerate().for_each(
            |(g, ((mut gw, mut dxg), tile))| {
                let (e0, e1) = (g * sp.per, ((g + 1) * sp.per).min(n));
                let dyg = &dy[e0 * px * cout..e1 * px * cout];
                let rows = (e1 - e0) * px;
                if let Some(d) = dxg.as_deref_mut() {
                    d.fill(0.0);
                }
                for (r0, r1) in self.tiles(rows) {
                    let dyt = &dyg[r0 * cout..r1 * cout];
                    if let Some(gw) = gw.as_deref_mut() {
                        self.weight_grad_tile(&x[e0 * isz..e1 * isz], dyg, gw, tile, r0, r1);
                    }
                    if let Some(d) = dxg.as_deref_mut() {
                        matmul(r1 - r0, row, cout, tile, dyt, Op::N, w, Op::T, false, 1.0, 1);
                        self.col2im_rows(tile, d, r0, r1);
                    }
                }
            },
        );
    }

    /// One example's weight gradient `gw = colsᵀ·dy` from its input `x` and output gradient
    /// `dy`, built tile by tile in `tile` (DP-SGD's per-example gradients).
    pub fn example_weight_grad(&self, x: &[f32], dy: &[f32], gw: &mut [f32], tile: &mut [f32]) {
        for (r0, r1) in self.tiles(self.pixels()) {
            self.weight_grad_tile(x, dy, gw, tile, r0, r1);
        }
    }

    /// Adds im2col rows `r0..r1`'s share of the weight gradient, `colsᵀ·dy`, to `gw` (writes
    /// it for the first tile), building the rows from `x` in `tile`.
    fn weight_grad_tile(&self, x: &[f32], dy: &[f32], gw: &mut [f32], tile: &mut [f32], r0: usize, r1: usize) {
        let cout = self.output.c;
        self.im2col_rows(x, tile, r0, r1);
        matmul(self.row_len(), cout, r1 - r0, gw, tile, Op::T, &dy[r0 * cout..r1 * cout], Op::N, r0 > 0, 1.0, 1);
    }
}

/// `dst = 0`, without a call for the empty segments of rows inside the input.
#[inline(always)]
fn zero(dst: &mut [f32]) {
    if !dst.is_empty() {
        dst.fill(0.0);
    }
}

/// `dst = src`. Segments of up to 8 values (a 5×5 kernel's row on one input channel) are
/// copied with a length known at compile time, which the compiler turns into a few moves;
/// a call to `memcpy` for 5 values costs more than the copy.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        dst[..N].copy_from_slice(&src[..N]);
    }
    match dst.len() {
        1 => fixed::<1>(dst, src),
        2 => fixed::<2>(dst, src),
        3 => fixed::<3>(dst, src),
        4 => fixed::<4>(dst, src),
        5 => fixed::<5>(dst, src),
        6 => fixed::<6>(dst, src),
        7 => fixed::<7>(dst, src),
        8 => fixed::<8>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Direct convolution in f64: output, weight gradient and input gradient.
    fn naive(c: &Conv, w: &[f32], x: &[f32], dy: &[f32], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (s, o, k) = (c.input, c.output, c.kernel);
        let mut y = vec![0.0; n * o.size()];
        let mut dw = vec![0.0; c.weight_len()];
        let mut dx = vec![0.0; n * s.size()];
        for e in 0..n {
            for oy in 0..o.h {
                for ox in 0..o.w {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                            let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            let xi = e * s.size() + (iy as usize * s.w + ix as usize) * s.c;
                            let yi = e * o.size() + (oy * o.w + ox) * o.c;
                            for ci in 0..s.c {
                                for co in 0..o.c {
                                    let wi = ((ky * k + kx) * s.c + ci) * o.c + co;
                                    y[yi + co] += x[xi + ci] as f64 * w[wi] as f64;
                                    dw[wi] += x[xi + ci] as f64 * dy[yi + co] as f64;
                                    dx[xi + ci] += w[wi] as f64 * dy[yi + co] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dw, dx)
    }

    fn close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= 1e-4 * scale, "{what}[{i}]: {g} vs {w}");
        }
    }

    /// The tiled products equal a direct convolution: tiles that end inside an example (rows of
    /// 1,152 and 1,600 values leave 113 and 81 rows a tile, fewer than an example's pixels),
    /// examples shared unevenly among 1–3 threads, strides and paddings; and so do the
    /// Winograd forms of the 5×5 'same' ones (forward and input gradient).
    #[test]
    fn tiles_equal_a_direct_convolution() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let geometries = [
            (9, 128, 6, 3, 1, 1),
            (10, 64, 5, 5, 1, 2),
            (11, 3, 4, 3, 2, 0),
            (7, 1, 8, 5, 2, 2),
            // Direct (few values per output): the CNN's conv1, three channels with a stride,
            // a padding that cuts the image on the right.
            (28, 1, 32, 5, 1, 2),
            (9, 3, 16, 3, 2, 1),
            (8, 2, 48, 4, 3, 0),
            // Winograd: the CNN's conv2, an odd side (tiles cut by the edge), and channel
            // counts of one and three AVX-512 vectors.
            (14, 32, 64, 5, 1, 2),
            (7, 16, 32, 5, 1, 2),
            (5, 48, 16, 5, 1, 2),
        ];
        for (size, cin, cout, kernel, stride, pad) in geometries {
            let input = Shape::image(size, size, cin);
            let side = (size + 2 * pad - kernel) / stride + 1;
            let c = Conv { input, output: Shape::image(side, side, cout), kernel, stride, pad };
            for (n, threads) in [(1, 1), (3, 2), (5, 3), (2, 3)] {
                let w: Vec<f32> = (0..c.weight_len()).map(|_| rng.random_range(-1.0..1.0)).collect();
                let x: Vec<f32> = (0..n * input.size()).map(|_| rng.random_range(-1.0..1.0)).collect();
                let dy: Vec<f32> = (0..n * c.output.size()).map(|_| rng.random_range(-1.0..1.0)).collect();
                let (ry, rdw, rdx) = naive(&c, &w, &x, &dy, n);
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut scratch = vec![f32::NAN; c.scratch_len(threads)];
                let mut partial = vec![f32::NAN; (threads - 1) * c.weight_len()];
                let mut y = vec![f32::NAN; n * c.output.size()];
                let (mut dw, mut db, mut dx) =
                    (vec![f32::NAN; c.weight_len()], vec![f32::NAN; cout], vec![f32::NAN; x.len()]);
                let mut dx2 = vec![f32::NAN; x.len()];
                pool.install(|| {
                    c.forward(&w, None, &x, &mut y, &mut scratch, n, threads);
                    c.backward(&w, &x, &dy, &mut dw, &mut db, Some(&mut dx), &mut scratch, &mut partial, n, threads);
                    c.input_grad(&w, &dy, &mut dx2, &mut scratch, n, threads);
                });
                let at = format!("{size}x{size}x{cin} k{kernel} s{stride} p{pad}, {n} examples, {threads} threads");
                close(&format!("output, {at}"), &y, &ry);
                close(&format!("weight gradient, {at}"), &dw, &rdw);
                close(&format!("input gradient, {at}"), &dx, &rdx);
                assert_eq!(dx, dx2, "input_grad alone, {at}");
                let rdb: Vec<f64> =
                    (0..cout).map(|co| dy.iter().skip(co).step_by(cout).map(|v| *v as f64).sum()).collect();
                close(&format!("bias gradient, {at}"), &db, &rdb);
            }
        }
    }
}
