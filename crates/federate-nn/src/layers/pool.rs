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
        let (s, o) = (self.input, self.output);
        let c = s.c;
        y[..n * o.size()]
            .par_chunks_mut(o.size())
            .zip(arg[..n * o.size()].par_chunks_mut(o.size()))
            .zip(x.par_chunks(s.size()))
            .for_each(|((yi, ai), xi)| {
                for oy in 0..o.h {
                    for ox in 0..o.w {
                        let out = &mut yi[(oy * o.w + ox) * c..][..c];
                        let idx = &mut ai[(oy * o.w + ox) * c..][..c];
                        let first = ((oy * self.stride) * s.w + ox * self.stride) * c;
                        out.copy_from_slice(&xi[first..first + c]);
                        for (ch, a) in idx.iter_mut().enumerate() {
                            *a = (first + ch) as u32;
                        }
                        for ky in 0..self.kernel {
                            for kx in 0..self.kernel {
                                let base = ((oy * self.stride + ky) * s.w + ox * self.stride + kx) * c;
                                let src = &xi[base..base + c];
                                for ch in 0..c {
                                    if src[ch] > out[ch] {
                                        out[ch] = src[ch];
                                        idx[ch] = (base + ch) as u32;
                                    }
                                }
                            }
                        }
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
