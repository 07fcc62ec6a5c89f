//! The federated algorithms, one module each, holding both halves: the server's
//! [`Strategy`] and the party's [`PartyStep`], registered by name in [`ALGORITHMS`].
//!
//! Adding an algorithm is one new module here plus one line in [`ALGORITHMS`]:
//!
//! - its settings, declared as [`Setting`]s (their `[strategy]` keys, defaults and ranges are
//!   checked from the declaration, so the config needs no change);
//! - its server half, usually a [`ServerHalf`] wrapped in [`Federated`], which takes party
//!   sampling, stragglers, evaluation and the local-training settings from FedAvg;
//! - its party half, a [`PartyStep`] (or none: plain local SGD), which the standard party
//!   finds by the name the task carries ([`LocalAlgorithm::name`]), so neither the party nor
//!   the wire format needs a change;
//! - its state on both sides, as [`StrategyState`] and [`AlgorithmState`], which checkpoints
//!   store without knowing the algorithm.
//!
//! `docs/architecture.md` lists the files adding FedNova and FedDyn touched.

mod admm;
mod fedavg;
mod feddyn;
mod fednova;
mod fedopt;
mod fedprox;
mod fedsgd;
mod scaffold;

use std::collections::BTreeMap;

use crate::optim::Optimizer;
use federate_data::Dataset;
use rand_chacha::ChaCha8Rng;

pub use admm::Admm;
pub use fedavg::{FedAvg, RunningMean};
pub use feddyn::FedDyn;
pub use fednova::FedNova;
pub use fedopt::{FedOpt, FedOptConfig, ServerOptimizer};
pub use fedsgd::FedSgd;
pub use scaffold::Scaffold;

use crate::learner::Learner;
use crate::messages::{
    AlgorithmReply, AlgorithmState, ClientError, Correction, DpSgd, EvaluateReply, EvaluateTask, FitReply, FitTask,
    LocalAlgorithm, LocalTraining, NoiseSource, Rejection, StrategyError, TrainStats,
};
use crate::params::Parameters;
use crate::strategy::{Strategy, StrategyState};

/// Every algorithm `[strategy] name` accepts, in the order the docs list them. The one place
/// an algorithm is registered.
pub static ALGORITHMS: &[&Algorithm] = &[
    &fedavg::ALGORITHM,
    &fedprox::ALGORITHM,
    &fedsgd::ALGORITHM,
    &fedopt::FEDAVGM,
    &fedopt::FEDADAM,
    &fedopt::FEDYOGI,
    &fedopt::FEDADAGRAD,
    &scaffold::ALGORITHM,
    &admm::ALGORITHM,
    &fednova::ALGORITHM,
    &feddyn::ALGORITHM,
];

/// The registered algorithm called `name`.
pub fn find(name: &str) -> Option<&'static Algorithm> {
    ALGORITHMS.iter().copied().find(|a| a.name == name)
}

/// The names of every registered algorithm, for error messages.
pub fn names() -> Vec<&'static str> {
    ALGORITHMS.iter().map(|a| a.name).collect()
}

/// Builds an algorithm's server half around FedAvg from its checked settings.
pub type BuildStrategy = fn(FedAvg, &Settings) -> Result<Box<dyn Strategy>, StrategyError>;

/// One federated algorithm: its name, its settings, and how to build each half.
pub struct Algorithm {
    /// Its `[strategy] name`, and the name its tasks carry to the parties.
    pub name: &'static str,
    /// One line saying what it does.
    pub about: &'static str,
    /// The `[strategy]` settings it reads besides FedAvg's.
    pub settings: &'static [Setting],
    /// Builds the server half around `base` (FedAvg's sampling, evaluation and local
    /// training), with its settings already checked against [`Algorithm::settings`].
    pub strategy: BuildStrategy,
    /// Builds a fresh party half; `None` means plain local epochs of (DP-)SGD.
    pub party: Option<fn() -> Box<dyn PartyStep>>,
}

/// A setting an algorithm reads from `[strategy]`.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key.
    pub key: &'static str,
    /// Its value when the config does not give one.
    pub default: f64,
    /// The values it accepts.
    pub range: Range,
    /// What it means.
    pub about: &'static str,
}

/// The values a [`Setting`] accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Finite and > 0.
    Positive,
    /// Finite and ≥ 0.
    NonNegative,
    /// In [0, 1).
    Fraction,
    /// 0 (false) or 1 (true).
    Flag,
}

impl Range {
    /// Checks `v` for the setting `key`; the error names the key and the range.
    pub fn check(self, key: &str, v: f64) -> Result<(), StrategyError> {
        let (ok, what) = match self {
            Range::Positive => (v > 0.0 && v.is_finite(), "> 0"),
            Range::NonNegative => (v >= 0.0 && v.is_finite(), "≥ 0"),
            Range::Fraction => ((0.0..1.0).contains(&v), "in [0, 1)"),
            Range::Flag => (v == 0.0 || v == 1.0, "true or false"),
        };
        if ok { Ok(()) } else { Err(StrategyError::Config(format!("strategy.{key} = {v} must be {what}"))) }
    }
}

/// An algorithm's settings, checked: every declared key has a value in its range.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings(BTreeMap<String, f64>);

impl Settings {
    /// The value of a declared key (a key the algorithm did not declare reads 0: a bug in
    /// its module, caught by its tests).
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
    /// A flag's value.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key) != 0.0
    }
}

impl Algorithm {
    /// Its settings from `given` (keys of any algorithm, as `[strategy]` holds them): each
    /// declared key from `given` or its default, range-checked. `given` may hold keys other
    /// algorithms read (the config refuses keys no algorithm declares before this).
    pub fn settings_from(&self, given: &BTreeMap<String, f64>) -> Result<Settings, StrategyError> {
        let mut out = BTreeMap::new();
        for s in self.settings {
            let v = given.get(s.key).copied().unwrap_or(s.default);
            s.range.check(s.key, v)?;
            out.insert(s.key.to_string(), v);
        }
        Ok(Settings(out))
    }

    /// Builds the server half around `base` from the settings in `given`.
    pub fn build(&self, base: FedAvg, given: &BTreeMap<String, f64>) -> Result<Box<dyn Strategy>, StrategyError> {
        base.validate()?;
        let settings = self.settings_from(given)?;
        (self.strategy)(base, &settings)
    }
}

/// Checks every value in `given` whose key some algorithm declares against the range it
/// declares, whichever algorithm is chosen: a config naming `mu = -1` is wrong even while it
/// runs ADMM.
pub fn check_all(given: &BTreeMap<String, f64>) -> Result<(), StrategyError> {
    for (key, v) in given {
        if let Some(s) = ALGORITHMS.iter().flat_map(|a| a.settings).find(|s| s.key == key) {
            s.range.check(key, *v)?;
        }
    }
    Ok(())
}

/// The party half of an algorithm: what the standard party ([`crate::LocalClient`]) does with
/// a fit task whose [`LocalAlgorithm::name`] is the algorithm's.
///
/// Contract, in the order the party calls it:
///
/// - `fit` runs once per task, after the party has checked the model size and its privacy
///   floor and budget, and before update-level DP and the ledger entry. It starts from
///   `params` = the global model and leaves the reply's parameters there; it trains through
///   `run` (local epochs with a gradient correction, or one gradient). It returns what the
///   training did and the algorithm's reply. On `Err` the party sends that error instead of
///   a reply, records nothing in its ledger, and its state must be as before the call (the
///   party's store restores the last saved state if not).
/// - `state` is what a checkpoint or the party's store saves after each round; `None`
///   (the default) for a party half that keeps nothing between rounds.
/// - `restore` takes back what `state` returned, from disk: it must refuse vectors of the
///   wrong length or out-of-range scalars by name, never panic. The default refuses any
///   state.
pub trait PartyStep: Send {
    /// Trains locally for `task` from `global` into `params`.
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        task: &FitTask,
        global: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError>;
    /// The sampling rate and number of DP-SGD steps `training` takes on a party holding `n`
    /// examples, planned (and checked against the party's floor and budget) before `fit`
    /// runs; `fit` taking another number of steps is an error. Default: `epochs` epochs of
    /// 1/q batches at the DP settings' rate.
    fn dp_steps(&self, training: &LocalTraining, dp: &DpSgd, n: usize) -> Result<(f64, u64), ClientError> {
        let q = dp.rate(n, training.batch_size);
        Ok((q, DpSgd::steps_per_epoch(q) as u64 * training.epochs as u64))
    }
    /// Whether the reply's parameters are a model (compressed as their change from the model
    /// sent) rather than something else (FedSGD's gradient, compressed as it is).
    fn reply_is_model(&self) -> bool {
        true
    }
    /// What this party half keeps between rounds.
    fn state(&self) -> Option<AlgorithmState> {
        None
    }
    /// Takes back a saved state.
    fn restore(&mut self, state: AlgorithmState) -> Result<(), ClientError> {
        Err(ClientError::Model(format!("algorithm '{}' keeps no party state but was given some", state.name)))
    }
}

/// The party half of plain local SGD (FedAvg's, and that of every algorithm without its own).
pub struct Sgd;

impl PartyStep for Sgd {
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        _task: &FitTask,
        _global: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError> {
        Ok((run.epochs(params, &Correction::default())?, AlgorithmReply::None))
    }
}

/// A fresh party half for the algorithm a task names (empty: plain SGD).
pub fn party_step(local: &LocalAlgorithm) -> Result<Box<dyn PartyStep>, ClientError> {
    if local.name.is_empty() {
        return Ok(Box::new(Sgd));
    }
    match find(&local.name) {
        Some(a) => Ok(a.party.map_or_else(|| Box::new(Sgd) as Box<dyn PartyStep>, |f| f())),
        None => Err(ClientError::Refused(format!(
            "the task asks for local algorithm '{}', which this party does not know (it knows {}): run the same \
             federate version as the server",
            local.name,
            names().join(", ")
        ))),
    }
}

/// A setting of the task's party half, range-checked: the party refuses a task whose value is
/// missing or out of range.
pub fn local_setting(local: &LocalAlgorithm, key: &str, range: Range) -> Result<f64, ClientError> {
    let Some(&v) = local.settings.get(key) else {
        return Err(ClientError::Refused(format!("the {} task has no setting '{key}'", local.name)));
    };
    range.check(key, v).map_err(|e| ClientError::Refused(e.to_string()))?;
    Ok(v)
}

/// Called after each local epoch with (round, epochs done, epochs in all); for progress
/// displays.
pub type EpochHook = std::sync::Arc<dyn Fn(u32, usize, usize) + Send + Sync>;

/// What a party half trains with: the party's learner, data, optimiser, batch stream and
/// noise source for one task.
pub struct LocalRun<'a> {
    pub(crate) learner: &'a mut dyn Learner,
    pub(crate) train: &'a Dataset,
    pub(crate) training: &'a LocalTraining,
    pub(crate) round: u32,
    /// The task's seed: DP-SGD noise is drawn from its `DpSgdNoise` stream.
    pub(crate) seed: u64,
    pub(crate) opt: Optimizer,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) noise: NoiseSource,
    pub(crate) on_epoch: Option<&'a EpochHook>,
}

impl LocalRun<'_> {
    /// The task's local epochs of (DP-)SGD on `params`, with `correction` added to every
    /// gradient. One epoch at a time (the batch stream and optimiser carry over, so this
    /// equals one call with all epochs) to report progress.
    pub fn epochs(&mut self, params: &mut [f32], correction: &Correction<'_>) -> Result<TrainStats, ClientError> {
        let one = LocalTraining { epochs: 1, ..self.training.clone() };
        let mut stats = TrainStats::default();
        for epoch in 0..self.training.epochs {
            let s = crate::train::train_local_with(
                self.learner,
                params,
                self.train,
                &one,
                &mut self.opt,
                &mut self.rng,
                self.noise,
                crate::seed::derive(self.seed, crate::seed::Stream::DpSgdNoise, &[epoch as u64]),
                correction,
            )
            .map_err(model_err)?;
            stats.steps += s.steps;
            stats.batches.merge(s.batches);
            if let Some(hook) = self.on_epoch {
                hook(self.round, epoch + 1, self.training.epochs);
            }
        }
        Ok(stats)
    }

    /// The gradient of the mean loss at `at` (DP-SGD's noised one under DP) over all local
    /// data (`full`) or one minibatch, written into `out`.
    pub fn gradient(&mut self, at: &[f32], full: bool, out: &mut [f32]) -> Result<TrainStats, ClientError> {
        let bs = self.training.batch_size;
        match &self.training.dp {
            Some(dp) => crate::dp::private_gradient_step(
                self.learner,
                at,
                self.train,
                bs,
                full,
                dp,
                out,
                &mut self.rng,
                self.noise,
                crate::seed::derive(self.seed, crate::seed::Stream::DpSgdNoise, &[0]),
            )
            .map_err(model_err),
            None => {
                let s = crate::train::gradient(self.learner, at, self.train, bs, full, out, &mut self.rng)
                    .map_err(model_err)?;
                Ok(TrainStats { steps: 0, batches: s })
            }
        }
    }

    /// The local-training settings of the task.
    pub fn training(&self) -> &LocalTraining {
        self.training
    }
}

/// A model error as the party reports it.
pub(crate) fn model_err(e: crate::messages::LearnerError) -> ClientError {
    ClientError::Model(e.to_string())
}

/// The server half of an algorithm that takes party sampling, stragglers, evaluation and
/// local training from FedAvg ([`Federated`] composes the two).
///
/// Contract: `configure` may change the tasks FedAvg chose (their `local` algorithm, the
/// shared `vector`) but not which parties train. `aggregate` gets every reply that arrived
/// (failed parties are not in it) and returns the next model, with a [`Rejection`] for each
/// reply it did not use; on `Err` the round keeps the previous model and the server restores
/// the state `state` gave before the round, so `aggregate` may change its state before
/// failing. `state`/`restore` are as [`Strategy`]'s.
pub trait ServerHalf: Send {
    /// Its registered name.
    fn name(&self) -> &str;
    /// Adjusts the round's tasks. Default: none.
    fn configure(&mut self, _num_clients: usize, _tasks: &mut [(usize, FitTask)]) {}
    /// The next model from the replies.
    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError>;
    /// Whether its `aggregate` reads the parties' parameters only through
    /// [`FedAvg::average`] (or `next_model`), so the server may fold them into FedAvg's running
    /// mean as they arrive ([`Strategy::fold_fit`]). Default: no (it reads them itself).
    fn folds(&self) -> bool {
        false
    }
    /// Numbers worth recording about the last aggregation. Default: none.
    fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
    /// Its state between rounds. Default: none (stateless).
    fn state(&self) -> Option<StrategyState> {
        None
    }
    /// Takes back a checkpoint's state. Default: accepts anything (stateless).
    fn restore(&mut self, _state: Option<&StrategyState>) -> Result<(), StrategyError> {
        Ok(())
    }
}

/// A [`ServerHalf`] with FedAvg's sampling, stragglers and evaluation: how every algorithm but
/// FedAvg itself and DP-FedAvg becomes a [`Strategy`].
pub struct Federated<A> {
    /// Sampling, evaluation, local training.
    pub base: FedAvg,
    /// The algorithm's own server half.
    pub algorithm: A,
}

impl<A: ServerHalf> Strategy for Federated<A> {
    fn name(&self) -> &str {
        self.algorithm.name()
    }
    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)> {
        let mut tasks = self.base.configure_fit(round, num_clients, run_seed, rng);
        self.algorithm.configure(num_clients, &mut tasks);
        tasks
    }
    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        self.algorithm.aggregate(&self.base, round, global, replies)
    }
    fn fold_fit(&mut self, round: u32, global: &Parameters, client: usize, reply: FitReply) -> FitReply {
        if self.algorithm.folds() { self.base.fold(round, global, client, reply) } else { reply }
    }
    fn configure_evaluate(
        &mut self,
        round: u32,
        num_clients: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, EvaluateTask)> {
        self.base.configure_evaluate(round, num_clients, rng)
    }
    fn aggregate_evaluate(&mut self, round: u32, replies: &[(usize, EvaluateReply)]) -> Option<EvaluateReply> {
        self.base.aggregate_evaluate(round, replies)
    }
    fn metrics(&self) -> BTreeMap<String, f64> {
        self.algorithm.metrics()
    }
    fn state(&self) -> Option<StrategyState> {
        self.algorithm.state()
    }
    fn restore(&mut self, state: Option<&StrategyState>) -> Result<(), StrategyError> {
        self.algorithm.restore(state)
    }
}

/// `TooFewReplies` for `got` usable replies where `need` (at least 1) are required.
pub(crate) fn too_few(round: u32, got: usize, need: usize) -> StrategyError {
    StrategyError::TooFewReplies { round, got, need: need.max(1) }
}

/// Sets every task's party half to `name` with `settings`; `has_state(c)` says whether party
/// `c` took part before.
pub(crate) fn set_local(
    tasks: &mut [(usize, FitTask)],
    name: &str,
    settings: &[(&str, f64)],
    has_state: impl Fn(usize) -> bool,
) {
    for (c, t) in tasks.iter_mut() {
        t.training.local = LocalAlgorithm {
            name: name.to_string(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            has_state: has_state(*c),
        };
    }
}

/// The party-side state a task says the party must hold: `saved` if it has it, a fresh one
/// from `fresh` on its first participation, or `MissingState` naming what `what` is.
pub(crate) fn held_state<T>(
    saved: Option<T>,
    has_state: bool,
    what: &str,
    fresh: impl FnOnce() -> T,
) -> Result<T, ClientError> {
    match (saved, has_state) {
        (Some(s), true) => Ok(s),
        (None, true) => Err(ClientError::MissingState(format!(
            "{what}: this party took part before but holds none (it restarted without its saved state); the \
             server must restart the run or drop this party"
        ))),
        // First participation (or the server started a new run).
        (_, false) => Ok(fresh()),
    }
}

/// Checks a restored state's vector and scalar counts (the party checks every vector's
/// length against its model before).
pub(crate) fn check_state(state: &AlgorithmState, vectors: usize, scalars: usize) -> Result<(), ClientError> {
    if state.vectors.len() != vectors || state.scalars.len() != scalars {
        return Err(ClientError::Model(format!(
            "saved {} state has {} vectors and {} scalars, expected {vectors} and {scalars}",
            state.name,
            state.vectors.len(),
            state.scalars.len()
        )));
    }
    Ok(())
}
