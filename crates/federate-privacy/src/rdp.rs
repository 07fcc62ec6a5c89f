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

/// Orders up to which Theorem 27's bound is computed term by term (as `dp_accounting`);
/// above, each term takes its simpler upper bound 2·e^{(j−1)ε(j)}.
const WOR_EXACT_MAX: u64 = 256;

/// ln|x − y| and whether x − y ≥ 0, for x = e^`lx`, y = e^`ly`.
fn log_sub_sign(lx: f64, ly: f64) -> (bool, f64) {
    if lx > ly {
        (true, lx + (-(ly - lx).exp()).ln_1p())
    } else if lx < ly {
        (false, ly + (-(lx - ly).exp()).ln_1p())
    } else {
        (true, f64::NEG_INFINITY)
    }
}

/// The log-magnitudes of the forward differences Theorem 27 needs, of the sequence
/// (1, e^{K(0)}, e^{K(1)}, …, e^{K(n)}) with K(x) = x(x+1)/(2σ²) the Gaussian's cumulant
/// generating function, computed in log space with signs (`dp_accounting`'s
/// `_get_forward_diffs`): entry i is the i-th difference at the first element.
fn forward_diffs(sigma: f64, n: usize) -> Vec<f64> {
    let cgf = |x: f64| x * (x + 1.0) / (2.0 * sigma * sigma);
    let mut v = vec![0.0f64; n + 3];
    let mut signs = vec![true; n + 3];
    for (i, x) in v.iter_mut().enumerate().skip(1) {
        *x = cgf((i - 1) as f64);
    }
    let mut deltas = vec![0.0; n + 2];
    for (i, d) in deltas.iter_mut().enumerate() {
        for j in 0..n + 2 - i {
            if signs[j] == signs[j + 1] {
                let (s, mag) = log_sub_sign(v[j + 1], v[j]);
                signs[j] = if signs[j + 1] { s } else { !s };
                v[j] = mag;
            } else {
                v[j] = log_add(v[j], v[j + 1]);
                signs[j] = signs[j + 1];
            }
        }
        *d = v[0];
    }
    deltas
}

/// ln A_α at integer α for sampling a fixed-size batch without replacement, under
/// replace-one neighbours: the full bound of Wang, Balle & Kasiviswanathan 2019,
/// Theorem 27, as `dp_accounting` computes it. A_α ≤ 1 + q²C(α,2)·min(4(e^{ε(2)} − 1),
/// 2e^{ε(2)}) + Σ_{j≥3} q^j C(α,j)·min(4·√(Δ_lo Δ_hi), 2e^{(j−1)ε(j)}), where ε(j) = j/(2σ²)
/// is the Gaussian's RDP and Δ_lo, Δ_hi the forward differences of e^{K} at the even
/// orders around j (the first term of the minimum is what the looser form drops). Above
/// order 256 only the second term of each minimum is used.
fn log_a_wor(q: f64, sigma: f64, alpha: u64) -> f64 {
    if alpha < 2 {
        return 0.0;
    }
    let a = alpha as f64;
    let eps = |x: f64| x / (2.0 * sigma * sigma);
    let cgf = |x: f64| x * (x + 1.0) / (2.0 * sigma * sigma);
    let log_binom = |j: f64| ln_gamma(a + 1.0) - ln_gamma(j + 1.0) - ln_gamma(a - j + 1.0);
    let log_f2m1 = eps(2.0) + (-(-eps(2.0)).exp()).ln_1p();
    let deltas = (alpha <= WOR_EXACT_MAX).then(|| forward_diffs(sigma, alpha as usize));
    let mut log_a = 0.0;
    for j in 2..=alpha {
        let jf = j as f64;
        let s = if j == 2 {
            2.0 * q.ln() + log_binom(2.0) + (4f64.ln() + log_f2m1).min(eps(2.0) + 2f64.ln())
        } else {
            let simple = 2f64.ln() + cgf(jf - 1.0);
            let bound = match &deltas {
                Some(d) => {
                    let lo = d[(2 * (j / 2)) as usize - 1];
                    let hi = d[(2 * j.div_ceil(2)) as usize - 1];
                    (4f64.ln() + 0.5 * (lo + hi)).min(simple)
                }
                None => simple,
            };
            bound + jf * q.ln() + log_binom(jf)
        };
        log_a = log_add(log_a, s);
    }
    log_a
}

/// RDP at order `alpha` of one step of the Gaussian mechanism (noise multiplier `sigma`
/// relative to the replace-one sensitivity) on a batch of fixed size q·n drawn without
/// replacement. Fractional orders interpolate the two integer neighbours' cumulant
/// (Corollary 10 of the same paper).
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
    if alpha.is_infinite() {
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

    /// `dp_accounting` 0.6's RDP accountant with REPLACE_ONE neighbours on
    /// `SelfComposedDpEvent(SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(σ)), T)`,
    /// ε at δ, for 30 random (m/n, σ, T, δ) (seed 27; the generator is in docs/privacy.md).
    #[test]
    #[allow(clippy::approx_constant)] // σ = 0.318 is a sampled value, not 1/π
    fn fixed_size_rdp_matches_dp_accounting() {
        let cases: [(f64, f64, u64, f64, f64); 30] = [
            (256.0 / 60000.0, 0.861, 10, 1e-5, 1.2301444926477731),
            (32.0 / 1000.0, 4.171, 100, 1e-6, 0.7227885003844947),
            (10.0 / 60000.0, 0.605, 1000, 1e-5, 1.770275049270303),
            (128.0 / 1000.0, 3.965, 1000, 1e-5, 11.357860310503208),
            (32.0 / 60000.0, 0.354, 1000, 1e-6, 14.089803225658956),
            (128.0 / 5000.0, 0.752, 10, 1e-5, 3.4295340561155276),
            (64.0 / 1000.0, 3.744, 1, 1e-5, 0.13583754347936006),
            (64.0 / 5000.0, 1.736, 5000, 1e-5, 5.5628495207895865),
            (256.0 / 5000.0, 0.301, 10, 1e-6, 70.3250701388771),
            (1.0 / 60000.0, 0.874, 1000, 1e-6, 0.6412801438724169),
            (32.0 / 1000.0, 0.576, 10, 1e-6, 8.544315579415967),
            (128.0 / 20000.0, 0.31, 10, 1e-5, 23.230458566678863),
            (128.0 / 60000.0, 0.285, 1, 1e-6, 13.535403626434329),
            (256.0 / 20000.0, 0.281, 5000, 1e-5, 23263.16978736429),
            (64.0 / 20000.0, 0.928, 1, 1e-5, 0.9197269121540292),
            (10.0 / 20000.0, 4.06, 5000, 1e-5, 0.06482731467568642),
            (128.0 / 1000.0, 0.29, 10, 1e-6, 97.15434351652364),
            (1.0 / 1000.0, 1.287, 1000, 1e-5, 0.3922818097669265),
            (600.0 / 5000.0, 0.794, 5000, 1e-5, 668.3058822300839),
            (64.0 / 5000.0, 0.623, 100, 1e-6, 7.063863872633971),
            (32.0 / 1000.0, 0.265, 1, 1e-6, 20.478587019012835),
            (10.0 / 5000.0, 1.072, 1000, 1e-5, 0.7957702548622381),
            (128.0 / 5000.0, 0.83, 1, 1e-6, 2.4480449433303133),
            (32.0 / 5000.0, 1.313, 1000, 1e-6, 1.7683268567853616),
            (128.0 / 5000.0, 4.659, 100, 1e-5, 0.4399366326806373),
            (1.0 / 5000.0, 1.074, 5000, 1e-5, 0.4317759772146599),
            (64.0 / 5000.0, 0.656, 10, 1e-5, 3.402293465746193),
            (1.0 / 60000.0, 0.85, 10, 1e-5, 0.5182148722182481),
            (64.0 / 5000.0, 0.318, 5000, 1e-6, 10059.11079092783),
            (10.0 / 1000.0, 0.853, 10, 1e-5, 1.6120893053672085),
        ];
        let orders = default_orders();
        for (q, sigma, steps, delta, want) in cases {
            let r: Vec<f64> =
                orders.iter().map(|&a| rdp_step_fixed_size(q, sigma, a).unwrap() * steps as f64).collect();
            let got = epsilon_from_rdp(&orders, &r, delta).unwrap().0;
            assert!((got - want).abs() <= 1e-4 * want.max(1.0), "q {q} σ {sigma} T {steps} δ {delta}: {got} vs {want}");
            // The DP-SGD form: σ relative to C, sensitivity 2C.
            assert_eq!(epsilon_fixed_size(q, 2.0 * sigma, steps, delta).unwrap(), got);
        }
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
