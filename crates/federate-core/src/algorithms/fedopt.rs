//! Server optimisers on the FedAvg pseudo-gradient (Reddi et al. 2021): FedAvgM, FedAdagrad,
//! FedAdam, FedYogi. Their party half is plain local SGD.

use serde::{Deserialize, Serialize};

use super::{Algorithm, FedAvg, Federated, Range, ServerHalf, Setting, Settings};
use crate::messages::{FitReply, Rejection, StrategyError};
use crate::params::Parameters;
use crate::strategy::{StrategyState, missing_state};

const LR: Setting =
    Setting { key: "server_lr", default: 1.0, range: Range::Positive, about: "η: the server's step size" };
const BETA1: Setting = Setting {
    key: "beta1",
    default: 0.9,
    range: Range::Fraction,
    about: "β (FedAvgM) or β₁: the first moment's decay",
};
const BETA2: Setting =
    Setting { key: "beta2", default: 0.99, range: Range::Fraction, about: "β₂: the second moment's decay" };
const TAU: Setting =
    Setting { key: "tau", default: 1e-3, range: Range::Positive, about: "τ: adaptivity, added to √v" };

fn build(optimizer: ServerOptimizer, s: &Settings) -> FedOptConfig {
    FedOptConfig { optimizer, lr: s.get("server_lr"), beta1: s.get("beta1"), beta2: s.get("beta2"), tau: s.get("tau") }
}

/// FedAvgM in the registry.
pub(super) static FEDAVGM: Algorithm = Algorithm {
    name: "fedavgm",
    about: "FedAvg with server momentum: v ← βv + Δ, θ ← θ + ηv",
    settings: &[LR, BETA1],
    strategy: |base, s| Ok(Box::new(FedOpt::new(base, build(ServerOptimizer::Momentum, s))?)),
    party: None,
};

/// FedAdam in the registry.
pub(super) static FEDADAM: Algorithm = Algorithm {
    name: "fedadam",
    about: "FedAvg's pseudo-gradient through Adam (Reddi et al. 2021)",
    settings: &[LR, BETA1, BETA2, TAU],
    strategy: |base, s| Ok(Box::new(FedOpt::new(base, build(ServerOptimizer::Adam, s))?)),
    party: None,
};

/// FedYogi in the registry.
pub(super) static FEDYOGI: Algorithm = Algorithm {
    name: "fedyogi",
    about: "FedAvg's pseudo-gradient through Yogi (Reddi et al. 2021)",
    settings: &[LR, BETA1, BETA2, TAU],
    strategy: |base, s| Ok(Box::new(FedOpt::new(base, build(ServerOptimizer::Yogi, s))?)),
    party: None,
};

/// FedAdagrad in the registry.
pub(super) static FEDADAGRAD: Algorithm = Algorithm {
    name: "fedadagrad",
    about: "FedAvg's pseudo-gradient through Adagrad (Reddi et al. 2021)",
    settings: &[LR, BETA1, TAU],
    strategy: |base, s| Ok(Box::new(FedOpt::new(base, build(ServerOptimizer::Adagrad, s))?)),
    party: None,
};

/// The server optimiser applied to the pseudo-gradient Δ = mean_k θ_k − θ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerOptimizer {
    /// FedAvgM: v ← βv + Δ, θ ← θ + ηv (Hsu et al. 2019).
    Momentum,
    /// FedAdagrad: v ← v + Δ².
    Adagrad,
    /// FedAdam: v ← β₂v + (1−β₂)Δ².
    Adam,
    /// FedYogi: v ← v − (1−β₂)Δ²·sign(v − Δ²).
    Yogi,
}

/// Settings of a server optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FedOptConfig {
    /// Which optimiser.
    pub optimizer: ServerOptimizer,
    /// η: server learning rate.
    pub lr: f64,
    /// β (FedAvgM) or β₁ (adaptive).
    pub beta1: f64,
    /// β₂ (FedAdam, FedYogi).
    pub beta2: f64,
    /// τ: adaptivity (added to √v).
    pub tau: f64,
}

/// FedAvg with a server optimiser on the pseudo-gradient (Reddi et al. 2021, Algorithm 2):
/// m ← β₁m + (1−β₁)Δ; v as the optimiser says; θ ← θ + η·m/(√v + τ). FedAvgM uses
/// m ← β·m + Δ and θ ← θ + η·m. The moments are computed in f64 and kept in f32, the
/// precision of the model, so a checkpoint holds them exactly and a resumed run continues
/// bit for bit.
pub struct FedOpt {
    cfg: FedOptConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FedOpt {
    /// A server optimiser over `base`.
    pub fn new(base: FedAvg, cfg: FedOptConfig) -> Result<Federated<FedOpt>, StrategyError> {
        base.validate()?;
        Range::Positive.check("server_lr", cfg.lr)?;
        Range::Fraction.check("beta1", cfg.beta1)?;
        Range::Fraction.check("beta2", cfg.beta2)?;
        if cfg.optimizer != ServerOptimizer::Momentum {
            Range::Positive.check("tau", cfg.tau)?;
        }
        Ok(Federated { base, algorithm: FedOpt { cfg, m: Vec::new(), v: Vec::new() } })
    }
}

impl ServerHalf for FedOpt {
    fn name(&self) -> &str {
        match self.cfg.optimizer {
            ServerOptimizer::Momentum => "fedavgm",
            ServerOptimizer::Adagrad => "fedadagrad",
            ServerOptimizer::Adam => "fedadam",
            ServerOptimizer::Yogi => "fedyogi",
        }
    }
    /// It reads the parties' parameters only through FedAvg's average.
    fn folds(&self) -> bool {
        true
    }

    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let (avg, rejected) = base.average(round, global, replies)?;
        let d = global.len();
        if self.m.len() != d {
            self.m = vec![0.0; d];
            // Reddi et al. initialise v to τ².
            self.v = vec![(self.cfg.tau * self.cfg.tau) as f32; d];
        }
        let c = self.cfg;
        let mut values = Vec::with_capacity(d);
        for (i, (a, g)) in avg.iter().zip(&global.values).enumerate() {
            let delta = *a as f64 - *g as f64;
            let (m, v) = (self.m[i] as f64, self.v[i] as f64);
            let step = match c.optimizer {
                ServerOptimizer::Momentum => {
                    self.m[i] = (c.beta1 * m + delta) as f32;
                    self.m[i] as f64
                }
                opt => {
                    self.m[i] = (c.beta1 * m + (1.0 - c.beta1) * delta) as f32;
                    let d2 = delta * delta;
                    self.v[i] = match opt {
                        ServerOptimizer::Adagrad => v + d2,
                        ServerOptimizer::Adam => c.beta2 * v + (1.0 - c.beta2) * d2,
                        _ => v - (1.0 - c.beta2) * d2 * (v - d2).signum(),
                    } as f32;
                    self.m[i] as f64 / ((self.v[i] as f64).max(0.0).sqrt() + c.tau)
                }
            };
            values.push((*g as f64 + c.lr * step) as f32);
        }
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    fn state(&self) -> Option<StrategyState> {
        Some(StrategyState { meta: self.name().to_string(), vectors: vec![self.m.clone(), self.v.clone()] })
    }

    fn restore(&mut self, state: Option<&StrategyState>) -> Result<(), StrategyError> {
        let Some(s) = state.filter(|s| s.vectors.len() == 2 && s.meta == self.name()) else {
            return Err(missing_state(&format!("{} (server optimiser moments)", self.name())));
        };
        self.m = s.vectors[0].clone();
        self.v = s.vectors[1].clone();
        Ok(())
    }
}
