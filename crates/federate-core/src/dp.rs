//! Sample-level differential privacy in local training: DP-SGD (Abadi et al. 2016) with
//! Poisson sampling, per-example clipping and noise on the clipped sum — Gaussian on L2
//! clipping, or the design document's Laplace on L1 clipping — and the privacy each party
//! has spent, from `federate-privacy`'s accountants.
//!
//! Noise here is drawn from a seeded ChaCha stream so that simulations are reproducible;
//! it is the floating-point Gaussian, whose low bits can leak in theory. The exact discrete
//! samplers a deployment needs are still to come (see issue #4).

use federate_data::Dataset;
use federate_nn::{ClipNorm, NnError, Optimizer};
use federate_privacy::Accountant;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::learner::Learner;
use crate::train::{LocalTraining, TrainStats};

/// The noise DP-SGD adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Gaussian noise σ·C on L2-clipped gradients.
    #[default]
    Gaussian,
    /// Laplace noise of scale C/ε₀ on L1-clipped gradients (the design document's).
    Laplace,
}

/// DP-SGD settings of a party's local training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSgd {
    /// Gaussian or Laplace.
    #[serde(default)]
    pub mechanism: Mechanism,
    /// σ: noise standard deviation ÷ clipping norm (Gaussian).
    pub noise_multiplier: f64,
    /// ε₀ of one step before subsampling (Laplace: noise scale = clip / ε₀).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_per_step: Option<f64>,
    /// C: every example's gradient is clipped to this norm (L2 for Gaussian, L1 for Laplace).
    pub clip: f32,
    /// Poisson sampling rate q; `None` means batch_size ÷ the party's examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    /// δ of the reported (ε, δ).
    pub delta: f64,
    /// The accountant that turns steps into ε.
    pub accountant: Accountant,
    /// A party refuses a round that would take its ε past this budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epsilon: Option<f64>,
}

impl DpSgd {
    /// Checks the ranges; the message names the setting and the fix.
    pub fn validate(&self) -> Result<(), String> {
        match self.mechanism {
            Mechanism::Gaussian => {
                if !(self.noise_multiplier > 0.0 && self.noise_multiplier.is_finite()) {
                    return Err(format!("privacy.noise_multiplier = {} must be > 0", self.noise_multiplier));
                }
            }
            Mechanism::Laplace => match self.epsilon_per_step {
                Some(e) if e > 0.0 && e.is_finite() => {}
                Some(e) => return Err(format!("privacy.epsilon_per_step = {e} must be > 0")),
                None => return Err("the laplace mechanism needs privacy.epsilon_per_step (ε₀ of one step)".into()),
            },
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(format!("privacy.clip = {} must be > 0", self.clip));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("privacy.delta = {} must be in (0, 1)", self.delta));
        }
        if let Some(q) = self.sampling_rate
            && !(q > 0.0 && q <= 1.0)
        {
            return Err(format!("privacy.sampling_rate = {q} must be in (0, 1]"));
        }
        if let Some(b) = self.max_epsilon
            && !(b > 0.0 && b.is_finite())
        {
            return Err(format!("privacy.target_epsilon = {b} must be a positive number"));
        }
        Ok(())
    }

    /// The sampling rate for a party holding `n` examples with batches of `batch`.
    pub fn rate(&self, n: usize, batch: usize) -> f64 {
        self.sampling_rate.unwrap_or((batch as f64 / n.max(1) as f64).min(1.0))
    }

    /// Steps per epoch at rate `q` (one epoch = 1/q expected batches).
    pub fn steps_per_epoch(q: f64) -> usize {
        (1.0 / q).round().max(1.0) as usize
    }

    /// ε after `steps` steps at rate `q`.
    pub fn epsilon(&self, q: f64, steps: u64) -> Result<f64, federate_privacy::PrivacyError> {
        match self.mechanism {
            Mechanism::Gaussian => {
                federate_privacy::epsilon(self.accountant, q, self.noise_multiplier, steps, self.delta)
            }
            Mechanism::Laplace => {
                federate_privacy::laplace::epsilon(q, self.epsilon_per_step.unwrap_or(0.0), steps, self.delta)
            }
        }
    }

    /// The norm gradients are clipped in.
    pub fn clip_norm(&self) -> ClipNorm {
        match self.mechanism {
            Mechanism::Gaussian => ClipNorm::L2,
            Mechanism::Laplace => ClipNorm::L1,
        }
    }
}

/// Values of noise drawn per parallel chunk (each chunk has its own derived stream, so the
/// noise does not depend on the thread count).
const NOISE_CHUNK: usize = 1 << 16;

/// DP-SGD epochs: each step samples every example with probability q, sums the clipped
/// per-example gradients (in pieces of at most `batch_size`), adds N(0, σ²C²) noise to each
/// coordinate, divides by the expected batch size q·n, and takes an optimiser step.
pub fn train_local_dp<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    dp: &DpSgd,
    opt: &mut Optimizer,
    rng: &mut R,
) -> Result<TrainStats, NnError> {
    dp.validate().map_err(NnError::BadHyperParameter)?;
    let n = data.len();
    let d = data.example_len();
    let cap = cfg.batch_size.max(1);
    let q = dp.rate(n, cap);
    let steps = DpSgd::steps_per_epoch(q) * cfg.epochs;
    let expected = (q * n as f64).max(1.0) as f32;
    // Gaussian: standard deviation σ·C. Laplace: scale C/ε₀.
    let noise_scale = match dp.mechanism {
        Mechanism::Gaussian => (dp.noise_multiplier * dp.clip as f64) as f32,
        Mechanism::Laplace => (dp.clip as f64 / dp.epsilon_per_step.unwrap_or(1.0)) as f32,
    };
    let kind = dp.clip_norm();
    let noise_seed: u64 = rng.random();
    let mut sum = vec![0.0f32; params.len()];
    let mut part = vec![0.0f32; params.len()];
    let mut norms = vec![0.0f32; cap];
    let mut xb = vec![0.0f32; cap * d];
    let mut yb = vec![0u32; cap];
    let mut stats = TrainStats::default();
    let mut chosen = Vec::with_capacity(cap * 2);
    for step in 0..steps {
        chosen.clear();
        chosen.extend((0..n).filter(|_| rng.random::<f64>() < q));
        sum.fill(0.0);
        for piece in chosen.chunks(cap) {
            for (j, &i) in piece.iter().enumerate() {
                xb[j * d..(j + 1) * d].copy_from_slice(&data.x[i * d..(i + 1) * d]);
                yb[j] = data.y[i];
            }
            let m = piece.len();
            let s = learner.clipped_grad(params, &xb[..m * d], &yb[..m], dp.clip, kind, &mut part, &mut norms[..m])?;
            stats.batches.merge(s);
            for (a, b) in sum.iter_mut().zip(&part) {
                *a += b;
            }
        }
        // Noise on the clipped sum, then the average over the expected batch size.
        sum.par_chunks_mut(NOISE_CHUNK).enumerate().for_each(|(c, chunk)| {
            let mut r = ChaCha8Rng::seed_from_u64(crate::seed::derive(noise_seed, "noise", &[step as u64, c as u64]));
            for v in chunk.iter_mut() {
                let z: f32 = match dp.mechanism {
                    Mechanism::Gaussian => StandardNormal.sample(&mut r),
                    // Inverse CDF of the standard Laplace distribution.
                    Mechanism::Laplace => {
                        let u: f32 = r.random::<f32>() - 0.5;
                        -u.signum() * (1.0 - 2.0 * u.abs()).max(f32::MIN_POSITIVE).ln()
                    }
                };
                *v = (*v + noise_scale * z) / expected;
            }
        });
        opt.step(params, &sum);
        stats.steps += 1;
    }
    Ok(stats)
}
