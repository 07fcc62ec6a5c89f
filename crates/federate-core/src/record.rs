//! What a round records (`RoundRecord` and its parts), as plain data: written to
//! rounds.jsonl, read back on resume, shown on the console. Depends on no other module of
//! the crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the round's choice of parties comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartySampling {
    /// From the run's seed: a simulation reruns bit for bit, but whoever knows the seed knows
    /// who took part each round.
    #[default]
    Seeded,
    /// From the operating system's randomness: who takes part cannot be predicted, so
    /// client-level DP's amplification by sampling holds (deployments).
    Os,
}

/// One party's training in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFit {
    /// Party identity.
    pub id: String,
    /// Examples it trained on.
    pub num_examples: usize,
    /// Mean training loss over its batches (`None`: not sent, as under DP).
    pub train_loss: Option<f64>,
    /// Training accuracy over its batches.
    pub train_accuracy: Option<f64>,
    /// Wall-clock seconds of its fit call, as the server saw it (transfer included).
    pub seconds: f64,
    /// Seconds the party reports it spent training, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// The (sample-level) ε this party has spent so far, when it trains with DP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

/// One party's evaluation in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEval {
    /// Party identity.
    pub id: String,
    /// Test examples.
    pub num_examples: usize,
    /// Mean loss.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// The task's metrics on this party's test set (see `metrics::METRICS`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// A party that contributed nothing at some stage, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Party identity.
    pub id: String,
    /// `fit` or `evaluate`.
    pub stage: String,
    /// The reason.
    pub reason: String,
}

/// Evaluation on a test set the server holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CentralEval {
    /// Examples.
    pub num_examples: usize,
    /// Mean loss.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
}

/// What happened in one round; written as one JSON line per round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round, from 1.
    pub round: u32,
    /// The new global model's test accuracy (federated, example-weighted; else central).
    pub accuracy: Option<f64>,
    /// The matching test loss.
    pub loss: Option<f64>,
    /// The task's metrics over the parties' pooled test sets (read off their summed
    /// statistics; see `metrics::METRICS`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Example-weighted mean training loss of the parties that trained.
    pub train_loss: Option<f64>,
    /// The largest ε spent so far by a party that trained this round (DP runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Whether a new global model was produced.
    pub aggregated: bool,
    /// Why not, if it was not.
    pub error: Option<String>,
    /// Parties that trained.
    pub fit: Vec<ClientFit>,
    /// Parties that evaluated.
    pub evaluate: Vec<ClientEval>,
    /// Parties that failed or whose replies were refused.
    pub failures: Vec<Failure>,
    /// Centralised evaluation, when configured.
    pub centralized: Option<CentralEval>,
    /// Seconds spent training (all parties).
    pub fit_seconds: f64,
    /// Seconds spent evaluating.
    pub evaluate_seconds: f64,
    /// Seconds for the whole round.
    pub seconds: f64,
    /// The strategy's own numbers (client-level ε, clip norm, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strategy: BTreeMap<String, f64>,
    /// Where this round's choice of parties came from.
    #[serde(default)]
    pub party_sampling: PartySampling,
    /// Parameter bytes the round sent to parties: the model (and an algorithm's shared
    /// vector) with every fit and evaluation task, at 4 bytes a value.
    #[serde(default)]
    pub bytes_down: u64,
    /// Parameter bytes the parties sent back: each admitted update as it travelled (its
    /// compressed payload, else 4 bytes a value) plus an algorithm's vector.
    #[serde(default)]
    pub bytes_up: u64,
}

impl RoundRecord {
    /// The value of metric `name` this round: from the pooled metrics, else accuracy and loss
    /// from the federated or central evaluation.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            _ if self.metrics.contains_key(name) => self.metrics.get(name).copied(),
            "accuracy" => self.accuracy,
            "loss" => self.loss,
            _ => None,
        }
    }
}
