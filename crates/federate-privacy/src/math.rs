//! Log-space arithmetic and Gaussian tails, accurate far into the tails.

use std::f64::consts::{PI, SQRT_2};

/// ln(eᵃ + eᵇ).
pub fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY { hi } else { hi + (lo - hi).exp().ln_1p() }
}

/// ln(eᵃ − eᵇ) for a ≥ b.
#[cfg(test)]
pub fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        a
    } else if a <= b {
        f64::NEG_INFINITY
    } else {
        (a - b).exp_m1().ln() + b
    }
}

/// ln erfc(x), accurate for large x where erfc underflows.
pub fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        statrs::function::erf::erfc(x).ln()
    } else {
        let x2 = x * x;
        let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2);
        -x2 - x.ln() - 0.5 * PI.ln() + series.ln()
    }
}

/// P(Z ≤ z) for a standard normal Z, accurate in the lower tail.
pub fn norm_cdf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-z / SQRT_2)
}

/// P(Z > z) for a standard normal Z, accurate in the upper tail.
pub fn norm_sf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(z / SQRT_2)
}

/// P(a < Z ≤ b) for a standard normal Z, computed on the side where it is accurate.
#[cfg(test)]
pub fn norm_interval(a: f64, b: f64) -> f64 {
    if b <= a {
        0.0
    } else if a >= 0.0 {
        (norm_sf(a) - norm_sf(b)).max(0.0)
    } else {
        (norm_cdf(b) - norm_cdf(a)).max(0.0)
    }
}

/// ln Γ(x).
pub fn ln_gamma(x: f64) -> f64 {
    statrs::function::gamma::ln_gamma(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert!((log_add(0.0, 0.0) - 2f64.ln()).abs() < 1e-15);
        assert!((log_sub(2f64.ln(), 0.0)).abs() < 1e-15);
        // erfc(30) ≈ 2.5646e-393: only the log survives.
        assert!((log_erfc(30.0) - (-903.974)).abs() < 1e-3, "{}", log_erfc(30.0));
        assert!((log_erfc(24.9) - log_erfc(25.1)).abs() < 12.0);
        assert!((norm_interval(-1.0, 1.0) - 0.682_689_492).abs() < 1e-9);
        assert!((norm_interval(8.0, 9.0) - 6.219_831_986e-16).abs() < 1e-24);
    }
}
