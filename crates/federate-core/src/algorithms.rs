//! The federated optimisers beyond FedAvg: FedSGD (distributed SGD), server optimisers on
//! the FedAvg pseudo-gradient (FedAvgM, FedAdagrad, FedAdam, FedYogi; Reddi et al. 2021),
//! consensus ADMM (Boyd et al. 2011, §7.1) and SCAFFOLD (Karimireddy et al. 2020). FedProx
//! is FedAvg with `LocalAlgorithm::Prox` in the parties' training.
//!
//! Each wraps a [`FedAvg`] for party sampling, stragglers, evaluation and the local
//! training settings, and keeps its server-side state (momentum, control variates, duals'
//! contributions) in [`StrategyState`] for checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::messages::LocalAlgorithm;
use crate::messages::{FitReply, FitTask};
use crate::messages::{Rejection, StrategyError};
use crate::params::Parameters;
use crate::strategy::{
    FedAvg, Strategy, StrategyState, evaluate_with_base, fit_with_base, missing_state, usable_replies,
};

fn positive(name: &str, v: f64) -> Result<(), StrategyError> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(StrategyError::Config(format!("strategy.{name} = {v} must be > 0")))
    }
}

fn too_few(round: u32, got: usize, need: usize) -> StrategyError {
    StrategyError::TooFewReplies { round, got, need: need.max(1) }
}

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
    base: FedAvg,
    cfg: FedOptConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FedOpt {
    /// A server optimiser over `base`.
    pub fn new(base: FedAvg, cfg: FedOptConfig) -> Result<Self, StrategyError> {
        base.validate()?;
        positive("server_lr", cfg.lr)?;
        if !(0.0..1.0).contains(&cfg.beta1) {
            return Err(StrategyError::Config(format!("strategy.beta1 = {} must be in [0, 1)", cfg.beta1)));
        }
        if !(0.0..1.0).contains(&cfg.beta2) {
            return Err(StrategyError::Config(format!("strategy.beta2 = {} must be in [0, 1)", cfg.beta2)));
        }
        if cfg.optimizer != ServerOptimizer::Momentum {
            positive("tau", cfg.tau)?;
        }
        Ok(FedOpt { base, cfg, m: Vec::new(), v: Vec::new() })
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &str {
        match self.cfg.optimizer {
            ServerOptimizer::Momentum => "fedavgm",
            ServerOptimizer::Adagrad => "fedadagrad",
            ServerOptimizer::Adam => "fedadam",
            ServerOptimizer::Yogi => "fedyogi",
        }
    }

    fit_with_base!();

    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let (avg, rejected) = self.base.average(round, global, replies)?;
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

    evaluate_with_base!();

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

/// FedSGD / distributed SGD: each party returns the gradient of its mean loss at the
/// global model (full batch or one minibatch); the server takes θ ← θ − η·Σ_k (n_k/n) g_k.
pub struct FedSgd {
    base: FedAvg,
    lr: f64,
}

impl FedSgd {
    /// FedSGD with server learning rate `lr`; `full` selects full-batch gradients.
    pub fn new(mut base: FedAvg, lr: f64, full: bool) -> Result<Self, StrategyError> {
        base.validate()?;
        positive("server_lr", lr)?;
        base.training.local = LocalAlgorithm::Gradient { full };
        Ok(FedSgd { base, lr })
    }
}

impl Strategy for FedSgd {
    fn name(&self) -> &str {
        "fedsgd"
    }

    fit_with_base!();

    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let (grad, rejected) = self.base.average(round, global, replies)?;
        let values = global.values.iter().zip(&grad).map(|(p, g)| (*p as f64 - self.lr * *g as f64) as f32).collect();
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    evaluate_with_base!();
}

/// Consensus ADMM. Party k solves (approximately, by its local epochs)
/// θ_k = argmin f_k(θ) + y_kᵀ(θ − z) + (ρ/2)‖θ − z‖² and sends u_k = θ_k + y_k/ρ; the server
/// sets z = mean_k u_k over every party that has taken part (the last u_k of parties not
/// sampled this round); each party updates y_k ← y_k + ρ(θ_k − z) when it next
/// receives z. With full participation this is ADMM for min Σ_k f_k(θ) (Boyd et al. 2011,
/// §7.1): each party's f_k is its mean loss, so parties weigh equally.
///
/// Adaptive ρ by residual balancing (§3.4.1): with the primal residual r (reported by the
/// parties, one round late) and the dual residual s = ρ√N‖z − z_prev‖, ρ is doubled when
/// r > 10s and halved when s > 10r.
pub struct Admm {
    base: FedAvg,
    rho: f64,
    adaptive: bool,
    /// u_k per party (empty until the party first contributes).
    contributions: Vec<Vec<f32>>,
    last: BTreeMap<String, f64>,
}

impl Admm {
    /// ADMM with penalty `rho` (adaptive by residual balancing if `adaptive`).
    pub fn new(base: FedAvg, rho: f64, adaptive: bool) -> Result<Self, StrategyError> {
        base.validate()?;
        positive("rho", rho)?;
        crate::robust::mean_only(base.aggregator, "ADMM")?;
        Ok(Admm { base, rho, adaptive, contributions: Vec::new(), last: BTreeMap::new() })
    }

    /// The current ρ.
    pub fn rho(&self) -> f64 {
        self.rho
    }
}

impl Strategy for Admm {
    fn name(&self) -> &str {
        "admm"
    }

    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)> {
        if self.contributions.len() != num_clients {
            self.contributions.resize(num_clients, Vec::new());
        }
        let mut tasks = self.base.configure_fit(round, num_clients, run_seed, rng);
        for (c, t) in tasks.iter_mut() {
            let has_state = !self.contributions[*c].is_empty();
            t.training.local = LocalAlgorithm::Admm { rho: self.rho as f32, has_state };
        }
        tasks
    }

    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let d = global.len();
        let (usable, rejected) = usable_replies(global, replies);
        let mut primal_sq = 0.0;
        let mut used = 0;
        for (c, r) in usable {
            primal_sq += r.metrics.get("primal_residual_sq").copied().unwrap_or(0.0);
            if let Some(slot) = self.contributions.get_mut(c) {
                slot.clone_from(&r.params);
                used += 1;
            }
        }
        if used < self.base.min_replies.max(1) {
            return Err(too_few(round, used, self.base.min_replies));
        }
        // z: the mean over every party that has contributed (the others have not started).
        let mut z = vec![0.0f64; d];
        let mut n = 0.0f64;
        for u in self.contributions.iter().filter(|u| !u.is_empty()) {
            n += 1.0;
            for (a, v) in z.iter_mut().zip(u) {
                *a += *v as f64;
            }
        }
        let values: Vec<f32> = z.iter().map(|a| (a / n) as f32).collect();
        let dz: f64 = values.iter().zip(&global.values).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let primal = primal_sq.sqrt();
        let dual = self.rho * n.sqrt() * dz;
        self.last = BTreeMap::from([
            ("rho".to_string(), self.rho),
            ("primal_residual".to_string(), primal),
            ("dual_residual".to_string(), dual),
        ]);
        // The primal residual arrives one round late, and is 0 in the first round.
        if self.adaptive && round > 1 {
            if primal > 10.0 * dual {
                self.rho *= 2.0;
            } else if dual > 10.0 * primal {
                self.rho /= 2.0;
            }
        }
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    evaluate_with_base!();

    fn metrics(&self) -> BTreeMap<String, f64> {
        self.last.clone()
    }

    fn state(&self) -> Option<StrategyState> {
        Some(StrategyState { meta: format!("admm {:?}", self.rho), vectors: self.contributions.clone() })
    }

    fn restore(&mut self, state: Option<&StrategyState>) -> Result<(), StrategyError> {
        let rho = state.and_then(|s| s.meta.strip_prefix("admm ")).and_then(|r| r.parse::<f64>().ok());
        let (Some(s), Some(rho)) = (state, rho) else {
            return Err(missing_state("admm (ρ and the parties' contributions)"));
        };
        self.rho = rho;
        self.contributions = s.vectors.clone();
        Ok(())
    }
}

/// SCAFFOLD (Karimireddy et al. 2020, option II): the server sends its control variate c;
/// parties correct each local gradient by c − c_k and return y_k and Δc_k; the server sets
/// x ← x + η_g·Σ_S w_k(y_k − x) and keeps c = Σ_k p_k c_k over the parties seen so far.
///
/// Weights follow the examples, as FedAvg's do: w_k = n_k / Σ_S n_k, and p_k = n_k / Σ n_k
/// over every party that has replied (n_k as first reported, so c stays the exact weighted
/// mean of the c_k the parties hold). The paper's experiments have equal party sizes, where
/// this is its plain mean and its c ← c + (|S|/N)·mean Δc_k; with unequal sizes (FedProx's
/// Synthetic devices span 100×) the plain mean optimises another objective than the one
/// the evaluation weights by examples, and a c updated with other weights than the model
/// drifts for good (it is a running sum). docs/optimisation.md has both measured.
pub struct Scaffold {
    base: FedAvg,
    lr: f64,
    c: Arc<Vec<f32>>,
    /// n_k of every party that has replied (0: not yet).
    weights: Vec<u64>,
}

impl Scaffold {
    /// SCAFFOLD with global step size `lr` (η_g; 1 in the paper's experiments).
    pub fn new(base: FedAvg, lr: f64) -> Result<Self, StrategyError> {
        base.validate()?;
        positive("server_lr", lr)?;
        crate::robust::mean_only(base.aggregator, "SCAFFOLD")?;
        if base.training.optimizer.path_length(1).is_none() {
            return Err(StrategyError::Config(
                "SCAFFOLD's control variates assume SGD local steps (with or without momentum): set \
                 train.optimizer = \"sgd\""
                    .into(),
            ));
        }
        Ok(Scaffold { base, lr, c: Arc::new(Vec::new()), weights: Vec::new() })
    }
}

impl Strategy for Scaffold {
    fn name(&self) -> &str {
        "scaffold"
    }

    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)> {
        if self.weights.len() != num_clients {
            self.weights.resize(num_clients, 0);
        }
        let mut tasks = self.base.configure_fit(round, num_clients, run_seed, rng);
        for (c, t) in tasks.iter_mut() {
            t.training.local = LocalAlgorithm::Scaffold { has_state: self.weights[*c] > 0 };
            t.extra = Some(self.c.clone());
        }
        tasks
    }

    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let d = global.len();
        if self.c.len() != d {
            self.c = Arc::new(vec![0.0; d]);
        }
        let (usable, mut rejected) = usable_replies(global, replies);
        let before: f64 = self.weights.iter().map(|&w| w as f64).sum();
        let mut dy = vec![0.0f64; d];
        let mut dc = vec![0.0f64; d];
        let mut used = 0usize;
        let mut examples = 0f64;
        for (c, r) in usable {
            let Some(extra) = r.extra.as_ref().filter(|e| e.len() == d && e.iter().all(|v| v.is_finite())) else {
                rejected.push(Rejection { client: c, reason: "no valid control-variate update (Δc)".into() });
                continue;
            };
            if r.num_examples == 0 {
                rejected.push(Rejection { client: c, reason: "reported 0 training examples".into() });
                continue;
            }
            let p = match self.weights.get_mut(c) {
                Some(w) if *w > 0 => *w as f64,
                Some(w) => {
                    *w = r.num_examples as u64;
                    *w as f64
                }
                None => continue,
            };
            let w = r.num_examples as f64;
            for (((y, c), (x, g)), e) in
                dy.iter_mut().zip(dc.iter_mut()).zip(r.params.iter().zip(&global.values)).zip(extra)
            {
                *y += w * (x - g) as f64;
                *c += p * *e as f64;
            }
            used += 1;
            examples += w;
        }
        if used < self.base.min_replies.max(1) {
            return Err(too_few(round, used, self.base.min_replies));
        }
        let after: f64 = self.weights.iter().map(|&w| w as f64).sum();
        let values = global.values.iter().zip(&dy).map(|(x, d)| (*x as f64 + self.lr * d / examples) as f32).collect();
        let c: Vec<f32> = self.c.iter().zip(&dc).map(|(c, d)| ((*c as f64 * before + d) / after) as f32).collect();
        self.c = Arc::new(c);
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    evaluate_with_base!();

    fn state(&self) -> Option<StrategyState> {
        let weights: Vec<String> = self.weights.iter().map(u64::to_string).collect();
        Some(StrategyState { meta: format!("scaffold {}", weights.join(",")), vectors: vec![self.c.as_ref().clone()] })
    }

    fn restore(&mut self, state: Option<&StrategyState>) -> Result<(), StrategyError> {
        let weights = state.and_then(|s| s.meta.strip_prefix("scaffold ")).and_then(|w| {
            w.split(',').filter(|v| !v.is_empty()).map(|v| v.parse::<u64>().ok()).collect::<Option<Vec<_>>>()
        });
        let (Some(s), Some(weights)) = (state, weights) else {
            return Err(missing_state("scaffold (the server control variate and the parties' weights)"));
        };
        self.weights = weights;
        self.c = Arc::new(s.vectors.first().cloned().unwrap_or_default());
        Ok(())
    }
}
