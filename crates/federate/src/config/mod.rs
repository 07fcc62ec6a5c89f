//! The run configuration: a TOML file whose every key is known (a misspelt key is an error),
//! with defaults that are the design document's worked example (MNIST, 3 parties of 2,000
//! training and 500 test examples, the CNN, FedAvg), plus `--set key=value` overrides.
//!
//! The schema of the sections is here and in `privacy.rs` and `server.rs`; reading a file and
//! `--set` in `load.rs`; the checks across sections in `validate.rs`.

mod compression;
mod data;
mod load;
mod privacy;
mod server;
mod validate;

pub use compression::*;
pub use data::*;
pub use load::*;
pub use privacy::*;
pub use server::*;
pub use validate::*;

use anyhow::{Result, bail};
use federate_core::OptimizerSpec;
use federate_nn::LayerSpec;
use serde::{Deserialize, Serialize};

impl Config {
    /// Every party's local training as the config sets it (the algorithm's party half is
    /// added by its server half, task by task).
    pub fn local_training(&self) -> federate_core::LocalTraining {
        federate_core::LocalTraining {
            epochs: self.train.epochs,
            batch_size: self.train.batch_size,
            optimizer: self.train.optimizer_spec(),
            dp: self.privacy.dp_sgd(),
            update_dp: None,
            local: Default::default(),
            compression: self.compression.update_compression(),
        }
    }

    /// FedAvg's sampling, stragglers, evaluation and local training, which every algorithm
    /// composes with.
    pub fn fedavg_base(&self) -> Result<federate_core::FedAvg> {
        let s = &self.strategy;
        let base = federate_core::FedAvg {
            fraction_fit: s.fraction_fit,
            min_fit_clients: s.min_fit_clients,
            fraction_evaluate: s.fraction_evaluate,
            min_replies: s.min_replies,
            training: self.local_training(),
            stragglers: s.stragglers,
            drop_stragglers: s.drop_stragglers,
            aggregator: s.aggregator()?,
            running: None,
        };
        base.validate()?;
        Ok(base)
    }
}

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
    /// Simulation: threads each party trains with (0 = all of them, one party at a time).
    /// Fewer than `threads` trains `threads / party_threads` parties side by side; a party's
    /// result depends on its own thread count only, so runs with the same `party_threads`
    /// give the same model whatever `threads` is.
    pub party_threads: usize,
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
    /// Compression of the updates parties send.
    pub compression: CompressionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 42,
            rounds: 10,
            threads: 0,
            party_threads: 0,
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
            compression: CompressionConfig::default(),
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
    /// Regression tasks: `mse` (default) or `huber`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<RegressionLoss>,
    /// Huber loss: the threshold δ between its quadratic and linear parts (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huber_delta: Option<f32>,
    /// Binary tasks: the weight of the positive class in the loss (default 1; the ratio of
    /// negatives to positives balances the classes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos_weight: Option<f32>,
}

/// Losses of a regression task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegressionLoss {
    /// Mean squared error.
    Mse,
    /// Huber (`huber_delta`).
    Huber,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { name: "cnn".into(), layers: None, loss: None, huber_delta: None, pos_weight: None }
    }
}

impl Config {
    /// The loss the task calls for: softmax cross-entropy for images and multiclass tables,
    /// sigmoid cross-entropy for binary tables, MSE or Huber for regression. A loss setting
    /// the task does not read is an error naming it.
    pub fn loss(&self) -> Result<federate_nn::Loss> {
        use federate_data::table::Task;
        let m = &self.model;
        let task = self.data.table_schema().map(|s| s.task);
        if task != Some(Task::Regression) && (m.loss.is_some() || m.huber_delta.is_some()) {
            bail!(
                "model.loss and model.huber_delta apply to regression tables (data.schema.task = \"regression\"); remove them"
            );
        }
        if task != Some(Task::Binary) && m.pos_weight.is_some() {
            bail!("model.pos_weight applies to binary tables (data.schema.task = \"binary\"); remove it");
        }
        if m.loss != Some(RegressionLoss::Huber) && m.huber_delta.is_some() {
            bail!("model.huber_delta is read only by model.loss = \"huber\"");
        }
        let loss = match task {
            Some(Task::Binary) => federate_nn::Loss::BinaryCrossEntropy { pos_weight: m.pos_weight.unwrap_or(1.0) },
            Some(Task::Regression) => match m.loss {
                Some(RegressionLoss::Huber) => federate_nn::Loss::Huber { delta: m.huber_delta.unwrap_or(1.0) },
                _ => federate_nn::Loss::Mse,
            },
            _ => federate_nn::Loss::SoftmaxCrossEntropy,
        };
        loss.check().map_err(|e| anyhow::anyhow!("model: {e}"))?;
        Ok(loss)
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

/// Strategy settings. Keys not named here are algorithm settings declared by the algorithm
/// that reads them (`federate_core::algorithms`), checked by [`StrategyConfig::algorithm_settings`]
/// (serde's `deny_unknown_fields` does not combine with the map that collects them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    /// Settings of the chosen algorithm not named above (FedDyn's `alpha`), as its module
    /// declares them.
    #[serde(flatten)]
    pub more: std::collections::BTreeMap<String, toml::Value>,
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

impl StrategyConfig {
    /// The registered algorithm `name` chooses.
    pub fn algorithm(&self) -> Result<&'static federate_core::Algorithm> {
        federate_core::algorithms::find(&self.name).ok_or_else(|| {
            anyhow::anyhow!(
                "strategy.name = '{}' is unknown: use one of {}",
                self.name,
                federate_core::algorithms::names().join(", ")
            )
        })
    }

    /// Every algorithm setting the config gives, by key: the ones named in this struct and
    /// the chosen algorithm's own. A key no field names must be a number and a setting the
    /// chosen algorithm declares.
    pub fn algorithm_settings(&self) -> Result<std::collections::BTreeMap<String, f64>> {
        let alg = self.algorithm()?;
        let flag = |b: bool| f64::from(u8::from(b));
        let mut out: std::collections::BTreeMap<String, f64> = [
            ("server_lr", self.server_lr),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("tau", self.tau),
            ("mu", self.mu),
            ("rho", self.rho),
            ("adaptive_rho", flag(self.adaptive_rho)),
            ("full_batch", flag(self.full_batch)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (key, value) in &self.more {
            if !alg.settings.iter().any(|s| s.key == key) {
                let readers: Vec<&str> = federate_core::ALGORITHMS
                    .iter()
                    .filter(|a| a.settings.iter().any(|s| s.key == key))
                    .map(|a| a.name)
                    .collect();
                if readers.is_empty() {
                    bail!("strategy.{key} is not a setting: check its spelling (see docs/optimisation.md)");
                }
                bail!(
                    "strategy.{key} is a setting of {}, and strategy.name = \"{}\" does not read it: remove it or \
                     choose that algorithm",
                    readers.join(", "),
                    self.name
                );
            }
            let v = match value {
                toml::Value::Float(f) => *f,
                toml::Value::Integer(i) => *i as f64,
                toml::Value::Boolean(b) => flag(*b),
                other => bail!("strategy.{key} = {other} must be a number"),
            };
            out.insert(key.clone(), v);
        }
        Ok(out)
    }
}

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
            more: Default::default(),
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
    /// its metrics beside the federated model's.
    pub baseline: bool,
    /// After the run, also train one model on the parties' pooled training rows for the same
    /// number of epochs (what pooling the data would have given; simulation only).
    pub pooled: bool,
    /// The metric shown each round and read by `target`: accuracy, balanced_accuracy, f1,
    /// auc, log_loss, ece (classification), rmse, mae, r2 (regression), or loss. Default:
    /// auc for binary tables, rmse for regression, accuracy otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Stop after the first round whose `metric` reaches this value (at or above it, or at or
    /// below it for a metric where lower is better).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// The older spelling of `target` with `metric = "accuracy"` (a fraction, e.g. 0.99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f64>,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig {
            centralized: false,
            baseline: true,
            pooled: false,
            metric: None,
            target: None,
            target_accuracy: None,
        }
    }
}

impl Config {
    /// The metric shown and stopped at, checked against the task.
    pub fn metric(&self) -> Result<federate_core::metrics::MetricInfo> {
        use federate_data::table::Task;
        let e = &self.evaluation;
        let task = self.data.table_schema().map(|s| s.task);
        let default = match task {
            Some(Task::Binary) => "auc",
            Some(Task::Regression) => "rmse",
            _ => "accuracy",
        };
        let name = match (&e.metric, e.target_accuracy) {
            (Some(m), Some(_)) if m != "accuracy" => {
                bail!(
                    "evaluation.target_accuracy is a target for accuracy, but evaluation.metric = \"{m}\": use evaluation.target"
                )
            }
            (_, Some(_)) => "accuracy",
            (Some(m), None) => m.as_str(),
            (None, None) => default,
        };
        let names: Vec<&str> = federate_core::metrics::METRICS.iter().map(|m| m.name).collect();
        let Some(info) = federate_core::metrics::metric(name) else {
            bail!("evaluation.metric = \"{name}\" is unknown: use one of {}", names.join(", "));
        };
        let regression = task == Some(Task::Regression);
        let fits = match info.tasks {
            "regression" => regression,
            "binary" => task == Some(Task::Binary),
            "classification" => !regression,
            t if t.starts_with("classification") => !regression,
            _ => true,
        };
        if !fits {
            bail!("evaluation.metric = \"{name}\" applies to {} tasks, and this run's is not one", info.tasks);
        }
        if e.target.is_some() && e.target_accuracy.is_some() {
            bail!("evaluation.target and evaluation.target_accuracy both set a target: keep evaluation.target");
        }
        Ok(info)
    }

    /// The target of `metric()`, if any.
    pub fn target(&self) -> Option<f64> {
        self.evaluation.target.or(self.evaluation.target_accuracy)
    }
}

#[cfg(test)]
mod tests;
