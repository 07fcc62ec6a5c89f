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
//! Every uniform integer is drawn by rejection, so it is exactly uniform (a generic range
//! sampler may trade a bias of up to 2⁻⁶⁴ for speed), and no step ever wraps, saturates or
//! silently retries on integer overflow: a draw that would leave the integer range is an
//! error ([`SampleError`]), never a quietly different distribution.
//!
//! Written here because no maintained Rust crate provides exact discrete samplers.

use rand::Rng;
use thiserror::Error;

/// A draw that cannot be made exactly in 128-bit integer arithmetic.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("exact noise sampler overflow: {0}")]
pub struct SampleError(pub String);

/// Bernoulli(p = num/den), exactly (num ≤ den, den > 0).
fn bernoulli_ratio<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    uniform_below(rng, den) < num
}

/// A uniform integer in [0, n), n > 0, exactly: Lemire's multiply-and-reject for n < 2⁶⁴,
/// plain rejection above.
pub fn uniform_below<R: Rng + ?Sized>(rng: &mut R, n: u128) -> u128 {
    debug_assert!(n > 0);
    if n <= u64::MAX as u128 {
        let n = n as u64;
        let mut m = rng.next_u64() as u128 * n as u128;
        // Words whose low part is below 2⁶⁴ mod n belong to an incomplete last interval. That
        // threshold is below n, so the division is needed only when the low part is.
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = rng.next_u64() as u128 * n as u128;
            }
        }
        return m >> 64;
    }
    // Accept v < n·⌊2¹²⁸/n⌋ (the largest multiple of n that fits), then v mod n is uniform.
    let zone = u128::MAX - (u128::MAX % n) - 1;
    loop {
        let v = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
        if v <= zone {
            return v % n;
        }
    }
}

/// A fair coin from one whole random word's lowest bit.
fn coin<R: Rng + ?Sized>(rng: &mut R) -> bool {
    rng.next_u64() & 1 == 1
}

/// Bernoulli(exp(−num/den)), exactly. For num/den ≤ 1: the number of successes K of the
/// chain Bernoulli(γ/1), Bernoulli(γ/2), … before the first failure is odd with
/// probability e^{−γ}; larger γ is split into whole units.
pub fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> Result<bool, SampleError> {
    if den == 0 {
        return Err(SampleError("Bernoulli(exp(−num/den)) with den = 0".into()));
    }
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp_at_most_one(rng, 1, 1)? {
            return Ok(false);
        }
    }
    bernoulli_exp_at_most_one(rng, num % den, den)
}

fn bernoulli_exp_at_most_one<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> Result<bool, SampleError> {
    let mut k: u128 = 1;
    loop {
        // Bernoulli(γ/k) = Bernoulli(num / (den·k)).
        let dk = den
            .checked_mul(k)
            .ok_or_else(|| SampleError(format!("den·k = {den}·{k} passes 2¹²⁸ in Bernoulli(exp(−{num}/{den}))")))?;
        if !bernoulli_ratio(rng, num, dk) {
            return Ok(k % 2 == 1);
        }
        k += 1;
    }
}

/// The discrete Laplace distribution with scale `t` ≥ 1: P(x) ∝ e^{−|x|/t} on ℤ.
pub fn discrete_laplace<R: Rng + ?Sized>(rng: &mut R, t: u64) -> Result<i64, SampleError> {
    let t = t.max(1);
    loop {
        let u = uniform_below(rng, t as u128) as u64;
        if !bernoulli_exp(rng, u as u128, t as u128)? {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp(rng, 1, 1)? {
            v += 1;
        }
        let negative = coin(rng);
        if negative && u == 0 && v == 0 {
            continue;
        }
        let x = (t as i64)
            .checked_mul(v as i64)
            .and_then(|tv| tv.checked_add(u as i64))
            .ok_or_else(|| SampleError(format!("discrete Laplace of scale {t}: {u} + {t}·{v} passes 2⁶³")))?;
        return Ok(if negative { -x } else { x });
    }
}

/// The discrete Gaussian distribution with variance parameter `sigma2` (an integer σ²):
/// P(x) ∝ e^{−x²/(2σ²)} on ℤ. Rejection from the discrete Laplace of scale ⌊σ⌋ + 1.
pub fn discrete_gaussian<R: Rng + ?Sized>(rng: &mut R, sigma2: u64) -> Result<i64, SampleError> {
    if sigma2 == 0 {
        return Ok(0);
    }
    // t = ⌊σ⌋ + 1, with ⌊σ⌋ the exact integer square root.
    let t = sigma2.isqrt() + 1;
    let (s2, t128) = (sigma2 as u128, t as u128);
    let den = (2 * s2)
        .checked_mul(t128 * t128)
        .ok_or_else(|| SampleError(format!("discrete Gaussian with σ² = {sigma2}: 2σ²t² passes 2¹²⁸")))?;
    loop {
        let y = discrete_laplace(rng, t)?;
        // Accept with probability exp(−(|y| − σ²/t)² / (2σ²)) = exp(−(|y|·t − σ²)² / (2σ²t²)).
        let diff = (y.unsigned_abs() as u128 * t128).abs_diff(s2);
        let num = diff.checked_mul(diff).ok_or_else(|| {
            SampleError(format!("discrete Gaussian with σ² = {sigma2}: candidate {y} is too far out"))
        })?;
        if bernoulli_exp(rng, num, den)? {
            return Ok(y);
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
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, num, den).unwrap()).count() as f64 / n as f64;
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
            *counts.entry(discrete_laplace(&mut rng, t).unwrap()).or_insert(0usize) += 1;
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
            let xs: Vec<f64> = (0..n).map(|_| discrete_gaussian(&mut rng, sigma2).unwrap() as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
            let s2 = sigma2 as f64;
            // The discrete Gaussian's variance is below σ² and within 1e-4 relative for σ² ≥ 10;
            // for σ² = 1 it is 0.99999 (CKS, Prop. 19 / Fact 20).
            assert!(mean.abs() < 5.0 * (s2 / n as f64).sqrt(), "σ² {sigma2}: mean {mean}");
            assert!((var / s2 - 1.0).abs() < 0.02, "σ² {sigma2}: variance {var}");
        }
        assert_eq!(discrete_gaussian(&mut rng, 0), Ok(0));
        // Too large to sample exactly: an error, not a different distribution.
        assert!(discrete_gaussian(&mut rng, u64::MAX).is_err());
        assert!(bernoulli_exp(&mut rng, 1, 0).is_err());
    }

    #[test]
    fn uniform_integers_are_exactly_uniform() {
        // n = 3 against a generator whose words are 0, 1, …: Lemire's method maps a word w to
        // ⌊w·3/2⁶⁴⌋ and rejects the 2⁶⁴ mod 3 = 1 word(s) with the lowest low part, so each
        // value has exactly ⌊2⁶⁴/3⌋ preimages. Checked here on the first words.
        struct Counter(u64);
        impl rand::TryRng for Counter {
            type Error = std::convert::Infallible;
            fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
                Ok(self.try_next_u64()? as u32)
            }
            fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
                self.0 = self.0.wrapping_add(1);
                Ok(self.0 - 1)
            }
            fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
                dst.fill(0);
                Ok(())
            }
        }
        // Word 0 has low part 0 < threshold 1: rejected; word 1 is accepted as 0.
        let mut c = Counter(0);
        assert_eq!(uniform_below(&mut c, 3), 0);
        assert_eq!(c.0, 2, "the word below the threshold was rejected");
        // A large n (above 2⁶⁴) and chi-square-free check of a small one.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let big = (1u128 << 100) + 7;
        assert!((0..1000).all(|_| uniform_below(&mut rng, big) < big));
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[uniform_below(&mut rng, 7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (c as f64 - 10_000.0).abs() < 500.0), "{counts:?}");
    }
}
