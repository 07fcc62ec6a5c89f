//! The run configuration: a TOML file whose every key is known (a misspelt key is an error),
//! with defaults that are the design document's worked example (MNIST, 3 parties of 2,000
//! training and 500 test examples, the CNN, FedAvg), plus `--set key=value` overrides.
//!
//! Past the ~600-line guideline: it holds the schema, the converters to core's types, `--set`
//! parsing and the cross-section checks. The redesign issue (one algorithm, one place) splits it
//! into `config/` (schema, checks) with core's enums used directly; splitting it before that
//! would only move the copies it removes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use federate_nn::{LayerSpec, OptimizerSpec};
use serde::{Deserialize, Serialize};

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seed of every random stream.
    pub seed: u64,
    /// Federated rounds.
    pub rounds: u32,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// `federate run` writes a checkpoint (`<run directory>/checkpoint`) every this many
    /// rounds, so `federate run --resume` can continue a stopped run (0: never).
    /// `federate serve` checkpoints after every round regardless.
    pub checkpoint_every: u32,
    /// Data and its split across parties.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// Local training of each party.
    pub train: TrainConfig,
    /// The server's strategy.
    pub strategy: StrategyConfig,
    /// What to evaluate.
    pub evaluation: EvaluationConfig,
    /// Sample-level differential privacy (DP-SGD in every party).
    pub privacy: PrivacyConfig,
    /// Client-level differential privacy (DP-FedAvg).
    pub client_privacy: ClientPrivacyConfig,
    /// Deployment settings of `federate serve` (ignored by `federate run`).
    pub server: ServerSection,
    /// Simulated malicious parties (`federate run` only).
    pub attack: AttackConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 42,
            rounds: 10,
            threads: 0,
            checkpoint_every: 10,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            strategy: StrategyConfig::default(),
            evaluation: EvaluationConfig::default(),
            privacy: PrivacyConfig::default(),
            client_privacy: ClientPrivacyConfig::default(),
            server: ServerSection::default(),
            attack: AttackConfig::default(),
        }
    }
}

/// How data is split across parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// Each party gets `train_per_party` training and `test_per_party` test examples drawn
    /// without replacement (the worked example).
    WorkedExample,
    /// The whole training set dealt IID.
    Iid,
    /// Dirichlet(α) label skew.
    Dirichlet,
    /// McMahan et al.'s label-sorted shards.
    Shards,
    /// Lognormal party sizes (σ = `quantity_sigma`), examples dealt IID.
    QuantitySkew,
    /// One party per natural key (the device of Synthetic(α, β)).
    Natural,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist`, `fashion-mnist`, or `synthetic` (FedProx's Synthetic(α, β)).
    pub dataset: String,
    /// The partitioner.
    pub partition: PartitionKind,
    /// Number of parties.
    pub parties: usize,
    /// Training examples per party (worked-example partition).
    pub train_per_party: usize,
    /// Test examples per party (worked-example partition).
    pub test_per_party: usize,
    /// Dirichlet concentration α.
    pub alpha: f64,
    /// Shards per party.
    pub shards_per_party: usize,
    /// A directory already holding the IDX files (tried before any download).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Cache directory (default: $FEDERATE_CACHE_DIR, else the user's cache directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Never download or run npm: use only the cache, `data_dir` and system packages.
    pub offline: bool,
    /// Quantity-skew partition: σ of the lognormal party sizes.
    pub quantity_sigma: f64,
    /// Synthetic(α, β): α (model heterogeneity).
    pub synthetic_alpha: f64,
    /// Synthetic(α, β): β (input heterogeneity).
    pub synthetic_beta: f64,
    /// Synthetic(α, β): devices generated.
    pub synthetic_devices: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: "mnist".into(),
            partition: PartitionKind::WorkedExample,
            parties: 3,
            train_per_party: 2000,
            test_per_party: 500,
            alpha: 0.5,
            shards_per_party: 2,
            data_dir: None,
            cache_dir: None,
            offline: false,
            quantity_sigma: 1.0,
            synthetic_alpha: 1.0,
            synthetic_beta: 1.0,
            synthetic_devices: 30,
        }
    }
}

/// Model settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `cnn`, `mlp`, `logreg`, or `custom` (then `layers` is required).
    pub name: String,
    /// The layer list of a custom model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerSpec>>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { name: "cnn".into(), layers: None }
    }
}

/// Optimiser names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// SGD with optional momentum.
    Sgd,
    /// Adam.
    Adam,
}

/// Local training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Local epochs per round.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: OptimizerName,
    /// Learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 2,
            batch_size: 32,
            optimizer: OptimizerName::Sgd,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }
}

impl TrainConfig {
    /// The optimiser description.
    pub fn optimizer_spec(&self) -> OptimizerSpec {
        match self.optimizer {
            OptimizerName::Sgd => {
                OptimizerSpec::Sgd { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay }
            }
            OptimizerName::Adam => OptimizerSpec::Adam {
                lr: self.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay,
            },
        }
    }
}

/// Strategy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyConfig {
    /// `fedavg`.
    pub name: String,
    /// Fraction of parties training each round.
    pub fraction_fit: f64,
    /// Minimum parties training each round.
    pub min_fit_clients: usize,
    /// Fraction of parties evaluating each round.
    pub fraction_evaluate: f64,
    /// Fewest usable replies that still make a new model.
    pub min_replies: usize,
    /// η: server learning rate (fedsgd, fedavgm, fedadam, fedyogi, fedadagrad, scaffold).
    pub server_lr: f64,
    /// β (fedavgm) or β₁ (fedadam, fedyogi, fedadagrad).
    pub beta1: f64,
    /// β₂ (fedadam, fedyogi).
    pub beta2: f64,
    /// τ: adaptivity of fedadam, fedyogi, fedadagrad.
    pub tau: f64,
    /// μ: FedProx's proximal weight.
    pub mu: f64,
    /// ρ: ADMM's penalty.
    pub rho: f64,
    /// ADMM: adapt ρ by residual balancing.
    pub adaptive_rho: bool,
    /// FedSGD: full-batch gradients (else one minibatch of batch_size).
    pub full_batch: bool,
    /// Fraction of chosen parties that straggle each round (do 1..=epochs local epochs).
    pub stragglers: f64,
    /// Drop stragglers instead of using their partial work.
    pub drop_stragglers: bool,
    /// How the parties' models are combined: `mean` (example-weighted, FedAvg), or robust to
    /// malicious parties: `median`, `trimmed-mean`, `krum` (fedavg, fedprox, fedsgd and the
    /// server optimisers).
    pub aggregator: String,
    /// `trimmed-mean`: fraction of the largest and of the smallest values dropped per
    /// coordinate, in [0, 0.5).
    pub trim: f64,
    /// `krum`: attackers tolerated (f); it needs more than 2f + 2 replies a round.
    pub byzantine: usize,
    /// `krum`: models kept and averaged (1 = Krum, more = multi-Krum).
    pub krum_select: usize,
}

/// The rules `strategy.aggregator` accepts.
pub const AGGREGATORS: [&str; 4] = ["mean", "median", "trimmed-mean", "krum"];

impl StrategyConfig {
    /// The aggregation rule configured.
    pub fn aggregator(&self) -> Result<federate_core::Aggregator> {
        use federate_core::Aggregator;
        let a = match self.aggregator.as_str() {
            "mean" => Aggregator::Mean,
            "median" => Aggregator::Median,
            "trimmed-mean" => Aggregator::TrimmedMean { trim: self.trim },
            "krum" => Aggregator::Krum { byzantine: self.byzantine, select: self.krum_select },
            other => bail!("strategy.aggregator = '{other}' is unknown: use one of {}", AGGREGATORS.join(", ")),
        };
        a.validate()?;
        Ok(a)
    }
}

/// The strategies `strategy.name` accepts.
pub const STRATEGIES: [&str; 9] =
    ["fedavg", "fedprox", "fedsgd", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "admm"];

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig {
            name: "fedavg".into(),
            fraction_fit: 1.0,
            min_fit_clients: 1,
            fraction_evaluate: 1.0,
            min_replies: 1,
            server_lr: 1.0,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
            mu: 0.01,
            rho: 0.1,
            adaptive_rho: false,
            full_batch: true,
            stragglers: 0.0,
            drop_stragglers: false,
            aggregator: "mean".into(),
            trim: 0.1,
            byzantine: 0,
            krum_select: 1,
        }
    }
}

/// Malicious parties, for measuring robust aggregation in a simulation: the first `parties`
/// parties train honestly, then send a poisoned model instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttackConfig {
    /// How many parties attack (party-1 … party-N); 0: none.
    pub parties: usize,
    /// `sign-flip`: θ_g − s·Δ; `scale`: θ_g + s·Δ (model replacement); `gaussian`: θ_g + N(0, s²)
    /// per value; Δ is the party's honest update θ_k − θ_g and s is `scale`.
    pub kind: AttackKind,
    /// The attack's strength s.
    pub scale: f64,
}

impl Default for AttackConfig {
    fn default() -> Self {
        AttackConfig { parties: 0, kind: AttackKind::SignFlip, scale: 10.0 }
    }
}

/// What a malicious party sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// The honest update reversed and scaled.
    SignFlip,
    /// The honest update scaled (boosting, model replacement).
    Scale,
    /// Random values of the honest model's size.
    Gaussian,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Also evaluate the global model on the dataset's whole test set each round.
    pub centralized: bool,
    /// After the run, train each party alone for the same number of local steps and report
    /// its accuracy beside the federated model's.
    pub baseline: bool,
    /// Stop after the first round whose accuracy reaches this fraction (e.g. 0.99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f64>,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig { centralized: false, baseline: true, target_accuracy: None }
    }
}

/// Privacy mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMechanism {
    /// No differential privacy.
    None,
    /// DP-SGD with Gaussian noise on L2-clipped per-example gradients.
    Gaussian,
    /// DP-SGD with Laplace noise on L1-clipped per-example gradients.
    Laplace,
}

/// Differential-privacy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `none` or `gaussian` (sample-level DP-SGD in every party).
    pub mechanism: PrivacyMechanism,
    /// σ: noise standard deviation ÷ clipping norm (gaussian).
    pub noise_multiplier: f64,
    /// ε₀ of one step before subsampling (laplace: noise scale = clip / ε₀).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_per_step: Option<f64>,
    /// Per-example clipping norm (L2 for gaussian, L1 for laplace).
    pub clip: f32,
    /// δ of the reported (ε, δ).
    pub delta: f64,
    /// `rdp` or `pld`.
    pub accountant: federate_privacy::Accountant,
    /// Poisson sampling rate (default: batch_size ÷ each party's examples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    /// Each party stops training before its ε would pass this; the run stops when all have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// `poisson` (each example with probability q) or `fixed-size` (exactly batch_size
    /// examples per step; RDP accounting for replace-one neighbours; gaussian only).
    pub sampling: federate_core::Sampling,
    /// Noise from the operating system and exact discrete samplers (`secure`), or seeded
    /// floating-point noise (`seeded`, reproducible). Default: seeded for `federate run`,
    /// secure for `federate join`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseName>,
}

/// Where DP noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NoiseName {
    /// Seeded streams, floating-point samplers: reproducible, for simulation.
    Seeded,
    /// OS entropy and exact discrete samplers: for deployments.
    Secure,
}

impl NoiseName {
    /// The core setting.
    pub fn source(self) -> federate_core::NoiseSource {
        match self {
            NoiseName::Seeded => federate_core::NoiseSource::Seeded,
            NoiseName::Secure => federate_core::NoiseSource::Secure,
        }
    }
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            mechanism: PrivacyMechanism::None,
            noise_multiplier: 1.0,
            epsilon_per_step: None,
            clip: 1.0,
            delta: 1e-5,
            accountant: federate_privacy::Accountant::Rdp,
            sampling_rate: None,
            target_epsilon: None,
            sampling: federate_core::Sampling::Poisson,
            noise: None,
        }
    }
}

impl PrivacyConfig {
    /// The DP-SGD settings, if DP is on.
    pub fn dp_sgd(&self) -> Option<federate_core::DpSgd> {
        let mechanism = match self.mechanism {
            PrivacyMechanism::None => return None,
            PrivacyMechanism::Gaussian => federate_core::Mechanism::Gaussian,
            PrivacyMechanism::Laplace => federate_core::Mechanism::Laplace,
        };
        match self.mechanism {
            PrivacyMechanism::None => None,
            PrivacyMechanism::Gaussian | PrivacyMechanism::Laplace => Some(federate_core::DpSgd {
                mechanism,
                noise_multiplier: self.noise_multiplier,
                epsilon_per_step: self.epsilon_per_step,
                clip: self.clip,
                sampling_rate: self.sampling_rate,
                delta: self.delta,
                accountant: self.accountant,
                max_epsilon: self.target_epsilon,
                sampling: self.sampling,
            }),
        }
    }
}

/// Client-level DP modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientPrivacyMode {
    /// Off.
    None,
    /// The server clips the updates and adds the noise.
    Central,
    /// Each party clips its update and adds its share of the noise.
    Distributed,
}

/// Client-level DP settings (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et
/// al. 2021). Parties join each round with probability strategy.fraction_fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientPrivacyConfig {
    /// `none`, `central` or `distributed`.
    pub mode: ClientPrivacyMode,
    /// z: noise std ÷ clip norm on the sum of clipped updates.
    pub noise_multiplier: f64,
    /// S: the L2 clip norm of an update (the initial one when adaptive).
    pub clip: f64,
    /// Track a quantile of the update norms instead of a fixed clip norm.
    pub adaptive: bool,
    /// γ: the quantile tracked.
    pub target_quantile: f64,
    /// η_C: geometric learning rate of the clip norm.
    pub clip_learning_rate: f64,
    /// σ_b: noise std on the count of unclipped updates (default: expected parties ÷ 20, as
    /// Andrew et al. suggest, but at least noise_multiplier, which z_Δ requires to exceed
    /// z/2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_noise: Option<f64>,
    /// η_s: server learning rate on the mean clipped update.
    pub server_lr: f64,
    /// δ of the client-level (ε, δ).
    pub delta: f64,
}

impl Default for ClientPrivacyConfig {
    fn default() -> Self {
        ClientPrivacyConfig {
            mode: ClientPrivacyMode::None,
            noise_multiplier: 1.0,
            clip: 1.0,
            adaptive: false,
            target_quantile: 0.5,
            clip_learning_rate: 0.2,
            count_noise: None,
            server_lr: 1.0,
            delta: 1e-5,
        }
    }
}

impl ClientPrivacyConfig {
    /// The core settings, if client-level DP is on; `expected` parties per round size the
    /// default count noise.
    pub fn client_dp_for(&self, expected: f64) -> Option<federate_core::ClientDp> {
        let mode = match self.mode {
            ClientPrivacyMode::None => return None,
            ClientPrivacyMode::Central => federate_core::ClientDpMode::Central,
            ClientPrivacyMode::Distributed => federate_core::ClientDpMode::Distributed,
        };
        Some(federate_core::ClientDp {
            mode,
            noise_multiplier: self.noise_multiplier,
            clip: self.clip,
            adaptive: self.adaptive.then(|| federate_core::AdaptiveClip {
                target_quantile: self.target_quantile,
                learning_rate: self.clip_learning_rate,
                count_noise: self.count_noise.unwrap_or((expected / 20.0).max(self.noise_multiplier)),
            }),
            server_lr: self.server_lr,
            delta: self.delta,
        })
    }
}

/// Settings of `federate serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on.
    pub listen: String,
    /// Party identities allowed to join, in order (default: party-1 … party-N).
    pub parties: Vec<String>,
    /// Seconds a party has to answer a task (the round deadline).
    pub round_timeout_s: f64,
    /// Seconds a task waits for an absent party to (re)connect.
    pub rejoin_wait_s: f64,
    /// Seconds to wait at start for every party to connect.
    pub start_wait_s: f64,
    /// Seconds between heartbeats.
    pub heartbeat_s: f64,
    /// A party silent this many seconds is dropped.
    pub party_timeout_s: f64,
    /// Where checkpoints go (default: <run directory>/checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Compress parameters with zstd on the wire.
    pub zstd: bool,
    /// Raw bytes per parameter chunk.
    pub chunk_bytes: usize,
    /// Largest gRPC message, bytes.
    pub max_message_bytes: usize,
    /// Most values in a parameter vector received.
    pub max_values: u64,
    /// Mutual TLS: `ca`, `cert`, `key` (required unless --insecure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<federate_net::tls::TlsFiles>,
    /// Cap on any example count a party reports (training or test) unless `declared` gives
    /// its own; a reply above its cap is refused.
    pub max_examples: u64,
    /// The operator's counts per party (`party-1 = { train = 2000, test = 500 }`): each is
    /// that party's cap, and its weight under `weight_by = "declared"`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub declared: BTreeMap<String, federate_core::Declared>,
    /// Weight parties by the counts they report ("reported") or by `declared` ("declared").
    pub weight_by: federate_core::Weighting,
    /// Most open connections, joined or not (default: twice the parties plus 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Most concurrent HTTP/2 streams on one connection.
    pub max_streams_per_connection: u32,
    /// Seconds a new connection has to finish its handshake and join.
    pub join_timeout_s: f64,
    /// Revoked party identities, one per line, in a file that may be edited while the server
    /// runs: a listed party is refused at its next handshake and dropped before its next task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "0.0.0.0:7000".into(),
            parties: Vec::new(),
            round_timeout_s: 600.0,
            rejoin_wait_s: 30.0,
            start_wait_s: 300.0,
            heartbeat_s: 5.0,
            party_timeout_s: 30.0,
            checkpoint_dir: None,
            zstd: false,
            chunk_bytes: 4 << 20,
            max_message_bytes: 16 << 20,
            max_values: 1 << 28,
            tls: None,
            max_examples: federate_core::admission::DEFAULT_MAX_EXAMPLES,
            declared: BTreeMap::new(),
            weight_by: federate_core::Weighting::Reported,
            max_connections: None,
            max_handshakes: 64,
            max_streams_per_connection: 8,
            join_timeout_s: 10.0,
            deny_file: None,
        }
    }
}

impl ServerSection {
    /// The party identities: the configured list, or party-1 … party-N.
    pub fn party_ids(&self, n: usize) -> Vec<String> {
        if self.parties.is_empty() { (1..=n).map(|i| format!("party-{i}")).collect() } else { self.parties.clone() }
    }

    /// What the server accepts from the parties' replies.
    pub fn admission(&self) -> federate_core::Admission {
        federate_core::Admission {
            max_examples: self.max_examples,
            declared: self.declared.clone(),
            weight_by: self.weight_by,
        }
    }
}

/// Reads a config file (or the defaults), applies `key=value` overrides, and validates.
pub fn load(path: Option<&Path>, sets: &[String]) -> Result<Config> {
    let mut table: toml::Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {}", p.display(), one_line(&e.to_string())))?
        }
        None => toml::Table::new(),
    };
    for s in sets {
        apply_set(&mut table, s)?;
    }
    let what = path.map(|p| p.display().to_string()).unwrap_or_else(|| "--set".into());
    let cfg: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("config {what}: {}", one_line(&e.to_string())))?;
    validate(&cfg)?;
    Ok(cfg)
}

/// The keys (dotted) whose values differ between `a` and `b`, leaving out those a resumed
/// run may change: `rounds`, `threads`, `checkpoint_every`, the data directories and the
/// `[server]` section (which `federate run` ignores).
pub fn differences(a: &Config, b: &Config) -> Vec<String> {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.rounds = 0;
        c.threads = 0;
        c.checkpoint_every = 0;
        c.data.data_dir = None;
        c.data.cache_dir = None;
        c.server = ServerSection::default();
        toml::Value::try_from(&c).unwrap_or(toml::Value::Boolean(false))
    };
    let mut out = Vec::new();
    diff_values("", &strip(a), &strip(b), &mut out);
    out
}

fn diff_values(at: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_values(&key, u, v, out),
                    _ => out.push(key),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

fn one_line(s: &str) -> String {
    let lines: Vec<&str> =
        s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^')).collect();
    lines.join(" ")
}

/// Applies one `a.b.c=value` override; the value is read as TOML (number, bool, array,
/// quoted string) and otherwise taken as a bare string.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let Some((key, raw)) = set.split_once('=') else {
        bail!("--set {set}: expected key=value, e.g. --set train.lr=0.01");
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("--set {set}: the key is empty; write e.g. --set data.parties=5");
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.trim().into())),
        Err(_) => toml::Value::String(raw.trim().into()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {set}: '{p}' is a value, not a section"),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Most parties a config may name (each costs the server a connection and a record).
const MAX_PARTIES: usize = 1_000_000;

/// Most worker threads.
const MAX_THREADS: usize = 1024;

/// Most local epochs per round.
const MAX_EPOCHS: usize = 100_000;

/// Range checks that the types alone do not express.
pub fn validate(c: &Config) -> Result<()> {
    let d = &c.data;
    if c.rounds == 0 {
        bail!("rounds = 0: set rounds to at least 1");
    }
    if d.parties == 0 {
        bail!("data.parties = 0: a federation needs at least 1 party");
    }
    if d.parties > MAX_PARTIES {
        bail!(
            "data.parties = {} is more than {MAX_PARTIES}: federate is tested up to 10,000 connected parties",
            d.parties
        );
    }
    if c.threads > MAX_THREADS {
        bail!("threads = {} is more than {MAX_THREADS}; 0 uses one per core", c.threads);
    }
    if d.dataset != "synthetic" && federate_data::dataset_info(&d.dataset).is_err() {
        bail!(
            "data.dataset = '{}' is unknown: use one of {}, synthetic",
            d.dataset,
            federate_data::DATASETS.join(", ")
        );
    }
    if d.partition == PartitionKind::Natural && (d.dataset != "synthetic" || d.parties != d.synthetic_devices) {
        bail!(
            "data.partition = \"natural\" gives one party per device of dataset = \"synthetic\": set data.parties = \
             data.synthetic_devices ({})",
            d.synthetic_devices
        );
    }
    if !(d.synthetic_alpha >= 0.0 && d.synthetic_beta >= 0.0 && d.quantity_sigma >= 0.0) {
        bail!("data.synthetic_alpha, data.synthetic_beta and data.quantity_sigma must be ≥ 0");
    }
    if d.partition == PartitionKind::WorkedExample && (d.train_per_party == 0 || d.test_per_party == 0) {
        bail!("data.train_per_party and data.test_per_party must be at least 1");
    }
    if d.partition == PartitionKind::Dirichlet && !(d.alpha > 0.0 && d.alpha.is_finite()) {
        bail!("data.alpha = {} must be a positive number", d.alpha);
    }
    let t = &c.train;
    if t.epochs == 0 || t.epochs > MAX_EPOCHS {
        bail!("train.epochs = {} must be in 1..={MAX_EPOCHS} local epochs", t.epochs);
    }
    if t.batch_size == 0 {
        bail!("train.batch_size = 0: set at least 1");
    }
    t.optimizer_spec().validate().map_err(|e| anyhow::anyhow!("train: {e}"))?;
    let s = &c.strategy;
    if !STRATEGIES.contains(&s.name.as_str()) {
        bail!("strategy.name = '{}' is unknown: use one of {}", s.name, STRATEGIES.join(", "));
    }
    if !(s.server_lr > 0.0 && s.server_lr.is_finite()) {
        bail!("strategy.server_lr = {} must be > 0", s.server_lr);
    }
    if !(s.mu >= 0.0 && s.mu.is_finite()) {
        bail!("strategy.mu = {} must be ≥ 0 (FedProx's proximal weight)", s.mu);
    }
    if !(s.rho > 0.0 && s.rho.is_finite()) {
        bail!("strategy.rho = {} must be > 0 (ADMM's penalty)", s.rho);
    }
    if !(0.0..=1.0).contains(&s.stragglers) {
        bail!("strategy.stragglers = {} must be in [0, 1]", s.stragglers);
    }
    if !(0.0..0.5).contains(&s.trim) {
        bail!("strategy.trim = {} must be in [0, 0.5) (the fraction trimmed from each end)", s.trim);
    }
    if s.krum_select == 0 {
        bail!("strategy.krum_select = 0: Krum keeps at least 1 model");
    }
    // Checked here as well as in the strategies, so a bad pairing fails before a run
    // directory is written.
    let aggregator = s.aggregator()?;
    if aggregator != federate_core::Aggregator::Mean
        && (matches!(s.name.as_str(), "scaffold" | "admm") || c.client_privacy.mode != ClientPrivacyMode::None)
    {
        bail!(
            "strategy.aggregator = \"{}\" works with fedavg, fedprox, fedsgd, fedavgm, fedadam, fedyogi and \
             fedadagrad; {} aggregates its own way: set strategy.aggregator = \"mean\"",
            s.aggregator,
            if c.client_privacy.mode != ClientPrivacyMode::None { "client-level DP" } else { s.name.as_str() }
        );
    }
    let a = &c.attack;
    if a.parties > d.parties {
        bail!("attack.parties = {} is more than data.parties = {}", a.parties, d.parties);
    }
    if !(a.scale >= 0.0 && a.scale.is_finite()) {
        bail!("attack.scale = {} must be a finite number ≥ 0", a.scale);
    }
    if s.name == "scaffold" && !matches!(c.train.optimizer, OptimizerName::Sgd) {
        bail!("strategy.name = \"scaffold\" needs train.optimizer = \"sgd\" (its control variates assume SGD steps)");
    }
    if c.client_privacy.mode != ClientPrivacyMode::None && s.name != "fedavg" {
        bail!("[client_privacy] wraps fedavg only: set strategy.name = \"fedavg\" or client_privacy.mode = \"none\"");
    }
    if !(s.fraction_fit > 0.0 && s.fraction_fit <= 1.0) {
        bail!("strategy.fraction_fit = {} must be in (0, 1]", s.fraction_fit);
    }
    if !(0.0..=1.0).contains(&s.fraction_evaluate) {
        bail!("strategy.fraction_evaluate = {} must be in [0, 1]", s.fraction_evaluate);
    }
    if let Some(dp) = c.privacy.dp_sgd() {
        dp.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if s.name == "fedsgd" && s.full_batch && dp.sampling_rate.is_some() {
            bail!(
                "privacy.sampling_rate does not apply with strategy.full_batch = true (FedSGD's full-batch gradient \
                 uses every example: q = 1); remove privacy.sampling_rate or set strategy.full_batch = false"
            );
        }
    }
    if let Some(dp) = c.client_privacy.client_dp_for(s.fraction_fit * d.parties as f64) {
        dp.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(t) = c.evaluation.target_accuracy
        && !(t > 0.0 && t <= 1.0)
    {
        bail!("evaluation.target_accuracy = {t} must be a fraction in (0, 1], e.g. 0.99");
    }
    let sv = &c.server;
    for (name, v) in [
        ("round_timeout_s", sv.round_timeout_s),
        ("rejoin_wait_s", sv.rejoin_wait_s),
        ("start_wait_s", sv.start_wait_s),
        ("heartbeat_s", sv.heartbeat_s),
        ("party_timeout_s", sv.party_timeout_s),
        ("join_timeout_s", sv.join_timeout_s),
    ] {
        // A week at most: beyond that a timer is a typo, and 1e30 s is no Duration at all.
        if !(v > 0.0 && v <= MAX_SECONDS) {
            bail!("server.{name} = {v} must be a positive number of seconds, at most {MAX_SECONDS} (a week)");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &sv.parties {
        if !seen.insert(p) {
            bail!("server.parties lists '{p}' twice: each party may be allowed once; remove the duplicate");
        }
    }
    sv.admission().validate(&sv.party_ids(c.data.parties)).map_err(anyhow::Error::msg)?;
    let parties = sv.party_ids(c.data.parties).len();
    if sv.max_connections.is_some_and(|m| m < parties || m > 1_000_000) {
        bail!(
            "server.max_connections = {} must be at least the number of parties ({parties}) and at most 1000000",
            sv.max_connections.unwrap_or(0)
        );
    }
    if !(1..=100_000).contains(&sv.max_handshakes) {
        bail!("server.max_handshakes = {} must be in 1..=100000", sv.max_handshakes);
    }
    if !(1..=1000).contains(&sv.max_streams_per_connection) {
        bail!("server.max_streams_per_connection = {} must be in 1..=1000", sv.max_streams_per_connection);
    }
    if sv.chunk_bytes < 4 || sv.chunk_bytes + 1024 > sv.max_message_bytes {
        bail!("server.chunk_bytes must be at least 4 and 1 KiB below server.max_message_bytes");
    }
    match c.model.name.as_str() {
        "custom" if c.model.layers.is_none() => {
            bail!("model.name = \"custom\" needs model.layers = [ ... ]")
        }
        "custom" => {}
        n if federate_nn::BUILTIN_MODELS.contains(&n) => {
            if c.model.layers.is_some() {
                bail!("model.layers is only read when model.name = \"custom\"; remove it or set name = \"custom\"");
            }
        }
        n => bail!("model.name = '{n}' is unknown: use one of {}, or custom", federate_nn::BUILTIN_MODELS.join(", ")),
    }
    Ok(())
}

/// The longest timer a config may set, in seconds (a week).
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_are_bounded_and_the_allow_list_has_no_duplicates() {
        let e = load(None, &["server.heartbeat_s=1e30".into()]).unwrap_err().to_string();
        assert!(e.contains("server.heartbeat_s") && e.contains("a week"), "{e}");
        let e = load(None, &["server.round_timeout_s=nan".into()]).unwrap_err().to_string();
        assert!(e.contains("server.round_timeout_s"), "{e}");
        let e = load(None, &[r#"server.parties=["party-1","party-2","party-1"]"#.into()]).unwrap_err().to_string();
        assert!(e.contains("'party-1' twice"), "{e}");
        assert!(load(None, &["server.heartbeat_s=604800".into()]).is_ok());
    }

    #[test]
    fn defaults_are_the_worked_example() {
        let c = load(None, &[]).unwrap();
        assert_eq!((c.data.parties, c.data.train_per_party, c.data.test_per_party), (3, 2000, 500));
        assert_eq!(c.model.name, "cnn");
    }

    #[test]
    fn sets_override_and_unknown_keys_fail() {
        let c = load(None, &["train.lr=0.01".into(), "data.dataset=fashion-mnist".into(), "rounds=3".into()]).unwrap();
        assert_eq!(c.train.lr, 0.01);
        assert_eq!(c.data.dataset, "fashion-mnist");
        assert_eq!(c.rounds, 3);
        let e = load(None, &["train.lrr=0.01".into()]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = load(None, &["train.lr=-1".into()]).unwrap_err().to_string();
        assert!(e.contains("learning rate"), "{e}");
        let e = load(None, &["data.parties=0".into()]).unwrap_err().to_string();
        assert!(e.contains("parties = 0"), "{e}");
        assert!(load(None, &["nokey".into()]).is_err());
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = load(
            None,
            &["model.name=custom".into(), r#"model.layers=[{type="flatten"},{type="linear",out=10}]"#.into()],
        )
        .unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    /// Every dotted key of the default config (the schema a user can `--set`).
    fn all_keys() -> Vec<String> {
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.push(key.clone());
                    walk(&key, v, out);
                }
            }
        }
        let mut keys = Vec::new();
        walk("", &toml::Value::try_from(Config::default()).unwrap(), &mut keys);
        keys.extend(
            ["model.layers", "server.max_connections", "server.declared.party-1", "privacy.noise_multiplier"]
                .map(String::from),
        );
        keys
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Random values under real keys (extremes, wrong types, hostile layer lists): config
        /// validation and the model check that follows answer Ok or a one-line error, never a
        /// panic.
        #[test]
        fn random_configs_never_panic(picks in proptest::collection::vec((0usize..1000, 0usize..1000), 1..6)) {
            const VALUES: &[&str] = &[
                "0", "-1", "1", "2", "3", "7", "0.5", "1e-300", "1e30", "-1e30", "nan", "inf", "-inf",
                "18446744073709551615", "9223372036854775807", "4294967296", "1000000000000", "\"\"", "\"x\"", "\"declared\"",
                "\"gaussian\"", "\"laplace\"", "\"custom\"", "\"cnn\"", "\"fedsgd\"", "\"scaffold\"", "true",
                "false", "[]", "{}", "[\"a\", \"a\"]", "{ train = 0 }", "{ train = 18446744073709551615 }",
                r#"[{type="flatten"},{type="linear",out=100000000000}]"#,
                r#"[{type="conv2d",out_channels=1073741824,kernel=5}]"#,
                r#"[{type="conv2d",out_channels=4,kernel=3,padding=4611686018427387904}]"#,
                r#"[{type="max_pool2d",kernel=0}]"#,
            ];
            let keys = all_keys();
            let sets: Vec<String> =
                picks.iter().map(|(k, v)| format!("{}={}", keys[k % keys.len()], VALUES[v % VALUES.len()])).collect();
            let outcome = std::panic::catch_unwind(|| {
                if let Ok(cfg) = load(None, &sets) {
                    let _ = crate::sim::spec_for(&cfg);
                }
            });
            proptest::prop_assert!(outcome.is_ok(), "panicked on {:?}", sets);
        }
    }
}
