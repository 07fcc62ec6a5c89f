//! The noise of differential privacy on flat vectors, from one of two sources
//! ([`NoiseSource`]): `Seeded` draws floating-point noise from ChaCha streams derived from
//! the task seed, so simulations are reproducible to the bit; `Secure` (what `federate join`
//! uses) takes its randomness from a ChaCha20 generator seeded by the operating system, and
//! adds exact discrete noise on a grid: the value s is rounded to γℤᵈ, integer noise from
//! `federate_privacy::sample` is added, and the result scaled back by γ. The grid is fine
//! enough (γ = 10⁻³·C/√d for L2, 10⁻³·C/d for L1) that rounding moves a neighbour's sum by
//! at most 0.1 % of C more; a further 0.1 % of C is allowed for floating-point error in the
//! clipped sum, and the noise scale is raised by both so that the configured σ (or ε₀)
//! holds against the sensitivity with rounding and summation error: the accounting is
//! unchanged. A noise too large for 64-bit grid integers is an error, never saturated.
//! Released values are functions of exactly distributed integers, so the low-bit leaks of
//! floating-point samplers (Mironov 2012) do not apply.

use federate_nn::NnError;
use federate_privacy::sample::{discrete_gaussian, discrete_laplace};
use rand::{RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::messages::{DpSgd, Mechanism, NoiseSource};
use crate::seed::Stream;

/// Values of noise drawn per parallel chunk (each chunk has its own derived stream, so the
/// noise does not depend on the thread count).
const NOISE_CHUNK: usize = 1 << 16;

/// The fraction of the clipping norm by which rounding to the secure-noise grid may move a
/// neighbour's sum.
const GRID_SLACK: f64 = 1e-3;

/// The fraction of the clipping norm allowed for floating-point error in the clipped sum
/// (per-example scaling and the f32 sum inside a piece of at most `batch_size` examples;
/// pieces are added in f64). docs/privacy.md states when this is a worst-case bound and when
/// an estimate.
const SUM_SLACK: f64 = 1e-3;

/// A ChaCha20 generator seeded by the operating system.
pub(crate) fn os_rng() -> Result<ChaCha20Rng, NnError> {
    ChaCha20Rng::try_from_rng(&mut rand::rngs::SysRng)
        .map_err(|e| NnError::BadHyperParameter(format!("the operating system's random source failed: {e}")))
}

/// Floating-point noise from seeded per-chunk streams, then the average over the expected
/// batch size.
pub(crate) fn add_float_noise(sum: &mut [f32], dp: &DpSgd, seed: u64, step: u64, expected: f32) {
    let scale = dp.noise_scale() as f32;
    sum.par_chunks_mut(NOISE_CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut r = ChaCha8Rng::seed_from_u64(crate::seed::derive(seed, Stream::Noise, &[step, c as u64]));
        for v in chunk.iter_mut() {
            let z: f32 = match dp.mechanism {
                Mechanism::Gaussian => StandardNormal.sample(&mut r),
                // Inverse CDF of the standard Laplace distribution.
                Mechanism::Laplace => {
                    let u: f32 = r.random::<f32>() - 0.5;
                    -u.signum() * (1.0 - 2.0 * u.abs()).max(f32::MIN_POSITIVE).ln()
                }
            };
            *v = (*v + scale * z) / expected;
        }
    });
}

/// Exact discrete noise on the grid γℤᵈ from OS-seeded ChaCha20 streams (one per chunk),
/// then the average over the expected batch size.
pub(crate) fn add_exact_noise(sum: &mut [f32], dp: &DpSgd, expected: f32) -> Result<(), NnError> {
    exact_noise(sum, dp.mechanism, dp.clip as f64, dp.noise_scale(), expected as f64)
}

/// Exact discrete noise of standard deviation (Gaussian) or scale (Laplace) `scale` for a
/// quantity of L2 (Gaussian) or L1 (Laplace) sensitivity `sensitivity`, on the grid γℤᵈ
/// with γ = GRID_SLACK·sensitivity/√d (L1: /d); the scale is raised by the grid's slack.
/// Each value ends as (its grid point + noise)·γ / `divisor`.
fn exact_noise(
    sum: &mut [f32],
    mechanism: Mechanism,
    sensitivity: f64,
    scale: f64,
    divisor: f64,
) -> Result<(), NnError> {
    let overflow = |what: String| {
        NnError::BadHyperParameter(format!(
            "exact noise: {what}; the noise (σ·clip) is too large relative to the grid for 64-bit integers: lower \
             privacy.noise_multiplier or use privacy.noise = \"seeded\""
        ))
    };
    let d = sum.len().max(1) as f64;
    // Grid step, and the noise in grid units for the sensitivity C(1 + GRID_SLACK + SUM_SLACK).
    let gamma = match mechanism {
        Mechanism::Gaussian => GRID_SLACK * sensitivity / d.sqrt(),
        Mechanism::Laplace => GRID_SLACK * sensitivity / d,
    };
    let units = scale * (1.0 + GRID_SLACK + SUM_SLACK) / gamma;
    let param = match mechanism {
        Mechanism::Gaussian => (units * units).ceil(),
        Mechanism::Laplace => units.ceil(),
    };
    // Exactly representable and in range, or an error (never a saturated, smaller noise).
    if !(param.is_finite() && param < u64::MAX as f64) {
        return Err(overflow(format!("the noise parameter {param:e} in grid units does not fit 64 bits")));
    }
    let param = param as u64;
    let seeds: Vec<[u8; 32]> = {
        let mut os = os_rng()?;
        (0..sum.len().div_ceil(NOISE_CHUNK)).map(|_| os.random()).collect()
    };
    sum.par_chunks_mut(NOISE_CHUNK).zip(seeds).try_for_each(|(chunk, seed)| {
        let mut r = ChaCha20Rng::from_seed(seed);
        for v in chunk.iter_mut() {
            let g = (*v as f64 / gamma).round();
            if g.is_nan() || g.abs() >= (1u64 << 62) as f64 {
                return Err(overflow(format!("a clipped sum of {v} is {g:e} grid steps")));
            }
            let z = match mechanism {
                Mechanism::Gaussian => discrete_gaussian(&mut r, param),
                Mechanism::Laplace => discrete_laplace(&mut r, param),
            }
            .map_err(|e| overflow(e.to_string()))?;
            let k = (g as i64).checked_add(z).ok_or_else(|| overflow("grid point plus noise passes 2⁶³".into()))?;
            *v = (k as f64 * gamma / divisor) as f32;
        }
        Ok(())
    })
}

/// Adds Gaussian noise of standard deviation `std` to every value, for a quantity whose L2
/// sensitivity is `sensitivity`: seeded floating-point noise from `seed`, or (secure) exact
/// discrete Gaussian noise on the grid γℤᵈ with γ = 10⁻³·sensitivity/√d and the standard
/// deviation raised by the grid and summation slack (0.2 %), as in DP-SGD.
pub fn gaussian_noise(
    values: &mut [f32],
    sensitivity: f64,
    std: f64,
    source: NoiseSource,
    seed: u64,
) -> Result<(), NnError> {
    if std <= 0.0 {
        return Ok(());
    }
    match source {
        NoiseSource::Seeded => {
            values.par_chunks_mut(NOISE_CHUNK).enumerate().for_each(|(c, chunk)| {
                let mut r = ChaCha8Rng::seed_from_u64(crate::seed::derive(seed, Stream::GaussianNoise, &[c as u64]));
                for v in chunk.iter_mut() {
                    let z: f64 = StandardNormal.sample(&mut r);
                    *v = (*v as f64 + std * z) as f32;
                }
            });
            Ok(())
        }
        NoiseSource::Secure => exact_noise(values, Mechanism::Gaussian, sensitivity, std, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dp::tests::gaussian;

    fn moments(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (mean, (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt())
    }

    #[test]
    fn exact_noise_has_the_configured_scale_and_lies_on_the_grid() {
        let d = 200_000;
        // Gaussian: std σ·C·(1 + slack) around the (rounded) sum, divided by the batch size.
        let mut sum = vec![0.5f32; d];
        add_exact_noise(&mut sum, &gaussian(1.5), 4.0).unwrap();
        let (mean, sd) = moments(&sum);
        assert!((mean - 0.125).abs() < 0.01, "{mean}");
        assert!((sd / (1.5 * 2.0 * (1.0 + GRID_SLACK + SUM_SLACK) / 4.0) - 1.0).abs() < 0.01, "{sd}");
        // Every value is an integer multiple of γ/expected.
        let gamma = GRID_SLACK * 2.0 / (d as f64).sqrt() / 4.0;
        for &v in sum.iter().take(1000) {
            let k = v as f64 / gamma;
            assert!((k - k.round()).abs() < 1e-3 * k.abs().max(1.0), "{v} is not on the grid");
        }
        // Laplace: std √2·C/ε₀.
        let mut sum = vec![0.0f32; d];
        let lap = DpSgd { mechanism: Mechanism::Laplace, epsilon_per_step: Some(0.5), ..gaussian(1.0) };
        add_exact_noise(&mut sum, &lap, 1.0).unwrap();
        let (_, sd) = moments(&sum);
        let want = 2f64.sqrt() * 2.0 / 0.5;
        assert!((sd / want - 1.0).abs() < 0.02, "{sd} vs {want}");
        // Two draws differ: the noise is not seeded.
        let (mut a, mut b) = (vec![0.0f32; 64], vec![0.0f32; 64]);
        add_exact_noise(&mut a, &gaussian(1.0), 1.0).unwrap();
        add_exact_noise(&mut b, &gaussian(1.0), 1.0).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn seeded_noise_repeats_and_has_the_configured_scale() {
        let (mut a, mut b) = (vec![0.0f32; 100_000], vec![0.0f32; 100_000]);
        add_float_noise(&mut a, &gaussian(1.5), 7, 3, 2.0);
        add_float_noise(&mut b, &gaussian(1.5), 7, 3, 2.0);
        assert_eq!(a, b);
        let (_, sd) = moments(&a);
        assert!((sd / (1.5 * 2.0 / 2.0) - 1.0).abs() < 0.01, "{sd}");
    }
}
