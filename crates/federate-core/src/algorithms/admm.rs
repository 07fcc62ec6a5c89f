//! Consensus ADMM (Boyd et al. 2011, §7.1): both halves. Each party keeps its dual y_k and
//! last solve between rounds; the server keeps every party's last contribution and ρ.

use std::collections::BTreeMap;

use super::{
    Algorithm, FedAvg, Federated, LocalRun, PartyStep, Range, ServerHalf, Setting, check_state, held_state, set_local,
    too_few,
};
use crate::messages::{
    AlgorithmReply, AlgorithmState, ClientError, Correction, FitReply, FitTask, Rejection, StrategyError, TrainStats,
};
use crate::params::Parameters;
use crate::strategy::{StrategyState, missing_state, usable_replies};

/// ADMM in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "admm",
    about: "local epochs on f_k(θ) + y_kᵀ(θ − z) + (ρ/2)‖θ − z‖²; z ← mean of θ_k + y_k/ρ",
    settings: &[
        Setting { key: "rho", default: 0.1, range: Range::Positive, about: "ρ: the penalty" },
        Setting { key: "adaptive_rho", default: 0.0, range: Range::Flag, about: "adapt ρ by residual balancing" },
    ],
    strategy: |base, s| Ok(Box::new(Admm::new(base, s.get("rho"), s.flag("adaptive_rho"))?)),
    party: Some(|| Box::new(Party { state: None })),
};

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
    rho: f64,
    adaptive: bool,
    /// u_k per party (empty until the party first contributes).
    contributions: Vec<Vec<f32>>,
    last: BTreeMap<String, f64>,
}

impl Admm {
    /// ADMM with penalty `rho` (adaptive by residual balancing if `adaptive`).
    pub fn new(base: FedAvg, rho: f64, adaptive: bool) -> Result<Federated<Admm>, StrategyError> {
        base.validate()?;
        Range::Positive.check("rho", rho)?;
        crate::robust::mean_only(base.aggregator, "ADMM")?;
        Ok(Federated { base, algorithm: Admm { rho, adaptive, contributions: Vec::new(), last: BTreeMap::new() } })
    }

    /// The current ρ.
    pub fn rho(&self) -> f64 {
        self.rho
    }
}

impl ServerHalf for Admm {
    fn name(&self) -> &str {
        "admm"
    }

    fn configure(&mut self, num_clients: usize, tasks: &mut [(usize, FitTask)]) {
        if self.contributions.len() != num_clients {
            self.contributions.resize(num_clients, Vec::new());
        }
        let contributions = &self.contributions;
        set_local(tasks, "admm", &[("rho", self.rho as f32 as f64)], |c| {
            contributions.get(c).is_some_and(|u| !u.is_empty())
        });
    }

    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let d = global.len();
        let (usable, rejected) = usable_replies(global, replies);
        let mut primal_sq = 0.0;
        let mut used = 0;
        for (c, r) in usable {
            if let AlgorithmReply::PrimalResidual(r) = r.algorithm {
                primal_sq += r;
            }
            if let Some(slot) = self.contributions.get_mut(c) {
                slot.clone_from(&r.params);
                used += 1;
            }
        }
        if used < base.min_replies.max(1) {
            return Err(too_few(round, used, base.min_replies));
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

/// What an ADMM party keeps between rounds.
#[derive(Debug, Clone, PartialEq)]
struct PartyState {
    /// The dual y_k.
    dual: Vec<f32>,
    /// θ_k of its last solve.
    last: Vec<f32>,
    /// The ρ it used.
    rho: f32,
}

/// ADMM's party half.
struct Party {
    state: Option<PartyState>,
}

impl PartyStep for Party {
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        task: &FitTask,
        z: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError> {
        let local = &task.training.local;
        let rho = super::local_setting(local, "rho", Range::Positive)? as f32;
        let mut st = held_state(self.state.clone(), local.has_state, "ADMM's dual variable", || PartyState {
            dual: vec![0.0; z.len()],
            last: z.to_vec(),
            rho,
        })?;
        // Dual ascent with the consensus just received: y ← y + ρ(θ_last − z).
        let mut primal = 0.0f64;
        for ((y, x), z) in st.dual.iter_mut().zip(&st.last).zip(z) {
            *y += st.rho * (x - z);
            primal += ((x - z) as f64).powi(2);
        }
        let c = Correction { anchor: Some(z), mu: rho, linear: Some(&st.dual) };
        let stats = run.epochs(params, &c)?;
        st.last = params.to_vec();
        st.rho = rho;
        for (p, y) in params.iter_mut().zip(&st.dual) {
            *p += y / rho;
        }
        self.state = Some(st);
        Ok((stats, AlgorithmReply::PrimalResidual(primal)))
    }

    fn state(&self) -> Option<AlgorithmState> {
        self.state.as_ref().map(|s| AlgorithmState {
            name: "admm".into(),
            scalars: vec![s.rho as f64],
            vectors: vec![s.dual.clone(), s.last.clone()],
        })
    }

    fn restore(&mut self, state: AlgorithmState) -> Result<(), ClientError> {
        check_state(&state, 2, 1)?;
        let rho = state.scalars[0] as f32;
        if !(rho > 0.0 && rho.is_finite()) {
            return Err(ClientError::Model(format!("saved ADMM state has ρ = {rho}; it must be positive")));
        }
        let Ok([dual, last]) = <[Vec<f32>; 2]>::try_from(state.vectors) else {
            return Err(ClientError::Model("saved ADMM state needs its dual and last solve".into()));
        };
        self.state = Some(PartyState { dual, last, rho });
        Ok(())
    }
}
