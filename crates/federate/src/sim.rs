//! Simulation: every party in this process. Loads and splits the data, builds one learner per
//! party, runs the server loop, then (optionally) trains each party alone for comparison.

use std::sync::Arc;

use anyhow::{Context, Result};
use federate_core::{
    CentralEval, Client, ClientError, ClientProxy, Event, FitReply, FitTask, InProcess, Learner, NnLearner, Parameters,
    PartyState, RoundRecord, ServerConfig, StrategyState, seed, train_local,
};
use federate_nn::ModelSpec;

use std::collections::BTreeMap;

use federate_core::metrics::EvalStats;
use federate_data::table::Preprocessing;

use crate::assemble::{FederationData, PartyData, build_strategy, model_spec, party, privacy_floors};
use crate::config::{AttackConfig, AttackKind, Config};
use crate::table_data::TableLayout;

/// Called with a party's identity, the round, and (epochs done, epochs in all) after each
/// of its local epochs.
pub type PartyEpochHook = Arc<dyn Fn(&str, u32, usize, usize) + Send + Sync>;

/// The outcome of a simulation.
pub struct SimResult {
    /// Final global parameters.
    pub global: Parameters,
    /// Every round's record.
    pub records: Vec<RoundRecord>,
    /// Per party: sizes, the federated model's metrics on its test set, and alone.
    pub parties: Vec<PartyResult>,
    /// The model trained on the pooled training rows (`evaluation.pooled`), on the pooled
    /// test set.
    pub pooled: Option<EvalStats>,
    /// Tables: the round-0 preprocessing every party's rows were scaled with.
    pub preprocessing: Option<Preprocessing>,
}

/// How one party fared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartyResult {
    /// Identity.
    pub id: String,
    /// Training examples.
    pub train_examples: usize,
    /// Test examples.
    pub test_examples: usize,
    /// Classification: training examples of each class (how skewed this party is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub train_classes: Vec<usize>,
    /// The final global model's accuracy on this party's test set.
    pub federated_accuracy: f64,
    /// Accuracy on its own test set after training alone for the same number of steps.
    pub alone_accuracy: Option<f64>,
    /// The final global model's metrics on this party's test set.
    pub federated: BTreeMap<String, f64>,
    /// The metrics of the model it trained alone, on its own test set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alone: Option<BTreeMap<String, f64>>,
    /// The metrics of the model it trained alone, on the parties' pooled test set (the one
    /// set every model is compared on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alone_on_pooled: Option<BTreeMap<String, f64>>,
    /// The ε this party spent (DP runs).
    pub epsilon: Option<f64>,
    /// The statistics behind `federated` (summed over parties for the pooled line).
    #[serde(skip)]
    pub federated_stats: EvalStats,
    /// The statistics behind `alone`.
    #[serde(skip)]
    pub alone_stats: Option<EvalStats>,
}

/// Where a resumed simulation starts: what a checkpoint restored.
pub struct Start {
    /// Rounds already run.
    pub completed: u32,
    /// The global model after them.
    pub values: Vec<f32>,
    /// Their records.
    pub records: Vec<RoundRecord>,
    /// The strategy that wrote the checkpoint and its state.
    pub strategy: (String, Option<StrategyState>),
    /// What each party kept (SCAFFOLD's c_k, ADMM's dual, DP-SGD's steps), by identity.
    pub parties: Vec<(String, PartyState)>,
}

/// Runs the federation described by `cfg` (from `start` when resuming), reporting rounds to
/// `observer` and, when given, every party's local epochs to `on_epoch` (called with the
/// party's identity).
pub fn simulate(
    cfg: &Config,
    data: FederationData,
    observer: &mut dyn FnMut(Event<'_>),
    on_epoch: Option<PartyEpochHook>,
    start: Option<Start>,
) -> Result<SimResult> {
    let threads = rayon::current_num_threads();
    let (mut parties, mut pooled_test, table) = data;
    let spec = model_spec(cfg, &parties[0].train)?;
    // Simulations use seeded noise unless the config asks for secure noise.
    let noise = cfg.privacy.noise.unwrap_or(federate_core::NoiseSource::Seeded);
    // Workspaces the parties (one per worker) and then the baselines share.
    let pool = Arc::new(federate_core::WorkspacePool::default());
    let clients = build_parties(cfg, &parties, &spec, noise, on_epoch, table.as_ref(), &pool)?;
    let init_learner = NnLearner::new(spec.clone(), 1, threads)?;
    let layout = init_learner.layout();
    let init_values = init_learner.init(seed::derive(cfg.seed, seed::Stream::Init, &[]));
    let (completed, mut records, start_values, restored, party_states) = match start {
        Some(s) => (s.completed, s.records, s.values, Some(s.strategy), s.parties),
        None => (0, Vec::new(), init_values.clone(), None, Vec::new()),
    };
    let initial = Parameters::new(start_values, layout.clone()).context("initial parameters")?;

    let strategy = build_strategy(cfg, noise)?;
    let ids: Vec<String> = parties.iter().map(|p| p.id.clone()).collect();
    let admission = cfg.server.admission();
    admission.validate(&ids).map_err(anyhow::Error::msg)?;
    let workers = crate::assemble::party_workers(cfg);
    let mut server = crate::assemble::server(cfg, strategy, clients, admission)?.with_workers(workers);
    // Round 0 (tables): the parties' statistics added up, as a deployment does it; the
    // simulation's own copies (baselines, central evaluation) are scaled the same way.
    let preprocessing = match (server.round_zero(parties.len())?, &table) {
        (Some(m), Some(layout)) => {
            let pre = layout.with((*m).clone());
            for p in parties.iter_mut() {
                pre.apply(Arc::make_mut(&mut p.train));
                pre.apply(Arc::make_mut(&mut p.test));
            }
            pre.apply(&mut pooled_test);
            Some(pre)
        }
        _ => None,
    };
    if let Some((name, state)) = &restored {
        server.restore_strategy(name, state.as_ref()).context("--resume")?;
    }
    server.restore_parties(party_states).context("--resume")?;
    if let Some(t) = cfg.target() {
        server = server.with_target(cfg.metric()?, t);
    }
    if cfg.evaluation.centralized {
        let mut learner = NnLearner::new(spec.clone(), 1, threads)?;
        let test = pooled_test.clone();
        server = server.with_central_evaluation(Box::new(move |p: &Parameters| {
            learner.evaluate(&p.values, &test.x, test.targets()).ok().map(|s| CentralEval {
                num_examples: s.count,
                loss: s.mean_loss(),
                accuracy: s.accuracy(),
            })
        }));
    }
    let (global, new_records) =
        server.resume(initial, completed, &ServerConfig::new(cfg.rounds, cfg.seed), observer)?;
    records.extend(new_records);

    // The baselines train on every thread: the parties' workspaces fit them if made so.
    let same_threads = crate::assemble::party_threads(cfg) == rayon::current_num_threads();
    let holdout = Holdout { pooled: &pooled_test, pre: preprocessing.as_ref(), pool: same_threads.then_some(&pool) };
    let results = party_results(cfg, &spec, &parties, &holdout, &global, &records, &init_values)?;
    let pooled = if cfg.evaluation.pooled {
        let rounds = records.iter().filter(|r| r.aggregated).count().max(1);
        let train = crate::assemble::pooled(parties.iter().map(|p| &*p.train));
        let all = PartyData { id: "pooled".into(), train: Arc::new(train), test: Arc::new(pooled_test.clone()) };
        Some(train_alone(cfg, &spec, &all, &init_values, rounds, parties.len(), &holdout)?.0)
    } else {
        None
    };
    Ok(SimResult { global, records, parties: results, pooled, preprocessing })
}

/// Loss, accuracy and the metric statistics of `params` on `data` (regression metrics in the
/// target's own units, undoing round 0's scaling `pre`).
pub fn evaluate(
    learner: &mut NnLearner,
    params: &[f32],
    data: &federate_data::Dataset,
    pre: Option<&Preprocessing>,
) -> Result<(federate_core::BatchStats, EvalStats)> {
    let k = learner.score_len();
    let mut scores = vec![0.0f32; data.len() * k];
    let s = learner.evaluate_scores(params, &data.x, data.targets(), &mut scores)?;
    let stats = EvalStats::of_set(&mut scores, k, data, pre);
    Ok((s, stats.map_err(anyhow::Error::msg)?))
}

/// Where the baselines are evaluated: the parties' pooled test set, and round 0's scaling;
/// and the workspaces they may reuse.
struct Holdout<'a> {
    pooled: &'a federate_data::Dataset,
    pre: Option<&'a Preprocessing>,
    pool: Option<&'a Arc<federate_core::WorkspacePool>>,
}

/// The simulated parties: a learner and its data each, with the privacy floor of the config,
/// the first `attack.parties` of them attackers.
fn build_parties(
    cfg: &Config,
    parties: &[PartyData],
    spec: &ModelSpec,
    noise: federate_core::NoiseSource,
    on_epoch: Option<PartyEpochHook>,
    table: Option<&TableLayout>,
    pool: &Arc<federate_core::WorkspacePool>,
) -> Result<Vec<Box<dyn ClientProxy>>> {
    let mut clients: Vec<Box<dyn ClientProxy>> = Vec::with_capacity(parties.len());
    let floor = privacy_floors(cfg)?;
    let parallel = crate::assemble::party_workers(cfg) > 1;
    for p in parties {
        let n = p.train.len();
        let mut client = party(cfg, spec, p.train.clone(), p.test.clone(), noise, floor(n)?, Some(pool))?;
        if let Some(t) = table {
            client = client.with_table(t.features.clone(), t.numeric.clone(), t.scaling);
        }
        if let Some(f) = &on_epoch {
            let (f, id) = (f.clone(), p.id.clone());
            client = client.with_epoch_hook(Arc::new(move |round, done, all| f(&id, round, done, all)));
        }
        if clients.len() < cfg.attack.parties {
            let attacker = Attacker { inner: client, attack: cfg.attack.clone(), index: clients.len() as u64 };
            let proxy = InProcess::new(p.id.clone(), attacker);
            clients.push(if parallel { Box::new(proxy.parallel()) } else { Box::new(proxy) });
        } else {
            let proxy = InProcess::new(p.id.clone(), client);
            clients.push(if parallel { Box::new(proxy.parallel()) } else { Box::new(proxy) });
        }
    }
    Ok(clients)
}

/// How each party fared: the final model on its test set, beside training alone (on its own
/// test set and on the pooled one).
fn party_results(
    cfg: &Config,
    spec: &ModelSpec,
    parties: &[PartyData],
    holdout: &Holdout<'_>,
    global: &Parameters,
    records: &[RoundRecord],
    init_values: &[f32],
) -> Result<Vec<PartyResult>> {
    let mut results = Vec::with_capacity(parties.len());
    let mut eval = NnLearner::new(spec.clone(), 1, rayon::current_num_threads())?;
    if let Some(pool) = holdout.pool {
        eval = eval.with_pool(pool.clone());
    }
    for (i, p) in parties.iter().enumerate() {
        let (fed, federated_stats) = evaluate(&mut eval, &global.values, &p.test, holdout.pre)?;
        let (alone_stats, alone_acc, alone_on_pooled) = if cfg.evaluation.baseline {
            let rounds_trained = records.iter().filter(|r| r.fit.iter().any(|f| f.id == p.id)).count();
            let (stats, acc, params) = train_alone(cfg, spec, p, init_values, rounds_trained, i, holdout)?;
            let on_pooled = evaluate(&mut eval, &params, holdout.pooled, holdout.pre)?.1.metrics();
            (Some(stats), Some(acc), Some(on_pooled))
        } else {
            (None, None, None)
        };
        results.push(PartyResult {
            id: p.id.clone(),
            train_examples: p.train.len(),
            test_examples: p.test.len(),
            train_classes: p.train.label_counts(),
            federated_accuracy: fed.accuracy(),
            alone_accuracy: alone_acc,
            federated: federated_stats.metrics(),
            alone: alone_stats.as_ref().map(EvalStats::metrics),
            alone_on_pooled,
            epsilon: records.iter().rev().flat_map(|r| r.fit.iter()).find(|f| f.id == p.id).and_then(|f| f.epsilon),
            federated_stats,
            alone_stats,
        });
    }
    Ok(results)
}

/// A malicious party (`[attack]`): trains honestly, then sends a poisoned model in place of
/// its own, reporting its true example count (the most damaging honest-looking claim).
struct Attacker<C> {
    inner: C,
    attack: AttackConfig,
    index: u64,
}

impl<C: Client> Client for Attacker<C> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let mut reply = self.inner.fit(global, task)?;
        let s = self.attack.scale as f32;
        match self.attack.kind {
            AttackKind::SignFlip => {
                for (p, g) in reply.params.iter_mut().zip(&global.values) {
                    *p = g - s * (*p - g);
                }
            }
            AttackKind::Scale => {
                for (p, g) in reply.params.iter_mut().zip(&global.values) {
                    *p = g + s * (*p - g);
                }
            }
            AttackKind::Gaussian => {
                let mut rng = seed::stream(task.seed, seed::Stream::Attack, &[self.index]);
                let noise = rand_distr::Normal::new(0.0f32, s).map_err(|e| ClientError::Model(e.to_string()))?;
                for (p, g) in reply.params.iter_mut().zip(&global.values) {
                    *p = g + rand_distr::Distribution::sample(&noise, &mut rng);
                }
            }
        }
        Ok(reply)
    }
    delegate_to_inner_client!();
}

/// Trains one party alone from the same initial model for `rounds × epochs` epochs — the
/// same number of local steps it took in the federation — and returns its metric statistics
/// and accuracy on its test set, and the model.
fn train_alone(
    cfg: &Config,
    spec: &ModelSpec,
    p: &PartyData,
    init: &[f32],
    rounds: usize,
    index: usize,
    holdout: &Holdout<'_>,
) -> Result<(EvalStats, f64, Vec<f32>)> {
    let mut learner = NnLearner::new(spec.clone(), cfg.train.batch_size, rayon::current_num_threads())?;
    if let Some(pool) = holdout.pool {
        learner = learner.with_pool(pool.clone());
    }
    let mut params = init.to_vec();
    let mut training = cfg.local_training();
    training.epochs = cfg.train.epochs * rounds;
    let mut opt = training.optimizer.build(params.len())?;
    let mut rng = seed::stream(cfg.seed, seed::Stream::Alone, &[index as u64]);
    learner.reseed(seed::derive(cfg.seed, seed::Stream::AloneDropout, &[index as u64]));
    let noise = seed::derive(cfg.seed, seed::Stream::AloneNoise, &[index as u64]);
    train_local(&mut learner, &mut params, &p.train, &training, &mut opt, &mut rng, noise)?;
    let (s, stats) = evaluate(&mut learner, &params, &p.test, holdout.pre)?;
    // Back to the pool for the next party's baseline.
    learner.release();
    Ok((stats, s.accuracy(), params))
}
