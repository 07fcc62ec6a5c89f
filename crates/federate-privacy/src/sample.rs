//! Exact samplers of the discrete Laplace and discrete Gaussian distributions on the
//! integers (Canonne, Kamath & Steinke 2020, Algorithms 1–3), for noise that is safe to
//! release in a deployment.
//!
//! The textbook floating-point samplers (inverse-CDF Laplace, Box–Muller or ziggurat
//! Gaussian) produce values whose low-order bits depend on the secret they are added to
//! and on gaps in the set of representable outputs; Mironov (2012) extracted records from
//! exactly that. These samplers use only integer arithmetic and uniform random integers,
//! so the noise distribution is exactly the one the privacy analysis assumes. The caller
//! rounds the quantity to protect onto a grid γℤ, adds integer noise, and scales the sum
//! back: every released value is then a function of an exactly distributed integer.
//!
//! Written here because no maintained Rust crate provides exact discrete samplers.

use rand::{Rng, RngExt};

/// Bernoulli(p = num/den), exactly (num ≤ den, den > 0).
fn bernoulli_ratio<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    uniform_below(rng, den) < num
}

/// A uniform integer in [0, n), n > 0, by rejection (no modulo bias).
fn uniform_below<R: Rng + ?Sized>(rng: &mut R, n: u128) -> u128 {
    if n <= u64::MAX as u128 {
        return rng.random_range(0..n as u64) as u128;
    }
    let zone = u128::MAX - (u128::MAX % n) - 1;
    loop {
        let v = ((rng.random::<u64>() as u128) << 64) | rng.random::<u64>() as u128;
        if v <= zone {
            return v % n;
        }
    }
}

/// Bernoulli(exp(−num/den)), exactly. For num/den ≤ 1: the number of successes K of the
/// chain Bernoulli(γ/1), Bernoulli(γ/2), … before the first failure is odd with
/// probability e^{−γ}; larger γ is split into whole units.
pub fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    assert!(den > 0, "bernoulli_exp: zero denominator");
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp_at_most_one(rng, 1, 1) {
            return false;
        }
    }
    bernoulli_exp_at_most_one(rng, num % den, den)
}

fn bernoulli_exp_at_most_one<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    loop {
        // Bernoulli(γ/k) = Bernoulli(num / (den·k)).
        match den.checked_mul(k) {
            Some(dk) if bernoulli_ratio(rng, num, dk) => k += 1,
            // Past u128 the probability num/(den·k) is below 2^-64: count it as a failure,
            // an event rarer than any the analysis distinguishes.
            _ => return k % 2 == 1,
        }
    }
}

/// The discrete Laplace distribution with scale `t` ≥ 1: P(x) ∝ e^{−|x|/t} on ℤ.
pub fn discrete_laplace<R: Rng + ?Sized>(rng: &mut R, t: u64) -> i64 {
    let t = t.max(1);
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp(rng, u as u128, t as u128) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp(rng, 1, 1) {
            v += 1;
        }
        let negative = rng.random::<bool>();
        if negative && u == 0 && v == 0 {
            continue;
        }
        let x = (u as i64).saturating_add((t as i64).saturating_mul(v as i64));
        return if negative { -x } else { x };
    }
}

/// The discrete Gaussian distribution with variance parameter `sigma2` (an integer σ²):
/// P(x) ∝ e^{−x²/(2σ²)} on ℤ. Rejection from the discrete Laplace of scale ⌊σ⌋ + 1.
pub fn discrete_gaussian<R: Rng + ?Sized>(rng: &mut R, sigma2: u64) -> i64 {
    if sigma2 == 0 {
        return 0;
    }
    let t = (sigma2 as f64).sqrt().floor() as u64 + 1;
    let (s2, t128) = (sigma2 as u128, t as u128);
    loop {
        let y = discrete_laplace(rng, t);
        // Accept with probability exp(−(|y| − σ²/t)² / (2σ²)) = exp(−(|y|·t − σ²)² / (2σ²t²)).
        let diff = (y.unsigned_abs() as u128 * t128).abs_diff(s2);
        let Some(num) = diff.checked_mul(diff) else { continue };
        let Some(den) = (2 * s2).checked_mul(t128 * t128) else { continue };
        if bernoulli_exp(rng, num, den) {
            return y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn bernoulli_exp_has_the_right_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (num, den) in [(1u128, 2u128), (3, 2), (0, 1), (5, 1)] {
            let n = 200_000;
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, num, den)).count() as f64 / n as f64;
            let want = (-(num as f64) / den as f64).exp();
            let se = (want * (1.0 - want) / n as f64).sqrt().max(1e-6);
            assert!((hits - want).abs() < 5.0 * se, "{num}/{den}: {hits} vs {want}");
        }
    }

    #[test]
    fn discrete_laplace_matches_its_pmf() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (t, n) = (3u64, 300_000);
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            *counts.entry(discrete_laplace(&mut rng, t)).or_insert(0usize) += 1;
        }
        // P(x) = (1 − e^{−1/t}) / (1 + e^{−1/t}) · e^{−|x|/t}.
        let r = (-1.0 / t as f64).exp();
        for x in -4i64..=4 {
            let want = (1.0 - r) / (1.0 + r) * r.powi(x.unsigned_abs() as i32);
            let got = *counts.get(&x).unwrap_or(&0) as f64 / n as f64;
            assert!((got - want).abs() < 5.0 * (want / n as f64).sqrt(), "x = {x}: {got} vs {want}");
        }
    }

    #[test]
    fn discrete_gaussian_has_the_right_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for sigma2 in [1u64, 10, 1_000_000, 1 << 40] {
            let n = 100_000;
            let xs: Vec<f64> = (0..n).map(|_| discrete_gaussian(&mut rng, sigma2) as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
            let s2 = sigma2 as f64;
            // The discrete Gaussian's variance is below σ² and within 1e-4 relative for σ² ≥ 10;
            // for σ² = 1 it is 0.99999 (CKS, Prop. 19 / Fact 20).
            assert!(mean.abs() < 5.0 * (s2 / n as f64).sqrt(), "σ² {sigma2}: mean {mean}");
            assert!((var / s2 - 1.0).abs() < 0.02, "σ² {sigma2}: variance {var}");
        }
        assert_eq!(discrete_gaussian(&mut rng, 0), 0);
    }
}
