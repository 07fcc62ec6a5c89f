//! ε for a training run under either accountant, and the noise multiplier that reaches a
//! target ε.

use serde::{Deserialize, Serialize};

use crate::error::{PrivacyError, check, check_delta};
use crate::{pld, rdp};

/// Which accountant turns a run into (ε, δ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Accountant {
    /// Rényi DP over `dp_accounting`'s default orders (fast, slightly loose).
    Rdp,
    /// Privacy loss distributions composed by FFT (tight, slower).
    Pld,
}

/// ε(δ) of `steps` steps of the Poisson-subsampled Gaussian with rate `q` and noise
/// multiplier `sigma`.
pub fn epsilon(accountant: Accountant, q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check(q, sigma)?;
    check_delta(delta)?;
    match accountant {
        Accountant::Rdp => rdp::epsilon(q, sigma, steps, delta),
        Accountant::Pld => pld::epsilon(q, sigma, steps, delta),
    }
}

/// The smallest noise multiplier (to 0.1 %) whose run of `steps` steps at rate `q` stays
/// within `target` ε at `delta`. Fails when even σ = 1,000 does not reach it.
pub fn noise_multiplier_for_epsilon(
    accountant: Accountant,
    target: f64,
    q: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, PrivacyError> {
    if !(target > 0.0 && target.is_finite()) {
        return Err(PrivacyError::Epsilon(target));
    }
    check(q, 1.0)?;
    check_delta(delta)?;
    let eps = |s: f64| epsilon(accountant, q, s, steps, delta);
    let (mut lo, mut hi) = (0.5f64, 1.0f64);
    while eps(hi)? > target {
        lo = hi;
        hi *= 2.0;
        if hi > 1000.0 {
            return Err(PrivacyError::Unreachable(format!(
                "ε = {target} cannot be reached in {steps} steps at q = {q}, δ = {delta} even with σ = 1000: \
                 take fewer steps, a smaller sampling rate, or a larger ε"
            )));
        }
    }
    // Step down until ε passes the target; a σ too small for the accountant (PLD grids) is
    // treated as passing it.
    loop {
        match eps(lo) {
            Ok(e) if e <= target && lo > 0.02 => {
                hi = lo;
                lo /= 2.0;
            }
            Ok(e) if e <= target => return Ok(lo),
            Ok(_) | Err(PrivacyError::Unreachable(_)) => break,
            Err(e) => return Err(e),
        }
    }
    bisect(hi, lo, |s| match eps(s) {
        Ok(e) => Ok(e <= target),
        Err(PrivacyError::Unreachable(_)) => Ok(false),
        Err(e) => Err(e),
    })
}

/// Narrows [`good`, `bad`] (either order) to 0.1 % of the larger end by bisection, keeping
/// `good` on the side where `within` holds; returns that end.
pub(crate) fn bisect(
    mut good: f64,
    mut bad: f64,
    mut within: impl FnMut(f64) -> Result<bool, PrivacyError>,
) -> Result<f64, PrivacyError> {
    while (good - bad).abs() / good.max(bad) > 1e-3 {
        let mid = 0.5 * (good + bad);
        if within(mid)? { good = mid } else { bad = mid }
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_reaches_the_target() {
        let s = noise_multiplier_for_epsilon(Accountant::Rdp, 3.0, 0.01, 1000, 1e-5).unwrap();
        let e = epsilon(Accountant::Rdp, 0.01, s, 1000, 1e-5).unwrap();
        assert!(e <= 3.0 && e > 2.9, "σ = {s}: ε = {e}");
        assert!(matches!(
            noise_multiplier_for_epsilon(Accountant::Rdp, 1e-6, 1.0, 100_000, 1e-5),
            Err(PrivacyError::Unreachable(_))
        ));
        assert!(matches!(
            noise_multiplier_for_epsilon(Accountant::Rdp, -1.0, 0.1, 10, 1e-5),
            Err(PrivacyError::Epsilon(_))
        ));
    }
}
