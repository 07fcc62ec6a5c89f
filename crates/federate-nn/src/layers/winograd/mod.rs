//! Winograd F(2×2, 5×5): a 5×5 convolution with stride 1 and 'same' padding in 36
//! multiplications per 2×2 output tile instead of 100.
//!
//! Each 6×6 input tile `d` is transformed to `V = Bᵀ d B`, each kernel `g` to `U = G g Gᵀ`;
//! then, for each of the 36 transform points, the tiles' `V` (tiles × in) times that
//! point's `U` (in × out) gives `M`, and `Y = Aᵀ M A` is the 2×2 output tile (Lavin & Gray,
//! "Fast algorithms for convolutional neural networks", 2016; interpolation points 0, ±1,
//! ±2, ∞, checked against the direct method in the tests). For the CNN's conv2 (14×14, 32 →
//! 64 channels) this is 7.2 MFLOP per example instead of 20. The input gradient of the same
//! convolution is itself one (kernel rotated 180°, channels swapped), so one routine
//! serves the forward and the backward pass.
//!
//! Written by hand: no maintained crate does Winograd convolution on the CPU in Rust, and the
//! 36 products per chunk of tiles are too small for the `gemm` crate (per-call planning and
//! packing cost as much as a 36×32·32×64 product). Each thread works through its examples'
//! tiles in chunks sized so that `V` and `M` stay in its L2 cache, with a register-blocked
//! micro-kernel (rows × output-channel vectors of accumulators) in pulp's SIMD, AVX-512 or
//! AVX2 chosen at run time. Each output value is summed in one fixed order whatever the
//! thread count or chunking, so results are bit-identical for any number of threads.

use std::array::from_fn;

mod grad;

use pulp::{Simd, WithSimd};

use super::{load, store};
use rayon::prelude::*;

/// Transform size along one axis (output tile 2 + kernel 5 − 1).
const ALPHA: usize = 6;
/// Transform points per tile.
const POINTS: usize = ALPHA * ALPHA;
/// Kernel side.
const TAPS: usize = 5;
/// Output tile side.
const TILE: usize = 2;

/// The kernel transform `G` (6×5) for the points 0, 1, −1, 2, −2, ∞.
const G: [[f32; TAPS]; ALPHA] = [
    [0.25, 0.0, 0.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0, 2.0 / 3.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
];

/// `Gᵀ` (5×6), for the kernel gradient's way back.
const GT: [[f32; ALPHA]; TAPS] = {
    let mut t = [[0.0; ALPHA]; TAPS];
    let mut i = 0;
    while i < ALPHA {
        let mut k = 0;
        while k < TAPS {
            t[k][i] = G[i][k];
            k += 1;
        }
        i += 1;
    }
    t
};

/// Channel counts must be multiples of this (the widest SIMD vector, AVX-512's 16 floats), so
/// every channel loop runs in whole vectors.
pub(crate) const CHANNEL_MULTIPLE: usize = 16;

/// One 5×5 'same' convolution with stride 1: `h × w` images, `cx` channels in, `cy` out,
/// worked through `chunk` tiles at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Winograd {
    pub h: usize,
    pub w: usize,
    pub cx: usize,
    pub cy: usize,
    chunk: usize,
}

impl Winograd {
    /// The convolution, in chunks of tiles whose transforms fit in `budget` values: a
    /// multiple of 12 (the micro-kernels' row blocks), at least 12.
    pub fn new(h: usize, w: usize, cx: usize, cy: usize, budget: usize) -> Self {
        let chunk = (budget / (POINTS * (cx + cy)) / 12 * 12).max(12);
        Winograd { h, w, cx, cy, chunk }
    }
    /// The same convolution's input gradient: output gradient in, input gradient out.
    pub fn transposed(self) -> Self {
        Winograd { cx: self.cy, cy: self.cx, ..self }
    }
    /// Tiles per example.
    fn tiles(&self) -> usize {
        self.h.div_ceil(TILE) * self.w.div_ceil(TILE)
    }
    /// A thread's buffer: `V` and `M` for one chunk, then the kernel gradient's transform.
    pub fn buffer_len(&self) -> usize {
        POINTS * (self.cx + self.cy) * self.chunk + POINTS * self.cx * self.cy
    }
    /// Values of the transformed kernels and the room to build them.
    pub fn kernel_len(&self) -> usize {
        POINTS * self.cx * self.cy + TAPS * TAPS * self.cx.max(self.cy)
    }

    /// Transforms the layer's weights `w` (`[5, 5, in, out]`) into `kernel`'s first
    /// `36·cx·cy` values, laid out `[point][cx][cy]`. `flip`: for the input gradient (`self`
    /// is then the transposed geometry): the kernel rotated 180° with its channels swapped.
    pub fn transform_kernel(&self, w: &[f32], flip: bool, kernel: &mut [f32]) {
        pulp::Arch::new().dispatch(KernelTransform { geo: *self, w, flip, kernel });
    }

    /// `y = x ⊛ kernel` for `n` examples (`kernel` from [`Winograd::transform_kernel`]):
    /// threads take `per` examples each, each using one buffer of `slot` values in `slots`.
    #[allow(clippy::too_many_arguments)]
    pub fn convolve(
        &self,
        x: &[f32],
        kernel: &[f32],
        y: &mut [f32],
        slots: &mut [f32],
        slot: usize,
        n: usize,
        per: usize,
    ) {
        let (isz, osz) = (self.h * self.w * self.cx, self.h * self.w * self.cy);
        let (chunk, geo) = (self.chunk, *self);
        let u = &kernel[..POINTS * self.cx * self.cy];
        y[..n * osz].par_chunks_mut(per * osz).zip(slots.par_chunks_mut(slot)).enumerate().for_each(|(g, (y, buf))| {
            let examples = y.len() / osz;
            let x = &x[g * per * isz..][..examples * isz];
            pulp::Arch::new().dispatch(Group { geo, x, u, y, buf, chunk });
        });
    }
}

/// The kernel transform over `geo.cy` output channels, one vector of them at a time.
struct KernelTransform<'a> {
    geo: Winograd,
    w: &'a [f32],
    flip: bool,
    kernel: &'a mut [f32],
}

impl WithSimd for KernelTransform<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let KernelTransform { geo, w, flip, kernel } = self;
        let (cx, cy) = (geo.cx, geo.cy);
        let zero = s.splat_f32s(0.0);
        let (u, g) = kernel.split_at_mut(POINTS * cx * cy);
        let g = &mut g[..TAPS * TAPS * cy];
        for a in 0..cx {
            // g[k][b]: tap k of the kernel from channel a to channel b.
            for (k, row) in g.chunks_exact_mut(cy).enumerate() {
                if flip {
                    // w is [ky][kx][cy][cx] here; tap k of the rotated kernel is tap 24 − k.
                    let kf = TAPS * TAPS - 1 - k;
                    for (b, v) in row.iter_mut().enumerate() {
                        *v = w[(kf * cy + b) * cx + a];
                    }
                } else {
                    row.copy_from_slice(&w[(k * cx + a) * cy..][..cy]);
                }
            }
            for b in (0..cy).step_by(S::F32_LANES) {
                // gv[kx][ky], so that a column of taps is one array (loops of known length,
                // so the arrays are unrolled into registers, not zeroed in memory).
                let mut gv = [[zero; TAPS]; TAPS];
                for ky in 0..TAPS {
                    for (kx, gk) in gv.iter_mut().enumerate() {
                        gk[ky] = load::<S>(&g[(ky * TAPS + kx) * cy + b..]);
                    }
                }
                // t[i][kx] = Σ_ky G[i][ky]·g[ky][kx], then U[i][j] = Σ_kx G[j][kx]·t[i][kx].
                let mut t = [[zero; TAPS]; ALPHA];
                for (ti, gi) in t.iter_mut().zip(&G) {
                    for (tik, column) in ti.iter_mut().zip(&gv) {
                        *tik = dot(s, gi, column);
                    }
                }
                for (i, ti) in t.iter().enumerate() {
                    for (j, gj) in G.iter().enumerate() {
                        store::<S>(&mut u[((i * ALPHA + j) * cx + a) * cy + b..], dot(s, gj, ti));
                    }
                }
            }
        }
    }
}

/// `Σ_k c[k]·v[k]`, skipping the zero coefficients. (No closures in the SIMD code: a closure
/// is compiled without the instruction set's features, and every vector operation in it
/// becomes a call.)
#[inline(always)]
fn dot<S: Simd, const N: usize>(s: S, c: &[f32; N], v: &[S::f32s; N]) -> S::f32s {
    let mut acc = s.splat_f32s(0.0);
    for (&ck, &vk) in c.iter().zip(v) {
        if ck != 0.0 {
            acc = s.mul_add_e_f32s(s.splat_f32s(ck), vk, acc);
        }
    }
    acc
}

/// `Bᵀ d` for one column of six vectors.
#[inline(always)]
fn bt<S: Simd>(s: S, d: [S::f32s; ALPHA]) -> [S::f32s; ALPHA] {
    let (two, four, five) = (s.splat_f32s(2.0), s.splat_f32s(4.0), s.splat_f32s(5.0));
    let d42 = s.sub_f32s(d[4], d[2]);
    [
        s.mul_add_e_f32s(four, d[0], s.sub_f32s(d[4], s.mul_f32s(five, d[2]))),
        s.sub_f32s(s.add_f32s(d[3], d[4]), s.mul_f32s(four, s.add_f32s(d[1], d[2]))),
        s.mul_add_e_f32s(four, s.sub_f32s(d[1], d[2]), s.sub_f32s(d[4], d[3])),
        s.mul_add_e_f32s(two, s.sub_f32s(d[3], d[1]), d42),
        s.mul_add_e_f32s(two, s.sub_f32s(d[1], d[3]), d42),
        s.mul_add_e_f32s(four, d[1], s.sub_f32s(d[5], s.mul_f32s(five, d[3]))),
    ]
}

/// `Aᵀ m` for one column of six vectors.
#[inline(always)]
fn at<S: Simd>(s: S, m: [S::f32s; ALPHA]) -> [S::f32s; TILE] {
    let two = s.splat_f32s(2.0);
    [
        s.add_f32s(s.add_f32s(s.add_f32s(m[0], m[1]), s.add_f32s(m[2], m[3])), m[4]),
        s.add_f32s(s.mul_add_e_f32s(two, s.sub_f32s(m[3], m[4]), s.sub_f32s(m[1], m[2])), m[5]),
    ]
}

/// One thread's examples, chunk of tiles by chunk.
struct Group<'a> {
    geo: Winograd,
    x: &'a [f32],
    u: &'a [f32],
    y: &'a mut [f32],
    buf: &'a mut [f32],
    chunk: usize,
}

impl WithSimd for Group<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Group { geo, x, u, y, buf, chunk } = self;
        let (cx, cy) = (geo.cx, geo.cy);
        let tiles = y.len() / (geo.h * geo.w * cy) * geo.tiles();
        let (v, m) = buf.split_at_mut(POINTS * chunk * cx);
        for t0 in (0..tiles).step_by(chunk) {
            let tn = (tiles - t0).min(chunk);
            input_transform(s, &geo, x, t0, tn, v, chunk);
            for p in 0..POINTS {
                let vp = &v[p * chunk * cx..][..tn * cx];
                let mp = &mut m[p * chunk * cy..][..tn * cy];
                products(s, vp, &u[p * cx * cy..][..cx * cy], mp, cx, cy);
            }
            output_transform(s, &geo, m, t0, tn, y, chunk);
        }
    }
}

/// Where tile `t` lies: example, first row, first column of its output.
#[inline(always)]
fn tile_at(geo: &Winograd, t: usize) -> (usize, usize, usize) {
    let tw = geo.w.div_ceil(TILE);
    let per = geo.h.div_ceil(TILE) * tw;
    let (e, r) = (t / per, t % per);
    (e, r / tw * TILE, r % tw * TILE)
}

/// `V = Bᵀ d B` of tiles `t0..t0 + tn` into `v` (`[point][chunk tile][cx]`).
#[inline(always)]
fn input_transform<S: Simd>(s: S, geo: &Winograd, x: &[f32], t0: usize, tn: usize, v: &mut [f32], chunk: usize) {
    let (h, w, cx) = (geo.h, geo.w, geo.cx);
    for ti in 0..tn {
        let (e, oy, ox) = tile_at(geo, t0 + ti);
        let img = &x[e * h * w * cx..][..h * w * cx];
        // Which of the tile's rows and columns lie inside the image (the rest read as zero).
        let (iy, ix) = (oy.wrapping_sub(TAPS / 2), ox.wrapping_sub(TAPS / 2));
        let (rows, cols) = (inside(iy, h), inside(ix, w));
        // The tile's first value (wrapped: only read where it lies inside the image).
        let corner = iy.wrapping_mul(w).wrapping_add(ix).wrapping_mul(cx);
        for c in (0..cx).step_by(S::F32_LANES) {
            // Columns first: col[j][ξ] = (Bᵀ d)[ξ][j]; then each row ξ times B. Every array
            // here is built whole, so that it lives in registers (an array filled in
            // conditionally is zeroed in memory first, and the transform waits on it).
            let at = |j: usize| corner.wrapping_add(j * cx + c);
            let col = [
                bt(s, column::<S>(s, img, at(0), w * cx, rows, cols[0])),
                bt(s, column::<S>(s, img, at(1), w * cx, rows, cols[1])),
                bt(s, column::<S>(s, img, at(2), w * cx, rows, cols[2])),
                bt(s, column::<S>(s, img, at(3), w * cx, rows, cols[3])),
                bt(s, column::<S>(s, img, at(4), w * cx, rows, cols[4])),
                bt(s, column::<S>(s, img, at(5), w * cx, rows, cols[5])),
            ];
            for xi in 0..ALPHA {
                let r = [col[0][xi], col[1][xi], col[2][xi], col[3][xi], col[4][xi], col[5][xi]];
                let out = bt(s, r);
                for (nu, val) in out.into_iter().enumerate() {
                    store::<S>(&mut v[((xi * ALPHA + nu) * chunk + ti) * cx + c..], val);
                }
            }
        }
    }
}

/// For the six positions `first, first + 1, …` (wrapped, so `first` may be −2), whether each
/// lies in `0..len`.
#[inline(always)]
fn inside(first: usize, len: usize) -> [bool; ALPHA] {
    [0, 1, 2, 3, 4, 5].map(|k| first.wrapping_add(k) < len)
}

/// One column of a tile: the vectors at `at`, `at + stride`, … of `img`, zero for the rows
/// outside the image (`rows`) or all zero if the column is (`col`).
#[inline(always)]
fn column<S: Simd>(s: S, img: &[f32], at: usize, stride: usize, rows: [bool; ALPHA], col: bool) -> [S::f32s; ALPHA] {
    [
        pick::<S>(s, img, at, rows[0] && col),
        pick::<S>(s, img, at.wrapping_add(stride), rows[1] && col),
        pick::<S>(s, img, at.wrapping_add(2 * stride), rows[2] && col),
        pick::<S>(s, img, at.wrapping_add(3 * stride), rows[3] && col),
        pick::<S>(s, img, at.wrapping_add(4 * stride), rows[4] && col),
        pick::<S>(s, img, at.wrapping_add(5 * stride), rows[5] && col),
    ]
}

/// The vector at `at` in `img` if `ok`, else zero.
#[inline(always)]
fn pick<S: Simd>(s: S, img: &[f32], at: usize, ok: bool) -> S::f32s {
    if ok { load::<S>(&img[at..]) } else { s.splat_f32s(0.0) }
}

/// `Y = Aᵀ M A` of tiles `t0..t0 + tn` (in `m`, `[point][chunk tile][cy]`) into `y`.
#[inline(always)]
fn output_transform<S: Simd>(s: S, geo: &Winograd, m: &[f32], t0: usize, tn: usize, y: &mut [f32], chunk: usize) {
    let (h, w, cy) = (geo.h, geo.w, geo.cy);
    // Point (ξ, ν) of a tile's channel vector is `ξ·6·plane + ν·plane` past its (0, 0).
    let plane = chunk * cy;
    for ti in 0..tn {
        let (e, oy, ox) = tile_at(geo, t0 + ti);
        let img = &mut y[e * h * w * cy..][..h * w * cy];
        for c in (0..cy).step_by(S::F32_LANES) {
            // Columns first: col[ν][i] = (Aᵀ M)[i][ν]; then each row i times A (arrays built
            // whole, to stay in registers).
            let at0 = ti * cy + c;
            let col = [
                at(s, gather::<S>(m, at0, ALPHA * plane)),
                at(s, gather::<S>(m, at0 + plane, ALPHA * plane)),
                at(s, gather::<S>(m, at0 + 2 * plane, ALPHA * plane)),
                at(s, gather::<S>(m, at0 + 3 * plane, ALPHA * plane)),
                at(s, gather::<S>(m, at0 + 4 * plane, ALPHA * plane)),
                at(s, gather::<S>(m, at0 + 5 * plane, ALPHA * plane)),
            ];
            for i in 0..TILE {
                let r = [col[0][i], col[1][i], col[2][i], col[3][i], col[4][i], col[5][i]];
                for (j, val) in at(s, r).into_iter().enumerate() {
                    if oy + i < h && ox + j < w {
                        store::<S>(&mut img[((oy + i) * w + ox + j) * cy + c..], val);
                    }
                }
            }
        }
    }
}

/// The six vectors at `at`, `at + stride`, … of `m`.
#[inline(always)]
fn gather<S: Simd>(m: &[f32], at: usize, stride: usize) -> [S::f32s; ALPHA] {
    [
        load::<S>(&m[at..]),
        load::<S>(&m[at + stride..]),
        load::<S>(&m[at + 2 * stride..]),
        load::<S>(&m[at + 3 * stride..]),
        load::<S>(&m[at + 4 * stride..]),
        load::<S>(&m[at + 5 * stride..]),
    ]
}

/// `m (rows × cy) = v (rows × cx) · u (cx × cy)` for one transform point, in blocks of
/// rows × output vectors sized to the instruction set's registers.
#[inline(always)]
fn products<S: Simd>(s: S, v: &[f32], u: &[f32], m: &mut [f32], cx: usize, cy: usize) {
    let vectors = cy / S::F32_LANES;
    match (S::F32_LANES >= 16, vectors) {
        (true, v4) if v4 % 4 == 0 => blocks::<S, 6, 4>(s, v, u, m, cx, cy),
        (true, v2) if v2 % 2 == 0 => blocks::<S, 12, 2>(s, v, u, m, cx, cy),
        (false, v2) if v2 % 2 == 0 => blocks::<S, 6, 2>(s, v, u, m, cx, cy),
        _ => blocks::<S, 8, 1>(s, v, u, m, cx, cy),
    }
}

/// [`products`] with `R` rows and `NV` output vectors a block (rows left over: one at a time).
#[inline(always)]
fn blocks<S: Simd, const R: usize, const NV: usize>(s: S, v: &[f32], u: &[f32], m: &mut [f32], cx: usize, cy: usize) {
    let rows = v.len() / cx;
    let full = rows / R * R;
    for c in (0..cy).step_by(NV * S::F32_LANES) {
        for r in (0..full).step_by(R) {
            block::<S, R, NV>(s, &v[r * cx..(r + R) * cx], &u[c..], &mut m[r * cy + c..], cx, cy);
        }
        for r in full..rows {
            block::<S, 1, NV>(s, &v[r * cx..(r + 1) * cx], &u[c..], &mut m[r * cy + c..], cx, cy);
        }
    }
}

/// `R` rows of `v` (each `cx` long) times the `NV` vectors of `u`'s columns from its start
/// (rows `cy` apart), into `m` (rows `cy` apart). Each value is summed over `cx` in order.
#[inline(always)]
fn block<S: Simd, const R: usize, const NV: usize>(s: S, v: &[f32], u: &[f32], m: &mut [f32], cx: usize, cy: usize) {
    let lanes = S::F32_LANES;
    let rows: [&[f32]; R] = from_fn(|r| &v[r * cx..(r + 1) * cx]);
    let zero = s.splat_f32s(0.0);
    let mut acc = [[zero; NV]; R];
    for k in 0..cx {
        let uk = &u[k * cy..][..NV * lanes];
        let mut uv = [zero; NV];
        for (j, uj) in uv.iter_mut().enumerate() {
            *uj = load::<S>(&uk[j * lanes..]);
        }
        for (a, row) in acc.iter_mut().zip(&rows) {
            let b = s.splat_f32s(row[k]);
            for (aj, uj) in a.iter_mut().zip(&uv) {
                *aj = s.mul_add_e_f32s(b, *uj, *aj);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (j, aj) in a.iter().enumerate() {
            store::<S>(&mut m[r * cy + j * lanes..], *aj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::grad::{KernelBack, KernelGrad};
    use super::*;

    /// Direct 5×5 'same' convolution in f64 of `n` examples, weights `[5, 5, cx, cy]`: the
    /// output, and the weight gradient for the output gradient `dy`.
    fn direct(geo: &Winograd, w: &[f32], x: &[f32], dy: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
        let (h, wd, cx, cy) = (geo.h, geo.w, geo.cx, geo.cy);
        let (mut y, mut dw) = (vec![0.0; n * h * wd * cy], vec![0.0; TAPS * TAPS * cx * cy]);
        for e in 0..n {
            for oy in 0..h {
                for ox in 0..wd {
                    for k in 0..TAPS * TAPS {
                        let (iy, ix) = ((oy + k / TAPS).wrapping_sub(2), (ox + k % TAPS).wrapping_sub(2));
                        if iy >= h || ix >= wd {
                            continue;
                        }
                        for a in 0..cx {
                            let xv = x[((e * h + iy) * wd + ix) * cx + a] as f64;
                            for b in 0..cy {
                                let (at, wt) = (((e * h + oy) * wd + ox) * cy + b, (k * cx + a) * cy + b);
                                y[at] += xv * w[wt] as f64;
                                dw[wt] += xv * dy.get(at).map_or(0.0, |g| *g as f64);
                            }
                        }
                    }
                }
            }
        }
        (y, dw)
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0).collect()
    }

    fn close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (g, d)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - d).abs() <= 1e-5 * scale, "{what} [{i}]: {g} vs {d}");
        }
    }

    /// Forward, input gradient (the rotated kernel) and weight gradient on one instruction
    /// set, against the direct method: chunks ending inside an example and tiles cut by the
    /// image's edge included.
    fn check<S: Simd>(s: S, name: &str) {
        for (h, w, cx, cy, n) in [(14, 14, 32, 64, 2), (7, 9, 16, 48, 3), (3, 2, 16, 16, 1)] {
            let geo = Winograd { h, w, cx, cy, chunk: 12 };
            let at = format!("{name} {h}x{w} {cx}->{cy}");
            let wt = values(TAPS * TAPS * cx * cy, 1);
            let x = values(n * h * w * cx, 2);
            let mut kernel = vec![f32::NAN; geo.kernel_len()];
            let mut buf = vec![f32::NAN; geo.buffer_len()];
            s.vectorize(KernelTransform { geo, w: &wt, flip: false, kernel: &mut kernel });
            let mut y = vec![f32::NAN; n * h * w * cy];
            s.vectorize(Group { geo, x: &x, u: &kernel[..POINTS * cx * cy], y: &mut y, buf: &mut buf, chunk: 12 });
            close(&format!("output, {at}"), &y, &direct(&geo, &wt, &x, &[], n).0);

            let t = geo.transposed();
            let dy = values(n * h * w * cy, 3);
            s.vectorize(KernelTransform { geo: t, w: &wt, flip: true, kernel: &mut kernel });
            let mut dx = vec![f32::NAN; n * h * w * cx];
            s.vectorize(Group { geo: t, x: &dy, u: &kernel[..POINTS * cx * cy], y: &mut dx, buf: &mut buf, chunk: 12 });
            let rotated: Vec<f32> = (0..TAPS * TAPS * cy * cx)
                .map(|i| {
                    let (k, b, a) = (i / (cy * cx), i / cx % cy, i % cx);
                    wt[((TAPS * TAPS - 1 - k) * cx + a) * cy + b]
                })
                .collect();
            close(&format!("input gradient, {at}"), &dx, &direct(&t, &rotated, &dy, &[], n).0);

            s.vectorize(KernelGrad { geo, x: &x, dy: &dy, buf: &mut buf });
            let mut dw = vec![f32::NAN; wt.len()];
            let du = &buf[POINTS * (cx + cy) * 12..];
            s.vectorize(KernelBack { geo, du, dw: &mut dw });
            close(&format!("weight gradient, {at}"), &dw, &direct(&geo, &wt, &x, &dy, n).1);
        }
    }

    /// Every instruction set the dispatch may pick (the reference machines have AVX2 only)
    /// gives the direct method's results, not only the one this machine picks.
    #[test]
    fn each_instruction_set_equals_the_direct_convolution() {
        crate::each_instruction_set!(check);
    }
}
