//! Matrix products for the layers, all through the `gemm` crate (no hand-written kernels).
//!
//! Every matrix here is row-major and dense. `matmul` covers the four transpose cases;
//! `matmul_tn_split` is the weight-gradient product `Aᵀ·B` whose inner dimension (batch ×
//! pixels) is long: gemm's own parallel mode splits only the output, which is small there,
//! so we split the inner dimension across threads ourselves (one single-thread product per
//! chunk, then a sum). Chunk boundaries depend only on the thread count, so results are
//! bit-identical from run to run with the same number of threads.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Operand orientation: stored as is, or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Use the matrix as stored.
    N,
    /// Use its transpose.
    T,
}

fn parallelism(threads: usize) -> Parallelism {
    if threads <= 1 { Parallelism::None } else { Parallelism::Rayon(threads) }
}

/// `c (m×n) = [c +] scale · op(a) · op(b)` where `op(a)` is m×k and `op(b)` is k×n.
/// With `Op::N`, `a` is stored m×k; with `Op::T`, k×m (likewise `b`: k×n or n×k).
/// `threads` is how many threads gemm may use (1 = this thread only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    a: &[f32],
    ta: Op,
    b: &[f32],
    tb: Op,
    accumulate: bool,
    scale: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "matmul: c has {} values, needs {}", c.len(), m * n);
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    assert!(a.len() >= m * k, "matmul: a has {} values, needs {}", a.len(), m * k);
    assert!(b.len() >= k * n, "matmul: b has {} values, needs {}", b.len(), k * n);
    // gemm is column-major at heart: it reads a column-major left operand without packing
    // and writes a column-major destination directly. A row-major c is a column-major cᵀ,
    // so we ask for cᵀ (n×m) = op(b)ᵀ · op(a)ᵀ.
    // lhs'(j, l) = op(b)(l, j); rhs'(l, i) = op(a)(i, l).
    let (l_rs, l_cs) = match tb {
        Op::N => (1, n as isize),
        Op::T => (k as isize, 1),
    };
    let (r_rs, r_cs) = match ta {
        Op::N => (1, k as isize),
        Op::T => (m as isize, 1),
    };
    // SAFETY: the asserts above guarantee that every element gemm touches lies inside its
    // slice: dst(j, i) = c[i·n + j] with j < n, i < m is inside c[..m·n]; lhs'(j, l) reads
    // b at l·n + j (N) or j·k + l (T), inside b[..k·n]; rhs'(l, i) reads a at i·k + l (N)
    // or l·m + i (T), inside a[..m·k]. `c` is a unique borrow, so it aliases neither.
    unsafe {
        gemm(
            n,
            m,
            k,
            c.as_mut_ptr(),
            n as isize,
            1,
            accumulate,
            b.as_ptr(),
            l_cs,
            l_rs,
            a.as_ptr(),
            r_cs,
            r_rs,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// `c (m×n) = aᵀ · b` with `a` stored k×m and `b` stored k×n, where k is long.
/// Splits k into `threads` chunks; `partial` must hold `(threads − 1)·m·n` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_tn_split(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    partial: &mut [f32],
    threads: usize,
) {
    let chunks = threads.max(1).min(k.max(1));
    if chunks == 1 || partial.len() < (chunks - 1) * m * n {
        matmul(m, n, k, c, a, Op::T, b, Op::N, false, 1.0, threads);
        return;
    }
    let per = k.div_ceil(chunks);
    let mn = m * n;
    let mut outs: Vec<&mut [f32]> = Vec::with_capacity(chunks);
    outs.push(&mut c[..mn]);
    outs.extend(partial[..(chunks - 1) * mn].chunks_mut(mn));
    outs.into_par_iter().enumerate().for_each(|(t, out)| {
        let lo = (t * per).min(k);
        let hi = ((t + 1) * per).min(k);
        matmul(m, n, hi - lo, out, &a[lo * m..hi * m], Op::T, &b[lo * n..hi * n], Op::N, false, 1.0, 1);
    });
    add_partials(&mut c[..mn], partial, chunks - 1);
}

/// `c += partial[0] + partial[1] + …` for the first `count` blocks of `c.len()` values in
/// `partial`, added in that order (in parallel over `c`).
pub(crate) fn add_partials(c: &mut [f32], partial: &[f32], count: usize) {
    let len = c.len();
    if count == 0 {
        return;
    }
    c.par_chunks_mut(4096).enumerate().for_each(|(i, dst)| {
        let off = i * 4096;
        for t in 0..count {
            let src = &partial[t * len + off..t * len + off + dst.len()];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
    });
}

/// Measures the matrix-multiply rate (GFLOP/s) with `threads` threads on square products of
/// side `n`, best of `reps`. Used to express training speed as a fraction of the machine's
/// arithmetic floor.
pub fn measure_gemm_gflops(n: usize, threads: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; n * n];
    matmul(n, n, n, &mut c, &a, Op::N, &b, Op::N, false, 1.0, threads);
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        matmul(n, n, n, &mut c, &a, Op::N, &b, Op::N, false, 1.0, threads);
        let s = t.elapsed().as_secs_f64();
        best = best.max(2.0 * (n * n * n) as f64 / s / 1e9);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: Op, b: &[f32], tb: Op) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for l in 0..k {
                    let av = if ta == Op::N { a[i * k + l] } else { a[l * m + i] };
                    let bv = if tb == Op::N { b[l * n + j] } else { b[j * k + l] };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn all_orientations_match_naive() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0).collect();
        for ta in [Op::N, Op::T] {
            for tb in [Op::N, Op::T] {
                let want = naive(m, n, k, &a, ta, &b, tb);
                let mut c = vec![1.0; m * n];
                matmul(m, n, k, &mut c, &a, ta, &b, tb, false, 1.0, 1);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "{ta:?}{tb:?}: {x} vs {y}");
                }
                matmul(m, n, k, &mut c, &a, ta, &b, tb, true, 2.0, 2);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 3.0 * y).abs() < 1e-3);
                }
            }
        }
    }

    #[test]
    fn split_product_matches() {
        let (m, n, k) = (6, 4, 1001);
        let a: Vec<f32> = (0..k * m).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 3 % 5) as f32 - 2.0) / 4.0).collect();
        let want = naive(m, n, k, &a, Op::T, &b, Op::N);
        let mut c = vec![0.0; m * n];
        let mut partial = vec![0.0; 2 * m * n];
        matmul_tn_split(m, n, k, &mut c, &a, &b, &mut partial, 3);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-3, "{x} vs {y}");
        }
    }
}
