//! Rényi differential privacy of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar
//! & Zhang 2019), for integer and fractional orders, and its conversion to (ε, δ) with the
//! bound of Balle et al. 2020 (Proposition 12 of arXiv:2004.00010, as `dp_accounting` uses).

use std::f64::consts::SQRT_2;

use crate::error::{PrivacyError, check, check_delta};
use crate::math::{ln_gamma, log_add, log_erfc};

/// The orders `dp_accounting`'s RDP accountant uses by default.
pub fn default_orders() -> Vec<f64> {
    let mut v: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
    v.extend((11..64).map(|x| x as f64));
    v.extend([128.0, 256.0, 512.0, 1024.0]);
    v
}

/// ln A_α for integer α: ln Σᵢ C(α,i) (1−q)^(α−i) qⁱ exp((i²−i)/(2σ²)).
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let a = alpha as f64;
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let i = i as f64;
        let log_binom = ln_gamma(a + 1.0) - ln_gamma(i + 1.0) - ln_gamma(a - i + 1.0);
        let s = log_binom + i * q.ln() + (a - i) * (-q).ln_1p() + (i * i - i) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

/// ln A_α for fractional α, by the two-sided series with Gaussian tails (Sec. 3.3 of
/// arXiv:1908.10530). Every term is added with the magnitude of its binomial coefficient,
/// which bounds A_α from above, as current `dp_accounting` does; the series stops once both
/// halves decrease and the last terms are e⁻³⁰ below the total.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let ln_1mq = (-q).ln_1p();
    let mut coef = 1.0f64; // |C(α, i)|, updated in place
    for i in 0..1000u32 {
        let fi = i as f64;
        let j = alpha - fi;
        let log_coef = coef.ln();
        let log_t0 = log_coef + fi * q.ln() + j * ln_1mq;
        let log_t1 = log_coef + j * q.ln() + fi * ln_1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / (SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (SQRT_2 * sigma));
        let log_s0 = log_t0 + (fi * fi - fi) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
        coef *= ((alpha - fi) / (fi + 1.0)).abs();
    }
    // Did not converge: this order gives no bound.
    f64::INFINITY
}

/// RDP at order `alpha` of one step of the Gaussian mechanism with noise multiplier `sigma`,
/// applied to a Poisson sample with rate `q`.
pub fn rdp_step(q: f64, sigma: f64, alpha: f64) -> Result<f64, PrivacyError> {
    check(q, sigma)?;
    if alpha.is_nan() || alpha <= 1.0 {
        return Err(PrivacyError::Order(alpha));
    }
    if q == 0.0 {
        return Ok(0.0);
    }
    if alpha.is_infinite() {
        return Ok(f64::INFINITY);
    }
    if q == 1.0 {
        return Ok(alpha / (2.0 * sigma * sigma));
    }
    let log_a = if alpha.fract() == 0.0 && alpha < 1e6 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    Ok(log_a / (alpha - 1.0))
}

/// RDP at each order after `steps` steps.
pub fn rdp(q: f64, sigma: f64, steps: u64, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    orders.iter().map(|&a| rdp_step(q, sigma, a).map(|r| r * steps as f64)).collect()
}

/// The smallest ε over the orders such that the mechanism is (ε, δ)-DP, and the order that
/// gives it.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), PrivacyError> {
    check_delta(delta)?;
    let mut best = (f64::INFINITY, f64::NAN);
    for (&a, &r) in orders.iter().zip(rdp) {
        if a.is_nan() || a <= 1.0 {
            return Err(PrivacyError::Order(a));
        }
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// ε(δ) of `steps` steps of the Poisson-subsampled Gaussian, by RDP over the default orders.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    let orders = default_orders();
    let r = rdp(q, sigma, steps, &orders)?;
    Ok(epsilon_from_rdp(&orders, &r, delta)?.0)
}

/// ln A_α at integer α for sampling a fixed-size batch without replacement, under
/// replace-one neighbours (Wang, Balle & Kasiviswanathan 2019, Theorem 27, as
/// `dp_accounting` computes it): 1 + q²C(α,2)·min(4(e^{ε(2)} − 1), 2e^{ε(2)})
/// + Σ_{j≥3} 2q^j C(α,j) e^{(j−1)ε(j)}, with ε(j) = j/(2σ²) the Gaussian's RDP.
fn log_a_wor(q: f64, sigma: f64, alpha: u64) -> f64 {
    let a = alpha as f64;
    let eps = |x: f64| x / (2.0 * sigma * sigma);
    let log_binom = |j: f64| ln_gamma(a + 1.0) - ln_gamma(j + 1.0) - ln_gamma(a - j + 1.0);
    let log_f2m1 = eps(2.0) + (-(-eps(2.0)).exp()).ln_1p();
    let mut log_a = 0.0;
    for j in 2..=alpha {
        let j = j as f64;
        let s = if j == 2.0 {
            2.0 * q.ln() + log_binom(2.0) + (4f64.ln() + log_f2m1).min(eps(2.0) + 2f64.ln())
        } else {
            2f64.ln() + (j - 1.0) * eps(j) + j * q.ln() + log_binom(j)
        };
        log_a = log_add(log_a, s);
    }
    log_a
}

/// RDP at order `alpha` of one step of the Gaussian mechanism (noise multiplier `sigma`
/// relative to the replace-one sensitivity) on a batch of fixed size q·n drawn without
/// replacement. Fractional orders interpolate the two integer neighbours' cumulant
/// (Corollary 10 of the same paper); orders above 256 give no bound here (∞).
pub fn rdp_step_fixed_size(q: f64, sigma: f64, alpha: f64) -> Result<f64, PrivacyError> {
    check(q, sigma)?;
    if alpha.is_nan() || alpha <= 1.0 {
        return Err(PrivacyError::Order(alpha));
    }
    if q == 0.0 {
        return Ok(0.0);
    }
    if q == 1.0 {
        return Ok(alpha / (2.0 * sigma * sigma));
    }
    if alpha > 256.0 {
        return Ok(f64::INFINITY);
    }
    let (f, c) = (alpha.floor(), alpha.ceil());
    let log_a = if f == c {
        log_a_wor(q, sigma, f as u64)
    } else {
        let lo = if f < 2.0 { 0.0 } else { log_a_wor(q, sigma, f as u64) };
        let t = alpha - f;
        (1.0 - t) * lo + t * log_a_wor(q, sigma, c as u64)
    };
    Ok(log_a / (alpha - 1.0))
}

/// ε(δ) of `steps` steps of DP-SGD on fixed-size batches (q = batch ÷ examples) drawn
/// without replacement, L2 clip C and noise σ·C. One example replaced by another moves the
/// clipped sum by up to 2C, so the mechanism's noise multiplier relative to that
/// sensitivity is σ/2; the ε is for replace-one neighbours.
pub fn epsilon_fixed_size(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check(q, sigma)?;
    let orders = default_orders();
    let rdp: Vec<f64> = orders
        .iter()
        .map(|&a| rdp_step_fixed_size(q, sigma / 2.0, a).map(|r| r * steps as f64))
        .collect::<Result<_, _>>()?;
    Ok(epsilon_from_rdp(&orders, &rdp, delta)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dp_accounting` / TensorFlow Privacy's reference values (rdp_privacy_accountant_test).
    #[test]
    fn matches_published_rdp_values() {
        let orders = [1.5, 2.5, 5.0, 50.0, 100.0];
        let want = [6.70579741e-4, 1.08548710e-3, 2.18075656e-3, 2.38460375e-2, 1.67416308e2];
        let got = rdp(0.01, 2.5, 50, &orders).unwrap();
        for ((g, w), a) in got.iter().zip(want).zip(orders) {
            assert!(((g - w) / w).abs() < 1e-4, "order {a}: {g} vs {w}");
        }
    }

    #[test]
    fn matches_published_epsilon() {
        let eps = epsilon(0.04, 1.5, 2250, 1e-5).unwrap();
        assert!((eps - 7.3293).abs() < 1e-3, "{eps}");
    }

    #[test]
    fn monotone_in_steps_and_sigma() {
        let e = |q, s, t| epsilon(q, s, t, 1e-5).unwrap();
        assert!(e(0.01, 1.0, 100) < e(0.01, 1.0, 1000));
        assert!(e(0.01, 2.0, 1000) < e(0.01, 1.0, 1000));
        assert!(e(0.02, 1.0, 1000) > e(0.01, 1.0, 1000));
        assert_eq!(e(0.0, 1.0, 1000), 0.0);
    }

    #[test]
    fn fixed_size_sampling() {
        // Whole-dataset batches: the plain Gaussian mechanism, α/(2σ²).
        assert!((rdp_step_fixed_size(1.0, 2.0, 3.0).unwrap() - 3.0 / 8.0).abs() < 1e-12);
        // Order 2: A_2 = 1 + q²·min(4(e^{1/σ²}−1), 2e^{1/σ²}).
        let (q, s): (f64, f64) = (0.001, 2.0);
        let e2 = 1.0 / (s * s);
        let want = (1.0 + q * q * (4.0 * e2.exp_m1()).min(2.0 * e2.exp())).ln();
        let got = rdp_step_fixed_size(q, s, 2.0).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // Replace-one at sensitivity 2C costs more than Poisson add/remove at C, and ε still
        // grows with the steps.
        let fixed = epsilon_fixed_size(256.0 / 20_000.0, 1.0, 1170, 1e-5).unwrap();
        let poisson = epsilon(256.0 / 20_000.0, 1.0, 1170, 1e-5).unwrap();
        assert!(fixed > poisson, "{fixed} vs {poisson}");
        assert!(epsilon_fixed_size(256.0 / 20_000.0, 1.0, 2340, 1e-5).unwrap() > fixed);
        assert!(epsilon_fixed_size(1.5, 1.0, 10, 1e-5).is_err());
    }

    #[test]
    fn bad_parameters_are_errors_not_nans() {
        assert!(matches!(epsilon(0.01, 0.0, 10, 1e-5), Err(PrivacyError::Sigma(_))));
        assert!(matches!(epsilon(0.01, -1.0, 10, 1e-5), Err(PrivacyError::Sigma(_))));
        assert!(matches!(epsilon(1.5, 1.0, 10, 1e-5), Err(PrivacyError::SamplingRate(_))));
        assert!(matches!(epsilon(0.01, 1.0, 10, 0.0), Err(PrivacyError::Delta(_))));
        assert!(matches!(epsilon(0.01, 1.0, 10, 1.0), Err(PrivacyError::Delta(_))));
    }
}
