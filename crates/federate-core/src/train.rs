//! Local training: epochs of shuffled minibatch steps on a party's own data.

pub use crate::messages::{Correction, LocalAlgorithm, LocalTraining, TrainStats};

use crate::messages::{BatchStats, LearnerError, OptimizerSpec};
use crate::optim::Optimizer;
use federate_data::{Batch, Dataset};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::learner::Learner;

impl LocalTraining {
    /// Plain local SGD (no momentum, no weight decay, no privacy).
    pub fn sgd(epochs: usize, batch_size: usize, lr: f32) -> Self {
        LocalTraining {
            epochs,
            batch_size,
            optimizer: OptimizerSpec::Sgd { lr, momentum: 0.0, weight_decay: 0.0 },
            dp: None,
            update_dp: None,
            local: LocalAlgorithm::default(),
            compression: None,
        }
    }
}

impl LocalAlgorithm {
    /// Plain local SGD (FedAvg's party half).
    pub fn is_sgd(&self) -> bool {
        self.name.is_empty()
    }
}

impl Correction<'_> {
    /// Adds the terms to `grad` at `params`.
    pub fn apply(&self, params: &[f32], grad: &mut [f32]) {
        if let Some(a) = self.anchor
            && self.mu != 0.0
        {
            for ((g, p), a) in grad.iter_mut().zip(params).zip(a) {
                *g += self.mu * (p - a);
            }
        }
        if let Some(l) = self.linear {
            for (g, l) in grad.iter_mut().zip(l) {
                *g += l;
            }
        }
    }
}

/// Runs `cfg.epochs` epochs of minibatch training on `data`, updating `params` in place.
/// Batches are drawn by shuffling with `rng` each epoch; DP noise, if any, is seeded from
/// `noise_seed`.
pub fn train_local<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    opt: &mut Optimizer,
    rng: &mut R,
    noise_seed: u64,
) -> Result<TrainStats, LearnerError> {
    let seeded = crate::messages::NoiseSource::Seeded;
    train_local_with(learner, params, data, cfg, opt, rng, seeded, noise_seed, &Correction::default())
}

/// `train_local` with DP randomness from `source` (seeded from `noise_seed`, or the OS's) and
/// `correction` added to each gradient.
#[allow(clippy::too_many_arguments)]
pub fn train_local_with<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    opt: &mut Optimizer,
    rng: &mut R,
    source: crate::messages::NoiseSource,
    noise_seed: u64,
    correction: &Correction<'_>,
) -> Result<TrainStats, LearnerError> {
    if let Some(dp) = &cfg.dp {
        return crate::dp::train_local_dp(learner, params, data, cfg, dp, opt, rng, source, noise_seed, correction);
    }
    let d = data.example_len();
    let bs = cfg.batch_size.max(1);
    let mut grad = vec![0.0f32; params.len()];
    let mut batch = Batch::new(data, bs);
    let mut order: Vec<usize> = Vec::with_capacity(data.len());
    let mut stats = TrainStats::default();
    for _ in 0..cfg.epochs {
        // Each epoch shuffles 0..n afresh, so E epochs in one call equal E calls of one.
        order.clear();
        order.extend(0..data.len());
        order.shuffle(rng);
        for chunk in order.chunks(bs) {
            let n = data.gather(chunk, &mut batch);
            let s = learner.loss_and_grad(params, &batch.x[..n * d], batch.targets(n), &mut grad)?;
            correction.apply(params, &mut grad);
            opt.step(params, &grad);
            stats.batches.merge(s);
            stats.steps += 1;
        }
    }
    Ok(stats)
}

/// The gradient of the mean loss over all of `data` (`full`), or over one minibatch of
/// `batch_size` examples drawn with `rng`, at `params`, written into `grad`.
pub fn gradient<R: Rng>(
    learner: &mut dyn Learner,
    params: &[f32],
    data: &Dataset,
    batch_size: usize,
    full: bool,
    grad: &mut [f32],
    rng: &mut R,
) -> Result<BatchStats, LearnerError> {
    let d = data.example_len();
    let bs = batch_size.max(1);
    let order: Vec<usize> = if full {
        (0..data.len()).collect()
    } else {
        rand::seq::index::sample(rng, data.len(), bs.min(data.len())).into_vec()
    };
    let n = order.len().max(1) as f32;
    let mut part = vec![0.0f32; grad.len()];
    let mut batch = Batch::new(data, bs);
    let mut stats = BatchStats::default();
    grad.fill(0.0);
    for chunk in order.chunks(bs) {
        let m = data.gather(chunk, &mut batch);
        stats.merge(learner.loss_and_grad(params, &batch.x[..m * d], batch.targets(m), &mut part)?);
        // Mean over the chunk → its share of the mean over all examples.
        let w = m as f32 / n;
        for (g, p) in grad.iter_mut().zip(&part) {
            *g += w * p;
        }
    }
    Ok(stats)
}
