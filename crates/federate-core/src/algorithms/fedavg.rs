//! Federated averaging (McMahan et al. 2017), the base every other algorithm composes with:
//! party sampling, stragglers, evaluation and the local-training settings. Its party half is
//! plain local SGD ([`super::Sgd`]).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Algorithm;
use crate::messages::{EvaluateTask, FitReply, FitTask, LocalTraining, Rejection, StrategyError};
use crate::params::Parameters;
use crate::strategy::{Strategy, sample_clients, usable_replies};

/// FedAvg in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "fedavg",
    about: "E local epochs of SGD; θ ← Σ (n_k/n) θ_k",
    settings: &[],
    strategy: |base, _| Ok(Box::new(base)),
    party: None,
};

/// Federated averaging (McMahan et al. 2017): sampled parties train locally from the global
/// model; the server replaces it with the example-weighted mean of their parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FedAvg {
    /// Fraction of parties that train each round, in (0, 1].
    pub fraction_fit: f64,
    /// At least this many parties train (when available).
    pub min_fit_clients: usize,
    /// Fraction of parties that evaluate each round, in [0, 1].
    pub fraction_evaluate: f64,
    /// Fewest usable replies that still produce a new model.
    pub min_replies: usize,
    /// Local training of every party.
    pub training: LocalTraining,
    /// Fraction of the chosen parties that are stragglers each round (FedProx's systems
    /// heterogeneity): they manage only a random 1..=epochs local epochs.
    #[serde(default)]
    pub stragglers: f64,
    /// Drop stragglers instead of using their partial work (what FedAvg does in the
    /// FedProx paper).
    #[serde(default)]
    pub drop_stragglers: bool,
    /// How the usable replies are combined (the example-weighted mean, or a rule robust to
    /// malicious parties).
    #[serde(default)]
    pub aggregator: crate::robust::Aggregator,
    /// The mean of the round's replies so far, when they are folded as they arrive
    /// ([`Strategy::fold_fit`]); never saved (it lives within one round). Leave it `None`.
    #[serde(skip)]
    pub running: Option<RunningMean>,
}

/// A round's example-weighted sum of parameters, added reply by reply in task order with the
/// same arithmetic as the mean over all replies at once, so folding changes no bit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunningMean {
    round: u32,
    acc: Vec<f64>,
    total: f64,
    /// The parties folded in, in order.
    clients: Vec<usize>,
}

impl FedAvg {
    /// Every party trains every round with `training`, evaluates every round, one reply
    /// suffices, no stragglers.
    pub fn new(training: LocalTraining) -> Self {
        FedAvg {
            fraction_fit: 1.0,
            min_fit_clients: 1,
            fraction_evaluate: 1.0,
            min_replies: 1,
            training,
            stragglers: 0.0,
            drop_stragglers: false,
            aggregator: crate::robust::Aggregator::Mean,
            running: None,
        }
    }

    /// The usable replies combined by `aggregator` (the example-weighted mean by default), or
    /// `TooFewReplies` when fewer than `min_replies` are usable.
    pub fn average(
        &self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Vec<f32>, Vec<Rejection>), StrategyError> {
        let folded = self.running.as_ref().filter(|r| r.round == round && !r.clients.is_empty());
        let (avg, usable, rejected) = match folded {
            // Every usable reply was folded as it came (the server folds each one): what is
            // left unfolded are replies `fold` found unusable, refused here as before.
            Some(run) => {
                let rest: Vec<(usize, FitReply)> =
                    replies.iter().filter(|(c, _)| !run.clients.contains(c)).cloned().collect();
                let (more, rejected) = usable_replies(global, &rest);
                if more.is_empty() {
                    (run.mean(), run.clients.len(), rejected)
                } else {
                    // Only when a usable reply was not folded (a caller that folds part).
                    let mut run = run.clone();
                    for (c, r) in more {
                        run.add(c, r);
                    }
                    (run.mean(), run.clients.len(), rejected)
                }
            }
            None => {
                let (usable, rejected) = usable_replies(global, replies);
                let usable: Vec<&FitReply> = usable.into_iter().map(|(_, r)| r).collect();
                (self.aggregator.combine(&usable)?, usable.len(), rejected)
            }
        };
        match avg {
            Some(values) if usable >= self.min_replies.max(1) => Ok((values, rejected)),
            _ => Err(StrategyError::TooFewReplies { round, got: usable, need: self.min_replies.max(1) }),
        }
    }

    /// Folds a usable reply into the round's running mean (the example-weighted mean only;
    /// a robust rule needs every update at once, and an unusable reply is kept whole for
    /// `average` to refuse): returns the reply, its parameters emptied when folded.
    pub fn fold(&mut self, round: u32, global: &Parameters, client: usize, mut reply: FitReply) -> FitReply {
        if self.aggregator != crate::robust::Aggregator::Mean || crate::strategy::check_reply(global, &reply).is_err() {
            return reply;
        }
        let run = self.running.get_or_insert_with(RunningMean::default);
        if run.round != round || run.acc.len() != global.len() {
            *run = RunningMean { round, acc: vec![0.0; global.len()], total: 0.0, clients: Vec::new() };
        }
        run.add(client, &reply);
        reply.params = Vec::new();
        reply
    }

    /// [`FedAvg::average`] as the next global model (FedAvg's and FedProx's aggregation).
    pub fn next_model(
        &self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let (values, rejected) = self.average(round, global, replies)?;
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), StrategyError> {
        if !(self.fraction_fit > 0.0 && self.fraction_fit <= 1.0) {
            return Err(StrategyError::Config(format!("fraction_fit = {} must be in (0, 1]", self.fraction_fit)));
        }
        if !(0.0..=1.0).contains(&self.fraction_evaluate) {
            return Err(StrategyError::Config(format!(
                "fraction_evaluate = {} must be in [0, 1]",
                self.fraction_evaluate
            )));
        }
        if !(0.0..=1.0).contains(&self.stragglers) {
            return Err(StrategyError::Config(format!("stragglers = {} must be in [0, 1]", self.stragglers)));
        }
        if self.training.epochs == 0 || self.training.batch_size == 0 {
            return Err(StrategyError::Config("epochs and batch_size must be at least 1".into()));
        }
        self.aggregator.validate()?;
        self.training.optimizer.validate().map_err(|e| StrategyError::Config(e.to_string()))
    }
}

impl FedAvg {
    /// Fit tasks for the `chosen` parties, with stragglers drawn from `rng`: each chosen
    /// party is a straggler with probability `stragglers`; a straggler is dropped or runs a
    /// uniform 1..=epochs local epochs.
    pub fn tasks_for(&self, round: u32, chosen: Vec<usize>, rng: &mut ChaCha8Rng) -> Vec<(usize, FitTask)> {
        let mut out = Vec::with_capacity(chosen.len());
        for c in chosen {
            let mut training = self.training.clone();
            if self.stragglers > 0.0 && rng.random::<f64>() < self.stragglers {
                if self.drop_stragglers {
                    continue;
                }
                training.epochs = rng.random_range(1..=training.epochs.max(1));
            }
            out.push((
                c,
                FitTask { round, training, seed: 0, vector: None, scaling: None, model: None, changes: Vec::new() },
            ));
        }
        out
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &str {
        "fedavg"
    }

    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        _run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)> {
        let chosen = sample_clients(num_clients, self.fraction_fit, self.min_fit_clients, rng);
        self.tasks_for(round, chosen, rng)
    }

    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        self.next_model(round, global, replies)
    }
    fn fold_fit(&mut self, round: u32, global: &Parameters, client: usize, reply: FitReply) -> FitReply {
        self.fold(round, global, client, reply)
    }

    fn configure_evaluate(
        &mut self,
        round: u32,
        num_clients: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, EvaluateTask)> {
        if self.fraction_evaluate == 0.0 {
            return Vec::new();
        }
        sample_clients(num_clients, self.fraction_evaluate, 1, rng)
            .into_iter()
            .map(|c| (c, EvaluateTask { round, scaling: None, model: None, changes: Vec::new() }))
            .collect()
    }
}

impl RunningMean {
    /// Adds a usable reply (`θ_k` weighted by `n_k`), as `robust::weighted_mean` does.
    fn add(&mut self, client: usize, r: &FitReply) {
        let w = r.num_examples as f64;
        for (a, v) in self.acc.iter_mut().zip(&r.params) {
            *a += w * *v as f64;
        }
        self.total += w;
        self.clients.push(client);
    }
    /// The mean so far (`None` when no example was folded), rounded as `weighted_mean` does.
    fn mean(&self) -> Option<Vec<f32>> {
        if self.total == 0.0 {
            return None;
        }
        let inv = 1.0 / self.total;
        Some(self.acc.iter().map(|a| (a * inv) as f32).collect())
    }
}
