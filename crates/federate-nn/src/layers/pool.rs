//! Max pooling in NHWC, remembering the winning input of each output for the backward pass.

use rayon::prelude::*;

use crate::Shape;

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
        // `pool` zips one value per channel with each pixel; this `f` ignores it, so any
        // `c` values do (x's own first pixel; with no examples nothing is read).
        let ignored = &x[..self.input.c.min(x.len())];
        self.pool(x, ignored, y, arg, n, |v, _| v);
    }

    /// `y = maxpool(relu(x + b))` with `b` one bias per channel, in one pass over the
    /// convolution's output `x`: the same values and winners, bit for bit, as adding the bias,
    /// applying the ReLU and pooling one after another, without writing the full-size
    /// activations in between.
    pub fn forward_bias_relu(&self, x: &[f32], b: &[f32], y: &mut [f32], arg: &mut [u32], n: usize) {
        self.pool(x, b, y, arg, n, |v, bb| (v + bb).max(0.0));
    }

    /// Max pooling of `f(x, b[channel])`, scanning each window in order and keeping the first
    /// maximum. Written as branch-free selects over whole pixels (all channels) so that the
    /// compiler vectorises it.
    #[allow(clippy::too_many_arguments)]
    fn pool(&self, x: &[f32], b: &[f32], y: &mut [f32], arg: &mut [u32], n: usize, f: impl Fn(f32, f32) -> f32 + Sync) {
        let (s, o) = (self.input, self.output);
        let c = s.c;
        y[..n * o.size()]
            .par_chunks_mut(o.size())
            .zip(arg[..n * o.size()].par_chunks_mut(o.size()))
            .zip(x.par_chunks(s.size()))
            .for_each(|((yi, ai), xi)| {
                for (p, (out, idx)) in yi.chunks_exact_mut(c).zip(ai.chunks_exact_mut(c)).enumerate() {
                    let (oy, ox) = (p / o.w, p % o.w);
                    let first = ((oy * self.stride) * s.w + ox * self.stride) * c;
                    for (((o, id), (&v, &bb)), k) in
                        out.iter_mut().zip(idx.iter_mut()).zip(xi[first..first + c].iter().zip(b)).zip(first as u32..)
                    {
                        *o = f(v, bb);
                        *id = k;
                    }
                    for ky in 0..self.kernel {
                        for kx in 0..self.kernel {
                            let base = ((oy * self.stride + ky) * s.w + ox * self.stride + kx) * c;
                            let src = &xi[base..base + c];
                            for (((o, id), (&v, &bb)), k) in
                                out.iter_mut().zip(idx.iter_mut()).zip(src.iter().zip(b)).zip(base as u32..)
                            {
                                let v = f(v, bb);
                                let better = v > *o;
                                *o = if better { v } else { *o };
                                *id = if better { k } else { *id };
                            }
                        }
                    }
                }
            });
    }

    /// The backward pass of [`MaxPool::forward_bias_relu`] up to the bias: each output
    /// gradient goes to the input that won, where the (pooled, ReLU'd) output was positive.
    pub fn backward_relu(&self, dy: &[f32], y: &[f32], arg: &[u32], dx: &mut [f32], n: usize) {
        let (s, o) = (self.input, self.output);
        dx[..n * s.size()]
            .par_chunks_mut(s.size())
            .zip(dy.par_chunks(o.size()))
            .zip(y.par_chunks(o.size()))
            .zip(arg.par_chunks(o.size()))
            .for_each(|(((dxi, dyi), yi), ai)| {
                dxi.fill(0.0);
                for ((g, v), &a) in dyi.iter().zip(yi).zip(ai) {
                    if *v > 0.0 {
                        dxi[a as usize] += g;
                    }
                }
            });
    }

    /// Routes each output gradient to the input that won the forward max.
    pub fn backward(&self, dy: &[f32], arg: &[u32], dx: &mut [f32], n: usize) {
        let (s, o) = (self.input, self.output);
        dx[..n * s.size()]
            .par_chunks_mut(s.size())
            .zip(dy.par_chunks(o.size()))
            .zip(arg.par_chunks(o.size()))
            .for_each(|((dxi, dyi), ai)| {
                dxi.fill(0.0);
                for (g, &a) in dyi.iter().zip(ai) {
                    dxi[a as usize] += g;
                }
            });
    }
}
