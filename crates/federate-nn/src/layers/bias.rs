//! Biases: adding one to every row of a layer's output, and its gradient, the sum of the
//! output gradient's rows.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::layers::{load, store};

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

/// `db = Σ_rows dy` (rows of `db.len()` values), each channel summed from zero in row order,
/// so the result is the same bit for bit on every instruction set and for any `threads`. In
/// SIMD with the sums held in registers, the channels split between up to `threads` threads:
/// a convolution's output gradient has a row per pixel (25,088 rows of 32 for the CNN's
/// conv1 at batch 32), and one thread loading and storing the sums for each row took ~5 % of
/// a training step while the other thread waited.
pub(crate) fn bias_grad(dy: &[f32], db: &mut [f32], threads: usize) {
    let c = db.len();
    let parts = threads.min(c / MIN_PART).max(1);
    if parts > 1 && dy.len() >= PARALLEL_FROM {
        let per = c.div_ceil(parts).next_multiple_of(MIN_PART);
        db.par_chunks_mut(per).enumerate().for_each(|(i, part)| {
            pulp::Arch::new().dispatch(BiasGrad { dy, db: part, first: i * per, c });
        });
    } else {
        pulp::Arch::new().dispatch(BiasGrad { dy, db, first: 0, c });
    }
}

/// The fewest channels a thread sums (the widest vector).
const MIN_PART: usize = 16;
/// The smallest output gradient worth splitting between threads.
const PARALLEL_FROM: usize = 1 << 16;

/// [`bias_grad`] of channels `first..first + db.len()` of rows of `c`, on one instruction set.
struct BiasGrad<'a> {
    dy: &'a [f32],
    db: &'a mut [f32],
    first: usize,
    c: usize,
}

impl WithSimd for BiasGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let BiasGrad { dy, db, first, c } = self;
        let (len, lanes) = (db.len(), S::F32_LANES);
        if c == 0 {
            return;
        }
        let mut b = 0;
        while b + 4 * lanes <= len {
            columns::<S, 4>(s, dy, &mut db[b..], first + b, c);
            b += 4 * lanes;
        }
        while b + 2 * lanes <= len {
            columns::<S, 2>(s, dy, &mut db[b..], first + b, c);
            b += 2 * lanes;
        }
        while b + lanes <= len {
            columns::<S, 1>(s, dy, &mut db[b..], first + b, c);
            b += lanes;
        }
        for (j, d) in db.iter_mut().enumerate().skip(b) {
            let mut sum = 0.0;
            for row in dy.chunks_exact(c) {
                sum += row[first + j];
            }
            *d = sum;
        }
    }
}

/// The sums of `NV` vectors of channels from channel `b` (rows `c` apart), into `db`'s start.
#[inline(always)]
fn columns<S: Simd, const NV: usize>(s: S, dy: &[f32], db: &mut [f32], b: usize, c: usize) {
    let lanes = S::F32_LANES;
    let mut acc = [s.splat_f32s(0.0); NV];
    for row in dy.chunks_exact(c) {
        let row = &row[b..b + NV * lanes];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = s.add_f32s(*a, load::<S>(&row[j * lanes..]));
        }
    }
    for (j, a) in acc.iter().enumerate() {
        store::<S>(&mut db[j * lanes..], *a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set gives the row-order sum bit for bit, whatever the channel count
    /// (whole vectors, leftover vectors, a scalar tail), −0.0 included.
    fn check<S: Simd>(s: S, name: &str) {
        for c in [1, 3, 10, 16, 32, 40, 64, 70, 512] {
            let rows = 37;
            let dy: Vec<f32> = (0..rows * c)
                .map(|i| if i % 7 == 0 { -0.0 } else { ((i * 7919 % 2003) as f32 - 1001.0) * 1e-3 })
                .collect();
            let mut want = vec![0.0f32; c];
            for row in dy.chunks_exact(c) {
                for (w, v) in want.iter_mut().zip(row) {
                    *w += v;
                }
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            // All channels, and the channels from 16 on (a second thread's share).
            let mut db = vec![f32::NAN; c];
            s.vectorize(BiasGrad { dy: &dy, db: &mut db, first: 0, c });
            assert_eq!(bits(&db), bits(&want), "{name}: {c} channels");
            if c > 16 {
                let mut part = vec![f32::NAN; c - 16];
                s.vectorize(BiasGrad { dy: &dy, db: &mut part, first: 16, c });
                assert_eq!(bits(&part), bits(&want[16..]), "{name}: channels 16.. of {c}");
            }
        }
    }

    #[test]
    fn each_instruction_set_sums_rows_in_order() {
        crate::each_instruction_set!(check);
    }

    /// Split between threads (in a pool of three), the sums are the one-thread sums bit for
    /// bit, whatever the channel count.
    #[test]
    fn threads_split_channels_without_changing_a_bit() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a pool");
        for c in [16, 32, 40, 64, 100, 512] {
            let dy: Vec<f32> =
                (0..(PARALLEL_FROM / c + 3) * c).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 1e-3).collect();
            let mut one = vec![f32::NAN; c];
            bias_grad(&dy, &mut one, 1);
            for threads in [2, 3] {
                let mut split = vec![f32::NAN; c];
                pool.install(|| bias_grad(&dy, &mut split, threads));
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&split), bits(&one), "{c} channels, {threads} threads");
            }
        }
    }
}
