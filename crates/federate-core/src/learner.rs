//! The model-specific side of a party: loss, gradients and evaluation on flat parameters,
//! in core's own types (`BatchStats`, `ClipNorm`, `LearnerError`). Local training and every
//! algorithm's party half are written once on top of `Learner`; any training engine can
//! implement it. The built-in one over `federate-nn` is `NnLearner` in `nn_learner.rs`, the
//! only module of this crate that names federate-nn.

use std::sync::Arc;

pub use crate::messages::{BatchStats, ClipNorm, LearnerError};
use crate::params::Layout;
pub use federate_data::Targets;

impl BatchStats {
    /// Adds another batch's numbers.
    pub fn merge(&mut self, other: BatchStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.count += other.count;
    }
    /// Mean loss (0 for an empty batch).
    pub fn mean_loss(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.loss_sum / self.count as f64 }
    }
    /// Fraction correct (0 for an empty batch).
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.correct as f64 / self.count as f64 }
    }
}

/// Computes losses and gradients for batches of one model.
///
/// The caller (a party's local training) owns the parameters and the gradient buffer: it
/// calls `loss_and_grad` (or `clipped_grad` under DP-SGD) once per batch and applies its own
/// update. Parameters are always `layout().len()` values; inputs are `input_len()` values per
/// example, labels below the model's class count. Calls are sequential.
pub trait Learner: Send {
    /// The parameter layout; the same for the learner's whole life.
    fn layout(&self) -> Arc<Layout>;
    /// Initial parameters drawn from `seed`: equal seeds give equal values.
    fn init(&self, seed: u64) -> Vec<f32>;
    /// Values per input example.
    fn input_len(&self) -> usize;
    /// Writes the gradient of the batch's mean loss at `params` into `grad` and returns the
    /// batch's loss and accuracy. On `Err` (sizes that do not fit, a label out of range) the
    /// batch was not processed, `grad` is unspecified and the learner stays usable.
    fn loss_and_grad(
        &mut self,
        params: &[f32],
        x: &[f32],
        y: Targets<'_>,
        grad: &mut [f32],
    ) -> Result<BatchStats, LearnerError>;
    /// Loss and accuracy of `params` over a whole set, without gradients or randomness
    /// (dropout off). Errors as `loss_and_grad`'s.
    fn evaluate(&mut self, params: &[f32], x: &[f32], y: Targets<'_>) -> Result<BatchStats, LearnerError>;
    /// Values per example [`Learner::evaluate_scores`] writes: one per class (probabilities) under a
    /// multiclass loss, else one (the positive class's probability, or the predicted value).
    fn score_len(&self) -> usize;
    /// [`Learner::evaluate`] that also writes each example's scores (`score_len()` values per
    /// example) into `scores`, for the metrics a party reports.
    fn evaluate_scores(
        &mut self,
        params: &[f32],
        x: &[f32],
        y: Targets<'_>,
        scores: &mut [f32],
    ) -> Result<BatchStats, LearnerError>;
    /// Reseeds any randomness inside the model (dropout masks); a party calls it at the start
    /// of every fit with the task's dropout seed, so a fit's result depends only on the task.
    fn reseed(&mut self, seed: u64);
    /// DP-SGD: writes each example's gradient norm (in `norm`, of its own loss) into `norms`
    /// and the sum of the per-example gradients, each clipped to `clip`, into `grad`.
    /// Learners that cannot compute per-example gradients return an error (the default), and
    /// the party refuses DP tasks with it.
    #[allow(clippy::too_many_arguments)]
    fn clipped_grad(
        &mut self,
        _params: &[f32],
        _x: &[f32],
        _y: Targets<'_>,
        _clip: f32,
        _norm: ClipNorm,
        _grad: &mut [f32],
        _norms: &mut [f32],
    ) -> Result<BatchStats, LearnerError> {
        Err(LearnerError::Unsupported("this learner cannot clip per-example gradients, so it cannot run DP-SGD".into()))
    }
    /// Frees the buffers kept between calls; the next call allocates them again. Results do
    /// not change (a fit reseeds the model's randomness before its first batch). Default:
    /// nothing to free.
    fn release(&mut self) {}
    /// Training FLOPs per example, if known (for throughput reports). Default: unknown.
    fn train_flops_per_example(&self) -> Option<f64> {
        None
    }
}
