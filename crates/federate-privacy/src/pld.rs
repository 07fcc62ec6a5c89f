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

/// Default (finest) grid step of the privacy loss.
pub const DEFAULT_STEP: f64 = 1e-4;
/// Most grid points of a composed PLD: the step is coarsened (re-discretised) so that the
/// composition's spread fits in this many points (2²¹: a 64 MiB FFT buffer at most).
const MAX_COMPOSED: usize = 1 << 21;
/// The coarse step at which a composition's spread is estimated before choosing its grid.
const PROBE_STEP: f64 = 1e-2;
/// Tail mass dropped (and charged to δ) at each truncation.
const TAIL: f64 = 1e-15;
/// Most grid points of one step's PLD (beyond this the noise is too small to matter for
/// accounting, and composition would run out of memory).
const MAX_POINTS: usize = 1 << 22;
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
        if (l_hi - l_lo) / step > MAX_POINTS as f64 {
            return Err(PrivacyError::Unreachable(format!(
                "σ = {sigma} is too small for the PLD accountant (its privacy loss spans {:.0} grid points); \
                 use the rdp accountant",
                (l_hi - l_lo) / step
            )));
        }
        Ok(Pld::connect_the_dots(delta, l_lo, l_hi, step))
    }

    /// One step of the Laplace mechanism (sensitivity 1, scale `b`, so ε₀ = 1/b for one
    /// step) on a Poisson sample of rate `q`, discretised like the Gaussian. The loss is
    /// bounded: it lies in [ln(1 − q + q·e^(−1/b)), ln(1 − q + q·e^(1/b))] for removal, with
    /// atoms at both ends, and the negative of that range for addition.
    ///
    /// A d-dimensional Laplace mechanism with L1 sensitivity 1 is accounted by this
    /// one-dimensional pair, as `dp_accounting` does: putting the whole shift on one
    /// coordinate is the worst case (the test `splitting_the_shift_helps` checks it for the
    /// unsampled mechanism).
    pub fn subsampled_laplace(q: f64, b: f64, adjacency: Adjacency, step: f64) -> Result<Pld, PrivacyError> {
        check(q, b)?;
        if q == 0.0 {
            return Ok(Pld { step, offset: 0, pmf: vec![1.0], inf: 0.0 });
        }
        let ln_1mq = (-q).ln_1p();
        // Removal: P = (1−q)Lap(0,b) + qLap(1,b), Q = Lap(0,b); the loss at x is
        // ln(1 − q + q·e^((|x| − |x−1|)/b)), increasing in x on [0, 1].
        let l_lo = log_add(ln_1mq, q.ln() - 1.0 / b);
        let l_hi = log_add(ln_1mq, q.ln() + 1.0 / b);
        // The x in (0, 1) where the removal loss equals l.
        let point = |l: f64| 0.5 * (b * ((l.exp_m1() + q) / q).ln() + 1.0);
        let sf = |t: f64, mu: f64| if t >= mu { 0.5 * (-(t - mu) / b).exp() } else { 1.0 - 0.5 * ((t - mu) / b).exp() };
        let cdf = |t: f64, mu: f64| 1.0 - sf(t, mu);
        let delta = |eps: f64| -> f64 {
            let d = match adjacency {
                // δ = P(L > ε) − e^ε Q(L > ε), {L > ε} = {x > x*}.
                Adjacency::Remove => {
                    if eps < l_lo {
                        -eps.exp_m1()
                    } else if eps >= l_hi {
                        0.0
                    } else {
                        let x = point(eps).clamp(0.0, 1.0);
                        (1.0 - q) * sf(x, 0.0) + q * sf(x, 1.0) - eps.exp() * sf(x, 0.0)
                    }
                }
                // P = Lap(0,b), Q = the mixture, loss = −(removal loss): {−L > ε} = {x < x*(−ε)}.
                Adjacency::Add => {
                    if -eps <= l_lo {
                        0.0
                    } else if -eps > l_hi {
                        -eps.exp_m1()
                    } else {
                        let x = point(-eps).clamp(0.0, 1.0);
                        cdf(x, 0.0) - eps.exp() * ((1.0 - q) * cdf(x, 0.0) + q * cdf(x, 1.0))
                    }
                }
            };
            d.clamp(0.0, 1.0)
        };
        let (lo, hi) = match adjacency {
            Adjacency::Remove => (l_lo, l_hi),
            Adjacency::Add => (-l_hi, -l_lo),
        };
        Ok(Pld::connect_the_dots(delta, lo, hi, step))
    }

    /// The dominating discretisation of a mechanism given its exact δ(ε) in one direction
    /// and the range [l_lo, l_hi] of its finite privacy losses: masses at the grid points
    /// such that the discrete δ equals `delta` at each of them (Doroshenko et al. 2022).
    fn connect_the_dots(delta: impl Fn(f64) -> f64, l_lo: f64, l_hi: f64, step: f64) -> Pld {
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
        Pld { step, offset: k_lo, pmf, inf: tail[n - 1] }
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
        let (pmf, roundoff) = clamp_roundoff(c[..n].iter().map(|z| z.re * scale).collect());
        let inf = (1.0 - (1.0 - self.inf) * (1.0 - other.inf) + roundoff).min(1.0);
        let mut out = Pld { step: self.step, offset: self.offset + other.offset, pmf, inf };
        out.truncate();
        out
    }

    /// This mechanism run `times` times: one FFT of the PMF, raised to the power `times`
    /// pointwise, one inverse FFT (as `dp_accounting`'s `self_convolve`). The output is
    /// computed only on the range outside which the composed mass is at most `TAIL`, found
    /// beforehand by Chernoff bounds on the moment generating function, so memory and time
    /// follow the composed distribution's real spread, not `times` × the one-step range. The
    /// mass outside that range (at most `TAIL`) is charged to +∞, which only increases δ;
    /// what the cyclic convolution folds back into the range is part of that mass and can
    /// only add to δ as well.
    pub fn self_compose(&self, times: u64) -> Pld {
        if times == 0 {
            return Pld { step: self.step, offset: 0, pmf: vec![1.0], inf: 0.0 };
        }
        if times == 1 {
            return self.clone();
        }
        let len = self.pmf.len();
        let (lower, upper) = self_convolve_bounds(&self.pmf, times, TAIL);
        let out_len = (upper - lower + 1) as usize;
        let size = out_len.max(len).next_power_of_two();
        let mut planner = FftPlanner::new();
        let mut buf: Vec<Complex<f64>> = self.pmf.iter().map(|&x| Complex::new(x, 0.0)).collect();
        buf.resize(size, Complex::new(0.0, 0.0));
        planner.plan_fft_forward(size).process(&mut buf);
        let t = times as f64;
        for z in buf.iter_mut() {
            // z^T in polar form: |z|^T · e^{iTθ}.
            let (r, theta) = z.to_polar();
            *z = Complex::from_polar(r.powf(t), theta * t);
        }
        planner.plan_fft_inverse(size).process(&mut buf);
        let scale = 1.0 / size as f64;
        let pmf: Vec<f64> = (0..out_len).map(|i| buf[(lower as usize + i) % size].re * scale).collect();
        let (pmf, roundoff) = clamp_roundoff(pmf);
        // 1 − (1 − inf)^T, stably, plus the truncated tails and the FFT round-off.
        let inf = (TAIL + roundoff - (t * (-self.inf).ln_1p()).exp_m1()).min(1.0);
        let mut out = Pld { step: self.step, offset: self.offset * times as i64 + lower, pmf, inf };
        out.truncate();
        out
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
    /// there, because of mass at +∞), solved exactly: between two grid losses l_{k−1} ≤ ε <
    /// l_k, δ(ε) = inf + A_k − e^{ε − l_{k−1}}·D_k with A_k = Σ_{j≥k} p_j and
    /// D_k = Σ_{j≥k} p_j e^{l_{k−1} − l_j}, both summed once from the top.
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.inf > delta {
            return f64::INFINITY;
        }
        let damp = (-self.step).exp();
        let (mut a, mut d) = (0.0f64, 0.0f64);
        for k in (0..self.pmf.len()).rev() {
            // Now the sums over j ≥ k, relative to l_{k−1}.
            a += self.pmf[k];
            d = damp * (d + self.pmf[k]);
            let below = (self.offset + k as i64 - 1) as f64 * self.step;
            if self.inf + a - d > delta {
                // δ(l_{k−1}) > delta ≥ δ(l_k): the root is in between.
                let eps = below + ((self.inf + a - delta) / d).ln();
                return eps.max(0.0);
            }
        }
        0.0
    }
}

/// Clamps the negative values an FFT convolution leaves (round-off around zero) to zero and
/// returns the total clamped. Round-off of that size may as well sit, positive, in any bin,
/// so the caller charges it to +∞ as a bound on what round-off can hide from δ.
fn clamp_roundoff(mut pmf: Vec<f64>) -> (Vec<f64>, f64) {
    let mut negative = 0.0;
    for v in pmf.iter_mut() {
        if *v < 0.0 {
            negative -= *v;
            *v = 0.0;
        }
    }
    (pmf, negative)
}

/// Index bounds [lower, upper] of the `times`-fold self-convolution of `pmf` (indices from
/// 0 to (len − 1)·times) outside which at most `tail` mass lies: Chernoff bounds
/// P(S ≥ a) ≤ M(t)^T e^{−ta} at the orders ±1/len … ±20/len, each tail given `tail`/2.
fn self_convolve_bounds(pmf: &[f64], times: u64, tail: f64) -> (i64, i64) {
    let len = pmf.len();
    let mut upper = (len as i64 - 1) * times as i64;
    let mut lower = 0i64;
    let t = times as f64;
    // (index, ln p) of the non-zero masses, once for all orders.
    let logs: Vec<(f64, f64)> =
        pmf.iter().enumerate().filter(|(_, p)| **p > 0.0).map(|(i, p)| (i as f64, p.ln())).collect();
    for k in (-20i32..=20).filter(|&k| k != 0) {
        let order = k as f64 / len as f64;
        // ln M(order) = ln Σ_i p_i e^{order·i}, by log-sum-exp.
        let peak = logs.iter().map(|(i, lp)| lp + order * i).fold(f64::NEG_INFINITY, f64::max);
        if !peak.is_finite() {
            continue;
        }
        let sum: f64 = logs.iter().map(|(i, lp)| (lp + order * i - peak).exp()).sum();
        let log_mgf = peak + sum.ln();
        let bound = (t * log_mgf + (2.0 / tail).ln()) / order;
        if !bound.is_finite() {
            continue;
        }
        if order > 0.0 {
            upper = upper.min(bound.ceil() as i64);
        } else {
            lower = lower.max(bound.floor() as i64);
        }
    }
    (lower, upper.max(lower))
}

/// δ(ε) of `steps` steps of the Poisson-subsampled Gaussian, the worse direction.
pub fn delta(q: f64, sigma: f64, steps: u64, epsilon: f64) -> Result<f64, PrivacyError> {
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(PrivacyError::Epsilon(epsilon));
    }
    check(q, sigma)?;
    let both = composed(|adj, h| Pld::subsampled_gaussian(q, sigma, adj, h), steps)?;
    Ok(both.iter().map(|p| p.delta(epsilon)).fold(0.0, f64::max))
}

/// ε(δ) of `steps` steps of the Poisson-subsampled Gaussian, the worse direction.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    check(q, sigma)?;
    let both = composed(|adj, h| Pld::subsampled_gaussian(q, sigma, adj, h), steps)?;
    Ok(both.iter().map(|p| p.epsilon(delta)).fold(0.0, f64::max))
}

/// ε(δ) of `steps` steps of the Poisson-subsampled Laplace mechanism whose single,
/// unsampled step is `eps_step`-DP (scale = sensitivity / `eps_step`), the worse direction.
pub fn laplace_epsilon(q: f64, eps_step: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    if !(eps_step > 0.0 && eps_step.is_finite()) {
        return Err(PrivacyError::Epsilon(eps_step));
    }
    check(q, 1.0)?;
    let both = composed(|adj, h| Pld::subsampled_laplace(q, 1.0 / eps_step, adj, h), steps)?;
    Ok(both.iter().map(|p| p.epsilon(delta)).fold(0.0, f64::max))
}

/// A one-step PLD in a given direction at a given grid step.
pub(crate) type OneStep<'a> = &'a dyn Fn(Adjacency, f64) -> Result<Pld, PrivacyError>;

/// The grid step for composing each `(one step, times)` of `parts` together: the finest
/// ([`DEFAULT_STEP`]) unless the composition's spread — measured on a coarse grid by the
/// Chernoff bounds [`Pld::self_compose`] truncates to, summed over the parts since
/// convolution adds ranges — needs more than [`MAX_COMPOSED`] points at it. The coarser
/// step is still a dominating ("connect the dots") discretisation, so ε stays an upper
/// bound; it only gets less tight (`dp_accounting` likewise bounds its grid by its
/// `value_discretization_interval`).
pub(crate) fn grid_step(parts: &[(OneStep<'_>, u64)]) -> Result<f64, PrivacyError> {
    let mut width = 0.0;
    for (one, times) in parts {
        let mut widest: f64 = 0.0;
        for adj in [Adjacency::Remove, Adjacency::Add] {
            let p = one(adj, PROBE_STEP)?;
            let (lo, hi) = self_convolve_bounds(&p.pmf, (*times).max(1), TAIL);
            widest = widest.max((hi - lo + 1 + p.pmf.len() as i64) as f64 * PROBE_STEP);
        }
        width += widest;
    }
    Ok(DEFAULT_STEP.max(width / MAX_COMPOSED as f64))
}

fn composed(one: impl Fn(Adjacency, f64) -> Result<Pld, PrivacyError>, steps: u64) -> Result<[Pld; 2], PrivacyError> {
    let step = grid_step(&[(&one, steps)])?;
    Ok([one(Adjacency::Remove, step)?.self_compose(steps), one(Adjacency::Add, step)?.self_compose(steps)])
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

    /// Long compositions (issue: 58–85 s and 3.6 GB before; dp_accounting 0.6 `PLDAccountant`
    /// took 0.8 s and 12 s, 2.5 GB at most). Seconds and well under 500 MB now
    /// (`federate privacy epsilon --accountant pld …`: 0.25 s / 44 MB and 1.0 s / 152 MB).
    #[test]
    fn ten_thousand_steps_at_sigma_half() {
        // q = 0.001: dp_accounting's ε, and never below it.
        let e = epsilon(0.001, 0.5, 10_000, 1e-5).unwrap();
        let reference = 5.226831044387596;
        assert!(e >= reference && e - reference < 1e-4 * reference, "{e} vs dp_accounting {reference}");
        // q = 1: 10⁴ Gaussians of multiplier 0.5 are one with μ = 200, whose exact ε(10⁻⁵)
        // solves Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ) = 10⁻⁵: 20851.98868 (scipy). dp_accounting
        // reports 20852.99079 — a whole unit above, from rounding each step's loss up to its
        // 10⁻⁴ grid 10⁴ times; connect-the-dots is tight, so this lands between the two.
        let e = epsilon(1.0, 0.5, 10_000, 1e-5).unwrap();
        let (exact, reference) = (20851.988679700928, 20852.99079073179);
        assert!(e >= exact && e <= reference, "{e}: exact {exact}, dp_accounting {reference}");
    }

    #[test]
    fn pld_is_tighter_than_rdp() {
        let e = epsilon(0.032, 1.0, 312, 1e-5).unwrap();
        assert!((e - 3.667).abs() < 5e-3, "{e}");
        let r = crate::rdp::epsilon(0.032, 1.0, 312, 1e-5).unwrap();
        assert!((r - 4.142).abs() < 0.01, "{r}");
    }

    #[test]
    fn laplace_without_sampling_is_pure() {
        // One Laplace step with ε₀ = 1 is (1, 0)-DP: δ(1) = 0 and δ(0.5) = 1 − e^{−0.5·…}.
        for adj in [Adjacency::Remove, Adjacency::Add] {
            let p = Pld::subsampled_laplace(1.0, 1.0, adj, 1e-4).unwrap();
            assert!(p.delta(1.0) < 1e-12, "{}", p.delta(1.0));
            // Exact δ(ε) of the Laplace mechanism for 0 ≤ ε ≤ 1/b: 1 − e^{(ε − 1/b)/2}.
            let want = 1.0 - ((0.5f64 - 1.0) / 2.0).exp();
            assert!((p.delta(0.5) - want).abs() < 1e-4, "{} vs {want}", p.delta(0.5));
        }
        // Ten steps: ε(δ) below pure composition's 10.
        let e = laplace_epsilon(1.0, 1.0, 10, 1e-5).unwrap();
        assert!(e < 10.0 && e > 3.0, "{e}");
    }

    #[test]
    fn laplace_is_tighter_than_composition_theorems() {
        let (q, e0, t, d) = (0.016, 0.5, 1250, 1e-5);
        let pld = laplace_epsilon(q, e0, t, d).unwrap();
        let comp = crate::laplace::epsilon_composition(q, e0, t, d).unwrap();
        assert!(pld < comp, "pld {pld} vs composition {comp}");
        // And grows with the steps and with ε₀.
        assert!(laplace_epsilon(q, e0, 2 * t, d).unwrap() > pld);
        assert!(laplace_epsilon(q, 2.0 * e0, t, d).unwrap() > pld);
    }

    #[test]
    fn splitting_the_shift_helps() {
        // A shift of 1 on one coordinate against 1/2 on each of two (= two mechanisms of
        // scale 2b): the concentrated shift has the larger δ(ε) everywhere.
        let mut planner = FftPlanner::new();
        for adj in [Adjacency::Remove, Adjacency::Add] {
            let one = Pld::subsampled_laplace(1.0, 1.0, adj, 1e-4).unwrap();
            let half = Pld::subsampled_laplace(1.0, 2.0, adj, 1e-4).unwrap();
            let split = half.compose(&half, &mut planner);
            for eps in [0.0, 0.2, 0.5, 0.8] {
                assert!(
                    split.delta(eps) <= one.delta(eps) + 1e-9,
                    "ε {eps}: {} > {}",
                    split.delta(eps),
                    one.delta(eps)
                );
            }
        }
    }

    #[test]
    fn pmf_sums_to_one() {
        for adj in [Adjacency::Remove, Adjacency::Add] {
            let p = Pld::subsampled_laplace(0.1, 0.7, adj, 1e-3).unwrap();
            let total: f64 = p.pmf.iter().sum::<f64>() + p.inf;
            assert!((total - 1.0).abs() < 1e-9, "{total}");
        }
        for adj in [Adjacency::Remove, Adjacency::Add] {
            let p = Pld::subsampled_gaussian(0.1, 1.2, adj, 1e-3).unwrap();
            let total: f64 = p.pmf.iter().sum::<f64>() + p.inf;
            assert!((total - 1.0).abs() < 1e-9, "{total}");
        }
    }
}
