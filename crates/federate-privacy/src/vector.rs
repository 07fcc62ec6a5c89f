//! The noise of differential privacy on flat vectors, and clipping: pure functions that a
//! party (DP-SGD, update-level DP) and a server (central client-level DP) apply, and that
//! distributed noise under secure aggregation will apply to shares.
//!
//! Two sources of randomness: *seeded* noise draws floating-point values from ChaCha8
//! streams, one per block of [`NOISE_CHUNK`] coordinates, each seeded by the caller's
//! `chunk_seed(block)` (so a simulation is reproducible to the bit and the noise does not
//! depend on the thread count); *exact* noise takes its randomness from a ChaCha20 generator
//! seeded by the operating system and adds exact discrete noise on a grid: the value s is
//! rounded to γℤᵈ, integer noise from [`crate::sample`] is added, and the result scaled back
//! by γ. The grid is fine enough (γ = 10⁻³·C/√d for L2, 10⁻³·C/d for L1) that rounding moves
//! a neighbour's sum by at most 0.1 % of C more; a further 0.1 % of C is allowed for
//! floating-point error in the clipped sum, and the noise scale is raised by both so that
//! the configured σ (or ε₀) holds against the sensitivity with rounding and summation error:
//! the accounting is unchanged. A noise too large for 64-bit grid integers is an error, never
//! saturated. Released values are functions of exactly distributed integers, so the low-bit
//! leaks of floating-point samplers (Mironov 2012) do not apply.

use rand::{RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::PrivacyError;
use crate::sample::{discrete_gaussian, discrete_laplace};

/// Values of noise drawn per block (each block has its own stream, so the noise does not
/// depend on the thread count).
pub const NOISE_CHUNK: usize = 1 << 16;

/// The fraction of the sensitivity by which rounding to the exact-noise grid may move a
/// neighbour's sum.
pub const GRID_SLACK: f64 = 1e-3;

/// The fraction of the sensitivity allowed for floating-point error in a clipped sum
/// (per-example scaling and the f32 sum inside a piece of at most `batch_size` examples;
/// pieces are added in f64). docs/privacy.md states when this is a worst-case bound and when
/// an estimate.
pub const SUM_SLACK: f64 = 1e-3;

/// The noise's distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Gaussian, for L2 sensitivity; `scale` is its standard deviation.
    Gaussian,
    /// Laplace, for L1 sensitivity; `scale` is its scale b (standard deviation √2·b).
    Laplace,
}

/// A ChaCha20 generator seeded by the operating system.
pub fn os_rng() -> Result<ChaCha20Rng, PrivacyError> {
    ChaCha20Rng::try_from_rng(&mut rand::rngs::SysRng)
        .map_err(|e| PrivacyError::RandomSource(format!("the operating system's random source failed: {e}")))
}

/// Seeded floating-point noise: every value v becomes (v + scale·z)/divisor, z standard
/// Gaussian or Laplace from block `b`'s stream `chunk_seed(b)`.
pub fn seeded(values: &mut [f32], kind: Kind, scale: f32, divisor: f32, chunk_seed: impl Fn(u64) -> u64 + Sync) {
    values.par_chunks_mut(NOISE_CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut r = ChaCha8Rng::seed_from_u64(chunk_seed(c as u64));
        for v in chunk.iter_mut() {
            let z: f32 = match kind {
                Kind::Gaussian => StandardNormal.sample(&mut r),
                // Inverse CDF of the standard Laplace distribution.
                Kind::Laplace => {
                    let u: f32 = r.random::<f32>() - 0.5;
                    -u.signum() * (1.0 - 2.0 * u.abs()).max(f32::MIN_POSITIVE).ln()
                }
            };
            *v = (*v + scale * z) / divisor;
        }
    });
}

/// Seeded Gaussian noise of standard deviation `std`, computed in f64: v ← v + std·z.
pub fn seeded_gaussian_f64(values: &mut [f32], std: f64, chunk_seed: impl Fn(u64) -> u64 + Sync) {
    values.par_chunks_mut(NOISE_CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut r = ChaCha8Rng::seed_from_u64(chunk_seed(c as u64));
        for v in chunk.iter_mut() {
            let z: f64 = StandardNormal.sample(&mut r);
            *v = (*v as f64 + std * z) as f32;
        }
    });
}

/// Exact discrete noise of standard deviation (Gaussian) or scale (Laplace) `scale` for a
/// quantity of L2 (Gaussian) or L1 (Laplace) sensitivity `sensitivity`, on the grid γℤᵈ
/// with γ = GRID_SLACK·sensitivity/√d (L1: /d); the scale is raised by the grid's and the
/// sum's slack. Each value ends as (its grid point + noise)·γ / `divisor`.
pub fn exact(values: &mut [f32], kind: Kind, sensitivity: f64, scale: f64, divisor: f64) -> Result<(), PrivacyError> {
    let overflow = |what: String| {
        PrivacyError::Noise(format!(
            "exact noise: {what}; the noise (σ·clip) is too large relative to the grid for 64-bit integers: lower \
             privacy.noise_multiplier or use privacy.noise = \"seeded\""
        ))
    };
    let d = values.len().max(1) as f64;
    // Grid step, and the noise in grid units for the sensitivity C(1 + GRID_SLACK + SUM_SLACK).
    let gamma = match kind {
        Kind::Gaussian => GRID_SLACK * sensitivity / d.sqrt(),
        Kind::Laplace => GRID_SLACK * sensitivity / d,
    };
    let units = scale * (1.0 + GRID_SLACK + SUM_SLACK) / gamma;
    let param = match kind {
        Kind::Gaussian => (units * units).ceil(),
        Kind::Laplace => units.ceil(),
    };
    // Exactly representable and in range, or an error (never a saturated, smaller noise).
    if !(param.is_finite() && param < u64::MAX as f64) {
        return Err(overflow(format!("the noise parameter {param:e} in grid units does not fit 64 bits")));
    }
    let param = param as u64;
    let seeds: Vec<[u8; 32]> = {
        let mut os = os_rng()?;
        (0..values.len().div_ceil(NOISE_CHUNK)).map(|_| os.random()).collect()
    };
    values.par_chunks_mut(NOISE_CHUNK).zip(seeds).try_for_each(|(chunk, seed)| {
        let mut r = ChaCha20Rng::from_seed(seed);
        for v in chunk.iter_mut() {
            let g = (*v as f64 / gamma).round();
            if g.is_nan() || g.abs() >= (1u64 << 62) as f64 {
                return Err(overflow(format!("a clipped sum of {v} is {g:e} grid steps")));
            }
            let z = match kind {
                Kind::Gaussian => discrete_gaussian(&mut r, param),
                Kind::Laplace => discrete_laplace(&mut r, param),
            }
            .map_err(|e| overflow(e.to_string()))?;
            let k = (g as i64).checked_add(z).ok_or_else(|| overflow("grid point plus noise passes 2⁶³".into()))?;
            *v = (k as f64 * gamma / divisor) as f32;
        }
        Ok(())
    })
}

/// The L2 norm of `v`, summed in f64.
pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

/// Scales `v` down to L2 norm `max_norm` if it is longer; returns its norm before.
pub fn clip_l2(v: &mut [f32], max_norm: f64) -> f64 {
    let norm = l2_norm(v);
    let scale = if norm > max_norm { (max_norm / norm) as f32 } else { 1.0 };
    for x in v.iter_mut() {
        *x *= scale;
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (mean, (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt())
    }

    #[test]
    fn exact_noise_has_the_configured_scale_and_lies_on_the_grid() {
        let d = 200_000;
        // Gaussian: std σ·C·(1 + slack) around the (rounded) sum, divided by the divisor.
        let mut sum = vec![0.5f32; d];
        exact(&mut sum, Kind::Gaussian, 2.0, 1.5 * 2.0, 4.0).unwrap();
        let (mean, sd) = moments(&sum);
        assert!((mean - 0.125).abs() < 0.01, "{mean}");
        assert!((sd / (1.5 * 2.0 * (1.0 + GRID_SLACK + SUM_SLACK) / 4.0) - 1.0).abs() < 0.01, "{sd}");
        // Every value is an integer multiple of γ/divisor.
        let gamma = GRID_SLACK * 2.0 / (d as f64).sqrt() / 4.0;
        for &v in sum.iter().take(1000) {
            let k = v as f64 / gamma;
            assert!((k - k.round()).abs() < 1e-3 * k.abs().max(1.0), "{v} is not on the grid");
        }
        // Laplace of scale b: std √2·b.
        let mut sum = vec![0.0f32; d];
        exact(&mut sum, Kind::Laplace, 1.0, 2.0 / 0.5, 1.0).unwrap();
        let (_, sd) = moments(&sum);
        let want = 2f64.sqrt() * 2.0 / 0.5;
        assert!((sd / want - 1.0).abs() < 0.02, "{sd} vs {want}");
        // Two draws differ: the noise is not seeded.
        let (mut a, mut b) = (vec![0.0f32; 64], vec![0.0f32; 64]);
        exact(&mut a, Kind::Gaussian, 1.0, 1.0, 1.0).unwrap();
        exact(&mut b, Kind::Gaussian, 1.0, 1.0, 1.0).unwrap();
        assert_ne!(a, b);
        // Too much noise for the grid is an error, not a saturated draw.
        let e = exact(&mut a, Kind::Gaussian, 1e-30, 1e30, 1.0).unwrap_err().to_string();
        assert!(e.contains("64 bits"), "{e}");
    }

    #[test]
    fn seeded_noise_repeats_and_has_the_configured_scale() {
        let (mut a, mut b) = (vec![0.0f32; 100_000], vec![0.0f32; 100_000]);
        seeded(&mut a, Kind::Gaussian, 3.0, 2.0, |c| 7 + c);
        seeded(&mut b, Kind::Gaussian, 3.0, 2.0, |c| 7 + c);
        assert_eq!(a, b);
        let (_, sd) = moments(&a);
        assert!((sd / 1.5 - 1.0).abs() < 0.01, "{sd}");
        let mut c = vec![0.0f32; 100_000];
        seeded_gaussian_f64(&mut c, 0.5, |b| b);
        assert!((moments(&c).1 / 0.5 - 1.0).abs() < 0.01);
    }

    #[test]
    fn clipping_scales_long_vectors_only() {
        let mut v = vec![3.0f32, 4.0];
        assert_eq!(clip_l2(&mut v, 1.0), 5.0);
        assert!((l2_norm(&v) - 1.0).abs() < 1e-6);
        let mut w = vec![0.3f32, 0.4];
        clip_l2(&mut w, 1.0);
        assert_eq!(w, vec![0.3, 0.4]);
    }
}
