//! Local training: epochs of shuffled minibatch steps on a party's own data.

use federate_data::Dataset;
use federate_nn::{BatchStats, NnError, Optimizer, OptimizerSpec};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::learner::Learner;

/// How a party trains locally in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTraining {
    /// Passes over the local data.
    pub epochs: usize,
    /// Examples per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Optimiser and its hyper-parameters.
    pub optimizer: OptimizerSpec,
    /// Sample-level differential privacy (DP-SGD), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<crate::dp::DpSgd>,
    /// Client-level DP done by the party itself (distributed DP-FedAvg), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_dp: Option<crate::client_dp::UpdateDp>,
}

/// What a local training run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrainStats {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Loss and accuracy over every training batch seen.
    pub batches: BatchStats,
}

/// Runs `cfg.epochs` epochs of minibatch training on `data`, updating `params` in place.
/// Batches are drawn by shuffling with `rng` each epoch; DP noise, if any, is seeded.
pub fn train_local<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    opt: &mut Optimizer,
    rng: &mut R,
) -> Result<TrainStats, NnError> {
    train_local_with(learner, params, data, cfg, opt, rng, crate::dp::NoiseSource::Seeded)
}

/// `train_local` with DP randomness from `source`.
pub fn train_local_with<R: Rng>(
    learner: &mut dyn Learner,
    params: &mut [f32],
    data: &Dataset,
    cfg: &LocalTraining,
    opt: &mut Optimizer,
    rng: &mut R,
    source: crate::dp::NoiseSource,
) -> Result<TrainStats, NnError> {
    if let Some(dp) = &cfg.dp {
        return crate::dp::train_local_dp(learner, params, data, cfg, dp, opt, rng, source);
    }
    let d = data.example_len();
    let bs = cfg.batch_size.max(1);
    let mut grad = vec![0.0f32; params.len()];
    let mut xb = vec![0.0f32; bs * d];
    let mut yb = vec![0u32; bs];
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut stats = TrainStats::default();
    for _ in 0..cfg.epochs {
        order.shuffle(rng);
        for chunk in order.chunks(bs) {
            for (j, &i) in chunk.iter().enumerate() {
                xb[j * d..(j + 1) * d].copy_from_slice(&data.x[i * d..(i + 1) * d]);
                yb[j] = data.y[i];
            }
            let n = chunk.len();
            let s = learner.loss_and_grad(params, &xb[..n * d], &yb[..n], &mut grad)?;
            opt.step(params, &grad);
            stats.batches.merge(s);
            stats.steps += 1;
        }
    }
    Ok(stats)
}

/// Builds the optimiser a local run uses.
pub fn optimizer_for(cfg: &LocalTraining, n: usize) -> Result<Optimizer, NnError> {
    cfg.optimizer.build(n)
}
