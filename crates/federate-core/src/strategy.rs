//! Strategies: the server-side algorithm, one extension point per concern — which parties
//! train and how (`configure_fit`), how their replies become the next global model
//! (`aggregate_fit`), and who evaluates (`configure_evaluate`, `aggregate_evaluate`).

pub use crate::messages::{Rejection, StrategyError};

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::messages::{EvaluateReply, EvaluateTask, FitReply, FitTask};
use crate::params::Parameters;

/// The server-side algorithm of a federation.
///
/// Each round the server calls, in this order: `configure_fit`; the tasks go out and the
/// replies come back (a party that fails, times out or whose reply admission refuses is a
/// failure in the round record and is *not* in `replies`); `aggregate_fit`; then
/// `configure_evaluate`, the evaluations, `aggregate_evaluate`; then `metrics` and `state`
/// for the record and the checkpoint. Nothing is called concurrently. A new algorithm
/// usually implements [`crate::algorithms::ServerHalf`] instead and gets sampling,
/// stragglers and evaluation from FedAvg through [`crate::algorithms::Federated`].
pub trait Strategy: Send {
    /// A short name for records and checkpoints; a checkpoint is only restored into a
    /// strategy of the same name. Must not change during a run.
    fn name(&self) -> &str;

    /// The parties that train this round (indices below `num_clients`, each at most once)
    /// and their tasks. `rng` is the round's party-sampling stream (seeded in simulations,
    /// the OS's in deployments); draw every random choice from it. Leave each task's `seed`
    /// at 0: the server derives it per party. May update the strategy's own bookkeeping
    /// (ADMM sizes its table of contributions here). Returning no task is allowed: the
    /// round then fails in `aggregate_fit` with too few replies and the model stays.
    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)>;

    /// The next global parameters from this round's `replies` (party index, reply), each
    /// already admitted (count within its cap, reported numbers finite). Replies it cannot
    /// use (wrong length, non-finite values, no examples, a missing algorithm reply) are left
    /// out and returned as [`Rejection`]s with the reason; the server moves those parties to
    /// the round's failures. The parameters returned must have `global`'s layout.
    ///
    /// On `Err` (too few usable replies, a setting out of range) the round records the error
    /// and keeps the previous model. State may change before an `Err` or before returning a
    /// non-finite model: the server restores what `state` returned before the round. An
    /// `Ok` model with a non-finite value is refused the same way.
    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError>;

    /// Takes one admitted reply of `round` as it arrives, in task order, before
    /// `aggregate_fit`. A strategy whose aggregate is a running sum (FedAvg's mean) adds the
    /// reply's parameters to it and returns the reply with its parameters emptied, so a
    /// round of many parties never holds every update at once; `aggregate_fit` then gets
    /// that reply without parameters and must use what it folded. The default keeps the
    /// reply whole.
    fn fold_fit(&mut self, _round: u32, _global: &Parameters, _client: usize, reply: FitReply) -> FitReply {
        reply
    }

    /// The parties that evaluate the model `aggregate_fit` produced (or the kept one after a
    /// failed round). Default: every party.
    fn configure_evaluate(
        &mut self,
        round: u32,
        num_clients: usize,
        _rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, EvaluateTask)> {
        (0..num_clients).map(|c| (c, EvaluateTask { round, scaling: None, model: None, changes: Vec::new() })).collect()
    }

    /// The federated evaluation from the admitted evaluation replies; `None` when there is
    /// nothing to combine (the server then uses its central evaluation, if any). Default:
    /// the example-weighted mean of loss and accuracy.
    fn aggregate_evaluate(&mut self, _round: u32, replies: &[(usize, EvaluateReply)]) -> Option<EvaluateReply> {
        weighted_evaluation(replies)
    }

    /// Numbers about the last aggregation worth recording in the round record (the
    /// client-level ε, ADMM's ρ and residuals). Called after every round, whether it
    /// aggregated or not. Default: none.
    fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// What the strategy carries between rounds, for checkpoints and for rolling back a
    /// failed aggregation; `None` (the default) for stateless strategies. Called before and
    /// after every aggregation: keep it cheap to build.
    fn state(&self) -> Option<StrategyState> {
        None
    }

    /// Takes back what `state` returned (from a checkpoint, or to roll back a round). A
    /// stateful strategy refuses `None` and a state of another shape with an error naming
    /// what is missing, never resets silently; after an `Err` the strategy is unchanged.
    /// Default: accepts anything (stateless).
    fn restore(&mut self, _state: Option<&StrategyState>) -> Result<(), StrategyError> {
        Ok(())
    }
}

/// A strategy's state between rounds: small settings as text, large ones as vectors.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StrategyState {
    /// Scalars and flags, in the strategy's own one-line format.
    pub meta: String,
    /// Vectors (server momentum, control variates, per-party contributions).
    #[serde(skip)]
    pub vectors: Vec<Vec<f32>>,
}

/// The error a stateful strategy gives when a checkpoint holds no state for it.
pub fn missing_state(name: &str) -> StrategyError {
    StrategyError::Config(format!(
        "the checkpoint holds no {name} state; it was written by another strategy or version: resume with the \
         strategy that wrote it, or start a new run"
    ))
}

/// Example-weighted mean of loss and accuracy (equal to the accuracy on the union of the
/// parties' test sets), and the sum of their metric statistics (left empty when the parties'
/// statistics do not add up: different tasks).
pub fn weighted_evaluation(replies: &[(usize, EvaluateReply)]) -> Option<EvaluateReply> {
    // Summed in f64: reported counts never overflow the total.
    let n: f64 = replies.iter().map(|(_, r)| r.num_examples as f64).sum();
    if n == 0.0 {
        return None;
    }
    let (mut loss, mut acc) = (0.0, 0.0);
    for (_, r) in replies {
        loss += r.loss * r.num_examples as f64;
        acc += r.accuracy * r.num_examples as f64;
    }
    let count = replies.iter().fold(0usize, |a, (_, r)| a.saturating_add(r.num_examples));
    let mut stats = crate::messages::EvalStats::default();
    if replies.iter().any(|(_, r)| stats.merge(&r.stats).is_err()) {
        stats = Default::default();
    }
    Some(EvaluateReply { num_examples: count, loss: loss / n, accuracy: acc / n, stats })
}

/// Checks a reply against the global model; the reason it is unusable, if it is.
pub fn check_reply(global: &Parameters, reply: &FitReply) -> Result<(), String> {
    if reply.params.len() != global.len() {
        return Err(format!("sent {} parameters, the model has {}", reply.params.len(), global.len()));
    }
    if reply.num_examples == 0 {
        return Err("reported 0 training examples".into());
    }
    if let Some(i) = reply.params.iter().position(|v| !v.is_finite()) {
        return Err(format!("parameter {i} is {} (not finite)", reply.params[i]));
    }
    Ok(())
}

/// The replies that pass `check_reply`, and a rejection for each one that does not.
pub fn usable_replies<'a>(
    global: &Parameters,
    replies: &'a [(usize, FitReply)],
) -> (Vec<(usize, &'a FitReply)>, Vec<Rejection>) {
    let mut usable = Vec::with_capacity(replies.len());
    let mut rejected = Vec::new();
    for (c, r) in replies {
        match check_reply(global, r) {
            Ok(()) => usable.push((*c, r)),
            Err(reason) => rejected.push(Rejection { client: *c, reason }),
        }
    }
    (usable, rejected)
}

/// θ = Σ_k (n_k / n) θ_k over the usable replies, accumulated in f64.
pub fn weighted_average(global: &Parameters, replies: &[(usize, FitReply)]) -> (Option<Vec<f32>>, Vec<Rejection>) {
    let (usable, rejected) = usable_replies(global, replies);
    let usable: Vec<&FitReply> = usable.into_iter().map(|(_, r)| r).collect();
    (crate::robust::Aggregator::Mean.combine(&usable).unwrap_or(None), rejected)
}

/// Client sampling shared by strategies: `max(min, ⌈fraction · n⌉)` parties (capped at n),
/// chosen uniformly without replacement, in index order.
pub fn sample_clients(n: usize, fraction: f64, min: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let want = ((fraction * n as f64).ceil() as usize).max(min).min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    idx.truncate(want);
    idx.sort_unstable();
    idx
}
