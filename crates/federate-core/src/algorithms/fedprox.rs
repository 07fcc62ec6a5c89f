//! FedProx (Li et al. 2020): parties train on f_k(θ) + (μ/2)‖θ − θ_g‖², which keeps many
//! local epochs (and stragglers' partial work) close to the global model; the server
//! averages as FedAvg does.

use super::{Algorithm, FedAvg, LocalRun, PartyStep, Range, ServerHalf, Setting, set_local};
use crate::messages::{
    AlgorithmReply, ClientError, Correction, FitReply, FitTask, Rejection, StrategyError, TrainStats,
};
use crate::params::Parameters;

/// FedProx in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "fedprox",
    about: "local epochs on f_k(θ) + (μ/2)‖θ − θ_g‖²; averaged as FedAvg",
    settings: &[Setting { key: "mu", default: 0.01, range: Range::NonNegative, about: "μ: the proximal weight" }],
    strategy: |base, s| Ok(Box::new(super::Federated { base, algorithm: Server { mu: s.get("mu") } })),
    party: Some(|| Box::new(Party)),
};

/// The server half: FedAvg's average, with μ in every task.
struct Server {
    mu: f64,
}

impl ServerHalf for Server {
    fn name(&self) -> &str {
        "fedprox"
    }
    /// It reads the parties' parameters only through FedAvg's average.
    fn folds(&self) -> bool {
        true
    }
    fn configure(&mut self, _num_clients: usize, tasks: &mut [(usize, FitTask)]) {
        set_local(tasks, "fedprox", &[("mu", self.mu as f32 as f64)], |_| false);
    }
    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        base.next_model(round, global, replies)
    }
}

/// The party half: local epochs with the proximal gradient μ(θ − θ_g).
struct Party;

impl PartyStep for Party {
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        task: &FitTask,
        global: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError> {
        let mu = super::local_setting(&task.training.local, "mu", Range::NonNegative)? as f32;
        let c = Correction { anchor: Some(global), mu, linear: None };
        Ok((run.epochs(params, &c)?, AlgorithmReply::None))
    }
}
