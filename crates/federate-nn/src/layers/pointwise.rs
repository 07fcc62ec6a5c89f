//! Element-wise layers: ReLU and inverted dropout.

use rand::RngExt;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `y = max(x, 0)`.
pub(crate) fn relu_forward(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (o, i) in y.iter_mut().zip(x) {
            *o = i.max(0.0);
        }
    });
}

/// `dx = dy` where the output was positive, else 0.
pub(crate) fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK).zip(dy.par_chunks(CHUNK)).zip(y.par_chunks(CHUNK)).for_each(|((dx, dy), y)| {
        for ((d, g), o) in dx.iter_mut().zip(dy).zip(y) {
            *d = if *o > 0.0 { *g } else { 0.0 };
        }
    });
}

/// Training-time dropout: draws a mask of 0 or 1/(1−p) and applies it.
pub(crate) fn dropout_forward<R: rand::Rng>(p: f32, x: &[f32], y: &mut [f32], mask: &mut [f32], rng: &mut R) {
    let keep = 1.0 / (1.0 - p);
    for ((m, o), i) in mask.iter_mut().zip(y.iter_mut()).zip(x) {
        *m = if rng.random::<f32>() < p { 0.0 } else { keep };
        *o = i * *m;
    }
}

/// `dx = dy · mask`.
pub(crate) fn dropout_backward(mask: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((d, g), m) in dx.iter_mut().zip(dy).zip(mask) {
        *d = g * m;
    }
}
