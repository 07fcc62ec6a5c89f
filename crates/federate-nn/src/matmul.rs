//! Matrix products for the layers, through the `gemm` crate, except one: a dense layer's
//! input gradient at training batch sizes, which gemm serves badly (see `matmul_nt_dots`:
//! dot products with pulp's SIMD, the runtime-dispatched layer gemm itself is built on).
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

/// `c (m×n) = a · bᵀ` with `a` stored m×k and `b` stored n×k: every value is the dot product
/// of a row of `a` and a row of `b`, both contiguous. A dense layer's input gradient
/// `dy·Wᵀ` has this form with W (inputs × outputs) as `b`; gemm has to repack all of W
/// transposed for it, which costs more than the arithmetic at training batch sizes (W is
/// 6.4 MB for the CNN's fc1, and only 10–64 rows of `a`). Here each thread takes a share of
/// `b`'s rows, streams them four at a time against every row of `a` and forms the dot
/// products with pulp's SIMD (AVX2 or AVX-512 chosen at run time): `b` is read once, nothing
/// is packed. Each value is summed in one fixed order, whatever the thread count.
pub(crate) fn matmul_nt_dots(m: usize, n: usize, k: usize, c: &mut [f32], a: &[f32], b: &[f32], threads: usize) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= n * k, "matmul_nt_dots: operands too short");
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // Threads split `b`'s rows, so each reads its share of `b` (the large operand) once, and
    // writes the matching columns of `c`: a segment of every row.
    let per = n.div_ceil(threads.clamp(1, n)).next_multiple_of(4);
    let groups = n.div_ceil(per);
    let mut segments: Vec<Vec<&mut [f32]>> = (0..groups).map(|_| Vec::with_capacity(m)).collect();
    for row in c[..m * n].chunks_exact_mut(n) {
        let mut rest = row;
        for g in &mut segments {
            let (head, tail) = rest.split_at_mut(per.min(rest.len()));
            g.push(head);
            rest = tail;
        }
    }
    let a = &a[..m * k];
    segments.into_par_iter().zip(b[..n * k].par_chunks(per * k)).for_each(|(c, b)| {
        pulp::Arch::new().dispatch(Dots { c, a, b, k });
    });
}

/// One thread's share of [`matmul_nt_dots`]: its rows of `b` against every row of `a`, into
/// the matching segment of each row of `c`.
struct Dots<'a, 'c> {
    c: Vec<&'c mut [f32]>,
    a: &'a [f32],
    b: &'a [f32],
    k: usize,
}

impl pulp::WithSimd for Dots<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Dots { mut c, a, b, k } = self;
        let (m, n) = (c.len(), b.len() / k);
        // Four rows of `b` at a time (8 KB for k = 512, in L1), against every row of `a`,
        // two at a time (they share the loads of `b`'s four).
        for j0 in (0..n).step_by(4) {
            let width = (n - j0).min(4);
            let bs: [&[f32]; 4] = std::array::from_fn(|t| &b[(j0 + t.min(width - 1)) * k..][..k]);
            for i0 in (0..m).step_by(2) {
                let pair = (i0 + 1 < m) as usize;
                let a0 = &a[i0 * k..][..k];
                let a1 = &a[(i0 + pair) * k..][..k];
                let sums = dot2x4(simd, [a0, a1], bs);
                for (row, s) in c[i0..=i0 + pair].iter_mut().zip(sums) {
                    // Four values in one move where all four lie in the row (a copy of a
                    // length unknown at compile time is a call to memmove).
                    match row.get_mut(j0..j0 + 4) {
                        Some(dst) => dst.copy_from_slice(&s),
                        None => row[j0..j0 + width].copy_from_slice(&s[..width]),
                    }
                }
            }
        }
    }
}

/// The dot products of each of `xs` with each of `ys` (all of one length): SIMD lanes in
/// order, then the lanes summed, then the tail.
#[inline(always)]
fn dot2x4<S: pulp::Simd>(simd: S, xs: [&[f32]; 2], ys: [&[f32]; 4]) -> [[f32; 4]; 2] {
    let [(x0, xt0), (x1, xt1)] = xs.map(|x| S::as_simd_f32s(x));
    let [(h0, t0), (h1, t1), (h2, t2), (h3, t3)] = ys.map(|y| S::as_simd_f32s(y));
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; 4]; 2];
    for (((((u, w), v0), v1), v2), v3) in x0.iter().zip(x1).zip(h0).zip(h1).zip(h2).zip(h3) {
        for (a, x) in acc.iter_mut().zip([*u, *w]) {
            a[0] = simd.mul_add_e_f32s(x, *v0, a[0]);
            a[1] = simd.mul_add_e_f32s(x, *v1, a[1]);
            a[2] = simd.mul_add_e_f32s(x, *v2, a[2]);
            a[3] = simd.mul_add_e_f32s(x, *v3, a[3]);
        }
    }
    let tail = |x: &[f32], t: &[f32]| x.iter().zip(t).map(|(p, q)| p * q).sum::<f32>();
    let mut out = [[0.0f32; 4]; 2];
    for ((o, a), xt) in out.iter_mut().zip(acc).zip([xt0, xt1]) {
        for ((o, a), t) in o.iter_mut().zip(a).zip([t0, t1, t2, t3]) {
            *o = simd.reduce_sum_f32s(a) + tail(xt, t);
        }
    }
    out
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

    /// Operands `a` (m×k) and `b` (n×k) of the dot-product form, with varied values.
    fn nt_operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..m * k).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let b = (0..n * k).map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0).collect();
        (a, b)
    }

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

    /// The dot-product form equals the naive product, and is the same bit for bit whatever
    /// the thread count: odd row counts (a lone last row of `a`), `b` rows not a multiple of
    /// four, lengths with and without a SIMD tail, and an empty inner dimension.
    #[test]
    fn dot_products_match_naive_for_any_thread_count() {
        for (m, n, k) in [(1, 1, 1), (7, 5, 9), (10, 13, 512), (3, 4, 35), (33, 70, 100), (4, 6, 0)] {
            let (a, b) = nt_operands(m, n, k);
            let want = naive(m, n, k, &a, Op::N, &b, Op::T);
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = vec![f32::NAN; m * n];
                pool.install(|| matmul_nt_dots(m, n, k, &mut c, &a, &b, threads));
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{m}x{n}x{k}, {threads} threads: {x} vs {y}");
                }
                match &first {
                    Some(f) => assert!(
                        f.iter().zip(&c).all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{m}x{n}x{k}: {threads} threads"
                    ),
                    None => first = Some(c),
                }
            }
        }
    }

    /// Every instruction set the dispatch may pick on x86 (the reference machines have AVX2
    /// only) gives the product, not only the one this machine picks.
    #[test]
    fn dot_products_on_each_instruction_set() {
        use pulp::Simd;
        let (m, n, k) = (5, 9, 77);
        let (a, b) = nt_operands(m, n, k);
        let want = naive(m, n, k, &a, Op::N, &b, Op::T);
        let check = |name: &str, run: &dyn Fn(Dots<'_, '_>)| {
            let mut c = vec![f32::NAN; m * n];
            run(Dots { c: c.chunks_exact_mut(n).collect(), a: &a, b: &b, k });
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{name}: {x} vs {y}");
            }
        };
        check("scalar", &|d| Simd::vectorize(pulp::Scalar::new(), d));
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(simd) = pulp::x86::V3::try_new() {
                check("AVX2", &|d| Simd::vectorize(simd, d));
            }
            if let Some(simd) = pulp::x86::V4::try_new() {
                check("AVX-512", &|d| Simd::vectorize(simd, d));
            }
        }
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
