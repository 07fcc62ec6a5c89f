//! Max pooling in NHWC, remembering the winning input of each output for the backward pass.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::Shape;
use crate::layers::{load, store};

/// Geometry of one max-pooling layer.
#[derive(Debug, Clone)]
pub(crate) struct MaxPool {
    pub input: Shape,
    pub output: Shape,
    pub kernel: usize,
    pub stride: usize,
}

impl MaxPool {
    /// `y = maxpool(x)`; `arg` receives, per output, the index of its maximum within the
    /// example's input.
    pub fn forward(&self, x: &[f32], y: &mut [f32], arg: &mut [u32], n: usize) {
        self.pool(x, &[], y, arg, n, false);
    }

    /// `y = maxpool(relu(x + b))` with `b` one bias per channel, in one pass over the
    /// convolution's output `x`: the same values and winners, bit for bit, as adding the bias,
    /// applying the ReLU and pooling one after another, without writing the full-size
    /// activations in between.
    pub fn forward_bias_relu(&self, x: &[f32], b: &[f32], y: &mut [f32], arg: &mut [u32], n: usize) {
        self.pool(x, b, y, arg, n, true);
    }

    /// Max pooling of `f(x, b[channel])` (`relu`: `max(x + b, 0)`; else `x`), scanning each
    /// window in order and keeping the first maximum. Each example's pixels go through
    /// pulp's SIMD (AVX-512 or AVX2 chosen at run time) a vector of channels at a time, with
    /// compare-and-select: branches on the data (MNIST's activations tie at zero half the
    /// time) mispredicted often enough to make pooling a sixth of a training run.
    fn pool(&self, x: &[f32], b: &[f32], y: &mut [f32], arg: &mut [u32], n: usize, relu: bool) {
        let (s, o) = (self.input, self.output);
        y[..n * o.size()]
            .par_chunks_mut(o.size())
            .zip(arg[..n * o.size()].par_chunks_mut(o.size()))
            .zip(x.par_chunks(s.size()))
            .for_each(|((y, arg), x)| {
                pulp::Arch::new().dispatch(PoolExample { pool: self, x, b, y, arg, relu });
            });
    }

    /// The backward pass of [`MaxPool::forward_bias_relu`] up to the bias: each output
    /// gradient goes to the input that won, where the (pooled, ReLU'd) output was positive.
    pub fn backward_relu(&self, dy: &[f32], y: &[f32], arg: &[u32], dx: &mut [f32], n: usize) {
        self.unpool(dy, Some(y), arg, dx, n);
    }

    /// Routes each output gradient to the input that won the forward max.
    pub fn backward(&self, dy: &[f32], arg: &[u32], dx: &mut [f32], n: usize) {
        self.unpool(dy, None, arg, dx, n);
    }

    /// Each output gradient to the input that won (where `y`, when given, is positive).
    /// Windows that do not overlap (kernel = stride, the usual pooling) are written in one
    /// pass in SIMD: every input gets its window's gradient if it won, else zero. Overlapping
    /// ones clear `dx` and add the gradients at the winners, without a branch on the data.
    /// Either way `dx` is bit for bit the sum over the outputs each input won.
    fn unpool(&self, dy: &[f32], y: Option<&[f32]>, arg: &[u32], dx: &mut [f32], n: usize) {
        let (s, o) = (self.input, self.output);
        dx[..n * s.size()]
            .par_chunks_mut(s.size())
            .zip(dy.par_chunks(o.size()))
            .zip(arg.par_chunks(o.size()))
            .enumerate()
            .for_each(|(e, ((dx, dy), arg))| {
                let y = y.map(|y| &y[e * o.size()..(e + 1) * o.size()]);
                if self.kernel == self.stride {
                    pulp::Arch::new().dispatch(UnpoolExample { pool: self, dy, y, arg, dx });
                    return;
                }
                dx.fill(0.0);
                // Adding 0.0 leaves every sum as it was (none is −0.0: it starts at +0.0,
                // and +0.0 + −0.0 = +0.0).
                for (p, (g, &a)) in dy.iter().zip(arg).enumerate() {
                    dx[a as usize] += if y.is_none_or(|y| y[p] > 0.0) { *g } else { 0.0 };
                }
            });
    }
}

/// One example's gradient through pooling with windows that do not overlap: each input
/// written once, vectors of channels then the channels left over.
struct UnpoolExample<'a> {
    pool: &'a MaxPool,
    dy: &'a [f32],
    y: Option<&'a [f32]>,
    arg: &'a [u32],
    dx: &'a mut [f32],
}

impl WithSimd for UnpoolExample<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let UnpoolExample { pool, dy, y, arg, dx } = self;
        let (si, o, c, lanes) = (pool.input, pool.output, pool.input.c, S::F32_LANES);
        if o.h * pool.stride != si.h || o.w * pool.stride != si.w {
            dx.fill(0.0); // inputs in no window
        }
        let whole = c / lanes * lanes;
        let zero = s.splat_f32s(0.0);
        let iota = lane_numbers::<S>();
        for p in 0..o.h * o.w {
            let (oy, ox) = (p / o.w, p % o.w);
            for ch in (0..whole).step_by(lanes) {
                let at = p * c + ch;
                // + 0.0: a −0.0 gradient becomes +0.0, as the sum from +0.0 made it.
                let mut g = s.add_f32s(load::<S>(&dy[at..]), zero);
                if let Some(y) = y {
                    g = s.select_f32s(s.greater_than_f32s(load::<S>(&y[at..]), zero), g, zero);
                }
                let won = S::as_simd_u32s(&arg[at..at + lanes]).0[0];
                for ky in 0..pool.kernel {
                    for kx in 0..pool.kernel {
                        let base = ((oy * pool.stride + ky) * si.w + ox * pool.stride + kx) * c + ch;
                        let here = s.add_u32s(s.splat_u32s(base as u32), iota);
                        let v = s.select_f32s(s.equal_u32s(here, won), g, zero);
                        store::<S>(&mut dx[base..], v);
                    }
                }
            }
            for ch in whole..c {
                let at = p * c + ch;
                let g = if y.is_none_or(|y| y[at] > 0.0) { dy[at] + 0.0 } else { 0.0 };
                for ky in 0..pool.kernel {
                    for kx in 0..pool.kernel {
                        let base = ((oy * pool.stride + ky) * si.w + ox * pool.stride + kx) * c + ch;
                        dx[base] = if arg[at] as usize == base { g } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// The vector `[0, 1, 2, …]` (no instruction set has more than 16 lanes of `f32`).
#[inline(always)]
fn lane_numbers<S: Simd>() -> S::u32s {
    let numbers: [u32; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    S::as_simd_u32s(&numbers[..S::F32_LANES]).0[0]
}

/// One example's pooling in SIMD: whole vectors of channels, then the channels left over.
struct PoolExample<'a> {
    pool: &'a MaxPool,
    x: &'a [f32],
    b: &'a [f32],
    y: &'a mut [f32],
    arg: &'a mut [u32],
    relu: bool,
}

impl WithSimd for PoolExample<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let PoolExample { pool, x, b, y, arg, relu } = self;
        let (si, o, c, lanes) = (pool.input, pool.output, pool.input.c, S::F32_LANES);
        let whole = c / lanes * lanes;
        let zero = s.splat_f32s(0.0);
        let iota = lane_numbers::<S>();
        for p in 0..o.h * o.w {
            let (oy, ox) = (p / o.w, p % o.w);
            let first = ((oy * pool.stride) * si.w + ox * pool.stride) * c;
            let (yp, ap) = (&mut y[p * c..(p + 1) * c], &mut arg[p * c..(p + 1) * c]);
            for ch in (0..whole).step_by(lanes) {
                let bias = if relu { load::<S>(&b[ch..]) } else { zero };
                let mut best = load::<S>(&x[first + ch..]);
                if relu {
                    best = s.max_f32s(s.add_f32s(best, bias), zero);
                }
                let mut id = s.add_u32s(s.splat_u32s((first + ch) as u32), iota);
                for ky in 0..pool.kernel {
                    for kx in 0..pool.kernel {
                        let base = ((oy * pool.stride + ky) * si.w + ox * pool.stride + kx) * c;
                        let mut v = load::<S>(&x[base + ch..]);
                        if relu {
                            v = s.max_f32s(s.add_f32s(v, bias), zero);
                        }
                        let better = s.greater_than_f32s(v, best);
                        best = s.select_f32s(better, v, best);
                        id = s.select_u32s(better, s.add_u32s(s.splat_u32s((base + ch) as u32), iota), id);
                    }
                }
                store::<S>(&mut yp[ch..], best);
                S::as_mut_simd_u32s(&mut ap[ch..ch + lanes]).0[0] = id;
            }
            for ch in whole..c {
                let f = |v: f32| if relu { (v + b[ch]).max(0.0) } else { v };
                let (mut best, mut id) = (f(x[first + ch]), (first + ch) as u32);
                for ky in 0..pool.kernel {
                    for kx in 0..pool.kernel {
                        let at = ((oy * pool.stride + ky) * si.w + ox * pool.stride + kx) * c + ch;
                        let v = f(x[at]);
                        if v > best {
                            (best, id) = (v, at as u32);
                        }
                    }
                }
                (yp[ch], ap[ch]) = (best, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pooling by the definition: `f` of each input, the first maximum in scan order.
    fn naive(p: &MaxPool, x: &[f32], b: &[f32], relu: bool) -> (Vec<f32>, Vec<u32>) {
        let (s, o) = (p.input, p.output);
        let (mut y, mut arg) = (vec![0.0; o.size()], vec![0; o.size()]);
        for oy in 0..o.h {
            for ox in 0..o.w {
                for ch in 0..s.c {
                    let mut best: Option<(f32, u32)> = None;
                    for ky in 0..p.kernel {
                        for kx in 0..p.kernel {
                            let at = ((oy * p.stride + ky) * s.w + ox * p.stride + kx) * s.c + ch;
                            let v = if relu { (x[at] + b[ch]).max(0.0) } else { x[at] };
                            if best.is_none_or(|(m, _)| v > m) {
                                best = Some((v, at as u32));
                            }
                        }
                    }
                    let (v, a) = best.unwrap();
                    (y[(oy * o.w + ox) * s.c + ch], arg[(oy * o.w + ox) * s.c + ch]) = (v, a);
                }
            }
        }
        (y, arg)
    }

    fn check<S: Simd>(s: S, name: &str) {
        // 16 channels: whole vectors only; 35: whole vectors and a scalar tail. Values on a
        // coarse grid with negatives, so that windows tie (and tie at zero after the ReLU).
        for (side, c, kernel, stride) in [(6, 16, 2, 2), (7, 35, 3, 2), (4, 3, 2, 2)] {
            let out = (side - kernel) / stride + 1;
            let p = MaxPool { input: Shape::image(side, side, c), output: Shape::image(out, out, c), kernel, stride };
            let x: Vec<f32> = (0..p.input.size()).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.5).collect();
            let b: Vec<f32> = (0..c).map(|i| (i % 3) as f32 * 0.25 - 0.25).collect();
            for relu in [false, true] {
                let (mut y, mut arg) = (vec![f32::NAN; p.output.size()], vec![u32::MAX; p.output.size()]);
                s.vectorize(PoolExample { pool: &p, x: &x, b: &b, y: &mut y, arg: &mut arg, relu });
                let (want_y, want_arg) = naive(&p, &x, &b, relu);
                assert_eq!(y, want_y, "{name}: {side}x{side}x{c} k{kernel} s{stride} relu {relu}");
                assert_eq!(arg, want_arg, "{name}: winners, {side}x{side}x{c} k{kernel} s{stride} relu {relu}");
            }
        }
    }

    /// The gradient routed back by the definition: each output's gradient added at its
    /// winner (where `y`, when given, is positive), from +0.0.
    fn naive_back(p: &MaxPool, dy: &[f32], y: Option<&[f32]>, arg: &[u32]) -> Vec<f32> {
        let mut dx = vec![0.0f32; p.input.size()];
        for (i, (&g, &a)) in dy.iter().zip(arg).enumerate() {
            if y.is_none_or(|y| y[i] > 0.0) {
                dx[a as usize] += g;
            }
        }
        dx
    }

    fn check_back<S: Simd>(s: S, name: &str) {
        // Pooling that covers the input, and 2×2 windows on a 7×7 input (last row and column
        // in no window); gradients with −0.0 in them.
        for (side, c, kernel) in [(6, 16, 2), (7, 35, 2), (4, 3, 2)] {
            let out = side / kernel;
            let p = MaxPool {
                input: Shape::image(side, side, c),
                output: Shape::image(out, out, c),
                kernel,
                stride: kernel,
            };
            let x: Vec<f32> = (0..p.input.size()).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.5).collect();
            let b: Vec<f32> = (0..c).map(|i| (i % 3) as f32 * 0.25 - 0.25).collect();
            let (y, arg) = naive(&p, &x, &b, true);
            let dy: Vec<f32> =
                (0..p.output.size()).map(|i| if i % 4 == 0 { -0.0 } else { (i % 9) as f32 - 4.0 }).collect();
            for relu in [false, true] {
                let yr = relu.then_some(&y[..]);
                let mut dx = vec![f32::NAN; p.input.size()];
                s.vectorize(UnpoolExample { pool: &p, dy: &dy, y: yr, arg: &arg, dx: &mut dx });
                let want = naive_back(&p, &dy, yr, &arg);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dx), bits(&want), "{name}: backward {side}x{side}x{c} k{kernel} relu {relu}");
            }
        }
    }

    /// Every instruction set the dispatch may pick gives the definition's maxima and first
    /// winners, ties included, and routes the gradient back bit for bit as the definition.
    #[test]
    fn each_instruction_set_pools_by_the_definition() {
        crate::each_instruction_set!(check);
        crate::each_instruction_set!(check_back);
    }
}
