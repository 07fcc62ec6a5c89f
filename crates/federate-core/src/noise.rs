//! DP noise in core's terms: the DP-SGD settings and noise source of a task turned into calls
//! of `federate_privacy::vector`, which holds the noise itself (seeded floating-point, or
//! exact discrete noise from the OS) as pure functions on flat vectors. The seeded streams
//! are core's named `seed::Stream`s, so simulations stay reproducible to the bit.

use federate_privacy::vector::{self, Kind};

use crate::messages::{DpSgd, LearnerError, Mechanism, NoiseSource};
use crate::seed::Stream;

fn kind(m: Mechanism) -> Kind {
    match m {
        Mechanism::Gaussian => Kind::Gaussian,
        Mechanism::Laplace => Kind::Laplace,
    }
}

fn nn(e: federate_privacy::PrivacyError) -> LearnerError {
    match e {
        federate_privacy::PrivacyError::RandomSource(m) => LearnerError::Unsupported(m),
        other => LearnerError::Setting(other.to_string()),
    }
}

/// A ChaCha20 generator seeded by the operating system.
pub(crate) fn os_rng() -> Result<rand_chacha::ChaCha20Rng, LearnerError> {
    vector::os_rng().map_err(nn)
}

/// DP-SGD's floating-point noise for step `step` from the task's noise seed, then the
/// average over the expected batch size.
pub(crate) fn add_float_noise(sum: &mut [f32], dp: &DpSgd, seed: u64, step: u64, expected: f32) {
    let chunk_seed = |c: u64| crate::seed::derive(seed, Stream::Noise, &[step, c]);
    vector::seeded(sum, kind(dp.mechanism), dp.noise_scale() as f32, expected, chunk_seed);
}

/// DP-SGD's exact discrete noise (from the OS), then the average over the expected batch
/// size.
pub(crate) fn add_exact_noise(sum: &mut [f32], dp: &DpSgd, expected: f32) -> Result<(), LearnerError> {
    vector::exact(sum, kind(dp.mechanism), dp.clip as f64, dp.noise_scale(), expected as f64).map_err(nn)
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
) -> Result<(), LearnerError> {
    if std <= 0.0 {
        return Ok(());
    }
    match source {
        NoiseSource::Seeded => {
            vector::seeded_gaussian_f64(values, std, |c| crate::seed::derive(seed, Stream::GaussianNoise, &[c]));
            Ok(())
        }
        NoiseSource::Secure => vector::exact(values, Kind::Gaussian, sensitivity, std, 1.0).map_err(nn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dp::tests::gaussian;

    #[test]
    fn dp_sgd_noise_scales_by_sigma_times_clip_over_the_batch() {
        // σ = 1.5 and C = 2 (dp::tests::gaussian): the noise has std σ·C / expected.
        let dp = gaussian(1.5);
        let want = dp.noise_scale() / 2.0;
        let mut a = vec![0.0f32; 100_000];
        add_float_noise(&mut a, &dp, 7, 3, 2.0);
        let sd = (a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!((sd / want - 1.0).abs() < 0.01, "{sd} vs {want}");
        let mut b = vec![0.0f32; 100_000];
        add_exact_noise(&mut b, &dp, 2.0).unwrap();
        let sd = (b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
        assert!((sd / want - 1.0).abs() < 0.02, "{sd} vs {want}");
    }
}
