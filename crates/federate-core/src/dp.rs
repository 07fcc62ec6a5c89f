//! Sample-level differential privacy in local training: DP-SGD (Abadi et al. 2016) with
//! Poisson sampling, per-example clipping and noise on the clipped sum — Gaussian on L2
//! clipping, or the design document's Laplace on L1 clipping — and the privacy each party
//! has spent, from `federate-privacy`'s accountants. The noise itself (seeded or exact) is
//! in [`crate::noise`].

pub use crate::messages::{DpSgd, Mechanism, NoiseSource, PrivacyFloor, Sampling};

use crate::messages::{ClipNorm, LearnerError};
use crate::optim::Optimizer;
use federate_data::{Batch, Dataset};
use federate_privacy::Accountant;
use rand::{Rng, RngExt};

use crate::learner::Learner;
use crate::messages::{LocalTraining, TrainStats};
pub use crate::noise::gaussian_noise;
use crate::noise::{add_exact_noise, add_float_noise, os_rng};

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
        if self.sampling == Sampling::FixedSize {
            if self.mechanism == Mechanism::Laplace {
                return Err("privacy.sampling = \"fixed-size\" is accounted for the gaussian mechanism only: \
                            use sampling = \"poisson\" with laplace"
                    .into());
            }
            if self.accountant == Accountant::Pld {
                return Err(
                    "privacy.sampling = \"fixed-size\" is accounted by RDP: set privacy.accountant = \"rdp\"".into()
                );
            }
            if self.sampling_rate.is_some() {
                return Err(
                    "privacy.sampling_rate is for poisson sampling; fixed-size batches take train.batch_size".into()
                );
            }
        }
        Ok(())
    }

    /// The sampling rate for a party holding `n` examples with batches of `batch`.
    pub fn rate(&self, n: usize, batch: usize) -> f64 {
        match self.sampling {
            Sampling::Poisson => self.sampling_rate.unwrap_or((batch as f64 / n.max(1) as f64).min(1.0)),
            Sampling::FixedSize => (batch.min(n) as f64 / n.max(1) as f64).min(1.0),
        }
    }

    /// Steps per epoch at rate `q` (one epoch = 1/q expected batches).
    pub fn steps_per_epoch(q: f64) -> usize {
        (1.0 / q).round().max(1.0) as usize
    }

    /// ε after `steps` steps at rate `q` (a ledger of this one entry).
    pub fn epsilon(&self, q: f64, steps: u64) -> Result<f64, federate_privacy::PrivacyError> {
        federate_privacy::ledger::epsilon_of(self.accountant, &[self.entry(q, steps)], self.delta)
    }

    /// The ledger entry of `steps` steps of this mechanism at rate `q`.
    pub fn entry(&self, q: f64, steps: u64) -> federate_privacy::Entry {
        use federate_privacy::{Draw, Entry, Noise};
        let noise = match self.mechanism {
            Mechanism::Gaussian => Noise::Gaussian { sigma: self.noise_multiplier },
            Mechanism::Laplace => Noise::Laplace { epsilon_per_step: self.epsilon_per_step.unwrap_or(f64::NAN) },
        };
        let draw = match self.sampling {
            Sampling::Poisson => Draw::Poisson,
            Sampling::FixedSize => Draw::FixedSize,
        };
        Entry { noise, draw, q, steps }
    }

    /// The noise added to a clipped sum: the standard deviation σ·C (Gaussian) or the scale
    /// C/ε₀ (Laplace).
    pub fn noise_scale(&self) -> f64 {
        match self.mechanism {
            Mechanism::Gaussian => self.noise_multiplier * self.clip as f64,
            Mechanism::Laplace => self.clip as f64 / self.epsilon_per_step.unwrap_or(1.0),
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

impl PrivacyFloor {
    /// The floor of a party configured with `own` whose own settings give rate `max_rate`.
    pub fn new(own: Option<DpSgd>, max_rate: Option<f64>) -> Self {
        PrivacyFloor { own, max_rate }
    }

    /// Whether `task` (sampling rate `q`) is within what the party agreed to; the message
    /// says what the server asked for and what the party allows.
    pub fn check(&self, task: Option<&DpSgd>, q: f64) -> Result<(), String> {
        let Some(own) = &self.own else { return Ok(()) };
        let Some(t) = task else {
            return Err("the task asks for training without DP-SGD; this party's configuration requires it".into());
        };
        if t.mechanism != own.mechanism {
            return Err(format!(
                "the task asks for the {:?} mechanism; this party's configuration allows {:?} only",
                t.mechanism, own.mechanism
            ));
        }
        if t.sampling != own.sampling {
            return Err(format!(
                "the task asks for {:?} sampling; this party's configuration says {:?}",
                t.sampling, own.sampling
            ));
        }
        match own.mechanism {
            Mechanism::Gaussian if t.noise_multiplier.is_nan() || t.noise_multiplier < own.noise_multiplier => {
                return Err(format!(
                    "the task's noise multiplier σ = {} is below this party's floor of {}",
                    t.noise_multiplier, own.noise_multiplier
                ));
            }
            Mechanism::Laplace
                if t.epsilon_per_step.is_none_or(|e| e.is_nan() || e > own.epsilon_per_step.unwrap_or(0.0)) =>
            {
                return Err(format!(
                    "the task's ε₀ per step = {:?} is above this party's ceiling of {:?}",
                    t.epsilon_per_step, own.epsilon_per_step
                ));
            }
            _ => {}
        }
        if let Some(max) = self.max_rate
            && q > max * (1.0 + 1e-12)
        {
            return Err(format!("the task's sampling rate q = {q} is above this party's {max}"));
        }
        Ok(())
    }

    /// The ε budget: the smaller of the task's and the party's own.
    pub fn budget(&self, task: &DpSgd) -> Option<f64> {
        match (task.max_epsilon, self.own.and_then(|o| o.max_epsilon)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The accountant and δ the party reports with: its own, else the task's.
    pub fn accounting(&self, task: &DpSgd) -> (federate_privacy::Accountant, f64) {
        match &self.own {
            Some(o) => (o.accountant, o.delta),
            None => (task.accountant, task.delta),
        }
    }
}

/// DP-SGD epochs: each step samples a batch (Poisson at rate q, or a fixed-size sample),
/// sums the clipped per-example gradients (in pieces of at most `batch_size`), adds noise
/// to each coordinate, divides by the expected batch size, and takes an optimiser step.
/// Seeded noise comes from `noise_seed` (a `seed::Stream::DpSgdNoise` seed, apart from the
/// batch stream `rng`). With `NoiseSource::Secure`, neither is used: all randomness comes
/// from the OS.
#[allow(clippy::too_many_arguments)]
pub fn train_local_dp<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    dp: &DpSgd,
    opt: &mut Optimizer,
    rng: &mut R,
    source: NoiseSource,
    noise_seed: u64,
    correction: &crate::messages::Correction<'_>,
) -> Result<TrainStats, LearnerError> {
    dp.validate().map_err(LearnerError::Setting)?;
    match source {
        NoiseSource::Seeded => {
            dp_epochs(learner, params, data, cfg, dp, opt, rng, Noise::Seeded(noise_seed), correction)
        }
        NoiseSource::Secure => {
            let mut os = os_rng()?;
            dp_epochs(learner, params, data, cfg, dp, opt, &mut os, Noise::Secure, correction)
        }
    }
}

/// The noise of one DP-SGD run: seeded from this value, or exact from the OS.
#[derive(Clone, Copy)]
enum Noise {
    Seeded(u64),
    Secure,
}

/// Buffers of one DP step: the clipped sum, a piece's gradient, per-example norms and the
/// gathered batch.
struct StepBuffers {
    sum: Vec<f32>,
    wide: Vec<f64>,
    part: Vec<f32>,
    norms: Vec<f32>,
    batch: Batch,
    chosen: Vec<usize>,
}

impl StepBuffers {
    fn new(params: usize, cap: usize, data: &Dataset) -> Self {
        StepBuffers {
            sum: vec![0.0; params],
            wide: vec![0.0; params],
            part: vec![0.0; params],
            norms: vec![0.0; cap],
            batch: Batch::new(data, cap),
            chosen: Vec::with_capacity(cap * 2),
        }
    }
}

/// One DP step's gradient, left in `buf.sum`: the batch is sampled (all of `data` when
/// `full`, else Poisson at rate `q` or a fixed-size sample of `cap`), the per-example
/// gradients at `params` are clipped and summed in pieces of at most `cap`, noise is added to
/// every coordinate, and the sum is divided by the expected batch size `expected`.
#[allow(clippy::too_many_arguments)]
fn private_gradient<R: Rng>(
    learner: &mut dyn Learner,
    params: &[f32],
    data: &Dataset,
    dp: &DpSgd,
    q: f64,
    cap: usize,
    full: bool,
    expected: f32,
    rng: &mut R,
    noise: Noise,
    step: u64,
    buf: &mut StepBuffers,
) -> Result<crate::messages::BatchStats, LearnerError> {
    let n = data.len();
    let d = data.example_len();
    buf.chosen.clear();
    if full {
        buf.chosen.extend(0..n);
    } else {
        match dp.sampling {
            Sampling::Poisson => buf.chosen.extend((0..n).filter(|_| rng.random::<f64>() < q)),
            Sampling::FixedSize => buf.chosen.extend(rand::seq::index::sample(rng, n, cap.min(n)).iter()),
        }
    }
    buf.wide.fill(0.0);
    let mut stats = crate::messages::BatchStats::default();
    for piece in buf.chosen.chunks(cap) {
        let m = data.gather(piece, &mut buf.batch);
        let s = learner.clipped_grad(
            params,
            &buf.batch.x[..m * d],
            buf.batch.targets(m),
            dp.clip,
            dp.clip_norm(),
            &mut buf.part,
            &mut buf.norms[..m],
        )?;
        stats.merge(s);
        for (a, b) in buf.wide.iter_mut().zip(&buf.part) {
            *a += *b as f64;
        }
    }
    for (a, w) in buf.sum.iter_mut().zip(&buf.wide) {
        *a = *w as f32;
    }
    match noise {
        Noise::Seeded(seed) => add_float_noise(&mut buf.sum, dp, seed, step, expected),
        Noise::Secure => add_exact_noise(&mut buf.sum, dp, expected)?,
    }
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
fn dp_epochs<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    dp: &DpSgd,
    opt: &mut Optimizer,
    rng: &mut R,
    noise: Noise,
    correction: &crate::messages::Correction<'_>,
) -> Result<TrainStats, LearnerError> {
    let n = data.len();
    let cap = cfg.batch_size.max(1);
    let q = dp.rate(n, cap);
    let steps = DpSgd::steps_per_epoch(q) * cfg.epochs;
    let expected = (q * n as f64).max(1.0) as f32;
    let mut buf = StepBuffers::new(params.len(), cap, data);
    let mut stats = TrainStats::default();
    for step in 0..steps {
        let s =
            private_gradient(learner, params, data, dp, q, cap, false, expected, rng, noise, step as u64, &mut buf)?;
        stats.batches.merge(s);
        // Data-independent terms (FedProx, ADMM, SCAFFOLD) after the noise: post-processing.
        correction.apply(params, &mut buf.sum);
        opt.step(params, &buf.sum);
        stats.steps += 1;
    }
    Ok(stats)
}

/// FedSGD under DP-SGD: one DP step's gradient at `params`, written into `grad` — the clipped
/// per-example gradients of a Poisson (or fixed-size) sample at the task's rate, or of every
/// example when `full` (sampling rate 1), summed, noised and divided by the expected batch
/// size. It is exactly one step for the accountant (FedSGD's party half plans it so).
#[allow(clippy::too_many_arguments)]
pub fn private_gradient_step<R: Rng>(
    learner: &mut dyn Learner,
    params: &[f32],
    data: &Dataset,
    batch_size: usize,
    full: bool,
    dp: &DpSgd,
    grad: &mut [f32],
    rng: &mut R,
    source: NoiseSource,
    noise_seed: u64,
) -> Result<TrainStats, LearnerError> {
    dp.validate().map_err(LearnerError::Setting)?;
    let n = data.len();
    let cap = batch_size.max(1);
    let q = if full { 1.0 } else { dp.rate(n, cap) };
    let expected = (q * n as f64).max(1.0) as f32;
    let mut buf = StepBuffers::new(params.len(), cap, data);
    let s = match source {
        NoiseSource::Seeded => private_gradient(
            learner,
            params,
            data,
            dp,
            q,
            cap,
            full,
            expected,
            rng,
            Noise::Seeded(noise_seed),
            0,
            &mut buf,
        )?,
        NoiseSource::Secure => {
            let mut os = os_rng()?;
            private_gradient(learner, params, data, dp, q, cap, full, expected, &mut os, Noise::Secure, 0, &mut buf)?
        }
    };
    grad.copy_from_slice(&buf.sum);
    Ok(TrainStats { steps: 1, batches: s })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Gaussian DP-SGD settings with noise multiplier `sigma`, clip 2.
    pub(crate) fn gaussian(sigma: f64) -> DpSgd {
        DpSgd {
            mechanism: Mechanism::Gaussian,
            noise_multiplier: sigma,
            epsilon_per_step: None,
            clip: 2.0,
            sampling_rate: None,
            delta: 1e-5,
            accountant: Accountant::Rdp,
            max_epsilon: None,
            sampling: Sampling::Poisson,
        }
    }

    #[test]
    fn fixed_size_sampling_settings() {
        let fixed = DpSgd { sampling: Sampling::FixedSize, ..gaussian(1.0) };
        assert!(fixed.validate().is_ok());
        assert_eq!(fixed.rate(1000, 50), 0.05);
        assert_eq!(DpSgd::steps_per_epoch(fixed.rate(1000, 50)), 20);
        // Replace-one accounting at sensitivity 2C costs more than Poisson's add/remove.
        assert!(fixed.epsilon(0.05, 100).unwrap() > gaussian(1.0).epsilon(0.05, 100).unwrap());
        let e = DpSgd { mechanism: Mechanism::Laplace, epsilon_per_step: Some(1.0), ..fixed }.validate().unwrap_err();
        assert!(e.contains("gaussian mechanism only"), "{e}");
        let e = DpSgd { accountant: Accountant::Pld, ..fixed }.validate().unwrap_err();
        assert!(e.contains("rdp"), "{e}");
        let e = DpSgd { sampling_rate: Some(0.1), ..fixed }.validate().unwrap_err();
        assert!(e.contains("batch_size"), "{e}");
    }
}
