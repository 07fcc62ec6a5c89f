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
/// Execution model: each round the server calls `configure_fit`, sends the tasks, collects
/// replies (parties that fail are reported in `failures`, not in `replies`), then calls
/// `aggregate_fit`. An error from `aggregate_fit` ends the round without changing the global
/// model; the server records it. Evaluation follows the same pattern.
pub trait Strategy: Send {
    /// A short name for records.
    fn name(&self) -> &str;

    /// Chooses the parties for this round's training (indices into `num_clients`) and their
    /// tasks. `rng` is the round's client-sampling stream.
    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)>;

    /// Turns the replies into the next global parameters. Replies that are unusable (wrong
    /// length, non-finite values, no examples) are refused and reported in the second value.
    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError>;

    /// Chooses the parties that evaluate the new model. Default: every party.
    fn configure_evaluate(
        &mut self,
        round: u32,
        num_clients: usize,
        _rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, EvaluateTask)> {
        (0..num_clients).map(|c| (c, EvaluateTask { round })).collect()
    }

    /// Combines evaluation replies. Default: weighted by examples.
    fn aggregate_evaluate(&mut self, _round: u32, replies: &[(usize, EvaluateReply)]) -> Option<EvaluateReply> {
        weighted_evaluation(replies)
    }

    /// Numbers about the last aggregation worth recording (e.g. the client-level ε).
    fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// The state the strategy carries between rounds, for checkpoints; `None` for stateless
    /// strategies.
    fn state(&self) -> Option<StrategyState> {
        None
    }

    /// Restores the state a checkpoint recorded. A stateful strategy refuses `None`.
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
/// parties' test sets).
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
    Some(EvaluateReply { num_examples: count, loss: loss / n, accuracy: acc / n })
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
