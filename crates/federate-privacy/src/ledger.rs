//! A party's privacy ledger: every DP release it made of its data — mechanism, sampling,
//! rate, noise and step count as it applied them — and the ε of all of them together.
//!
//! Entries may differ (a server changed σ, a party restarted with other settings, a second
//! federation trained on the same data), so the composition is heterogeneous: under RDP the
//! Rényi divergences of the entries add order by order (Mironov 2017, Prop. 1), under PLD the
//! privacy loss distributions are convolved, each adjacency direction on its own. A ledger
//! with one kind of entry gives exactly the single-mechanism ε of [`crate::epsilon`],
//! [`crate::laplace::epsilon`] or [`crate::rdp::epsilon_fixed_size`].
//!
//! The ledger is data, not a policy: what a party may agree to (a floor on σ, a ceiling on ε)
//! is the caller's, checked against [`Ledger::epsilon_with`] before the release.

use serde::{Deserialize, Serialize};

use crate::calibrate::Accountant;
use crate::error::{PrivacyError, check, check_delta};
use crate::pld::{Adjacency, OneStep, Pld, grid_step};
use crate::{laplace, rdp};

/// The noise of one DP step, relative to the sensitivity of what it protects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mechanism", rename_all = "lowercase")]
pub enum Noise {
    /// Gaussian noise of standard deviation σ × the L2 sensitivity.
    Gaussian {
        /// σ, the noise multiplier.
        sigma: f64,
    },
    /// Laplace noise of scale (L1 sensitivity) / ε₀: one unsampled step is ε₀-DP.
    Laplace {
        /// ε₀ of one unsampled step.
        epsilon_per_step: f64,
    },
}

/// How each step's sample was drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Draw {
    /// Each record independently with probability q (add/remove neighbours).
    Poisson,
    /// A fixed-size sample without replacement (replace-one neighbours; Gaussian only,
    /// where one replaced record moves the clipped sum by twice the clip norm).
    FixedSize,
}

/// A run of identical DP steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The noise.
    #[serde(flatten)]
    pub noise: Noise,
    /// How samples were drawn.
    pub draw: Draw,
    /// The sampling rate q (1 = every record, every step).
    pub q: f64,
    /// Steps taken.
    pub steps: u64,
}

impl Entry {
    /// Checks that the entry can be accounted.
    pub fn check(&self) -> Result<(), PrivacyError> {
        match self.noise {
            Noise::Gaussian { sigma } => check(self.q, sigma)?,
            Noise::Laplace { epsilon_per_step } => {
                laplace::amplified(self.q, epsilon_per_step)?;
                if self.draw == Draw::FixedSize {
                    return Err(PrivacyError::Unreachable(
                        "fixed-size sampling is accounted for the Gaussian mechanism only".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn same_kind(&self, other: &Entry) -> bool {
        self.noise == other.noise && self.draw == other.draw && self.q == other.q
    }
}

/// Every DP release of one party's data, composed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The releases, in order (consecutive identical kinds merged).
    pub entries: Vec<Entry>,
}

impl Ledger {
    /// An empty ledger (nothing released: ε = 0).
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Records `entry` (merged into the last entry when it is of the same kind).
    pub fn record(&mut self, entry: Entry) -> Result<(), PrivacyError> {
        entry.check()?;
        if entry.steps == 0 {
            return Ok(());
        }
        match self.entries.last_mut() {
            Some(last) if last.same_kind(&entry) => last.steps += entry.steps,
            _ => self.entries.push(entry),
        }
        Ok(())
    }

    /// Steps recorded in all.
    pub fn steps(&self) -> u64 {
        self.entries.iter().map(|e| e.steps).sum()
    }

    /// ε(δ) of everything recorded.
    pub fn epsilon(&self, accountant: Accountant, delta: f64) -> Result<f64, PrivacyError> {
        epsilon_of(accountant, &self.entries, delta)
    }

    /// ε(δ) of everything recorded plus `next` (what the ledger would say after it).
    pub fn epsilon_with(&self, next: Entry, accountant: Accountant, delta: f64) -> Result<f64, PrivacyError> {
        let mut l = self.clone();
        l.record(next)?;
        l.epsilon(accountant, delta)
    }
}

/// ε(δ) of the composition of `entries`.
pub fn epsilon_of(accountant: Accountant, entries: &[Entry], delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    for e in entries {
        e.check()?;
    }
    let live: Vec<Entry> = entries.iter().copied().filter(|e| e.steps > 0 && e.q > 0.0).collect();
    match live.as_slice() {
        [] => Ok(0.0),
        // One kind: the single-mechanism accountants (which for Laplace under RDP also take
        // the composition theorems into account).
        [e] => single(accountant, e, delta),
        many => match accountant {
            Accountant::Rdp => rdp_epsilon(many, delta),
            Accountant::Pld => pld_epsilon(many, delta),
        },
    }
}

fn single(accountant: Accountant, e: &Entry, delta: f64) -> Result<f64, PrivacyError> {
    match (e.noise, e.draw) {
        (Noise::Gaussian { sigma }, Draw::Poisson) => crate::epsilon(accountant, e.q, sigma, e.steps, delta),
        (Noise::Gaussian { sigma }, Draw::FixedSize) => rdp::epsilon_fixed_size(e.q, sigma, e.steps, delta),
        (Noise::Laplace { epsilon_per_step }, _) => laplace::epsilon(accountant, e.q, epsilon_per_step, e.steps, delta),
    }
}

/// RDP of each entry at every order, summed. With a Laplace entry only the integer orders
/// are used (its subsampled RDP is known there).
fn rdp_epsilon(entries: &[Entry], delta: f64) -> Result<f64, PrivacyError> {
    let integer_only = entries.iter().any(|e| matches!(e.noise, Noise::Laplace { .. }));
    let orders: Vec<f64> =
        rdp::default_orders().into_iter().filter(|a| !integer_only || (a.fract() == 0.0 && *a >= 2.0)).collect();
    let mut total = vec![0.0; orders.len()];
    for e in entries {
        for (t, &a) in total.iter_mut().zip(&orders) {
            let step = match (e.noise, e.draw) {
                (Noise::Gaussian { sigma }, Draw::Poisson) => rdp::rdp_step(e.q, sigma, a)?,
                (Noise::Gaussian { sigma }, Draw::FixedSize) => rdp::rdp_step_fixed_size(e.q, sigma / 2.0, a)?,
                (Noise::Laplace { epsilon_per_step }, _) => laplace::rdp_step(e.q, epsilon_per_step, a as u64)?,
            };
            *t += step * e.steps as f64;
        }
    }
    Ok(rdp::epsilon_from_rdp(&orders, &total, delta)?.0)
}

/// Each entry's PLD composed with itself `steps` times, then all convolved, per direction,
/// on one grid step chosen for the whole composition.
fn pld_epsilon(entries: &[Entry], delta: f64) -> Result<f64, PrivacyError> {
    let one = |e: Entry| {
        move |adjacency: Adjacency, step: f64| match (e.noise, e.draw) {
            (Noise::Gaussian { sigma }, Draw::Poisson) => Pld::subsampled_gaussian(e.q, sigma, adjacency, step),
            (Noise::Laplace { epsilon_per_step }, Draw::Poisson) => {
                Pld::subsampled_laplace(e.q, 1.0 / epsilon_per_step, adjacency, step)
            }
            (_, Draw::FixedSize) => Err(PrivacyError::Unreachable(
                "fixed-size sampling is accounted by RDP only: use the rdp accountant".into(),
            )),
        }
    };
    let builders: Vec<_> = entries.iter().map(|&e| one(e)).collect();
    let parts: Vec<(OneStep<'_>, u64)> =
        builders.iter().zip(entries).map(|(b, e)| (b as OneStep<'_>, e.steps)).collect();
    let step = grid_step(&parts)?;
    let mut worst: f64 = 0.0;
    for adjacency in [Adjacency::Remove, Adjacency::Add] {
        let mut planner = rustfft::FftPlanner::new();
        let mut acc: Option<Pld> = None;
        for (b, e) in builders.iter().zip(entries) {
            let composed = b(adjacency, step)?.self_compose(e.steps);
            acc = Some(match acc {
                None => composed,
                Some(a) => a.compose(&composed, &mut planner),
            });
        }
        if let Some(a) = acc {
            worst = worst.max(a.epsilon(delta));
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(q: f64, sigma: f64, steps: u64) -> Entry {
        Entry { noise: Noise::Gaussian { sigma }, draw: Draw::Poisson, q, steps }
    }

    #[test]
    fn one_kind_equals_the_single_mechanism_accountant() {
        let mut l = Ledger::new();
        for _ in 0..3 {
            l.record(gauss(0.05, 1.1, 19)).unwrap();
        }
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.steps(), 57);
        let want = crate::epsilon(Accountant::Rdp, 0.05, 1.1, 57, 1e-5).unwrap();
        assert_eq!(l.epsilon(Accountant::Rdp, 1e-5).unwrap(), want);
        assert_eq!(Ledger::new().epsilon(Accountant::Rdp, 1e-5).unwrap(), 0.0);
    }

    #[test]
    fn different_entries_compose_by_adding_rdp() {
        // Two Gaussians at q = 1 with σ₁, σ₂ are one Gaussian with σ = (σ₁⁻² + σ₂⁻²)^(−½).
        let mut l = Ledger::new();
        l.record(gauss(1.0, 2.0, 1)).unwrap();
        l.record(gauss(1.0, 3.0, 1)).unwrap();
        let sigma = (2f64.powi(-2) + 3f64.powi(-2)).powf(-0.5);
        let want = crate::epsilon(Accountant::Rdp, 1.0, sigma, 1, 1e-5).unwrap();
        let got = l.epsilon(Accountant::Rdp, 1e-5).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // PLD too (to its discretisation), and never below the RDP-free closed form's ε.
        let want = crate::epsilon(Accountant::Pld, 1.0, sigma, 1, 1e-5).unwrap();
        let got = l.epsilon(Accountant::Pld, 1e-5).unwrap();
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        // A weaker step added later costs more than the stronger one alone.
        let before = Ledger { entries: vec![gauss(0.01, 1.0, 100)] }.epsilon(Accountant::Rdp, 1e-5).unwrap();
        let mut l = Ledger { entries: vec![gauss(0.01, 1.0, 100)] };
        let after = l.epsilon_with(gauss(0.01, 0.5, 1), Accountant::Rdp, 1e-5).unwrap();
        l.record(gauss(0.01, 0.5, 1)).unwrap();
        assert!(after > before && after == l.epsilon(Accountant::Rdp, 1e-5).unwrap());
    }

    #[test]
    fn mixed_gaussian_and_laplace_use_integer_orders() {
        let lap = Entry { noise: Noise::Laplace { epsilon_per_step: 0.5 }, draw: Draw::Poisson, q: 0.05, steps: 20 };
        let l = Ledger { entries: vec![gauss(0.05, 1.0, 20), lap] };
        let both = l.epsilon(Accountant::Rdp, 1e-5).unwrap();
        let g = crate::epsilon(Accountant::Rdp, 0.05, 1.0, 20, 1e-5).unwrap();
        let p = laplace::epsilon(Accountant::Rdp, 0.05, 0.5, 20, 1e-5).unwrap();
        assert!(both > g.max(p) && both < g + p + 1e-9, "{both} vs {g} + {p}");
        assert!(l.epsilon(Accountant::Pld, 1e-5).unwrap() <= both);
        let bad = Entry { draw: Draw::FixedSize, ..lap };
        assert!(Ledger::new().record(bad).is_err());
    }
}
