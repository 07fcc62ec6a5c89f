//! Accounting for DP-SGD with the Laplace mechanism (the design document's `train_with_dp`):
//! each step releases the L1-clipped sum plus Laplace noise of scale C₁/ε₀, which is ε₀-DP
//! for one step. Three accountings, from loosest to tightest:
//!
//! - composition theorems: Poisson sampling at rate q amplifies one step to
//!   ε' = ln(1 + q(e^ε₀ − 1)) (Balle et al. 2018); over T steps the better of pure
//!   composition (T·ε', δ = 0) and advanced composition (Dwork, Rothblum & Vadhan 2010),
//!   ε = ε'·√(2T·ln(1/δ)) + T·ε'(e^ε' − 1) — what the design document's analysis gives;
//! - RDP: the Laplace mechanism's exact Rényi DP (Mironov 2017, Prop. 6) through the
//!   Poisson-subsampling bound of Zhu & Wang 2019 (Thm. 6) at integer orders, converted to
//!   (ε, δ) like the Gaussian's; the better of this and the composition theorems is reported;
//! - PLD: the subsampled Laplace's privacy loss distribution composed by FFT
//!   (`pld::laplace_epsilon`), tight up to the discretisation.

use crate::calibrate::Accountant;
use crate::error::{PrivacyError, check_delta};
use crate::math::{ln_gamma, log_add};
use crate::rdp::{default_orders, epsilon_from_rdp};

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
pub fn epsilon_composition(q: f64, eps_step: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    let e = amplified(q, eps_step)?;
    let t = steps as f64;
    let advanced = e * (2.0 * t * (1.0 / delta).ln()).sqrt() + t * e * e.exp_m1();
    Ok((t * e).min(advanced))
}

/// RDP at integer order `alpha` ≥ 2 of the (unsampled) Laplace mechanism with ε₀ = 1/b:
/// ε₀ + ln(1 + (α−1)(e^{ε₀(1−2α)} − 1)/(2α−1)) / (α−1).
fn laplace_rdp(eps_step: f64, alpha: f64) -> f64 {
    eps_step + ((alpha - 1.0) * (eps_step * (1.0 - 2.0 * alpha)).exp_m1() / (2.0 * alpha - 1.0)).ln_1p() / (alpha - 1.0)
}

/// RDP at integer order `alpha` of one Poisson-subsampled Laplace step (Zhu & Wang 2019,
/// Theorem 6): (1/(α−1))·ln[(1−q)^{α−1}(αq − q + 1) + C(α,2)q²(1−q)^{α−2}e^{ε(2)}
/// + 3 Σ_{l=3}^{α} C(α,l)(1−q)^{α−l} q^l e^{(l−1)ε(l)}].
pub fn rdp_step(q: f64, eps_step: f64, alpha: u64) -> Result<f64, PrivacyError> {
    amplified(q, eps_step)?;
    if alpha < 2 {
        return Err(PrivacyError::Order(alpha as f64));
    }
    if q == 0.0 {
        return Ok(0.0);
    }
    let a = alpha as f64;
    if q == 1.0 {
        return Ok(laplace_rdp(eps_step, a));
    }
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let log_binom = |l: f64| ln_gamma(a + 1.0) - ln_gamma(l + 1.0) - ln_gamma(a - l + 1.0);
    let mut total = (a - 1.0) * l1q + (a * q - q + 1.0).ln();
    total = log_add(total, log_binom(2.0) + 2.0 * lq + (a - 2.0) * l1q + laplace_rdp(eps_step, 2.0));
    for l in 3..=alpha {
        let l = l as f64;
        let t = 3f64.ln() + log_binom(l) + (a - l) * l1q + l * lq + (l - 1.0) * laplace_rdp(eps_step, l);
        total = log_add(total, t);
    }
    // The pure bound ε(∞) = amplified ε₀ holds at every order too.
    Ok((total / (a - 1.0)).min(amplified(q, eps_step)?))
}

/// ε(δ) after `steps` steps by RDP over the integer default orders.
pub fn epsilon_rdp(q: f64, eps_step: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    let orders: Vec<f64> = default_orders().into_iter().filter(|a| a.fract() == 0.0 && *a >= 2.0).collect();
    let rdp: Vec<f64> =
        orders.iter().map(|&a| rdp_step(q, eps_step, a as u64).map(|r| r * steps as f64)).collect::<Result<_, _>>()?;
    Ok(epsilon_from_rdp(&orders, &rdp, delta)?.0)
}

/// ε(δ) of `steps` steps of Poisson-subsampled Laplace DP-SGD under `accountant`: RDP
/// (the better of RDP and the composition theorems) or PLD.
pub fn epsilon(accountant: Accountant, q: f64, eps_step: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    match accountant {
        Accountant::Rdp => {
            Ok(epsilon_rdp(q, eps_step, steps, delta)?.min(epsilon_composition(q, eps_step, steps, delta)?))
        }
        Accountant::Pld => crate::pld::laplace_epsilon(q, eps_step, steps, delta),
    }
}

/// The largest ε₀ per step (to 0.1 %) whose run of `steps` steps at rate `q` stays within
/// `target` ε at `delta`.
pub fn epsilon_per_step_for_epsilon(
    accountant: Accountant,
    target: f64,
    q: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, PrivacyError> {
    if !(target > 0.0 && target.is_finite()) {
        return Err(PrivacyError::Epsilon(target));
    }
    check_delta(delta)?;
    let eps = |e0: f64| epsilon(accountant, q, e0, steps, delta);
    let (mut lo, mut hi) = (1e-3f64, 1.0f64);
    if eps(lo)? > target {
        return Err(PrivacyError::Unreachable(format!(
            "ε = {target} cannot be reached in {steps} steps at q = {q}, δ = {delta} even with ε₀ = 0.001 per step: \
             take fewer steps, a smaller sampling rate, or a larger ε"
        )));
    }
    while eps(hi)? <= target {
        lo = hi;
        hi *= 2.0;
        if hi > 100.0 {
            return Ok(lo);
        }
    }
    crate::calibrate::bisect(lo, hi, |e0| Ok(eps(e0)? <= target))
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
        let adv = epsilon_composition(0.01, 1.0, 10_000, 1e-5).unwrap();
        assert!(adv < pure, "{adv} vs {pure}");
        // Few steps: pure is better and is reported.
        assert_eq!(epsilon_composition(0.01, 1.0, 3, 1e-5).unwrap(), epsilon_pure(0.01, 1.0, 3).unwrap());
        assert!(epsilon_composition(0.01, 0.0, 3, 1e-5).is_err());
        assert!(epsilon_composition(0.01, 1.0, 3, 0.0).is_err());
    }

    #[test]
    fn rdp_matches_the_laplace_closed_form_and_beats_composition() {
        // Without sampling, order 2: ε₀ + ln(1 + (e^{−3ε₀} − 1)/3).
        let want = 1.0 + ((-3.0f64).exp_m1() / 3.0).ln_1p();
        assert!((rdp_step(1.0, 1.0, 2).unwrap() - want).abs() < 1e-12);
        // Subsampling only lowers RDP.
        assert!(rdp_step(0.01, 1.0, 8).unwrap() < rdp_step(1.0, 1.0, 8).unwrap());
        // Over many steps RDP is tighter than the composition theorems, PLD tighter still.
        let (q, e0, t, d) = (0.016, 0.5, 1250, 1e-5);
        let comp = epsilon_composition(q, e0, t, d).unwrap();
        let rdp = epsilon(Accountant::Rdp, q, e0, t, d).unwrap();
        let pld = epsilon(Accountant::Pld, q, e0, t, d).unwrap();
        assert!(pld < rdp && rdp < comp, "pld {pld}, rdp {rdp}, composition {comp}");
    }

    #[test]
    fn calibration_reaches_the_target() {
        let e0 = epsilon_per_step_for_epsilon(Accountant::Rdp, 3.0, 0.016, 1250, 1e-5).unwrap();
        let e = epsilon(Accountant::Rdp, 0.016, e0, 1250, 1e-5).unwrap();
        assert!(e <= 3.0 && e > 2.95, "ε₀ {e0}: ε {e}");
        assert!(matches!(
            epsilon_per_step_for_epsilon(Accountant::Rdp, 1e-6, 1.0, 100_000, 1e-5),
            Err(PrivacyError::Unreachable(_))
        ));
    }
}
