//! FedDyn (Acar, Zhao, Navarro, Mattina, Whatmough & Saligrama 2021): dynamic regularisation.
//! Each party keeps g_k, the gradient of its loss at its last local model, and trains on
//!
//! L_k(θ) − ⟨g_k, θ⟩ + (α/2)‖θ − θ_g‖²,
//!
//! then sets g_k ← g_k − α(θ_k − θ_g). The server keeps h, the running mean of the parties'
//! corrections: h ← h − α·(1/m)·Σ_{k∈P}(θ_k − θ_g) over the m parties of the federation, and
//! sets θ ← (1/|P|)·Σ_{k∈P} θ_k − h/α. At a fixed point every party's local optimum is the
//! global model, so with exact local solves FedDyn reaches the minimiser of Σ_k L_k however
//! different the parties' data (the paper's Theorem 1), where FedAvg drifts. Means are plain
//! (each party's objective weighs 1), as in the paper.

use super::{
    Algorithm, FedAvg, Federated, LocalRun, PartyStep, Range, ServerHalf, Setting, check_state, held_state, set_local,
    too_few,
};
use crate::messages::{
    AlgorithmReply, AlgorithmState, ClientError, Correction, FitReply, FitTask, Rejection, StrategyError, TrainStats,
};
use crate::params::Parameters;
use crate::strategy::{StrategyState, missing_state, usable_replies};

/// FedDyn in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "feddyn",
    about: "local epochs on L_k(θ) − ⟨g_k, θ⟩ + (α/2)‖θ − θ_g‖²; θ ← mean θ_k − h/α",
    settings: &[Setting {
        key: "alpha",
        default: 0.01,
        range: Range::Positive,
        about: "α: the dynamic regulariser's weight",
    }],
    strategy: |base, s| Ok(Box::new(FedDyn::new(base, s.get("alpha"))?)),
    party: Some(|| Box::new(Party { g: None })),
};

/// FedDyn's server half.
pub struct FedDyn {
    alpha: f64,
    /// h: the server's correction (empty until sized).
    h: Vec<f32>,
    /// Whether each party has taken part (so it holds g_k).
    seen: Vec<bool>,
}

impl FedDyn {
    /// FedDyn with regulariser weight `alpha` around `base`.
    pub fn new(base: FedAvg, alpha: f64) -> Result<Federated<FedDyn>, StrategyError> {
        base.validate()?;
        Range::Positive.check("alpha", alpha)?;
        crate::robust::mean_only(base.aggregator, "FedDyn")?;
        Ok(Federated { base, algorithm: FedDyn { alpha, h: Vec::new(), seen: Vec::new() } })
    }
}

impl ServerHalf for FedDyn {
    fn name(&self) -> &str {
        "feddyn"
    }

    fn configure(&mut self, num_clients: usize, tasks: &mut [(usize, FitTask)]) {
        if self.seen.len() != num_clients {
            self.seen.resize(num_clients, false);
        }
        let seen = &self.seen;
        set_local(tasks, "feddyn", &[("alpha", self.alpha as f32 as f64)], |c| seen.get(c).copied().unwrap_or(false));
    }

    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let d = global.len();
        if self.h.len() != d {
            self.h = vec![0.0; d];
        }
        let (usable, rejected) = usable_replies(global, replies);
        if usable.len() < base.min_replies.max(1) {
            return Err(too_few(round, usable.len(), base.min_replies));
        }
        let m = self.seen.len().max(usable.len()) as f64;
        let p = usable.len() as f64;
        let mut mean = vec![0.0f64; d];
        let mut drift = vec![0.0f64; d];
        for (c, r) in &usable {
            if let Some(s) = self.seen.get_mut(*c) {
                *s = true;
            }
            for ((a, s), (x, g)) in mean.iter_mut().zip(drift.iter_mut()).zip(r.params.iter().zip(&global.values)) {
                *a += *x as f64;
                *s += *x as f64 - *g as f64;
            }
        }
        for (h, s) in self.h.iter_mut().zip(&drift) {
            *h = (*h as f64 - self.alpha * s / m) as f32;
        }
        let values = mean.iter().zip(&self.h).map(|(a, h)| (a / p - *h as f64 / self.alpha) as f32).collect();
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    fn state(&self) -> Option<StrategyState> {
        let seen: String = self.seen.iter().map(|&s| if s { '1' } else { '0' }).collect();
        Some(StrategyState { meta: format!("feddyn {seen}"), vectors: vec![self.h.clone()] })
    }

    fn restore(&mut self, state: Option<&StrategyState>) -> Result<(), StrategyError> {
        let seen = state.and_then(|s| s.meta.strip_prefix("feddyn ")).and_then(|s| {
            s.chars()
                .map(|c| match c {
                    '1' => Some(true),
                    '0' => Some(false),
                    _ => None,
                })
                .collect::<Option<Vec<bool>>>()
        });
        let (Some(s), Some(seen)) = (state.filter(|s| s.vectors.len() == 1), seen) else {
            return Err(missing_state("feddyn (the server correction h and who took part)"));
        };
        self.h = s.vectors[0].clone();
        self.seen = seen;
        Ok(())
    }
}

/// FedDyn's party half: keeps g_k.
struct Party {
    g: Option<Vec<f32>>,
}

impl PartyStep for Party {
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        task: &FitTask,
        global: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError> {
        let local = &task.training.local;
        let alpha = super::local_setting(local, "alpha", Range::Positive)? as f32;
        let g = held_state(self.g.clone(), local.has_state, "FedDyn's gradient state", || vec![0.0; global.len()])?;
        // ∇ of −⟨g_k, θ⟩ is −g_k; of (α/2)‖θ − θ_g‖², α(θ − θ_g).
        let minus_g: Vec<f32> = g.iter().map(|v| -v).collect();
        let c = Correction { anchor: Some(global), mu: alpha, linear: Some(&minus_g) };
        let stats = run.epochs(params, &c)?;
        let g: Vec<f32> = g.iter().zip(params.iter().zip(global)).map(|(g, (x, z))| g - alpha * (x - z)).collect();
        self.g = Some(g);
        Ok((stats, AlgorithmReply::None))
    }

    fn state(&self) -> Option<AlgorithmState> {
        self.g.as_ref().map(|g| AlgorithmState { name: "feddyn".into(), scalars: Vec::new(), vectors: vec![g.clone()] })
    }

    fn restore(&mut self, state: AlgorithmState) -> Result<(), ClientError> {
        check_state(&state, 1, 0)?;
        self.g = state.vectors.into_iter().next();
        Ok(())
    }
}
