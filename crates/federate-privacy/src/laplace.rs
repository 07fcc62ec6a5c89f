//! Accounting for DP-SGD with the Laplace mechanism (the design document's `train_with_dp`):
//! each step releases the L1-clipped sum plus Laplace noise of scale C₁/ε₀, which is ε₀-DP
//! for one step; Poisson sampling at rate q amplifies that to ε' = ln(1 + q(e^ε₀ − 1))
//! (Balle et al. 2018). Over T steps we report the better of pure composition (T·ε', δ = 0)
//! and the advanced composition theorem (Dwork, Rothblum & Vadhan 2010):
//! ε = ε'·√(2T·ln(1/δ)) + T·ε'(e^ε' − 1).

use crate::error::{PrivacyError, check_delta};

/// ε of one subsampled step: ln(1 + q(e^ε₀ − 1)).
pub fn amplified(q: f64, eps_step: f64) -> Result<f64, PrivacyError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(PrivacyError::SamplingRate(q));
    }
    if !(eps_step > 0.0 && eps_step.is_finite()) {
        return Err(PrivacyError::Epsilon(eps_step));
    }
    Ok((q * eps_step.exp_m1()).ln_1p())
}

/// Pure ε after `steps` steps (δ = 0).
pub fn epsilon_pure(q: f64, eps_step: f64, steps: u64) -> Result<f64, PrivacyError> {
    Ok(amplified(q, eps_step)? * steps as f64)
}

/// ε(δ) after `steps` steps: the smaller of pure and advanced composition.
pub fn epsilon(q: f64, eps_step: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    let e = amplified(q, eps_step)?;
    let t = steps as f64;
    let advanced = e * (2.0 * t * (1.0 / delta).ln()).sqrt() + t * e * e.exp_m1();
    Ok((t * e).min(advanced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cases() {
        // No subsampling, one step: the mechanism's own ε.
        assert!((epsilon_pure(1.0, 0.5, 1).unwrap() - 0.5).abs() < 1e-12);
        // Amplification: q = 0.01, ε₀ = 1 → ln(1 + 0.01(e − 1)) = 0.017036…
        assert!((amplified(0.01, 1.0).unwrap() - 0.017_036_1).abs() < 1e-6);
        // Many steps: advanced composition beats pure.
        let pure = epsilon_pure(0.01, 1.0, 10_000).unwrap();
        let adv = epsilon(0.01, 1.0, 10_000, 1e-5).unwrap();
        assert!(adv < pure, "{adv} vs {pure}");
        // Few steps: pure is better and is reported.
        assert_eq!(epsilon(0.01, 1.0, 3, 1e-5).unwrap(), epsilon_pure(0.01, 1.0, 3).unwrap());
        assert!(epsilon(0.01, 0.0, 3, 1e-5).is_err());
        assert!(epsilon(0.01, 1.0, 3, 0.0).is_err());
    }
}
