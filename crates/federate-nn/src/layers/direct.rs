//! Direct convolution for layers whose outputs each see few values (`k·k·in` ≤ 75: the
//! first layer of an image model, on one or three channels), forward and weight gradient.
//!
//! There an im2col row is 25–75 values long, and the products through GEMM run at about a
//! quarter of its peak: with so short an inner dimension, building the rows and packing the
//! operands cost as much as the multiplications. Here each thread copies an example into a
//! zero-padded image in its slot of the scratch, and a register-blocked micro-kernel in
//! pulp's SIMD (AVX-512 or AVX2 chosen at run time) reads it directly: the forward pass
//! keeps a block of output pixels × channel vectors in registers (7 × 2 on AVX-512, 8 × 1
//! on AVX2) and walks the taps; the weight gradient keeps 13 taps × channel vectors (two on
//! AVX-512, one on AVX2) and walks the pixels. Written by hand because no crate offers this
//! form. Every value is summed in one fixed order (taps in order; pixels, then examples, in
//! order, then the threads' sums in thread order).

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::conv::Conv;
use super::{load, store};

/// The most values one output sees for the direct form.
const MAX_ROW: usize = 75;
/// Output pixels a forward block keeps in registers.
const PIXELS: usize = 8;
/// Taps a weight-gradient block keeps in registers.
const TAPS: usize = 13;

/// Whether `c` runs in the direct form: short rows, output channels in whole SIMD vectors,
/// and a padded example that fits in a thread's slot.
pub(crate) fn applies(c: &Conv, slot: usize) -> bool {
    c.row_len() <= MAX_ROW && c.output.c.is_multiple_of(16) && padded_len(c) <= slot
}

/// Rows and columns of the zero-padded image the outputs read.
fn padded(c: &Conv) -> (usize, usize) {
    ((c.output.h - 1) * c.stride + c.kernel, (c.output.w - 1) * c.stride + c.kernel)
}

fn padded_len(c: &Conv) -> usize {
    let (ph, pw) = padded(c);
    ph * pw * c.input.c
}

/// Copies one example into `buf` with `pad` zeros around it (cut where no output reads).
fn pad_example(c: &Conv, x: &[f32], buf: &mut [f32]) {
    let (ph, pw) = padded(c);
    let (s, cin) = (c.input, c.input.c);
    let buf = &mut buf[..ph * pw * cin];
    buf.fill(0.0);
    let cols = s.w.min(pw.saturating_sub(c.pad));
    for iy in 0..s.h.min(ph.saturating_sub(c.pad)) {
        let to = ((iy + c.pad) * pw + c.pad) * cin;
        buf[to..to + cols * cin].copy_from_slice(&x[iy * s.w * cin..][..cols * cin]);
    }
}

/// `y = conv(x)` (no bias) for `n` examples, threads taking `per` each with a slot of `slot`
/// values in `slots`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    c: &Conv,
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    slots: &mut [f32],
    slot: usize,
    n: usize,
    per: usize,
) {
    let (isz, osz) = (c.input.size(), c.output.size());
    y[..n * osz].par_chunks_mut(per * osz).zip(slots.par_chunks_mut(slot)).enumerate().for_each(|(g, (y, buf))| {
        for (e, ye) in y.chunks_exact_mut(osz).enumerate() {
            pad_example(c, &x[(g * per + e) * isz..][..isz], buf);
            pulp::Arch::new().dispatch(Forward { c, w, img: buf, y: ye });
        }
    });
}

/// Each thread's weight gradient from its `per` examples into `outs[thread]` (written, not
/// added to), from the layer's input `x` and output gradient `dy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad(
    c: &Conv,
    x: &[f32],
    dy: &[f32],
    outs: Vec<&mut [f32]>,
    slots: &mut [f32],
    slot: usize,
    n: usize,
    per: usize,
) {
    let (isz, osz) = (c.input.size(), c.output.size());
    outs.into_par_iter().zip(slots.par_chunks_mut(slot)).enumerate().for_each(|(g, (gw, buf))| {
        gw.fill(0.0);
        for e in (g * per).min(n)..((g + 1) * per).min(n) {
            pad_example(c, &x[e * isz..][..isz], buf);
            pulp::Arch::new().dispatch(WeightGrad { c, img: buf, dy: &dy[e * osz..][..osz], gw });
        }
    });
}

/// Whether the kernels take two vectors of output channels a block: where there are
/// registers for them (AVX-512's 32; AVX2's 16 hold one) and the channels pair up.
#[inline(always)]
fn two_vectors<S: Simd>(c: &Conv) -> bool {
    S::F32_LANES >= 16 && (c.output.c / S::F32_LANES).is_multiple_of(2)
}

/// One example's forward pass from its padded image.
struct Forward<'a> {
    c: &'a Conv,
    w: &'a [f32],
    img: &'a [f32],
    y: &'a mut [f32],
}

impl WithSimd for Forward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        // Blocks of 7 pixels × two vectors of channels where there are registers for them
        // (AVX-512): each input value broadcast then feeds two multiply-adds instead of one
        // (1.6× faster on the CNN's conv1, whose rows of 28 split into whole blocks of 7).
        if two_vectors::<S>(self.c) {
            forward_blocks::<S, 7, 2>(s, self)
        } else {
            forward_blocks::<S, PIXELS, 1>(s, self)
        }
    }
}

/// [`Forward`] in blocks of `P` output pixels × `NV` vectors of channels.
#[inline(always)]
fn forward_blocks<S: Simd, const P: usize, const NV: usize>(s: S, f: Forward<'_>) {
    let Forward { c, w, img, y } = f;
    let (o, cout, cin, k, st) = (c.output, c.output.c, c.input.c, c.kernel, c.stride);
    let pw = padded(c).1;
    let lanes = S::F32_LANES;
    assert!(img.len() >= padded_len(c), "direct forward: padded image too short");
    for oy in 0..o.h {
        for ox0 in (0..o.w).step_by(P) {
            let np = (o.w - ox0).min(P);
            // Where each pixel's window starts in the image (the last one repeated for a
            // short block; its sums are not stored).
            let mut at = [0usize; P];
            for (p, a) in at.iter_mut().enumerate() {
                *a = ((oy * st) * pw + (ox0 + p.min(np - 1)) * st) * cin;
            }
            for ch in (0..cout).step_by(NV * lanes) {
                let zero = s.splat_f32s(0.0);
                let mut acc = [[zero; NV]; P];
                for ky in 0..k {
                    for kx in 0..k {
                        for ci in 0..cin {
                            let wt = (ky * k + kx) * cin + ci;
                            let wr = &w[wt * cout + ch..][..NV * lanes];
                            let mut wv = [zero; NV];
                            for (j, v) in wv.iter_mut().enumerate() {
                                *v = load::<S>(&wr[j * lanes..]);
                            }
                            let off = (ky * pw + kx) * cin + ci;
                            for (a, &p) in acc.iter_mut().zip(&at) {
                                // SAFETY: p + off = ((oy·st + ky)·pw + (ox·st + kx))·cin + ci
                                // with oy·st + ky ≤ (o.h − 1)·st + k − 1 < ph, ox·st + kx < pw
                                // (ox ≤ o.w − 1) and ci < cin: inside the ph·pw·cin values
                                // asserted above. (Checked indexing here cost a third.)
                                let b = s.splat_f32s(unsafe { *img.get_unchecked(p + off) });
                                for (aj, wj) in a.iter_mut().zip(&wv) {
                                    *aj = s.mul_add_e_f32s(b, *wj, *aj);
                                }
                            }
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate().take(np) {
                    let to = (oy * o.w + ox0 + p) * cout + ch;
                    for (j, aj) in a.iter().enumerate() {
                        store::<S>(&mut y[to + j * lanes..], *aj);
                    }
                }
            }
        }
    }
}

/// One example's weight gradient added to `gw`, from its padded image and `dy`.
struct WeightGrad<'a> {
    c: &'a Conv,
    img: &'a [f32],
    dy: &'a [f32],
    gw: &'a mut [f32],
}

impl WithSimd for WeightGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        // Two vectors of channels a block where the registers hold 13 × 2 sums (AVX-512):
        // each input value broadcast then feeds two multiply-adds instead of one (1.4× faster
        // on the CNN's conv1).
        if two_vectors::<S>(self.c) { weight_grad_blocks::<S, 2>(s, self) } else { weight_grad_blocks::<S, 1>(s, self) }
    }
}

/// [`WeightGrad`] in blocks of [`TAPS`] taps × `NV` vectors of channels.
#[inline(always)]
fn weight_grad_blocks<S: Simd, const NV: usize>(s: S, wg: WeightGrad<'_>) {
    let WeightGrad { c, img, dy, gw } = wg;
    let (o, cout, cin, k, st) = (c.output, c.output.c, c.input.c, c.kernel, c.stride);
    let pw = padded(c).1;
    let (lanes, taps) = (S::F32_LANES, k * k * cin);
    assert!(img.len() >= padded_len(c), "direct weight gradient: padded image too short");
    let zero = s.splat_f32s(0.0);
    for ch in (0..cout).step_by(NV * lanes) {
        for t0 in (0..taps).step_by(TAPS) {
            let nt = (taps - t0).min(TAPS);
            // Each tap's offset in a pixel's window (the last repeated for a short block;
            // its sums are not stored).
            let mut off = [0usize; TAPS];
            for (j, f) in off.iter_mut().enumerate() {
                let t = t0 + j.min(nt - 1);
                let (ky, kx, ci) = (t / (k * cin), t / cin % k, t % cin);
                *f = (ky * pw + kx) * cin + ci;
            }
            let mut acc = [[zero; NV]; TAPS];
            for (j, a) in acc.iter_mut().enumerate().take(nt) {
                for (v, av) in a.iter_mut().enumerate() {
                    *av = load::<S>(&gw[(t0 + j) * cout + ch + v * lanes..]);
                }
            }
            for oy in 0..o.h {
                for ox in 0..o.w {
                    let gr = &dy[(oy * o.w + ox) * cout + ch..][..NV * lanes];
                    let mut g = [zero; NV];
                    for (v, gv) in g.iter_mut().enumerate() {
                        *gv = load::<S>(&gr[v * lanes..]);
                    }
                    let base = ((oy * st) * pw + ox * st) * cin;
                    for (a, &f) in acc.iter_mut().zip(&off) {
                        // SAFETY: base + f = ((oy·st + ky)·pw + (ox·st + kx))·cin + ci with
                        // oy < o.h, ox < o.w, ky, kx < k and ci < cin: inside the ph·pw·cin
                        // values asserted above.
                        let b = s.splat_f32s(unsafe { *img.get_unchecked(base + f) });
                        for (av, gv) in a.iter_mut().zip(&g) {
                            *av = s.mul_add_e_f32s(b, *gv, *av);
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(nt) {
                for (v, av) in a.iter().enumerate() {
                    store::<S>(&mut gw[(t0 + j) * cout + ch + v * lanes..], *av);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shape;

    fn check<S: Simd>(s: S, name: &str) {
        // conv1 of the CNN, a row that ends in a short block of pixels, and three channels
        // with a stride and a cut edge.
        for (side, cin, cout, k, st, pad) in [(28, 1, 32, 5, 1, 2), (10, 1, 32, 5, 1, 2), (8, 3, 16, 3, 2, 0)] {
            let out = (side + 2 * pad - k) / st + 1;
            let c = Conv {
                input: Shape::image(side, side, cin),
                output: Shape::image(out, out, cout),
                kernel: k,
                stride: st,
                pad,
            };
            let w: Vec<f32> = (0..c.weight_len()).map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0).collect();
            let x: Vec<f32> = (0..c.input.size()).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
            let dy: Vec<f32> = (0..c.output.size()).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
            let (mut want_y, mut want_gw) = (vec![0.0f64; c.output.size()], vec![0.0f64; c.weight_len()]);
            for oy in 0..out {
                for ox in 0..out {
                    for t in 0..k * k * cin {
                        let (ky, kx, ci) = (t / (k * cin), t / cin % k, t % cin);
                        let (iy, ix) = ((oy * st + ky).wrapping_sub(pad), (ox * st + kx).wrapping_sub(pad));
                        if iy >= side || ix >= side {
                            continue;
                        }
                        let xv = x[(iy * side + ix) * cin + ci] as f64;
                        for co in 0..cout {
                            want_y[(oy * out + ox) * cout + co] += xv * w[t * cout + co] as f64;
                            want_gw[t * cout + co] += xv * dy[(oy * out + ox) * cout + co] as f64;
                        }
                    }
                }
            }
            let mut img = vec![f32::NAN; padded_len(&c)];
            pad_example(&c, &x, &mut img);
            let mut y = vec![f32::NAN; c.output.size()];
            s.vectorize(Forward { c: &c, w: &w, img: &img, y: &mut y });
            let mut gw = vec![0.0; c.weight_len()];
            s.vectorize(WeightGrad { c: &c, img: &img, dy: &dy, gw: &mut gw });
            for (what, got, want) in [("output", &y, &want_y), ("weight gradient", &gw, &want_gw)] {
                for (i, (g, v)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (*g as f64 - v).abs() <= 1e-4 * v.abs().max(1.0),
                        "{name} {what} {side}x{cin} [{i}]: {g} vs {v}"
                    );
                }
            }
        }
    }

    /// Every instruction set the dispatch may pick gives the direct sums.
    #[test]
    fn each_instruction_set_equals_the_definition() {
        crate::each_instruction_set!(check);
    }
}
