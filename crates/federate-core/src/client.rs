//! Parties: the party-side `Client` trait and the standard party `LocalClient`, and the
//! server-side `ClientProxy` that hides whether a party runs in this process or across the
//! network. The messages they exchange (`FitTask`, `FitReply`, ...) are defined in
//! `messages` and re-exported here.

pub use crate::messages::{AdmmState, ClientError, EvaluateReply, EvaluateTask, FitReply, FitTask, PartyState};

use std::collections::BTreeMap;
use std::sync::Arc;

use federate_data::Dataset;

use crate::learner::Learner;
use crate::messages::{Correction, DpSgd, LocalAlgorithm, LocalTraining, PrivacyFloor, TrainStats};
use crate::params::Parameters;
use crate::seed;
use crate::seed::Stream;
use crate::train::{gradient, optimizer_for, train_local_with};
use federate_privacy::{Entry, Ledger};

/// A party, seen from its own side: trains and evaluates on data that never leaves it.
///
/// Execution model: the server calls `fit` or `evaluate` and waits for the answer. An error
/// means the party contributes nothing this round; the server records it as a failure and
/// carries on with the others.
pub trait Client: Send {
    /// Trains locally from `global` and returns the new parameters.
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError>;
    /// Evaluates `params` on the party's test data.
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError>;
    /// What this party keeps between rounds, for a checkpoint (`None`: it cannot say).
    fn state(&self) -> Option<PartyState> {
        None
    }
    /// Takes back what [`Client::state`] returned before a restart.
    fn restore(&mut self, state: PartyState) -> Result<(), ClientError> {
        let _ = state;
        Err(ClientError::MissingState("this party cannot restore saved state".into()))
    }
}

/// The server's handle on a party: in this process (`InProcess`) or remote.
pub trait ClientProxy: Send {
    /// The party's identity.
    fn id(&self) -> &str;
    /// Sends a fit task and waits for the reply.
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError>;
    /// Sends an evaluation task and waits for the reply.
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError>;
    /// The party's state between rounds where the server can see it (a party in this
    /// process); `None` for a remote party, which keeps its own.
    fn party_state(&self) -> Option<PartyState> {
        None
    }
    /// Gives the party the state a checkpoint recorded for it.
    fn restore_party_state(&mut self, state: PartyState) -> Result<(), ClientError> {
        let _ = state;
        Err(ClientError::MissingState(format!("party {} keeps its own state and cannot be given one", self.id())))
    }
    /// Whether the server may call this party at the same time as others (true for remote
    /// parties, which compute elsewhere; false for parties sharing this process's cores).
    fn concurrent(&self) -> bool {
        false
    }
    /// The non-blocking transport this party is reached through, if any: the round loop then
    /// hands the transport every task for its parties at once ([`Transport`]) instead of
    /// calling `fit` / `evaluate` from a thread per party.
    fn transport(&self) -> Option<Arc<dyn Transport>> {
        None
    }
}

/// Many parties reached through one non-blocking transport (the network server): the round
/// loop gives it a whole round's tasks for its parties in one call, and it runs them
/// concurrently on its own runtime, so a round over 10,000 parties needs no thread per party.
///
/// Contract: the answer has one outcome per job, in job order, each with the seconds from
/// the start of the call to that job's answer; a party that fails is an `Err` in its place,
/// never a missing entry. Parties are named by [`ClientProxy::id`].
pub trait Transport: Send + Sync {
    /// Sends every fit task (party id, task) with the model `global` and waits for all replies.
    fn fit_all(&self, global: &Parameters, jobs: &[(&str, &FitTask)]) -> Vec<(Result<FitReply, ClientError>, f64)>;
    /// Sends every evaluation task with `params` and waits for all replies.
    fn evaluate_all(
        &self,
        params: &Parameters,
        jobs: &[(&str, &EvaluateTask)],
    ) -> Vec<(Result<EvaluateReply, ClientError>, f64)>;
}

/// A party living in the server's process (simulation).
pub struct InProcess<C: Client> {
    id: String,
    client: C,
}

impl<C: Client> InProcess<C> {
    /// Wraps a client under an identity.
    pub fn new(id: impl Into<String>, client: C) -> Self {
        InProcess { id: id.into(), client }
    }
}

impl<C: Client> ClientProxy for InProcess<C> {
    fn id(&self) -> &str {
        &self.id
    }
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        self.client.fit(global, task)
    }
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        self.client.evaluate(params, task)
    }
    fn party_state(&self) -> Option<PartyState> {
        self.client.state()
    }
    fn restore_party_state(&mut self, state: PartyState) -> Result<(), ClientError> {
        self.client.restore(state)
    }
}

/// Called after each local epoch with (round, epochs done, epochs in all); for progress
/// displays.
pub type EpochHook = Arc<dyn Fn(u32, usize, usize) + Send + Sync>;

/// The standard party: a learner plus local train and test sets.
pub struct LocalClient<L: Learner> {
    learner: L,
    train: Dataset,
    test: Dataset,
    on_epoch: Option<EpochHook>,
    ledger: Ledger,
    floor: PrivacyFloor,
    last_summary: Option<LocalSummary>,
    noise: crate::messages::NoiseSource,
    admm: Option<AdmmState>,
    scaffold: Option<Vec<f32>>,
}

impl PartyState {
    /// Whether there is nothing to keep (the party has not taken part in a stateful algorithm).
    pub fn is_empty(&self) -> bool {
        self.ledger.entries.is_empty() && self.admm.is_none() && self.scaffold.is_none()
    }
}

impl<L: Learner> LocalClient<L> {
    /// A party holding `train` and `test`.
    pub fn new(learner: L, train: Dataset, test: Dataset) -> Self {
        LocalClient {
            learner,
            train,
            test,
            on_epoch: None,
            ledger: Ledger::new(),
            floor: PrivacyFloor::default(),
            last_summary: None,
            noise: crate::messages::NoiseSource::Seeded,
            admm: None,
            scaffold: None,
        }
    }
    /// Where DP randomness comes from (default: seeded, for reproducible simulations; a
    /// deployment uses `NoiseSource::Secure`).
    pub fn with_noise_source(mut self, noise: crate::messages::NoiseSource) -> Self {
        self.noise = noise;
        self
    }
    /// Refuses tasks that ask for less privacy than `floor` (what the party's own
    /// configuration agreed to).
    pub fn with_privacy_floor(mut self, floor: PrivacyFloor) -> Self {
        self.floor = floor;
        self
    }
    /// The party's privacy ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
    /// Reports every finished local epoch to `hook`.
    pub fn with_epoch_hook(mut self, hook: EpochHook) -> Self {
        self.on_epoch = Some(hook);
        self
    }
    /// Training examples held.
    pub fn num_train(&self) -> usize {
        self.train.len()
    }
}

fn model_err(e: federate_nn::NnError) -> ClientError {
    ClientError::Model(e.to_string())
}

impl<L: Learner> LocalClient<L> {
    /// The task's local epochs, one at a time (the batch stream and optimiser carry over, so
    /// this equals one call with all epochs) to report progress.
    fn epochs(
        &mut self,
        task: &FitTask,
        params: &mut [f32],
        opt: &mut federate_nn::Optimizer,
        rng: &mut rand_chacha::ChaCha8Rng,
        correction: &Correction<'_>,
    ) -> Result<TrainStats, ClientError> {
        let one = LocalTraining { epochs: 1, ..task.training.clone() };
        let mut stats = TrainStats::default();
        for epoch in 0..task.training.epochs {
            let s = train_local_with(&mut self.learner, params, &self.train, &one, opt, rng, self.noise, correction)
                .map_err(model_err)?;
            stats.steps += s.steps;
            stats.batches.merge(s.batches);
            if let Some(hook) = &self.on_epoch {
                hook(task.round, epoch + 1, task.training.epochs);
            }
        }
        Ok(stats)
    }
}

impl<L: Learner> LocalClient<L> {
    fn fit_task(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let expected = self.learner.layout().len();
        if global.len() != expected {
            return Err(ClientError::WrongParameterCount { got: global.len(), expected });
        }
        let mut params = global.values.clone();
        let mut opt = optimizer_for(&task.training, params.len()).map_err(model_err)?;
        let mut rng = seed::stream(task.seed, Stream::Batches, &[]);
        self.learner.reseed(seed::derive(task.seed, Stream::Dropout, &[]));
        // What this round will release, checked against the party's own floor and budget
        // before any training: (the ledger entry, ε after it).
        let planned = self.plan_privacy(task)?;
        let started = std::time::Instant::now();
        let mut metrics = BTreeMap::new();
        let mut extra = None;
        let stats = match task.training.local {
            LocalAlgorithm::Gradient { full } => match &task.training.dp {
                Some(dp) => crate::dp::private_gradient_step(
                    &mut self.learner,
                    &global.values,
                    &self.train,
                    task.training.batch_size,
                    full,
                    dp,
                    &mut params,
                    &mut rng,
                    self.noise,
                )
                .map_err(model_err)?,
                None => {
                    let s = gradient(
                        &mut self.learner,
                        &global.values,
                        &self.train,
                        task.training.batch_size,
                        full,
                        &mut params,
                        &mut rng,
                    )
                    .map_err(model_err)?;
                    TrainStats { steps: 0, batches: s }
                }
            },
            LocalAlgorithm::Sgd => self.epochs(task, &mut params, &mut opt, &mut rng, &Correction::default())?,
            LocalAlgorithm::Prox { mu } => {
                let c = Correction { anchor: Some(&global.values), mu, linear: None };
                self.epochs(task, &mut params, &mut opt, &mut rng, &c)?
            }
            LocalAlgorithm::Admm { rho, has_state } => {
                let z = &global.values;
                let mut st = match (self.admm.take(), has_state) {
                    (Some(st), true) => st,
                    (None, true) => {
                        return Err(ClientError::MissingState(
                            "ADMM: this party took part before but holds no dual variable (it restarted); the \
                             server must restart the run or drop this party"
                                .into(),
                        ));
                    }
                    // First participation (or the server started a new run): y = 0.
                    (_, false) => AdmmState { dual: vec![0.0; z.len()], last: z.clone(), rho },
                };
                // Dual ascent with the consensus just received: y ← y + ρ(θ_last − z).
                let mut primal = 0.0f64;
                for ((y, x), z) in st.dual.iter_mut().zip(&st.last).zip(z) {
                    *y += st.rho * (x - z);
                    primal += ((x - z) as f64).powi(2);
                }
                metrics.insert("primal_residual_sq".into(), primal);
                let c = Correction { anchor: Some(z), mu: rho, linear: Some(&st.dual) };
                let s = self.epochs(task, &mut params, &mut opt, &mut rng, &c)?;
                st.last = params.clone();
                st.rho = rho;
                for (p, y) in params.iter_mut().zip(&st.dual) {
                    *p += y / rho;
                }
                self.admm = Some(st);
                s
            }
            LocalAlgorithm::Scaffold { has_state } => {
                let Some(c) = task.extra.clone() else {
                    return Err(ClientError::Model("SCAFFOLD task without the server control variate".into()));
                };
                // An empty c is the server's initial zero vector.
                let c = if c.is_empty() { Arc::new(vec![0.0; params.len()]) } else { c };
                if c.len() != params.len() {
                    return Err(ClientError::WrongParameterCount { got: c.len(), expected: params.len() });
                }
                let ck = match (self.scaffold.take(), has_state) {
                    (Some(ck), true) => ck,
                    (None, true) => {
                        return Err(ClientError::MissingState(
                            "SCAFFOLD: this party took part before but holds no control variate (it restarted)".into(),
                        ));
                    }
                    (_, false) => vec![0.0; params.len()],
                };
                let corr: Vec<f32> = c.iter().zip(&ck).map(|(c, k)| c - k).collect();
                let cc = Correction { anchor: None, mu: 0.0, linear: Some(&corr) };
                let s = self.epochs(task, &mut params, &mut opt, &mut rng, &cc)?;
                // Option II: c_k⁺ = c_k − c + (x − y)/(K·η), where K·η is how far K steps move
                // per unit of gradient (larger with momentum, whose velocity builds up).
                let Some(k) = task.training.optimizer.path_length(s.steps.max(1) as u64) else {
                    return Err(ClientError::Model(
                        "SCAFFOLD needs SGD local steps (train.optimizer = \"sgd\")".into(),
                    ));
                };
                let k = k as f32;
                let new_ck: Vec<f32> = ck
                    .iter()
                    .zip(c.iter())
                    .zip(global.values.iter().zip(&params))
                    .map(|((ck, c), (x, y))| ck - c + (x - y) / k)
                    .collect();
                extra = Some(new_ck.iter().zip(&ck).map(|(n, o)| n - o).collect());
                self.scaffold = Some(new_ck);
                s
            }
        };
        let mut summary = LocalSummary {
            train_loss: stats.batches.mean_loss(),
            train_accuracy: stats.batches.accuracy(),
            steps: stats.steps,
            train_seconds: started.elapsed().as_secs_f64(),
            clip_indicator: None,
            epsilon: None,
        };
        if let Some(u) = &task.training.update_dp {
            let bit = crate::client_dp::privatize_update(&mut params, &global.values, u, self.noise, task.seed)
                .map_err(model_err)?;
            summary.clip_indicator = Some(bit);
        }
        if let Some((entry, eps)) = planned {
            if entry.steps != stats.steps as u64 {
                return Err(ClientError::Model(format!(
                    "DP training took {} steps where {} were planned and accounted",
                    stats.steps, entry.steps
                )));
            }
            self.ledger.record(entry).map_err(|e| ClientError::Model(e.to_string()))?;
            summary.epsilon = Some(eps);
        }
        self.last_summary = Some(summary);
        release(&task.training, &summary, &mut metrics);
        Ok(FitReply { params, num_examples: self.train.len(), metrics, extra })
    }
}

impl<L: Learner> LocalClient<L> {
    /// The ledger entry this task's DP-SGD will add and the ε after it, once the task is
    /// checked against the party's floor and budget; `None` without DP-SGD.
    fn plan_privacy(&self, task: &FitTask) -> Result<Option<(Entry, f64)>, ClientError> {
        let dp: Option<&DpSgd> = task.training.dp.as_ref();
        let q = dp.map_or(0.0, |d| d.task_rate(&task.training, self.train.len()));
        self.floor.check(dp, q).map_err(ClientError::Refused)?;
        let Some(dp) = dp else { return Ok(None) };
        dp.validate().map_err(ClientError::Refused)?;
        let entry = dp.entry(q, DpSgd::task_steps(&task.training, q));
        let (accountant, delta) = self.floor.accounting(dp);
        let next =
            self.ledger.epsilon_with(entry, accountant, delta).map_err(|e| ClientError::Refused(e.to_string()))?;
        if let Some(budget) = self.floor.budget(dp)
            && next > budget
        {
            return Err(ClientError::BudgetSpent(format!(
                "ε would reach {next:.3} after this round, over the budget of {budget}; this party stops training"
            )));
        }
        Ok(Some((entry, next)))
    }

    /// What the last fit computed, all of it, for the party's own log (under DP only part of
    /// it is sent: see [`release`]).
    pub fn last_summary(&self) -> Option<LocalSummary> {
        self.last_summary
    }
}

/// Everything a party knows after local training, before deciding what to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalSummary {
    /// Mean loss over the batches trained on (exact).
    pub train_loss: f64,
    /// Accuracy over the batches trained on (exact).
    pub train_accuracy: f64,
    /// Optimiser steps.
    pub steps: usize,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Distributed client-level DP: the noised indicator of an unclipped update.
    pub clip_indicator: Option<f64>,
    /// The ε the party's ledger reports after this round (DP-SGD).
    pub epsilon: Option<f64>,
}

/// The one place that decides what a party's reply may carry besides its update and example
/// count. Without DP: everything. Under DP-SGD or update-level DP only what the privacy
/// guarantee covers or does not depend on the data: the ε spent (from the ledger), the step
/// count (fixed by q and the epochs), and the clipping indicator only when it is noised
/// (adaptive clipping). Exact training loss and accuracy of the sampled batches, the time
/// spent training (it grows with the Poisson batch sizes) and an un-noised clip indicator
/// stay with the party: it may log them locally ([`LocalClient::last_summary`]).
pub fn release(training: &LocalTraining, s: &LocalSummary, metrics: &mut BTreeMap<String, f64>) {
    let private = training.dp.is_some() || training.update_dp.is_some();
    metrics.insert("steps".into(), s.steps as f64);
    if let Some(e) = s.epsilon {
        metrics.insert("epsilon".into(), e);
    }
    if let (Some(bit), Some(u)) = (s.clip_indicator, &training.update_dp)
        && u.count_noise_std > 0.0
    {
        metrics.insert("clip_indicator".into(), bit);
    }
    if !private {
        metrics.insert("train_loss".into(), s.train_loss);
        metrics.insert("train_accuracy".into(), s.train_accuracy);
        metrics.insert("train_seconds".into(), s.train_seconds);
    }
}

/// Between tasks a party holds no training buffers: a simulation keeps every party in one
/// process (100 parties × a CNN workspace for batch 600 is ~24 GiB), and a deployed party
/// runs one task a round, so allocating them per task costs little.
impl<L: Learner> Client for LocalClient<L> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let reply = self.fit_task(global, task);
        self.learner.release();
        reply
    }

    fn evaluate(&mut self, params: &Parameters, _task: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        let expected = self.learner.layout().len();
        if params.len() != expected {
            return Err(ClientError::WrongParameterCount { got: params.len(), expected });
        }
        let s = self.learner.evaluate(&params.values, &self.test.x, &self.test.y);
        self.learner.release();
        let s = s.map_err(model_err)?;
        Ok(EvaluateReply { num_examples: s.count, loss: s.mean_loss(), accuracy: s.accuracy() })
    }

    fn state(&self) -> Option<PartyState> {
        Some(PartyState { ledger: self.ledger.clone(), admm: self.admm.clone(), scaffold: self.scaffold.clone() })
    }

    fn restore(&mut self, state: PartyState) -> Result<(), ClientError> {
        let expected = self.learner.layout().len();
        let vectors = state.admm.iter().flat_map(|a| [&a.dual, &a.last]).chain(&state.scaffold);
        if let Some(v) = vectors.into_iter().find(|v| v.len() != expected) {
            return Err(ClientError::WrongParameterCount { got: v.len(), expected });
        }
        if let Some(a) = &state.admm
            && !(a.rho > 0.0 && a.rho.is_finite())
        {
            return Err(ClientError::Model(format!("saved ADMM state has ρ = {}; it must be positive", a.rho)));
        }
        self.ledger = state.ledger;
        self.admm = state.admm;
        self.scaffold = state.scaffold;
        Ok(())
    }
}
