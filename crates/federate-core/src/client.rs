//! Parties: the party-side `Client` trait and the standard party `LocalClient`, and the
//! server-side `ClientProxy` that hides whether a party runs in this process or across the
//! network. The messages they exchange (`FitTask`, `FitReply`, ...) are defined in
//! `messages` and re-exported here.

pub use crate::algorithms::EpochHook;
pub use crate::messages::{ClientError, EvaluateReply, EvaluateTask, FitReply, FitTask, Moments, PartyState};

use std::collections::BTreeMap;
use std::sync::Arc;

use federate_data::Dataset;

use crate::algorithms::{LocalRun, PartyStep, model_err, party_step};
use crate::learner::Learner;
use crate::messages::{LocalTraining, NoiseSource, PrivacyFloor, PrivacyReport, TrainSummary};
use crate::params::Parameters;
use crate::seed;
use crate::seed::Stream;
use federate_privacy::{Entry, Ledger};

/// A party, seen from its own side: trains and evaluates on data that never leaves it.
///
/// The server (directly, or through `federate join`'s runner) calls `fit` or `evaluate` and
/// waits; one call at a time. An `Err` means the party contributes nothing to this round's
/// training or evaluation: the server records the error (its text is shown to the operator,
/// cut to 512 bytes) and carries on with the others. [`ClientError::BudgetSpent`] is the
/// exception the server acts on: when every party answers it, the run stops.
pub trait Client: Send {
    /// Trains locally from `global` as `task` says and returns the new parameters (FedSGD:
    /// the gradient; ADMM: θ_k + y_k/ρ; see the algorithm's party half), the examples used,
    /// what training did and what the party's privacy accounting releases. A task asking for
    /// less privacy than the party agreed to is `Refused`; one whose model size differs is
    /// `WrongParameterCount`. After an `Err` the party's state (ledger, algorithm state) must
    /// be as before the call: nothing was released.
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError>;
    /// Evaluates `params` on the party's own test data. Releases only the count, mean loss and
    /// accuracy; changes no state.
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError>;
    /// What this party keeps between rounds (its privacy ledger and algorithm state), for a
    /// checkpoint or its store; `None` (the default) when it cannot say. Called after every
    /// round it trains.
    fn state(&self) -> Option<PartyState> {
        None
    }
    /// Takes back what [`Client::state`] returned, after a restart. Refuses state of the
    /// wrong size or shape with an error naming it, leaving the party unchanged. The default
    /// refuses any state.
    fn restore(&mut self, state: PartyState) -> Result<(), ClientError> {
        let _ = state;
        Err(ClientError::MissingState("this party cannot restore saved state".into()))
    }
    /// Round 0: the per-feature statistics of the party's training rows as read (before
    /// any scaling), for the server to add up; `None` (the default) when it holds no table.
    /// The same every time it is asked.
    fn statistics(&mut self) -> Result<Option<Moments>, ClientError> {
        Ok(None)
    }
}

/// The server's handle on a party: in this process (`InProcess`) or remote.
///
/// The round loop calls `fit` and `evaluate` for the tasks of this party only; an `Err`
/// (unreachable, timed out, refused, failed on the party) is a failure of this party in this
/// round, never of the round. When `transport` returns one, the loop uses it instead of
/// `fit` / `evaluate` for every party that shares it.
pub trait ClientProxy: Send {
    /// The party's identity, stable for the run (records and checkpoints are keyed by it).
    fn id(&self) -> &str;
    /// Sends a fit task and waits for the reply; the reply is admitted by the server after.
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError>;
    /// Sends an evaluation task and waits for the reply.
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError>;
    /// The party's state between rounds where the server can see it (a party in this
    /// process, for the run's checkpoint); `None` (the default) for a remote party, which
    /// keeps its own.
    fn party_state(&self) -> Option<PartyState> {
        None
    }
    /// Gives the party the state a checkpoint recorded for it. The default refuses: a remote
    /// party restores from its own store.
    fn restore_party_state(&mut self, state: PartyState) -> Result<(), ClientError> {
        let _ = state;
        Err(ClientError::MissingState(format!("party {} keeps its own state and cannot be given one", self.id())))
    }
    /// Round 0: the party's [`Client::statistics`]. Default: none (no table).
    fn statistics(&mut self) -> Result<Option<Moments>, ClientError> {
        Ok(None)
    }
    /// Whether the server may call this party at the same time as others (true for remote
    /// parties, which compute elsewhere; false, the default, for parties sharing this
    /// process's cores).
    fn concurrent(&self) -> bool {
        false
    }
    /// The non-blocking transport this party is reached through, if any: the round loop then
    /// hands the transport every task for its parties at once ([`Transport`]) instead of
    /// calling `fit` / `evaluate` from a thread per party. Default: none.
    fn transport(&self) -> Option<Arc<dyn Transport>> {
        None
    }
}

/// Many parties reached through one non-blocking transport (the network server): the round
/// loop gives it a whole round's tasks for its parties in one call, and it runs them
/// concurrently on its own runtime, so a round over 10,000 parties needs no thread per party.
///
/// Contract: every job's outcome goes to `done` once, as soon as it is in (in any order, named
/// by the job's index), with the seconds from the start of the call to that job's answer; a
/// party that fails is an `Err`, never a missing call; the call returns when every job has
/// had its outcome. The round loop hands replies on as they come (in task order), so a
/// round's updates can be folded into the aggregate rather than all held at once. Parties
/// are named by [`ClientProxy::id`].
pub trait Transport: Send + Sync {
    /// Sends every fit task (party id, task) with the model `global`; each reply to `done`.
    fn fit_all(&self, global: &Parameters, jobs: &[(&str, &FitTask)], done: &TransportDone<'_, FitReply>);
    /// Sends every evaluation task with `params`; each reply to `done`.
    fn evaluate_all(
        &self,
        params: &Parameters,
        jobs: &[(&str, &EvaluateTask)],
        done: &TransportDone<'_, EvaluateReply>,
    );
}

/// Where a [`Transport`] hands each job's outcome: (job index, outcome, seconds).
pub type TransportDone<'a, R> = dyn Fn(usize, Result<R, ClientError>, f64) + Sync + 'a;

/// A party living in the server's process (simulation).
pub struct InProcess<C: Client> {
    id: String,
    client: C,
    parallel: bool,
}

impl<C: Client> InProcess<C> {
    /// Wraps a client under an identity; it trains when its turn comes, one party after
    /// another.
    pub fn new(id: impl Into<String>, client: C) -> Self {
        InProcess { id: id.into(), client, parallel: false }
    }
    /// Lets the round run this party beside others, on the server's workers
    /// ([`crate::Server::with_workers`]); its client must then use only its own share of the
    /// threads.
    pub fn parallel(mut self) -> Self {
        self.parallel = true;
        self
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
    fn statistics(&mut self) -> Result<Option<Moments>, ClientError> {
        self.client.statistics()
    }
    fn concurrent(&self) -> bool {
        self.parallel
    }
}

/// The standard party: a learner plus local train and test sets.
pub struct LocalClient<L: Learner> {
    learner: L,
    /// Shared with whoever built the party (a simulation keeps its own handle for the
    /// baselines): one copy of the rows, until a table party scales them.
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    on_epoch: Option<EpochHook>,
    ledger: Ledger,
    floor: PrivacyFloor,
    last_summary: Option<LocalSummary>,
    noise: NoiseSource,
    /// The party half of the algorithm of the last task, with the state it keeps.
    step: Option<(String, Box<dyn PartyStep>)>,
    /// A table party's round-0 side.
    table: Option<crate::scaling::TableRows>,
    /// Error feedback: what compression has not sent yet.
    residual: Option<Vec<f32>>,
}

impl PartyState {
    /// Whether there is nothing to keep (the party has not taken part in a stateful algorithm).
    pub fn is_empty(&self) -> bool {
        self.ledger.entries.is_empty() && self.algorithm.is_none() && self.residual.is_none()
    }
}

impl<L: Learner> LocalClient<L> {
    /// A party holding `train` and `test` (owned, or shared through an `Arc`).
    pub fn new(learner: L, train: impl Into<Arc<Dataset>>, test: impl Into<Arc<Dataset>>) -> Self {
        LocalClient {
            learner,
            train: train.into(),
            test: test.into(),
            on_epoch: None,
            ledger: Ledger::new(),
            floor: PrivacyFloor::default(),
            last_summary: None,
            noise: NoiseSource::Seeded,
            step: None,
            table: None,
            residual: None,
        }
    }
    /// Marks the data as a table's rows as read (unscaled): the party answers round 0 with
    /// their statistics and scales them with the federation's before its first task.
    pub fn with_table(
        mut self,
        features: Vec<String>,
        numeric: Vec<bool>,
        scaling: federate_data::table::Scaling,
    ) -> Self {
        self.table = Some(crate::scaling::TableRows::new(&self.train, &self.test, features, numeric, scaling));
        self
    }
    /// Scales a table party's rows with the task's round-0 statistics (once).
    fn scale_for(&mut self, federation: Option<&Arc<Moments>>) -> Result<(), ClientError> {
        match self.table.as_mut() {
            Some(t) => t.ensure(federation, &mut self.train, &mut self.test),
            None if federation.is_some() => Err(ClientError::Model(
                "the server sent round-0 table statistics, but this party holds no table: check data.dataset".into(),
            )),
            None => Ok(()),
        }
    }
    /// Where DP randomness comes from (default: seeded, for reproducible simulations; a
    /// deployment uses `NoiseSource::Secure`).
    pub fn with_noise_source(mut self, noise: NoiseSource) -> Self {
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

impl<L: Learner> LocalClient<L> {
    /// The party half for `name`: the one kept from earlier tasks, or a fresh one (a task of
    /// another algorithm starts another run, so the old state goes).
    fn step_for(&mut self, training: &LocalTraining) -> Result<&mut Box<dyn PartyStep>, ClientError> {
        if self.step.as_ref().is_none_or(|(n, _)| *n != training.local.name) {
            self.step = Some((training.local.name.clone(), party_step(&training.local)?));
        }
        match &mut self.step {
            Some((_, step)) => Ok(step),
            None => Err(ClientError::Model("no party half".into())),
        }
    }

    /// The dispatcher: checks, plans the privacy release, runs the algorithm's party half,
    /// then update-level DP and the ledger, and decides what the reply may say.
    fn fit_task(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let expected = self.learner.layout().len();
        if global.len() != expected {
            return Err(ClientError::WrongParameterCount { got: global.len(), expected });
        }
        // What this round will release, checked against the party's own floor and budget
        // before any training: (the ledger entry, ε after it).
        let planned = self.plan_privacy(task)?;
        let mut params = global.values.clone();
        let opt = task.training.optimizer.build(params.len()).map_err(model_err)?;
        self.learner.reseed(seed::derive(task.seed, Stream::Dropout, &[]));
        let started = std::time::Instant::now();
        let Some((_, step)) = self.step.as_mut() else {
            return Err(ClientError::Model("no party half".into()));
        };
        let mut run = LocalRun {
            learner: &mut self.learner,
            train: &self.train,
            training: &task.training,
            round: task.round,
            seed: task.seed,
            opt,
            rng: seed::stream(task.seed, Stream::Batches, &[]),
            noise: self.noise,
            on_epoch: self.on_epoch.as_ref(),
        };
        let (stats, algorithm) = step.fit(&mut run, task, &global.values, &mut params)?;
        let relative = step.reply_is_model();
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
        // Compression comes last: it only post-processes what DP released. The residual
        // changes only once nothing can fail any more.
        let mut upload = None;
        if let Some(c) = &task.training.compression {
            let mut residual = self.residual.clone();
            let seed = seed::derive(task.seed, Stream::Compression, &[]);
            let (payload, sent) =
                crate::compress::compress_reply(c, &params, &global.values, relative, &mut residual, seed)
                    .map_err(|e| ClientError::Model(e.to_string()))?;
            params = sent;
            upload = Some(payload);
            self.residual = residual;
        }
        self.last_summary = Some(summary);
        let (training, privacy) = release(&task.training, &summary);
        let num_examples = self.train.len();
        Ok(FitReply { params, num_examples, training, privacy, algorithm, metrics: BTreeMap::new(), upload })
    }
}

impl<L: Learner> LocalClient<L> {
    /// The ledger entry this task's DP-SGD will add and the ε after it, once the task is
    /// checked against the party's floor and budget; `None` without DP-SGD.
    /// Also makes the task's party half current (it plans the steps).
    fn plan_privacy(&mut self, task: &FitTask) -> Result<Option<(Entry, f64)>, ClientError> {
        let n = self.train.len();
        let step = self.step_for(&task.training)?;
        let plan = match &task.training.dp {
            Some(dp) => Some((dp, step.dp_steps(&task.training, dp, n)?)),
            None => None,
        };
        let q = plan.map_or(0.0, |(_, (q, _))| q);
        self.floor.check(plan.map(|(dp, _)| dp), q).map_err(ClientError::Refused)?;
        let Some((dp, (q, steps))) = plan else { return Ok(None) };
        dp.validate().map_err(ClientError::Refused)?;
        let entry = dp.entry(q, steps);
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
pub fn release(training: &LocalTraining, s: &LocalSummary) -> (TrainSummary, PrivacyReport) {
    let private = training.dp.is_some() || training.update_dp.is_some();
    let noised_bit = training.update_dp.is_some_and(|u| u.count_noise_std > 0.0);
    let summary = TrainSummary {
        steps: s.steps as u64,
        loss: (!private).then_some(s.train_loss),
        accuracy: (!private).then_some(s.train_accuracy),
        seconds: (!private).then_some(s.train_seconds),
    };
    let privacy = PrivacyReport { epsilon: s.epsilon, clip_indicator: s.clip_indicator.filter(|_| noised_bit) };
    (summary, privacy)
}

/// Runs `f` on a worker of the current rayon pool (at once if this thread is one). The
/// training step's parallel loops then hand work to the other workers from inside the pool,
/// instead of each loop waking the pool from outside and putting this thread to sleep until
/// it is done (two context switches per loop, tens of thousands in a run).
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() { f() } else { rayon::scope(|_| f()) }
}

impl<L: Learner> LocalClient<L> {
    fn evaluate_task(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        self.scale_for(task.scaling.as_ref())?;
        let expected = self.learner.layout().len();
        if params.len() != expected {
            return Err(ClientError::WrongParameterCount { got: params.len(), expected });
        }
        let k = self.learner.score_len();
        let mut scores = vec![0.0f32; self.test.len() * k];
        let s = self.learner.evaluate_scores(&params.values, &self.test.x, self.test.targets(), &mut scores);
        self.learner.release();
        let s = s.map_err(model_err)?;
        let pre = self.table.as_ref().and_then(|t| t.preprocessing());
        let stats = crate::metrics::EvalStats::of_set(&mut scores, k, &self.test, pre).map_err(ClientError::Model)?;
        Ok(EvaluateReply { num_examples: s.count, loss: s.mean_loss(), accuracy: s.accuracy(), stats })
    }
}

/// Between tasks a party holds no training buffers: a simulation keeps every party in one
/// process (100 parties × a CNN workspace for batch 600 is ~24 GiB), and a deployed party
/// runs one task a round, so allocating them per task costs little.
impl<L: Learner> Client for LocalClient<L> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        on_pool(|| {
            self.scale_for(task.scaling.as_ref())?;
            let reply = self.fit_task(global, task);
            self.learner.release();
            reply
        })
    }

    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        on_pool(|| self.evaluate_task(params, task))
    }
    fn statistics(&mut self) -> Result<Option<Moments>, ClientError> {
        Ok(self.table.as_ref().map(|t| t.statistics()))
    }

    fn state(&self) -> Option<PartyState> {
        let algorithm = self.step.as_ref().and_then(|(_, s)| s.state());
        Some(PartyState { ledger: self.ledger.clone(), algorithm, residual: self.residual.clone() })
    }

    fn restore(&mut self, state: PartyState) -> Result<(), ClientError> {
        let expected = self.learner.layout().len();
        let step = match state.algorithm {
            None => None,
            Some(a) => {
                if let Some(v) = a.vectors.iter().find(|v| v.len() != expected) {
                    return Err(ClientError::WrongParameterCount { got: v.len(), expected });
                }
                let local = crate::messages::LocalAlgorithm { name: a.name.clone(), ..Default::default() };
                let mut step = party_step(&local)?;
                step.restore(a)?;
                Some((local.name, step))
            }
        };
        if let Some(r) = state.residual.as_ref().filter(|r| r.len() != expected) {
            return Err(ClientError::WrongParameterCount { got: r.len(), expected });
        }
        self.ledger = state.ledger;
        self.step = step;
        self.residual = state.residual;
        Ok(())
    }
}
