//! FedSGD / distributed SGD: each party returns the gradient of its mean loss at the global
//! model (full batch or one minibatch); the server takes θ ← θ − η·Σ_k (n_k/n) g_k.

use super::{Algorithm, FedAvg, LocalRun, PartyStep, Range, ServerHalf, Setting, set_local};
use crate::messages::{
    AlgorithmReply, ClientError, DpSgd, FitReply, FitTask, LocalTraining, Rejection, StrategyError, TrainStats,
};
use crate::params::Parameters;

/// FedSGD in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "fedsgd",
    about: "parties send the gradient of their mean loss at θ; θ ← θ − η Σ (n_k/n) g_k",
    settings: &[
        Setting { key: "server_lr", default: 1.0, range: Range::Positive, about: "η: the server's step size" },
        Setting {
            key: "full_batch",
            default: 0.0,
            range: Range::Flag,
            about: "full-batch gradients (else one minibatch of batch_size)",
        },
    ],
    strategy: |base, s| Ok(Box::new(FedSgd::new(base, s.get("server_lr"), s.flag("full_batch"))?)),
    party: Some(|| Box::new(Party)),
};

/// FedSGD's server half: a gradient step with the example-weighted mean gradient.
pub struct FedSgd {
    lr: f64,
    full: bool,
}

impl FedSgd {
    /// FedSGD with server learning rate `lr`; `full` selects full-batch gradients.
    pub fn new(base: FedAvg, lr: f64, full: bool) -> Result<super::Federated<FedSgd>, StrategyError> {
        base.validate()?;
        Range::Positive.check("server_lr", lr)?;
        Ok(super::Federated { base, algorithm: FedSgd { lr, full } })
    }
}

impl ServerHalf for FedSgd {
    fn name(&self) -> &str {
        "fedsgd"
    }
    /// It reads the parties' parameters only through FedAvg's average.
    fn folds(&self) -> bool {
        true
    }
    fn configure(&mut self, _num_clients: usize, tasks: &mut [(usize, FitTask)]) {
        set_local(tasks, "fedsgd", &[("full", f64::from(u8::from(self.full)))], |_| false);
    }
    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let (grad, rejected) = base.average(round, global, replies)?;
        let values = global.values.iter().zip(&grad).map(|(p, g)| (*p as f64 - self.lr * *g as f64) as f32).collect();
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }
}

/// The party half: one gradient at the global model, sent in place of parameters.
struct Party;

impl PartyStep for Party {
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        task: &FitTask,
        global: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError> {
        let full = super::local_setting(&task.training.local, "full", Range::Flag)? != 0.0;
        Ok((run.gradient(global, full, params)?, AlgorithmReply::None))
    }
    /// The reply is a gradient, not a model.
    fn reply_is_model(&self) -> bool {
        false
    }
    /// One step: over every example (q = 1) for a full-batch gradient, else one Poisson
    /// batch at the DP settings' rate.
    fn dp_steps(&self, training: &LocalTraining, dp: &DpSgd, n: usize) -> Result<(f64, u64), ClientError> {
        let full = super::local_setting(&training.local, "full", Range::Flag)? != 0.0;
        Ok((if full { 1.0 } else { dp.rate(n, training.batch_size) }, 1))
    }
}
