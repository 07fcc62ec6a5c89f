//! The messages of a round, at the bottom of the crate: what the server asks of a party
//! (`FitTask`, `EvaluateTask` with their `LocalTraining` and DP settings), what a party
//! answers (`FitReply`, `EvaluateReply`) or fails with (`ClientError`), what it keeps between
//! rounds (`PartyState`), and the strategy's errors. Plain data: the behaviour on these types
//! lives with the modules that act on them (`impl` blocks in `dp.rs`, `train.rs`, ...), so
//! every other module depends on this one and this one on none of them.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use federate_data::stats::Moments;
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
    /// Seed of this party's batch, dropout and noise streams for this round. The server
    /// derives it (`seed::Stream::Fit` of the round and party): strategies leave it 0.
    pub seed: u64,
    /// A vector the algorithm's server half sends with the model, shared by every party of
    /// the round (SCAFFOLD: the server's control variate c; empty until it is sized).
    #[serde(skip)]
    pub vector: Option<Arc<Vec<f32>>>,
    /// Tables: the federation's feature statistics from round 0, which the party scales its
    /// rows with before training (the server sets it; strategies leave it `None`).
    #[serde(skip)]
    pub scaling: Option<Arc<Moments>>,
    /// Which global model the task carries: the round whose aggregate it is (0: the model the
    /// run started or resumed from). A transport sends a model a party already received by
    /// this number instead of its values; `None` (what strategies leave, the server sets it):
    /// always the values.
    #[serde(default)]
    pub model: Option<u32>,
    /// Under a compressed broadcast: the encoded changes leading to the task's model from
    /// earlier global models, oldest first, each from the one before's target; a transport
    /// sends a party holding one of those models the changes from it instead of the values
    /// (`broadcast::changes_for`). The server sets them; strategies leave them empty.
    #[serde(skip)]
    pub changes: Vec<Arc<ModelDelta>>,
}

/// A global model as the compressed change from the one before it (see `broadcast`): a party
/// holding model `base` gets model `base`'s values plus `payload` decoded; with no base, the
/// payload is the model itself and any party can decode it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDelta {
    /// The global model the change is from (the round whose aggregate it is); `None`: the
    /// payload carries the model's values themselves (a fresh run's initial model).
    pub base: Option<u32>,
    /// The global model the change leads to.
    pub target: u32,
    /// The encoded change (`compress`'s format, relative), or the encoded values.
    pub payload: Vec<u8>,
}

/// A party's answer to a `FitTask`: typed fields for everything the framework reads, and
/// `metrics` only for what a user's own party adds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FitReply {
    /// The locally trained parameters (FedSGD: the gradient; ADMM: θ_k + y_k/ρ).
    pub params: Vec<f32>,
    /// Training examples the party used (its FedAvg weight).
    pub num_examples: usize,
    /// What local training did (loss, accuracy and time only where releasing them is safe).
    pub training: TrainSummary,
    /// What the party's privacy accounting reports.
    pub privacy: PrivacyReport,
    /// What the algorithm's party half returns besides the parameters.
    pub algorithm: AlgorithmReply,
    /// User-defined metrics (none from the built-in party); never read by the framework.
    pub metrics: BTreeMap<String, f64>,
    /// When the task asked for compression: the encoded update exactly as it travels (see
    /// `compress`); `params` then holds what the server decodes from it. `None`: `params`
    /// travel as 32-bit floats.
    pub upload: Option<Vec<u8>>,
}

/// What a party's local training did, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TrainSummary {
    /// Optimiser steps taken (0 for a gradient reply).
    pub steps: u64,
    /// Mean training loss over the batches trained on; `None` under DP (it is not covered
    /// by the guarantee).
    pub loss: Option<f64>,
    /// Training accuracy over those batches; `None` under DP.
    pub accuracy: Option<f64>,
    /// Seconds spent training; `None` under DP (it grows with the Poisson batch sizes).
    pub seconds: Option<f64>,
}

/// What a party's privacy accounting releases with its update.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PrivacyReport {
    /// The ε of the party's ledger after this round (DP-SGD).
    pub epsilon: Option<f64>,
    /// Update-level DP with adaptive clipping: the noised indicator b − ½ of an unclipped
    /// update (sent only when noised).
    pub clip_indicator: Option<f64>,
}

/// What an algorithm's party half returns besides the parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum AlgorithmReply {
    /// Nothing (FedAvg and most algorithms).
    #[default]
    None,
    /// A vector as long as the model that the server half folds into its own state
    /// (SCAFFOLD: the change Δc_k of the party's control variate).
    Vector(Vec<f32>),
    /// ADMM: the squared primal residual ‖θ_last − z‖² the party saw at its dual update.
    PrimalResidual(f64),
}

/// Instructions for one party's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateTask {
    /// The round, from 1.
    pub round: u32,
    /// Tables: the federation's feature statistics from round 0 (as in [`FitTask`]).
    #[serde(skip)]
    pub scaling: Option<Arc<Moments>>,
    /// Which global model the task carries (as in [`FitTask`]).
    #[serde(default)]
    pub model: Option<u32>,
    /// The model as compressed changes (as in [`FitTask`]).
    #[serde(skip)]
    pub changes: Vec<Arc<ModelDelta>>,
}

/// A party's evaluation of the parameters it was sent, on its own test data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluateReply {
    /// Test examples evaluated.
    pub num_examples: usize,
    /// Mean loss.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
    /// The sufficient statistics the task's metrics are read from (empty from a learner or
    /// peer that does not report them).
    #[serde(default)]
    pub stats: EvalStats,
}

/// Sufficient statistics of one evaluation. Parties' statistics add up to those of the
/// pooled test sets, so the federation's metrics (AUC, F1, calibration, R², ...) are exact
/// (AUC to the bin resolution) without one per-example score leaving a party.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    /// Classification: counts by true class (row) and predicted class (column), classes ×
    /// classes, row-major. Empty for regression.
    pub confusion: Vec<u64>,
    /// Binary: histogram of the positive class's probability over positive examples
    /// (equal bins over [0, 1]). Empty otherwise.
    pub positives: Vec<u64>,
    /// Binary: the same histogram over negative examples.
    pub negatives: Vec<u64>,
    /// Classification: per bin of confidence (the predicted class's probability), the
    /// examples, their summed confidence and how many were right.
    pub calibration: Vec<CalibrationBin>,
    /// Classification: −Σ ln p(true class), each p clamped to at least 1e-15.
    pub log_loss_sum: f64,
    /// Regression: sums over the examples.
    pub regression: Option<RegressionSums>,
}

/// One confidence bin of a calibration (reliability) diagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Examples whose confidence falls in the bin.
    pub count: u64,
    /// Their summed confidence.
    pub confidence: f64,
    /// How many of them were predicted right.
    pub correct: u64,
}

/// Sums over a regression test set: with them RMSE, MAE and R² of the pooled set follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RegressionSums {
    /// Examples.
    pub count: u64,
    /// Σ (prediction − target)².
    pub sq_err: f64,
    /// Σ |prediction − target|.
    pub abs_err: f64,
    /// Σ target.
    pub y: f64,
    /// Σ target².
    pub y2: f64,
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
    /// The state of the algorithm's party half (SCAFFOLD's c_k, ADMM's dual, FedDyn's
    /// gradient), if it keeps any.
    pub algorithm: Option<AlgorithmState>,
    /// Error feedback of compressed updates: what the codec has not sent yet, as long as the
    /// model.
    pub residual: Option<Vec<f32>>,
}

/// An algorithm's party-side state, in a form checkpoints store without knowing the
/// algorithm: a few scalars and vectors as long as the model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlgorithmState {
    /// The registered name of the algorithm that wrote it (`algorithms::find`).
    pub name: String,
    /// Its scalars (ADMM: ρ).
    pub scalars: Vec<f64>,
    /// Its vectors, each as long as the model.
    pub vectors: Vec<Vec<f32>>,
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
    /// What the party computes: plain local SGD (FedAvg), or another algorithm's party half.
    #[serde(default, skip_serializing_if = "LocalAlgorithm::is_sgd")]
    pub local: LocalAlgorithm,
    /// How the party compresses its update before sending it (`None`: 32-bit floats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<UpdateCompression>,
}

/// How a party compresses the update it sends: a lossy codec, optionally with error
/// feedback (what the codec dropped is added to the next round's update) and zstd on top.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateCompression {
    /// The lossy codec.
    pub codec: Codec,
    /// Keep what the codec dropped (the residual) and add it to the next update.
    pub error_feedback: bool,
    /// zstd over the encoded bytes.
    pub zstd: bool,
}

/// A lossy codec for updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// Unbiased stochastic rounding to `bits` (4 or 8) per value, per block of values.
    Quantize {
        /// Bits per value: 4 or 8.
        bits: u8,
    },
    /// The `fraction` of values largest in magnitude, with their indices.
    TopK {
        /// Fraction of the values sent, in (0, 1].
        fraction: f64,
    },
    /// Unbiased stochastic rounding to `bits` (4 or 8) per value onto one grid every party
    /// shares, [−range, range] (values beyond it are clipped; error feedback carries the
    /// rest): the parties' integer codes then add up, the form secure aggregation sums in a
    /// ring.
    Grid {
        /// Bits per value: 4 or 8.
        bits: u8,
        /// Half-width of the grid, > 0.
        range: f32,
    },
}

/// The party half of a round's algorithm: which registered algorithm (`algorithms::find`)
/// and its settings for this round. Open by design: a new algorithm needs no new variant
/// here, nor in the wire format.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LocalAlgorithm {
    /// The algorithm's registered name; empty means plain local SGD.
    #[serde(default)]
    pub name: String,
    /// Its settings (FedProx: `mu`; ADMM: `rho`; FedSGD: `full` as 0 or 1; FedDyn:
    /// `alpha`), read and range-checked by its party half.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, f64>,
    /// Whether this party has taken part before, so it must hold the algorithm's state
    /// (ADMM's dual, SCAFFOLD's c_k): a party that lost it refuses instead of restarting.
    #[serde(default)]
    pub has_state: bool,
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

/// Which optimiser, with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// `v ← μ·v + (g + λ·θ)`, `θ ← θ − lr·v` (plain SGD when μ = 0).
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum μ in [0, 1).
        #[serde(default)]
        momentum: f32,
        /// L2 weight decay λ ≥ 0.
        #[serde(default)]
        weight_decay: f32,
    },
    /// Adam (Kingma & Ba), L2 weight decay added to the gradient.
    Adam {
        /// Learning rate.
        lr: f32,
        /// First-moment decay.
        #[serde(default = "beta1")]
        beta1: f32,
        /// Second-moment decay.
        #[serde(default = "beta2")]
        beta2: f32,
        /// Denominator guard.
        #[serde(default = "eps")]
        eps: f32,
        /// L2 weight decay λ ≥ 0.
        #[serde(default)]
        weight_decay: f32,
    },
}

fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.999
}
fn eps() -> f32 {
    1e-8
}

/// Loss and accuracy over the batches a learner processed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum of per-example losses.
    pub loss_sum: f64,
    /// Examples whose highest score was the label.
    pub correct: usize,
    /// Examples processed.
    pub count: usize,
}

/// Which norm per-example gradients are clipped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipNorm {
    /// Euclidean norm (the Gaussian mechanism's sensitivity).
    L2,
    /// Sum of absolute values (the Laplace mechanism's sensitivity).
    L1,
}

/// Why a learner, an optimiser or local training could not proceed. The text names the
/// thing and the fix; parties send it as `ClientError::Model`.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum LearnerError {
    /// The input does not fit the model (sizes, labels).
    #[error("{0}")]
    Input(String),
    /// A setting out of range (an optimiser's or DP's hyper-parameter).
    #[error("{0}")]
    Setting(String),
    /// The learner cannot do what was asked (per-example gradients for DP-SGD), or the
    /// system failed it (the OS's random source).
    #[error("{0}")]
    Unsupported(String),
}

/// The noise DP-SGD adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Every example independently with probability q (add/remove accounting).
    #[default]
    Poisson,
    /// Exactly `batch_size` examples without replacement (replace-one accounting, RDP of
    /// Wang, Balle & Kasiviswanathan 2019; Gaussian mechanism only).
    FixedSize,
}

/// Where a party's DP randomness comes from (`privacy.noise` in a config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
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
