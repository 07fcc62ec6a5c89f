//! The messages of a round, at the bottom of the crate: what the server asks of a party
//! (`FitTask`, `EvaluateTask` with their `LocalTraining` and DP settings), what a party
//! answers (`FitReply`, `EvaluateReply`) or fails with (`ClientError`), what it keeps between
//! rounds (`PartyState`), and the strategy's errors. Plain data: the behaviour on these types
//! lives with the modules that act on them (`impl` blocks in `dp.rs`, `train.rs`, ...), so
//! every other module depends on this one and this one on none of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use federate_nn::{BatchStats, OptimizerSpec};
use federate_privacy::{Accountant, Ledger};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Instructions for one party's local training in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitTask {
    /// The round, from 1.
    pub round: u32,
    /// Local training settings.
    pub training: LocalTraining,
    /// Seed of this party's batch and dropout streams for this round.
    pub seed: u64,
    /// A second vector some algorithms send with the model (SCAFFOLD: the server's control
    /// variate c).
    #[serde(skip)]
    pub extra: Option<Arc<Vec<f32>>>,
}

/// A party's answer to a `FitTask`.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReply {
    /// The locally trained parameters.
    pub params: Vec<f32>,
    /// Training examples the party used (its FedAvg weight).
    pub num_examples: usize,
    /// Named metrics (`train_loss`, `train_accuracy`, `steps`).
    pub metrics: BTreeMap<String, f64>,
    /// A second vector some algorithms return (SCAFFOLD: the change of c_k).
    pub extra: Option<Vec<f32>>,
}

/// Instructions for one party's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateTask {
    /// The round, from 1.
    pub round: u32,
}

/// A party's evaluation of the parameters it was sent, on its own test data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvaluateReply {
    /// Test examples evaluated.
    pub num_examples: usize,
    /// Mean loss.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
}

/// Why a party could not answer.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ClientError {
    /// The party's model refused the input (sizes, labels).
    #[error("model error: {0}")]
    Model(String),
    /// The parameters sent do not fit the party's model.
    #[error("received {got} parameters but the model has {expected}")]
    WrongParameterCount {
        /// Values received.
        got: usize,
        /// Values the model has.
        expected: usize,
    },
    /// The party could not be reached or dropped out.
    #[error("party unavailable: {0}")]
    Unavailable(String),
    /// The task asks for less privacy than the party agreed to (its own floor), so it refuses.
    #[error("task refused: {0}")]
    Refused(String),
    /// Training this round would take the party past its privacy budget, so it refuses.
    #[error("privacy budget spent: {0}")]
    BudgetSpent(String),
    /// The algorithm needs state this party should have kept from earlier rounds and does
    /// not have (it restarted).
    #[error("party-side state missing: {0}")]
    MissingState(String),
}

/// What a party keeps between rounds: everything a restarted party needs to continue exactly
/// where it stopped (its training data and model come from the config).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PartyState {
    /// Every DP release of the party's data so far (its privacy ledger).
    pub ledger: Ledger,
    /// ADMM's dual and last solve.
    pub admm: Option<AdmmState>,
    /// SCAFFOLD's control variate c_k.
    pub scaffold: Option<Vec<f32>>,
}

/// What an ADMM party keeps between rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmmState {
    /// The dual y_k.
    pub dual: Vec<f32>,
    /// θ_k of its last solve.
    pub last: Vec<f32>,
    /// The ρ it used.
    pub rho: f32,
}

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
    pub dp: Option<DpSgd>,
    /// Client-level DP done by the party itself (distributed DP-FedAvg), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_dp: Option<UpdateDp>,
    /// What the party computes: plain local SGD (FedAvg), or a variant.
    #[serde(default, skip_serializing_if = "LocalAlgorithm::is_sgd")]
    pub local: LocalAlgorithm,
}

/// The party-side algorithm of a round.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LocalAlgorithm {
    /// Local epochs of (DP-)SGD from the global model (FedAvg).
    #[default]
    Sgd,
    /// FedProx: local epochs on f_k(θ) + (μ/2)‖θ − θ_g‖².
    Prox {
        /// μ ≥ 0.
        mu: f32,
    },
    /// FedSGD: the gradient of the mean loss at the global model, over all local data
    /// (`full`) or over one random minibatch of `batch_size`.
    Gradient {
        /// Full-batch gradient.
        full: bool,
    },
    /// Consensus ADMM: local epochs on f_k(θ) + y_kᵀ(θ − z) + (ρ/2)‖θ − z‖², with the dual
    /// y_k kept by the party across rounds; the reply is θ_k + y_k/ρ.
    Admm {
        /// ρ > 0.
        rho: f32,
        /// Whether this party has taken part before (so it must hold its dual).
        has_state: bool,
    },
    /// SCAFFOLD (option II): local SGD with the correction c − c_k; the reply carries the
    /// change of the party's control variate.
    Scaffold {
        /// Whether this party has taken part before (so it must hold c_k).
        has_state: bool,
    },
}

/// Data-independent terms added to every local gradient: `mu·(θ − anchor) + linear`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Correction<'a> {
    /// The point the proximal term pulls towards.
    pub anchor: Option<&'a [f32]>,
    /// Weight of the proximal term.
    pub mu: f32,
    /// A constant vector added to the gradient.
    pub linear: Option<&'a [f32]>,
}

/// What a local training run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrainStats {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Loss and accuracy over every training batch seen.
    pub batches: BatchStats,
}

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

/// How each step's batch is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Every example independently with probability q (add/remove accounting).
    #[default]
    Poisson,
    /// Exactly `batch_size` examples without replacement (replace-one accounting, RDP of
    /// Wang, Balle & Kasiviswanathan 2019; Gaussian mechanism only).
    FixedSize,
}

/// Where a party's DP randomness comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseSource {
    /// Streams derived from the task seed; floating-point noise (reproducible simulations).
    #[default]
    Seeded,
    /// The operating system's entropy and exact discrete noise (deployments).
    Secure,
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
    /// Poisson or fixed-size batches.
    #[serde(default)]
    pub sampling: Sampling,
}

/// What a party itself agreed to, checked against every task before it trains: a server
/// (changed, misconfigured or malicious) cannot make it release its data with less noise, a
/// larger sampling rate or a larger ε than its own configuration allows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PrivacyFloor {
    /// The DP-SGD settings of the party's own configuration (`None`: it asks for none and
    /// accepts what the server sends).
    pub own: Option<DpSgd>,
    /// The largest sampling rate it accepts (its own configuration's), if any.
    pub max_rate: Option<f64>,
}

/// What a party does to its update before sending it (distributed client-level DP).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateDp {
    /// Clip the update θ_k − θ to this L2 norm.
    pub clip: f64,
    /// Then add N(0, noise_std²) to each coordinate.
    pub noise_std: f64,
    /// Noise on the clipped-or-not indicator (adaptive clipping), 0 for none.
    pub count_noise_std: f64,
}

/// Why a strategy could not produce the next model.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum StrategyError {
    /// Too few usable replies.
    #[error("round {round}: {got} usable replies, at least {need} needed")]
    TooFewReplies {
        /// The round.
        round: u32,
        /// Usable replies.
        got: usize,
        /// Replies required.
        need: usize,
    },
    /// A setting out of range.
    #[error("{0}")]
    Config(String),
}

/// A reply the strategy refused, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Index of the party in the server's list.
    pub client: usize,
    /// The reason.
    pub reason: String,
}
