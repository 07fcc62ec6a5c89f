//! Privacy loss distributions (PLDs) of the Poisson-subsampled Gaussian mechanism, composed
//! by FFT (Koskela et al. 2020; the accountant of Google's `dp_accounting`).
//!
//! A PLD is the distribution of the privacy loss ln(P(x)/Q(x)) for x drawn from P. One step
//! is discretised so that it dominates the true PLD ("connect the dots"), and composition
//! truncates tails only in the pessimistic direction (low losses rounded up, high ones sent
//! to +∞), so the ε reported is never smaller than the true one. Both adjacency directions
//! (removing and adding a record) are accounted and the worse one reported.

use std::sync::Arc;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

use crate::error::{PrivacyError, check, check_delta};
use crate::math::log_add;

/// Default grid step of the privacy loss.
pub const DEFAULT_STEP: f64 = 1e-4;
/// Tail mass dropped (and charged to δ) at each truncation.
const TAIL: f64 = 1e-15;
/// Standard deviations covered around each Gaussian component.
const Z: f64 = 8.5;

/// A discretised privacy loss distribution: mass `pmf[k]` at loss `(offset + k)·step`, and
/// `inf` at +∞.
#[derive(Debug, Clone)]
pub struct Pld {
    step: f64,
    offset: i64,
    pmf: Vec<f64>,
    inf: f64,
}

/// Which neighbouring relation a PLD describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjacency {
    /// The dataset with the record (P) against the one without (Q).
    Remove,
    /// The dataset without the record (P) against the one with it (Q).
    Add,
}

impl Pld {
    /// One step of the Gaussian mechanism (sensitivity 1, noise multiplier `sigma`) on a
    /// Poisson sample of rate `q`, discretised by "connect the dots" (Doroshenko et al.
    /// 2022): the masses are chosen so that the discrete δ(ε) equals the mechanism's exact
    /// δ(ε) at every grid point and lies above it in between (δ is convex in e^ε), so the
    /// result dominates the true PLD while staying tight on a coarse grid.
    pub fn subsampled_gaussian(q: f64, sigma: f64, adjacency: Adjacency, step: f64) -> Result<Pld, PrivacyError> {
        check(q, sigma)?;
        if q == 0.0 {
            return Ok(Pld { step, offset: 0, pmf: vec![1.0], inf: 0.0 });
        }
        let s2 = sigma * sigma;
        let ln_1mq = (-q).ln_1p();
        // Privacy loss of removal at x, and its inverse (−∞ below the loss's range).
        let loss = |x: f64| log_add(ln_1mq, q.ln() + (2.0 * x - 1.0) / (2.0 * s2));
        let inverse = |l: f64| {
            let inner = l.exp_m1() + q;
            if inner <= 0.0 { f64::NEG_INFINITY } else { s2 * (inner / q).ln() + 0.5 }
        };
        let sf = |z: f64| crate::math::norm_sf(z);
        let cdf = |z: f64| crate::math::norm_cdf(z);
        // The exact δ(ε) of one step in this direction.
        let delta = |eps: f64| -> f64 {
            let d = match adjacency {
                // P = (1−q)N(0,σ²) + qN(1,σ²), Q = N(0,σ²): δ = P(L > ε) − e^ε Q(L > ε).
                Adjacency::Remove => {
                    let x = inverse(eps);
                    (1.0 - q - eps.exp()) * sf(x / sigma) + q * sf((x - 1.0) / sigma)
                }
                // P = N(0,σ²), Q = the mixture; the loss is minus the removal loss.
                Adjacency::Add => {
                    let x = inverse(-eps);
                    cdf(x / sigma) * (1.0 - eps.exp() * (1.0 - q)) - eps.exp() * q * cdf((x - 1.0) / sigma)
                }
            };
            d.clamp(0.0, 1.0)
        };
        let (l_lo, l_hi) = match adjacency {
            Adjacency::Remove => (ln_1mq.max(loss(-Z * sigma)), loss(1.0 + Z * sigma)),
            Adjacency::Add => (-loss(Z * sigma), if q < 1.0 { -ln_1mq } else { -loss(-Z * sigma) }),
        };
        let k_lo = (l_lo / step).floor() as i64;
        let k_hi = (l_hi / step).ceil() as i64;
        let damp = (-step).exp();
        let d: Vec<f64> = (k_lo..=k_hi + 1).map(|k| delta(k as f64 * step)).collect();
        // S_i = mass strictly above loss l_i (∞ included) = (δ(l_i) − e^{−h} δ(l_{i+1})) / (1 − e^{−h}).
        let tail: Vec<f64> =
            (0..d.len() - 1).map(|i| ((d[i] - damp * d[i + 1]) / -(-step).exp_m1()).clamp(0.0, 1.0)).collect();
        let n = tail.len();
        let mut pmf = Vec::with_capacity(n);
        pmf.push((1.0 - tail[0]).max(0.0));
        for i in 1..n {
            pmf.push((tail[i - 1] - tail[i]).max(0.0));
        }
        Ok(Pld { step, offset: k_lo, pmf, inf: tail[n - 1] })
    }

    /// The PLD of running this mechanism and then `other` (same grid step).
    pub fn compose(&self, other: &Pld, planner: &mut FftPlanner<f64>) -> Pld {
        let n = self.pmf.len() + other.pmf.len() - 1;
        let size = n.next_power_of_two();
        let fft = planner.plan_fft_forward(size);
        let ifft = planner.plan_fft_inverse(size);
        let lift = |v: &[f64], fft: &Arc<dyn rustfft::Fft<f64>>| {
            let mut buf: Vec<Complex<f64>> = v.iter().map(|&x| Complex::new(x, 0.0)).collect();
            buf.resize(size, Complex::new(0.0, 0.0));
            fft.process(&mut buf);
            buf
        };
        let a = lift(&self.pmf, &fft);
        let mut c = lift(&other.pmf, &fft);
        for (x, y) in c.iter_mut().zip(&a) {
            *x *= y;
        }
        ifft.process(&mut c);
        let scale = 1.0 / size as f64;
        let pmf: Vec<f64> = c[..n].iter().map(|z| (z.re * scale).max(0.0)).collect();
        let inf = 1.0 - (1.0 - self.inf) * (1.0 - other.inf);
        let mut out = Pld { step: self.step, offset: self.offset + other.offset, pmf, inf };
        out.truncate();
        out
    }

    /// This mechanism run `times` times.
    pub fn self_compose(&self, times: u64) -> Pld {
        let mut planner = FftPlanner::new();
        let mut result = Pld { step: self.step, offset: 0, pmf: vec![1.0], inf: 0.0 };
        let mut base = self.clone();
        let mut t = times;
        while t > 0 {
            if t & 1 == 1 {
                result = result.compose(&base, &mut planner);
            }
            t >>= 1;
            if t > 0 {
                base = base.compose(&base, &mut planner);
            }
        }
        result
    }

    /// Drops tails of at most `TAIL` mass each: the lower one onto the first kept loss
    /// (rounding up), the upper one to +∞. Both only increase δ.
    fn truncate(&mut self) {
        let mut low = 0.0;
        let mut start = 0;
        while start + 1 < self.pmf.len() && low + self.pmf[start] <= TAIL {
            low += self.pmf[start];
            start += 1;
        }
        let mut high = 0.0;
        let mut end = self.pmf.len();
        while end > start + 1 && high + self.pmf[end - 1] <= TAIL {
            high += self.pmf[end - 1];
            end -= 1;
        }
        self.pmf = self.pmf[start..end].to_vec();
        self.pmf[0] += low;
        self.offset += start as i64;
        self.inf += high;
    }

    /// The smallest δ such that the mechanism is (ε, δ)-DP in this direction.
    pub fn delta(&self, epsilon: f64) -> f64 {
        let mut d = self.inf;
        for (k, &p) in self.pmf.iter().enumerate() {
            let l = (self.offset + k as i64) as f64 * self.step;
            if l > epsilon {
                d += p * (1.0 - (epsilon - l).exp());
            }
        }
        d.min(1.0)
    }

    /// The smallest ε ≥ 0 with δ(ε) ≤ `delta` (+∞ if even the largest loss does not get
    /// there, because of mass at +∞).
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.inf > delta {
            return f64::INFINITY;
        }
        if self.delta(0.0) <= delta {
            return 0.0;
        }
        let mut lo = 0.0;
        let mut hi = (self.offset + self.pmf.len() as i64) as f64 * self.step;
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if self.delta(mid) > delta {
                lo = mid
            } else {
                hi = mid
            }
            if hi - lo < 1e-9 {
                break;
            }
        }
        hi
    }
}

/// δ(ε) of `steps` steps of the Poisson-subsampled Gaussian, the worse direction.
pub fn delta(q: f64, sigma: f64, steps: u64, epsilon: f64) -> Result<f64, PrivacyError> {
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(PrivacyError::Epsilon(epsilon));
    }
    let both = composed(q, sigma, steps)?;
    Ok(both.iter().map(|p| p.delta(epsilon)).fold(0.0, f64::max))
}

/// ε(δ) of `steps` steps of the Poisson-subsampled Gaussian, the worse direction.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    let both = composed(q, sigma, steps)?;
    Ok(both.iter().map(|p| p.epsilon(delta)).fold(0.0, f64::max))
}

fn composed(q: f64, sigma: f64, steps: u64) -> Result<[Pld; 2], PrivacyError> {
    check(q, sigma)?;
    let one = |adj| Pld::subsampled_gaussian(q, sigma, adj, DEFAULT_STEP).map(|p| p.self_compose(steps));
    Ok([one(Adjacency::Remove)?, one(Adjacency::Add)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_composed_three_times_matches_the_closed_form() {
        // Three Gaussians with σ = √3 are one with σ = 1: δ(1) = Φ(−0.5) − e·Φ(−1.5) = 0.126937.
        let d = delta(1.0, 3f64.sqrt(), 3, 1.0).unwrap();
        assert!((d - 0.126937).abs() < 1e-6, "{d}");
    }

    #[test]
    fn subsampled_gaussian_matches_dp_accounting() {
        let d = delta(0.2, 0.5, 3, 1.0).unwrap();
        assert!((d - 0.155933).abs() < 1e-5, "{d}");
    }

    #[test]
    fn pld_is_tighter_than_rdp() {
        let e = epsilon(0.032, 1.0, 312, 1e-5).unwrap();
        assert!((e - 3.667).abs() < 5e-3, "{e}");
        let r = crate::rdp::epsilon(0.032, 1.0, 312, 1e-5).unwrap();
        assert!((r - 4.142).abs() < 0.01, "{r}");
    }

    #[test]
    fn pmf_sums_to_one() {
        for adj in [Adjacency::Remove, Adjacency::Add] {
            let p = Pld::subsampled_gaussian(0.1, 1.2, adj, 1e-3).unwrap();
            let total: f64 = p.pmf.iter().sum::<f64>() + p.inf;
            assert!((total - 1.0).abs() < 1e-9, "{total}");
        }
    }
}
