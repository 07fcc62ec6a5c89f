//! Simulation: every party in this process. Loads and splits the data, builds one learner per
//! party, runs the server loop, then (optionally) trains each party alone for comparison.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use federate_core::{
    CentralEval, Client, ClientError, ClientProxy, Event, FitReply, FitTask, InProcess, Learner, LocalClient,
    NnLearner, Parameters, PartyState, RoundRecord, Server, ServerConfig, StrategyState, seed, train_local,
};
use federate_data::{Dataset, FetchOptions, TrainTest, default_cache_dir, partition};
use federate_nn::{ModelSpec, Shape};

use crate::config::{AttackConfig, AttackKind, Config, PartitionKind};

/// Called with a party's identity, the round, and (epochs done, epochs in all) after each
/// of its local epochs.
pub type PartyEpochHook = Arc<dyn Fn(&str, u32, usize, usize) + Send + Sync>;

/// One party's data.
pub struct PartyData {
    /// Identity.
    pub id: String,
    /// Training examples.
    pub train: Dataset,
    /// Test examples.
    pub test: Dataset,
}

/// Synthetic(α, β) as configured, from the run's seed.
fn synthetic(cfg: &Config) -> Result<federate_data::synthetic::Keyed> {
    let d = &cfg.data;
    let sc = federate_data::synthetic::SyntheticConfig {
        alpha: d.synthetic_alpha,
        beta: d.synthetic_beta,
        devices: d.synthetic_devices,
        ..Default::default()
    };
    Ok(federate_data::synthetic::synthetic(&sc, &mut seed::stream(cfg.seed, seed::Stream::Synthetic, &[]))?)
}

/// Loads the configured dataset (fetching and verifying it if needed; generating it for
/// `synthetic`).
pub fn load_data(cfg: &Config) -> Result<TrainTest> {
    if cfg.data.dataset == "synthetic" {
        return Ok(synthetic(cfg)?.data);
    }
    let opts = FetchOptions {
        cache_dir: cfg.data.cache_dir.clone().unwrap_or_else(default_cache_dir),
        data_dir: cfg.data.data_dir.clone().or_else(|| std::env::var_os("FEDERATE_DATA_DIR").map(PathBuf::from)),
        download_base: None,
        no_download: cfg.data.offline,
        no_npm: cfg.data.offline,
    };
    Ok(federate_data::load(&cfg.data.dataset, &opts)?)
}

/// Splits the data across parties as configured, from the run's partition stream.
pub fn split(cfg: &Config, data: &TrainTest) -> Result<Vec<PartyData>> {
    let d = &cfg.data;
    let k = d.parties;
    let mut rng = seed::stream(cfg.seed, seed::Stream::Partition, &[]);
    let (train_parts, test_parts) = match d.partition {
        PartitionKind::WorkedExample => (
            partition::disjoint_sample(data.train.len(), k, d.train_per_party, &mut rng)
                .context("data.train_per_party")?,
            partition::disjoint_sample(data.test.len(), k, d.test_per_party, &mut rng)
                .context("data.test_per_party")?,
        ),
        PartitionKind::Iid => {
            (partition::iid(data.train.len(), k, &mut rng)?, partition::iid(data.test.len(), k, &mut rng)?)
        }
        PartitionKind::Dirichlet => (
            partition::dirichlet(&data.train.y, data.train.classes, k, d.alpha, 10, &mut rng)?,
            partition::iid(data.test.len(), k, &mut rng)?,
        ),
        PartitionKind::Shards => (
            partition::shards(&data.train.y, k, d.shards_per_party, &mut rng)?,
            partition::iid(data.test.len(), k, &mut rng)?,
        ),
        PartitionKind::QuantitySkew => (
            partition::quantity_skew(data.train.len(), k, d.quantity_sigma, 10, &mut rng)?,
            partition::iid(data.test.len(), k, &mut rng)?,
        ),
        PartitionKind::Natural => {
            let keyed = synthetic(cfg)?;
            (partition::by_key(&keyed.train_keys), partition::by_key(&keyed.test_keys))
        }
    };
    Ok(train_parts
        .iter()
        .zip(&test_parts)
        .enumerate()
        .map(|(i, (tr, te))| PartyData {
            id: format!("party-{}", i + 1),
            train: data.train.subset(tr),
            test: data.test.subset(te),
        })
        .collect())
}

/// The model description for the configured model and data.
pub fn model_spec(cfg: &Config, data: &Dataset) -> Result<ModelSpec> {
    let [h, w, c] = data.dims;
    spec_for_shape(cfg, Shape::image(h, w, c), data.classes)
}

/// The model description for the configured model, given the input shape and classes.
pub fn spec_for_shape(cfg: &Config, input: Shape, classes: usize) -> Result<ModelSpec> {
    let spec = match &cfg.model.layers {
        Some(layers) => ModelSpec { input, classes, layers: layers.clone() },
        None => ModelSpec::builtin(&cfg.model.name, input, classes)?,
    };
    spec.shapes().context("model.layers")?;
    check_fits(&spec, cfg.train.batch_size)?;
    Ok(spec)
}

/// Refuses a model that would not fit in this machine's memory before anything is
/// allocated (a linear layer with 10^8 outputs would otherwise abort on a 300 GB
/// allocation), naming what to change.
pub fn check_fits(spec: &ModelSpec, batch: usize) -> Result<()> {
    let params = spec.num_params().context("model.layers")?;
    let need = spec.memory_estimate(batch).context("model.layers")?;
    let gb = |b: u128| b as f64 / 1e9;
    if params > u32::MAX as u128 {
        anyhow::bail!("model.layers: {params} parameters is beyond what federate handles (2^32); use smaller layers");
    }
    if let Some(avail) = available_memory()
        && need > avail as u128
    {
        anyhow::bail!(
            "model.layers: training this model needs about {:.1} GB ({params} parameters, train.batch_size = {batch}) \
             and this machine has {:.1} GB available: use smaller layers or a smaller batch",
            gb(need),
            gb(avail as u128)
        );
    }
    Ok(())
}

/// Memory available to new allocations (Linux's MemAvailable), if the system says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// What a party built from `cfg` agrees to (its privacy floor): the config's DP-SGD settings
/// and the sampling rate they give a party of `n` examples under the algorithm the config
/// chooses (its party half plans the rate: FedSGD's full-batch gradient takes q = 1).
pub fn privacy_floor(cfg: &Config, n: usize) -> Result<federate_core::PrivacyFloor> {
    Ok(privacy_floors(cfg)?(n)?)
}

/// [`privacy_floor`] for many parties: the algorithm's tasks are worked out once.
pub fn privacy_floors(
    cfg: &Config,
) -> Result<impl Fn(usize) -> Result<federate_core::PrivacyFloor, federate_core::ClientError>> {
    let own = cfg.privacy.dp_sgd();
    let plan = match own {
        None => None,
        Some(_) => {
            let training = party_training(cfg)?;
            let step = federate_core::algorithms::party_step(&training.local)?;
            Some((training, step))
        }
    };
    Ok(move |n| {
        let rate = match (&plan, &own) {
            (Some((training, step)), Some(dp)) => Some(step.dp_steps(training, dp, n)?.0),
            _ => None,
        };
        Ok(federate_core::PrivacyFloor::new(own, rate))
    })
}

/// The local training the server's first tasks carry, party half included.
fn party_training(cfg: &Config) -> Result<federate_core::LocalTraining> {
    let mut strategy = build_strategy(cfg, federate_core::NoiseSource::Seeded)?;
    let mut rng = federate_core::seed::stream(cfg.seed, federate_core::seed::Stream::ClientSampling, &[1]);
    let tasks = strategy.configure_fit(1, cfg.data.parties.max(1), cfg.seed, &mut rng);
    Ok(tasks.into_iter().next().map_or_else(|| cfg.local_training(), |(_, t)| t.training))
}

/// The server's strategy from the config: the registered algorithm `strategy.name` chooses,
/// or DP-FedAvg when client-level DP is on (its central noise from `noise`).
pub fn build_strategy(cfg: &Config, noise: federate_core::NoiseSource) -> Result<Box<dyn federate_core::Strategy>> {
    let s = &cfg.strategy;
    let base = cfg.fedavg_base()?;
    let expected = s.fraction_fit * cfg.data.parties as f64;
    if let Some(dp) = cfg.client_privacy.client_dp_for(expected) {
        return Ok(Box::new(federate_core::DpFedAvg::new(base, dp, noise)?));
    }
    Ok(s.algorithm()?.build(base, &s.algorithm_settings()?)?)
}

/// The outcome of a simulation.
pub struct SimResult {
    /// Final global parameters.
    pub global: Parameters,
    /// Every round's record.
    pub records: Vec<RoundRecord>,
    /// Per party: (id, train n, test n, federated accuracy on its test set, alone accuracy).
    pub parties: Vec<PartyResult>,
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
    /// The final global model's accuracy on this party's test set.
    pub federated_accuracy: f64,
    /// Accuracy on its own test set after training alone for the same number of steps.
    pub alone_accuracy: Option<f64>,
    /// The ε this party spent (DP runs).
    pub epsilon: Option<f64>,
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
    observer: &mut dyn FnMut(Event<'_>),
    on_epoch: Option<PartyEpochHook>,
    start: Option<Start>,
) -> Result<SimResult> {
    let threads = rayon::current_num_threads();
    let data = load_data(cfg)?;
    let parties = split(cfg, &data)?;
    let spec = model_spec(cfg, &data.train)?;
    let batch = cfg.train.batch_size;
    // Simulations use seeded noise unless the config asks for secure noise.
    let noise = cfg.privacy.noise.unwrap_or(crate::config::NoiseName::Seeded).source();
    let mut clients: Vec<Box<dyn ClientProxy>> = Vec::with_capacity(parties.len());
    let floor = privacy_floors(cfg)?;
    for p in &parties {
        let learner = NnLearner::new(spec.clone(), batch, threads)?;
        let mut client = LocalClient::new(learner, p.train.clone(), p.test.clone())
            .with_noise_source(noise)
            .with_privacy_floor(floor(p.train.len())?);
        if let Some(f) = &on_epoch {
            let (f, id) = (f.clone(), p.id.clone());
            client = client.with_epoch_hook(Arc::new(move |round, done, all| f(&id, round, done, all)));
        }
        if clients.len() < cfg.attack.parties {
            let attacker = Attacker { inner: client, attack: cfg.attack.clone(), index: clients.len() as u64 };
            clients.push(Box::new(InProcess::new(p.id.clone(), attacker)));
        } else {
            clients.push(Box::new(InProcess::new(p.id.clone(), client)));
        }
    }
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
    let mut server = Server::new(strategy, clients).with_admission(admission);
    if let Some((name, state)) = &restored {
        server.restore_strategy(name, state.as_ref()).context("--resume")?;
    }
    server.restore_parties(party_states).context("--resume")?;
    if let Some(t) = cfg.evaluation.target_accuracy {
        server = server.with_target_accuracy(t);
    }
    if cfg.evaluation.centralized {
        let mut learner = NnLearner::new(spec.clone(), 1, threads)?;
        let test = data.test.clone();
        server = server.with_central_evaluation(Box::new(move |p: &Parameters| {
            learner.evaluate(&p.values, &test.x, &test.y).ok().map(|s| CentralEval {
                num_examples: s.count,
                loss: s.mean_loss(),
                accuracy: s.accuracy(),
            })
        }));
    }
    let (global, new_records) =
        server.resume(initial, completed, &ServerConfig::new(cfg.rounds, cfg.seed), observer)?;
    records.extend(new_records);

    let mut results = Vec::with_capacity(parties.len());
    let mut eval = NnLearner::new(spec.clone(), 1, threads)?;
    for (i, p) in parties.iter().enumerate() {
        let fed = eval.evaluate(&global.values, &p.test.x, &p.test.y)?.accuracy();
        let alone = if cfg.evaluation.baseline {
            let rounds_trained = records.iter().filter(|r| r.fit.iter().any(|f| f.id == p.id)).count();
            Some(train_alone(cfg, &spec, p, &init_values, rounds_trained, i)?)
        } else {
            None
        };
        results.push(PartyResult {
            id: p.id.clone(),
            train_examples: p.train.len(),
            test_examples: p.test.len(),
            federated_accuracy: fed,
            alone_accuracy: alone,
            epsilon: records.iter().rev().flat_map(|r| r.fit.iter()).find(|f| f.id == p.id).and_then(|f| f.epsilon),
        });
    }
    Ok(SimResult { global, records, parties: results })
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
/// same number of local steps it took in the federation — and returns its test accuracy.
fn train_alone(
    cfg: &Config,
    spec: &ModelSpec,
    p: &PartyData,
    init: &[f32],
    rounds: usize,
    index: usize,
) -> Result<f64> {
    let mut learner = NnLearner::new(spec.clone(), cfg.train.batch_size, rayon::current_num_threads())?;
    let mut params = init.to_vec();
    let mut training = cfg.local_training();
    training.epochs = cfg.train.epochs * rounds;
    let mut opt = training.optimizer.build(params.len())?;
    let mut rng = seed::stream(cfg.seed, seed::Stream::Alone, &[index as u64]);
    learner.reseed(seed::derive(cfg.seed, seed::Stream::AloneDropout, &[index as u64]));
    train_local(&mut learner, &mut params, &p.train, &training, &mut opt, &mut rng)?;
    Ok(learner.evaluate(&params, &p.test.x, &p.test.y)?.accuracy())
}

/// Input shape and classes of a named dataset, known without loading it (the server holds
/// no data).
pub fn dataset_shape(name: &str) -> Result<(Shape, usize)> {
    match name {
        "mnist" | "fashion-mnist" => Ok((Shape::image(28, 28, 1), 10)),
        "synthetic" => Ok((Shape::flat(60), 10)),
        other => {
            anyhow::bail!("data.dataset = '{other}' is unknown: use one of {}", federate_data::DATASETS.join(", "))
        }
    }
}

pub(crate) fn spec_for(cfg: &Config) -> Result<ModelSpec> {
    let (input, classes) = dataset_shape(&cfg.data.dataset)?;
    spec_for_shape(cfg, input, classes)
}
