//! The weight gradient of the Winograd form: the gradient of `Y = Aᵀ[Σ U ⊙ V]A` with
//! respect to `U` is `Σ_tiles V ⊙ (A dY Aᵀ)`, and `dw = Gᵀ dU G`.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::{ALPHA, GT, POINTS, TAPS, Winograd, dot, input_transform, pick, tile_at};
use crate::layers::{load, store};

impl Winograd {
    /// The weight gradient `dw` (`[5, 5, cx, cy]`) from the layer's input `x` and output
    /// gradient `dy` for `n` examples, threads taking `per` each with one slot of `slot`
    /// values in `slots`. The gradient of `Y = Aᵀ[Σ U ⊙ V]A` with respect to `U` is
    /// `Σ_tiles V ⊙ (A dY Aᵀ)`: each thread sums its tiles' products per transform point
    /// (36 products of `cx × tiles` by `tiles × cy`), the threads' sums are added in thread
    /// order, and `dw = Gᵀ dU G`. Exact in exact arithmetic, like the forward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn kernel_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        slots: &mut [f32],
        slot: usize,
        n: usize,
        per: usize,
    ) {
        let (isz, osz) = (self.h * self.w * self.cx, self.h * self.w * self.cy);
        let (geo, groups) = (*self, n.div_ceil(per).max(1));
        slots.par_chunks_mut(slot).take(groups).enumerate().for_each(|(g, buf)| {
            let (e0, e1) = ((g * per).min(n), ((g + 1) * per).min(n));
            let (x, dy) = (&x[e0 * isz..e1 * isz], &dy[e0 * osz..e1 * osz]);
            pulp::Arch::new().dispatch(KernelGrad { geo, x, dy, buf });
        });
        let (at, len) = (POINTS * (self.cx + self.cy) * self.chunk, POINTS * self.cx * self.cy);
        let (first, rest) = slots.split_at_mut(slot);
        let du = &mut first[at..at + len];
        for g in 1..groups {
            for (a, b) in du.iter_mut().zip(&rest[(g - 1) * slot + at..][..len]) {
                *a += b;
            }
        }
        pulp::Arch::new().dispatch(KernelBack { geo, du, dw });
    }
}

/// One thread's share of the kernel gradient: its tiles' `Σ V ⊙ (A dY Aᵀ)` per transform
/// point, into the `dU` at the end of its buffer.
pub(super) struct KernelGrad<'a> {
    pub(super) geo: Winograd,
    pub(super) x: &'a [f32],
    pub(super) dy: &'a [f32],
    pub(super) buf: &'a mut [f32],
}

impl WithSimd for KernelGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let KernelGrad { geo, x, dy, buf } = self;
        let (cx, cy, chunk) = (geo.cx, geo.cy, geo.chunk);
        let (v, rest) = buf.split_at_mut(POINTS * chunk * cx);
        let (m, du) = rest.split_at_mut(POINTS * chunk * cy);
        let du = &mut du[..POINTS * cx * cy];
        du.fill(0.0);
        let tiles = dy.len() / (geo.h * geo.w * cy) * geo.tiles();
        for t0 in (0..tiles).step_by(chunk) {
            let tn = (tiles - t0).min(chunk);
            input_transform(s, &geo, x, t0, tn, v, chunk);
            gradient_transform(s, &geo, dy, t0, tn, m, chunk);
            for p in 0..POINTS {
                let (vp, mp) = (&v[p * chunk * cx..][..tn * cx], &m[p * chunk * cy..][..tn * cy]);
                accumulate(s, vp, mp, &mut du[p * cx * cy..][..cx * cy], cx, cy);
            }
        }
    }
}

/// `[y0, y0 + y1, y0 − y1, y0 + 2y1, y0 − 2y1, y1]`: `A` times a column of two.
#[inline(always)]
fn expand<S: Simd>(s: S, y0: S::f32s, y1: S::f32s) -> [S::f32s; ALPHA] {
    let two = s.splat_f32s(2.0);
    [
        y0,
        s.add_f32s(y0, y1),
        s.sub_f32s(y0, y1),
        s.mul_add_e_f32s(two, y1, y0),
        s.mul_add_e_f32s(s.splat_f32s(-2.0), y1, y0),
        y1,
    ]
}

/// `A dY Aᵀ` of tiles `t0..t0 + tn` of `dy` into `m` (`[point][chunk tile][cy]`); outputs
/// past the image's edge count as zero.
#[inline(always)]
fn gradient_transform<S: Simd>(s: S, geo: &Winograd, dy: &[f32], t0: usize, tn: usize, m: &mut [f32], chunk: usize) {
    let (h, w, cy) = (geo.h, geo.w, geo.cy);
    for ti in 0..tn {
        let (e, oy, ox) = tile_at(geo, t0 + ti);
        let img = &dy[e * h * w * cy..][..h * w * cy];
        let (down, right) = (oy + 1 < h, ox + 1 < w);
        for c in (0..cy).step_by(S::F32_LANES) {
            // The tile's four values (its first is always inside the image).
            let at = (oy * w + ox) * cy + c;
            let d00 = load::<S>(&img[at..]);
            let d01 = pick::<S>(s, img, at + cy, right);
            let d10 = pick::<S>(s, img, at + w * cy, down);
            let d11 = pick::<S>(s, img, at + (w + 1) * cy, down && right);
            // Columns first: col[j] = A·dY[:, j]; then each row ξ times Aᵀ.
            let col = [expand(s, d00, d10), expand(s, d01, d11)];
            for xi in 0..ALPHA {
                for (nu, val) in expand(s, col[0][xi], col[1][xi]).into_iter().enumerate() {
                    store::<S>(&mut m[((xi * ALPHA + nu) * chunk + ti) * cy + c..], val);
                }
            }
        }
    }
}

/// `du (cx × cy) += vᵀ · m` for one transform point (`v`: tiles × cx, `m`: tiles × cy), in
/// blocks of input channels × output vectors sized to the instruction set's registers.
#[inline(always)]
fn accumulate<S: Simd>(s: S, v: &[f32], m: &[f32], du: &mut [f32], cx: usize, cy: usize) {
    let vectors = cy / S::F32_LANES;
    match (S::F32_LANES >= 16, vectors) {
        (true, v4) if v4 % 4 == 0 => accumulate_blocks::<S, 4, 4>(s, v, m, du, cx, cy),
        (true, v2) if v2 % 2 == 0 => accumulate_blocks::<S, 8, 2>(s, v, m, du, cx, cy),
        (false, v2) if v2 % 2 == 0 => accumulate_blocks::<S, 4, 2>(s, v, m, du, cx, cy),
        _ => accumulate_blocks::<S, 8, 1>(s, v, m, du, cx, cy),
    }
}

/// [`accumulate`] with `R` input channels (`cx` is a multiple of 16, so of `R`) and `NV`
/// output vectors a block. Each value is summed over the tiles in order.
#[inline(always)]
fn accumulate_blocks<S: Simd, const R: usize, const NV: usize>(
    s: S,
    v: &[f32],
    m: &[f32],
    du: &mut [f32],
    cx: usize,
    cy: usize,
) {
    let (lanes, tiles) = (S::F32_LANES, v.len() / cx);
    for a in (0..cx).step_by(R) {
        for c in (0..cy).step_by(NV * lanes) {
            let mut acc = [[s.splat_f32s(0.0); NV]; R];
            for (r, ar) in acc.iter_mut().enumerate() {
                for (j, aj) in ar.iter_mut().enumerate() {
                    *aj = load::<S>(&du[(a + r) * cy + c + j * lanes..]);
                }
            }
            for t in 0..tiles {
                let mt = &m[t * cy + c..][..NV * lanes];
                let mut mv = [s.splat_f32s(0.0); NV];
                for (j, mj) in mv.iter_mut().enumerate() {
                    *mj = load::<S>(&mt[j * lanes..]);
                }
                let vt = &v[t * cx + a..][..R];
                for (ar, &x) in acc.iter_mut().zip(vt) {
                    let b = s.splat_f32s(x);
                    for (aj, mj) in ar.iter_mut().zip(&mv) {
                        *aj = s.mul_add_e_f32s(b, *mj, *aj);
                    }
                }
            }
            for (r, ar) in acc.iter().enumerate() {
                for (j, aj) in ar.iter().enumerate() {
                    store::<S>(&mut du[(a + r) * cy + c + j * lanes..], *aj);
                }
            }
        }
    }
}

/// `dw = Gᵀ dU G` for every channel pair, one vector of output channels at a time.
pub(super) struct KernelBack<'a> {
    pub(super) geo: Winograd,
    pub(super) du: &'a [f32],
    pub(super) dw: &'a mut [f32],
}

impl WithSimd for KernelBack<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let KernelBack { geo, du, dw } = self;
        let (cx, cy) = (geo.cx, geo.cy);
        let zero = s.splat_f32s(0.0);
        for a in 0..cx {
            for b in (0..cy).step_by(S::F32_LANES) {
                // t[kx][i] = Σ_j G[j][kx]·dU[i][j], then dw[ky][kx] = Σ_i G[i][ky]·t[kx][i].
                let mut t = [[zero; ALPHA]; TAPS];
                for i in 0..ALPHA {
                    let mut row = [zero; ALPHA];
                    for (j, rj) in row.iter_mut().enumerate() {
                        *rj = load::<S>(&du[((i * ALPHA + j) * cx + a) * cy + b..]);
                    }
                    for (tk, gk) in t.iter_mut().zip(&GT) {
                        tk[i] = dot(s, gk, &row);
                    }
                }
                for (ky, gy) in GT.iter().enumerate() {
                    for (kx, tk) in t.iter().enumerate() {
                        store::<S>(&mut dw[((ky * TAPS + kx) * cx + a) * cy + b..], dot(s, gy, tk));
                    }
                }
            }
        }
    }
}
