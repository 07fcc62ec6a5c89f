//! Errors for privacy parameters out of range.

use thiserror::Error;

/// A privacy parameter out of range, or a target that cannot be met.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum PrivacyError {
    /// The noise multiplier must be positive.
    #[error("noise multiplier σ = {0} must be > 0")]
    Sigma(f64),
    /// The sampling rate must be in [0, 1].
    #[error("sampling rate q = {0} must be in [0, 1]")]
    SamplingRate(f64),
    /// δ must be in (0, 1).
    #[error("δ = {0} must be in (0, 1)")]
    Delta(f64),
    /// ε must be positive.
    #[error("ε = {0} must be > 0")]
    Epsilon(f64),
    /// An RDP order must exceed 1.
    #[error("RDP order {0} must be > 1")]
    Order(f64),
    /// The target cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The noise does not fit the exact-noise grid.
    #[error("{0}")]
    Noise(String),
    /// The operating system's random source failed.
    #[error("{0}")]
    RandomSource(String),
}

pub(crate) fn check(q: f64, sigma: f64) -> Result<(), PrivacyError> {
    if !(sigma > 0.0 && sigma.is_finite()) {
        return Err(PrivacyError::Sigma(sigma));
    }
    if !(0.0..=1.0).contains(&q) {
        return Err(PrivacyError::SamplingRate(q));
    }
    Ok(())
}

pub(crate) fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::Delta(delta));
    }
    Ok(())
}
