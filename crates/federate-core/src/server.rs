//! The round loop: configure, fit, aggregate, evaluate, record — the same loop for parties in
//! this process and parties across the network (the transport is the `ClientProxy`).

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::admission::Admission;
use crate::client::ClientProxy;
use crate::dispatch::dispatch;
use crate::messages::{EvaluateReply, FitReply, FitTask, Moments};
use crate::params::Parameters;
pub use crate::record::{CentralEval, ClientEval, ClientFit, Failure, PartySampling, RoundRecord};
use crate::seed;
use crate::seed::Stream;
use crate::strategy::Strategy;

/// Settings of the round loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Rounds to run.
    pub rounds: u32,
    /// The run's seed; every random stream derives from it.
    pub seed: u64,
    /// Where the choice of which parties train each round comes from.
    pub sampling: PartySampling,
}

impl ServerConfig {
    /// `rounds` rounds under `seed`, parties sampled from the seed (a simulation).
    pub fn new(rounds: u32, seed: u64) -> Self {
        ServerConfig { rounds, seed, sampling: PartySampling::Seeded }
    }
}

/// Why the loop could not run.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ServerError {
    /// No parties connected.
    #[error("no parties: a federation needs at least 1")]
    NoClients,
    /// Rounds = 0.
    #[error("rounds = 0: run at least 1 round")]
    NoRounds,
    /// The initial parameters do not match.
    #[error("{0}")]
    BadInitial(String),
    /// Round 0 could not agree the tables' statistics.
    #[error("round 0: {0}")]
    RoundZero(String),
}

/// Progress notifications from the loop.
#[derive(Debug)]
pub enum Event<'a> {
    /// A round begins with this many parties training.
    RoundStarted {
        /// The round.
        round: u32,
        /// Parties asked to train.
        parties: usize,
    },
    /// One party finished training (or failed).
    FitDone {
        /// The round.
        round: u32,
        /// Party identity.
        id: &'a str,
    },
    /// A round is complete; `global` is the model it produced (for checkpoints).
    RoundFinished {
        /// What happened.
        record: &'a RoundRecord,
        /// The global model after the round.
        global: &'a Parameters,
        /// The strategy's name and state after the round (for checkpoints).
        strategy: (&'a str, Option<crate::StrategyState>),
        /// The parties, whose state a checkpoint may collect.
        parties: Parties<'a>,
    },
}

/// The server's parties as an observer sees them after a round: their state is copied only
/// when asked for (a SCAFFOLD party holds a model-sized vector).
#[derive(Clone, Copy)]
pub struct Parties<'a>(&'a [Box<dyn ClientProxy>]);

impl std::fmt::Debug for Parties<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|c| c.id())).finish()
    }
}

impl Parties<'_> {
    /// The state of every party that keeps one it can show (parties in this process), by
    /// identity; parties with nothing to keep are left out.
    pub fn states(&self) -> Vec<(String, crate::PartyState)> {
        self.0
            .iter()
            .filter_map(|c| c.party_state().filter(|s| !s.is_empty()).map(|s| (c.id().to_string(), s)))
            .collect()
    }
}

/// Evaluates global parameters on a server-held test set.
pub type CentralEvaluator = Box<dyn FnMut(&Parameters) -> Option<CentralEval> + Send>;

/// The federated server.
pub struct Server {
    strategy: Box<dyn Strategy>,
    clients: Vec<Box<dyn ClientProxy>>,
    central: Option<CentralEvaluator>,
    target: Option<(crate::metrics::MetricInfo, f64)>,
    admission: Admission,
    scaling: Option<Arc<Moments>>,
    /// The global model's number, which party holds which, and its compressed broadcast.
    models: crate::broadcast::Models,
    /// Most threads running `concurrent` parties at once.
    workers: usize,
}

impl Server {
    /// A server running `strategy` over `clients`.
    pub fn new(strategy: Box<dyn Strategy>, clients: Vec<Box<dyn ClientProxy>>) -> Self {
        Server {
            strategy,
            clients,
            central: None,
            target: None,
            admission: Admission::default(),
            scaling: None,
            models: Default::default(),
            workers: usize::MAX,
        }
    }

    /// Bounds what the parties may report (example counts, floats) and whose counts weight
    /// them; the default caps every count at [`crate::admission::DEFAULT_MAX_EXAMPLES`].
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Runs the parties that may run beside others (`ClientProxy::concurrent`, e.g.
    /// [`crate::InProcess::parallel`]) on at most `workers` threads (default: one each).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Sends a party holding the previous global model the compressed change to the next one
    /// instead of its values (see [`crate::broadcast`]); the global model is then what the
    /// parties reconstruct. The error names the setting to fix.
    pub fn with_broadcast(mut self, c: crate::broadcast::BroadcastCompression) -> Result<Self, ServerError> {
        c.validate().map_err(ServerError::BadInitial)?;
        self.models.compress(c);
        Ok(self)
    }

    /// Stops the run after the first round whose accuracy reaches `target` (a fraction).
    pub fn with_target_accuracy(mut self, target: f64) -> Self {
        self.target = crate::metrics::metric("accuracy").map(|m| (m, target));
        self
    }

    /// Stops the run after the first round whose `metric` (one of
    /// [`METRICS`](crate::metrics::METRICS)) reaches `target`: at or above it for a metric
    /// where higher is better, at or below it otherwise.
    pub fn with_target(mut self, metric: crate::metrics::MetricInfo, target: f64) -> Self {
        self.target = Some((metric, target));
        self
    }

    /// Round 0 of a table federation: asks every party for the statistics of its training
    /// rows, adds them up, and from then on sends the sum with every task (each party scales
    /// its rows with it once). Parties that hold no table answer none; when none does, there
    /// is nothing to agree and `Ok(None)`. Fails (naming the parties and why) when fewer than
    /// `min_parties` answered: a federation that cannot scale its data cannot train.
    pub fn round_zero(&mut self, min_parties: usize) -> Result<Option<Arc<Moments>>, ServerError> {
        let mut got: Vec<(String, Moments)> = Vec::new();
        let mut failed = Vec::new();
        for c in self.clients.iter_mut() {
            match c.statistics() {
                Ok(None) => {}
                Ok(Some(m)) => got.push((c.id().to_string(), m)),
                Err(e) => failed.push(format!("{}: {e}", c.id())),
            }
        }
        if got.is_empty() && failed.is_empty() {
            return Ok(None);
        }
        // The width most parties agree on (the first such on a tie) is the federation's: one
        // party announcing another cannot stop the others from agreeing.
        let mut widths: Vec<(usize, usize)> = Vec::new();
        for (_, m) in &got {
            match widths.iter_mut().find(|(w, _)| *w == m.sum.len()) {
                Some((_, n)) => *n += 1,
                None => widths.push((m.sum.len(), 1)),
            }
        }
        let width = widths.iter().fold(None, |best: Option<(usize, usize)>, &(w, n)| match best {
            Some((_, bn)) if bn >= n => best,
            _ => Some((w, n)),
        });
        let mut sum: Option<Moments> = None;
        let mut answered = 0;
        for (id, m) in got {
            let merged = match (sum.as_mut(), width) {
                (_, Some((w, _))) if m.sum.len() != w => {
                    Err(format!("statistics of {} features cannot be added to {w}", m.sum.len()))
                }
                (None, _) => {
                    sum = Some(m);
                    Ok(())
                }
                (Some(total), _) => total.merge(&m),
            };
            match merged {
                Ok(()) => answered += 1,
                Err(e) => failed.push(format!("{id}: {e}")),
            }
        }
        if answered < min_parties.max(1) {
            return Err(ServerError::RoundZero(format!(
                "{answered} parties sent the statistics of their rows, {} are needed ({})",
                min_parties.max(1),
                failed.join("; ")
            )));
        }
        self.scaling = sum.map(Arc::new);
        Ok(self.scaling.clone())
    }

    /// Sends `scaling` (round 0's sum, e.g. restored) with every task, as
    /// [`Server::round_zero`] does.
    pub fn with_scaling(mut self, scaling: Option<Arc<Moments>>) -> Self {
        self.scaling = scaling;
        self
    }

    /// Adds centralised evaluation after every round.
    pub fn with_central_evaluation(mut self, eval: CentralEvaluator) -> Self {
        self.central = Some(eval);
        self
    }

    /// Gives the strategy the state a checkpoint recorded for it (`None`: none recorded).
    pub fn restore_strategy(&mut self, name: &str, state: Option<&crate::StrategyState>) -> Result<(), ServerError> {
        if name != self.strategy.name() {
            return Err(ServerError::BadInitial(format!(
                "the checkpoint was written by strategy '{name}', the config runs '{}': resume with the same strategy",
                self.strategy.name()
            )));
        }
        self.strategy.restore(state).map_err(|e| ServerError::BadInitial(e.to_string()))
    }

    /// Gives each named party the state a checkpoint recorded for it ([`Parties::states`]).
    pub fn restore_parties(&mut self, states: Vec<(String, crate::PartyState)>) -> Result<(), ServerError> {
        for (id, state) in states {
            let Some(c) = self.clients.iter_mut().find(|c| c.id() == id) else {
                return Err(ServerError::BadInitial(format!(
                    "the checkpoint holds state for party '{id}', which this federation does not have: resume with \
                     the same data.parties"
                )));
            };
            c.restore_party_state(state).map_err(|e| ServerError::BadInitial(format!("party {id}: {e}")))?;
        }
        Ok(())
    }

    /// Party identities, in index order.
    pub fn client_ids(&self) -> Vec<String> {
        self.clients.iter().map(|c| c.id().to_string()).collect()
    }

    /// Runs `cfg.rounds` rounds from `initial`; returns the final global parameters and the
    /// record of every round. A round whose aggregation fails keeps the previous model.
    pub fn run(
        &mut self,
        initial: Parameters,
        cfg: &ServerConfig,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Result<(Parameters, Vec<RoundRecord>), ServerError> {
        self.resume(initial, 0, cfg, observer)
    }

    /// Continues a run whose first `completed` rounds produced `global`: runs rounds
    /// `completed + 1 ..= cfg.rounds` and returns their records. Every random stream is
    /// derived from the seed and the round number, so a resumed run equals an uninterrupted
    /// one.
    pub fn resume(
        &mut self,
        global: Parameters,
        completed: u32,
        cfg: &ServerConfig,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Result<(Parameters, Vec<RoundRecord>), ServerError> {
        if self.clients.is_empty() {
            return Err(ServerError::NoClients);
        }
        if cfg.rounds == 0 {
            return Err(ServerError::NoRounds);
        }
        if global.values.len() != global.layout.len() {
            return Err(ServerError::BadInitial(format!(
                "initial parameters have {} values, the layout {}",
                global.values.len(),
                global.layout.len()
            )));
        }
        let mut global = global;
        let mut records = Vec::new();
        let seed = seed::derive(cfg.seed, Stream::Broadcast, &[completed as u64]);
        self.models.restart(completed, &mut global.values, seed);
        for round in completed + 1..=cfg.rounds {
            let (record, all_spent) = self.round(round, &mut global, cfg, observer);
            let state = self.strategy.state();
            observer(Event::RoundFinished {
                record: &record,
                global: &global,
                strategy: (self.strategy.name(), state),
                parties: Parties(&self.clients),
            });
            records.push(record);
            let reached = match (self.target, records.last()) {
                (Some((m, t)), Some(r)) => {
                    r.metric(m.name).is_some_and(|v| if m.higher_is_better { v >= t } else { v <= t })
                }
                _ => false,
            };
            if all_spent || reached {
                break;
            }
        }
        Ok((global, records))
    }

    /// One round: tasks, fits, aggregation, evaluation, and its record; whether every party
    /// has spent its privacy budget.
    fn round(
        &mut self,
        round: u32,
        global: &mut Parameters,
        cfg: &ServerConfig,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> (RoundRecord, bool) {
        let start = Instant::now();
        let (tasks, sampling_error) = self.fit_tasks(round, cfg);
        observer(Event::RoundStarted { round, parties: tasks.len() });
        let Fits { replies, mut fit, mut failures, all_spent, bytes_up } = self.fit(round, global, &tasks, observer);
        let vector_bytes = |v: &Option<Arc<Vec<f32>>>| v.as_ref().map_or(0, |v| 4 * v.len() as u64);
        let mut bytes_down: u64 = tasks.iter().map(|(_, t)| vector_bytes(&t.vector)).sum();
        bytes_down += self.models.send(tasks.iter().map(|(c, _)| *c), global.values.len());
        let fit_seconds = start.elapsed().as_secs_f64();
        let aggregate = self.aggregate(round, global, &replies, &mut fit, &mut failures, cfg.seed);
        let (aggregated, error) = match aggregate {
            Ok(()) => (true, None),
            Err(e) if all_spent => {
                (false, Some(format!("every party has spent its privacy budget; the run stops ({e})")))
            }
            Err(e) => (false, Some(sampling_error.unwrap_or(e))),
        };
        // Over the parties that reported a training loss (DP parties do not).
        let reported = fit.iter().filter_map(|f| f.train_loss.map(|l| (l, f.num_examples as f64)));
        let (weighted, trained) = reported.fold((0.0, 0.0), |(s, n), (l, k)| (s + l * k, n + k));
        let train_loss = (trained > 0.0).then(|| weighted / trained);
        let t_eval = Instant::now();
        let (evaluate, federated, evaluated) = self.evaluate(round, global, cfg, &mut failures);
        bytes_down += self.models.send(evaluated.into_iter(), global.values.len());
        let centralized = self.central.as_mut().and_then(|f| f(global));
        let (accuracy, loss, metrics) = match (&federated, centralized) {
            (Some(f), _) => (Some(f.accuracy), Some(f.loss), f.stats.metrics()),
            (None, Some(c)) => (Some(c.accuracy), Some(c.loss), Default::default()),
            _ => (None, None, Default::default()),
        };
        let epsilon = fit.iter().filter_map(|f| f.epsilon).reduce(f64::max);
        let record = RoundRecord {
            round,
            accuracy,
            loss,
            metrics,
            train_loss,
            epsilon,
            aggregated,
            error,
            fit,
            evaluate,
            failures,
            centralized,
            fit_seconds,
            evaluate_seconds: t_eval.elapsed().as_secs_f64(),
            seconds: start.elapsed().as_secs_f64(),
            strategy: self.strategy.metrics(),
            party_sampling: cfg.sampling,
            bytes_down,
            bytes_up,
        };
        (record, all_spent)
    }

    /// The strategy's fit tasks, each with the seed the server derives for its party; or why
    /// no party could be sampled.
    fn fit_tasks(&mut self, round: u32, cfg: &ServerConfig) -> (Vec<(usize, FitTask)>, Option<String>) {
        match party_rng(cfg, round) {
            Ok(mut rng) => {
                let mut tasks = self.strategy.configure_fit(round, self.clients.len(), cfg.seed, &mut rng);
                // Every party's seed comes from here, whatever the strategy.
                for (c, t) in tasks.iter_mut() {
                    t.seed = seed::derive(cfg.seed, Stream::Fit, &[round as u64, *c as u64]);
                    t.scaling = self.scaling.clone();
                    (t.model, t.changes) = self.models.stamp();
                }
                (tasks, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        }
    }

    /// Sends the fit tasks, admits the replies as they arrive (in task order) and hands each
    /// to the strategy's `fold_fit`, which may fold its parameters into a running aggregate.
    fn fit(
        &mut self,
        round: u32,
        global: &Parameters,
        tasks: &[(usize, FitTask)],
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Fits {
        let mut out = Fits { replies: Vec::with_capacity(tasks.len()), ..Fits::default() };
        // The identities of this round's parties only (a simulation may hold 10,000).
        let ids: std::collections::HashMap<usize, String> =
            tasks.iter().filter_map(|(c, _)| Some((*c, self.clients.get(*c)?.id().to_string()))).collect();
        let (admission, strategy) = (&self.admission, &mut self.strategy);
        let (mut answered, mut spent) = (0usize, 0usize);
        let each = |(c, outcome, seconds): crate::dispatch::Outcome<FitReply>| {
            answered += 1;
            spent += usize::from(matches!(outcome, Err(crate::ClientError::BudgetSpent(_))));
            // A task for a party the server does not have comes back "not dispatched".
            let id = ids.get(&c).cloned().unwrap_or_else(|| format!("party #{c}"));
            let id = &id;
            let outcome = outcome.map_err(|e| e.to_string()).and_then(|mut r| {
                admission.fit(id, &mut r).map_err(|e| format!("reply refused: {e}"))?;
                Ok(r)
            });
            match outcome {
                Ok(r) => {
                    out.fit.push(ClientFit {
                        id: id.clone(),
                        num_examples: r.num_examples,
                        train_loss: r.training.loss,
                        train_accuracy: r.training.accuracy,
                        seconds,
                        train_seconds: r.training.seconds,
                        epsilon: r.privacy.epsilon,
                    });
                    // Counted before folding empties the parameters.
                    out.bytes_up += upload_bytes(&r);
                    out.replies.push((c, strategy.fold_fit(round, global, c, r)));
                }
                Err(reason) => out.failures.push(Failure { id: id.clone(), stage: "fit".into(), reason }),
            }
            observer(Event::FitDone { round, id });
        };
        crate::dispatch::dispatch_each(
            &mut self.clients,
            tasks,
            |client, task| client.fit(global, task),
            |t, jobs, done| t.fit_all(global, jobs, done),
            self.workers,
            each,
        );
        out.all_spent = answered > 0 && spent == answered;
        out
    }

    /// The strategy's next model from the replies, checked finite: on success `global` is
    /// replaced (under a compressed broadcast, by what the parties reconstruct; `seed` is the
    /// run's) and refused replies move from `fit` to `failures`; a non-finite aggregate keeps
    /// the previous model and rolls the strategy's state back.
    fn aggregate(
        &mut self,
        round: u32,
        global: &mut Parameters,
        replies: &[(usize, FitReply)],
        fit: &mut Vec<ClientFit>,
        failures: &mut Vec<Failure>,
        seed: u64,
    ) -> Result<(), String> {
        // Kept so that a non-finite aggregate leaves the strategy as it found it.
        let before = self.strategy.state();
        let (mut next, rejected) = self.strategy.aggregate_fit(round, global, replies).map_err(|e| e.to_string())?;
        for r in rejected {
            let id = self.clients[r.client].id().to_string();
            fit.retain(|f| f.id != id);
            failures.push(Failure { id, stage: "fit".into(), reason: format!("update refused: {}", r.reason) });
        }
        if let Some(i) = next.values.iter().position(|v| !v.is_finite()) {
            let mut e =
                format!("the aggregate's value {i} is {} (not finite); the previous model is kept", next.values[i]);
            if let Err(r) = self.strategy.restore(before.as_ref()) {
                e.push_str(&format!(" (the strategy's state could not be rolled back: {r})"));
            }
            return Err(e);
        }
        let seed = seed::derive(seed, Stream::Broadcast, &[round as u64]);
        self.models.advance(round, &global.values, &mut next.values, seed);
        *global = next;
        Ok(())
    }

    /// Sends the evaluation tasks, admits the replies (failures into `failures`) and
    /// combines them; also the parties the tasks went to.
    fn evaluate(
        &mut self,
        round: u32,
        global: &Parameters,
        cfg: &ServerConfig,
        failures: &mut Vec<Failure>,
    ) -> (Vec<ClientEval>, Option<EvaluateReply>, Vec<usize>) {
        let mut rng = seed::stream(cfg.seed, Stream::EvaluateSampling, &[round as u64]);
        let mut etasks = self.strategy.configure_evaluate(round, self.clients.len(), &mut rng);
        for (_, t) in etasks.iter_mut() {
            t.scaling = self.scaling.clone();
            (t.model, t.changes) = self.models.stamp();
        }
        let mut ereplies: Vec<(usize, EvaluateReply)> = Vec::new();
        let mut evaluate = Vec::new();
        let outcomes = dispatch(
            &mut self.clients,
            &etasks,
            |client, task| client.evaluate(global, task),
            |t, jobs, done| t.evaluate_all(global, jobs, done),
            self.workers,
        );
        for (c, outcome, _) in outcomes {
            let id = self.clients[c].id().to_string();
            let outcome = outcome.map_err(|e| e.to_string()).and_then(|mut r| {
                self.admission.evaluate(&id, &mut r).map_err(|e| format!("reply refused: {e}"))?;
                Ok(r)
            });
            match outcome {
                Ok(r) => {
                    evaluate.push(ClientEval {
                        id,
                        num_examples: r.num_examples,
                        loss: r.loss,
                        accuracy: r.accuracy,
                        metrics: r.stats.metrics(),
                    });
                    ereplies.push((c, r));
                }
                Err(reason) => failures.push(Failure { id, stage: "evaluate".into(), reason }),
            }
        }
        let sent = etasks.iter().map(|(c, _)| *c).collect();
        (evaluate, self.strategy.aggregate_evaluate(round, &ereplies), sent)
    }
}

/// The bytes a reply's update travelled as: its compressed payload, else 4 a value; plus an
/// algorithm's vector.
fn upload_bytes(r: &FitReply) -> u64 {
    let params = r.upload.as_ref().map_or(4 * r.params.len(), Vec::len) as u64;
    let vector = match &r.algorithm {
        crate::messages::AlgorithmReply::Vector(v) => 4 * v.len() as u64,
        _ => 0,
    };
    params + vector
}

/// What the fit half of a round gathered.
#[derive(Default)]
struct Fits {
    replies: Vec<(usize, FitReply)>,
    fit: Vec<ClientFit>,
    failures: Vec<Failure>,
    /// Every party answered that its privacy budget is spent.
    all_spent: bool,
    /// The admitted updates' bytes as they travelled.
    bytes_up: u64,
}

/// The generator that picks the round's parties.
fn party_rng(cfg: &ServerConfig, round: u32) -> Result<rand_chacha::ChaCha8Rng, String> {
    use rand::SeedableRng;
    match cfg.sampling {
        PartySampling::Seeded => Ok(seed::stream(cfg.seed, Stream::ClientSampling, &[round as u64])),
        PartySampling::Os => rand_chacha::ChaCha8Rng::try_from_rng(&mut rand::rngs::SysRng)
            .map_err(|e| format!("the operating system's random source failed, so no parties were sampled: {e}")),
    }
}
