//! SCAFFOLD (Karimireddy et al. 2020, option II): both halves. The server sends its control
//! variate c with every task; each party keeps its own c_k and returns Δc_k.

use std::sync::Arc;

use super::{
    Algorithm, FedAvg, Federated, LocalRun, PartyStep, Range, ServerHalf, Setting, check_state, held_state, set_local,
    too_few,
};
use crate::messages::{
    AlgorithmReply, AlgorithmState, ClientError, Correction, FitReply, FitTask, Rejection, StrategyError, TrainStats,
};
use crate::params::Parameters;
use crate::strategy::{StrategyState, missing_state, usable_replies};

/// SCAFFOLD in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "scaffold",
    about: "local SGD corrected by c − c_k; x ← x + η Σ w_k Δy_k, c = Σ p_k c_k",
    settings: &[Setting {
        key: "server_lr", default: 1.0, range: Range::Positive, about: "η_g: the global step size"
    }],
    strategy: |base, s| Ok(Box::new(Scaffold::new(base, s.get("server_lr"))?)),
    party: Some(|| Box::new(Party { ck: None })),
};

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
    lr: f64,
    c: Arc<Vec<f32>>,
    /// n_k of every party that has replied (0: not yet).
    weights: Vec<u64>,
}

impl Scaffold {
    /// SCAFFOLD with global step size `lr` (η_g; 1 in the paper's experiments).
    pub fn new(base: FedAvg, lr: f64) -> Result<Federated<Scaffold>, StrategyError> {
        base.validate()?;
        Range::Positive.check("server_lr", lr)?;
        crate::robust::mean_only(base.aggregator, "SCAFFOLD")?;
        if base.training.optimizer.path_length(1).is_none() {
            return Err(StrategyError::Config(
                "SCAFFOLD's control variates assume SGD local steps (with or without momentum): set \
                 train.optimizer = \"sgd\""
                    .into(),
            ));
        }
        Ok(Federated { base, algorithm: Scaffold { lr, c: Arc::new(Vec::new()), weights: Vec::new() } })
    }
}

impl ServerHalf for Scaffold {
    fn name(&self) -> &str {
        "scaffold"
    }

    fn configure(&mut self, num_clients: usize, tasks: &mut [(usize, FitTask)]) {
        if self.weights.len() != num_clients {
            self.weights.resize(num_clients, 0);
        }
        let weights = &self.weights;
        set_local(tasks, "scaffold", &[], |c| weights.get(c).is_some_and(|&w| w > 0));
        for (_, t) in tasks.iter_mut() {
            t.vector = Some(self.c.clone());
        }
    }

    fn aggregate(
        &mut self,
        base: &FedAvg,
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
            let AlgorithmReply::Vector(extra) = &r.algorithm else {
                rejected.push(Rejection { client: c, reason: "no control-variate update (Δc)".into() });
                continue;
            };
            let Some(extra) = Some(extra).filter(|e| e.len() == d && e.iter().all(|v| v.is_finite())) else {
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
        if used < base.min_replies.max(1) {
            return Err(too_few(round, used, base.min_replies));
        }
        let after: f64 = self.weights.iter().map(|&w| w as f64).sum();
        let values = global.values.iter().zip(&dy).map(|(x, d)| (*x as f64 + self.lr * d / examples) as f32).collect();
        let c: Vec<f32> = self.c.iter().zip(&dc).map(|(c, d)| ((*c as f64 * before + d) / after) as f32).collect();
        self.c = Arc::new(c);
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

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

/// SCAFFOLD's party half: keeps c_k.
struct Party {
    ck: Option<Vec<f32>>,
}

impl PartyStep for Party {
    fn fit(
        &mut self,
        run: &mut LocalRun<'_>,
        task: &FitTask,
        global: &[f32],
        params: &mut [f32],
    ) -> Result<(TrainStats, AlgorithmReply), ClientError> {
        let Some(c) = task.vector.clone() else {
            return Err(ClientError::Model("SCAFFOLD task without the server control variate".into()));
        };
        // An empty c is the server's initial zero vector.
        let c = if c.is_empty() { Arc::new(vec![0.0; params.len()]) } else { c };
        if c.len() != params.len() {
            return Err(ClientError::WrongParameterCount { got: c.len(), expected: params.len() });
        }
        let ck = held_state(self.ck.clone(), task.training.local.has_state, "SCAFFOLD's control variate", || {
            vec![0.0; params.len()]
        })?;
        let corr: Vec<f32> = c.iter().zip(&ck).map(|(c, k)| c - k).collect();
        let cc = Correction { anchor: None, mu: 0.0, linear: Some(&corr) };
        let s = run.epochs(params, &cc)?;
        // Option II: c_k⁺ = c_k − c + (x − y)/(K·η), where K·η is how far K steps move per
        // unit of gradient (larger with momentum, whose velocity builds up).
        let Some(k) = run.training().optimizer.path_length(s.steps.max(1) as u64) else {
            return Err(ClientError::Model("SCAFFOLD needs SGD local steps (train.optimizer = \"sgd\")".into()));
        };
        let k = k as f32;
        let new_ck: Vec<f32> = ck
            .iter()
            .zip(c.iter())
            .zip(global.iter().zip(params.iter()))
            .map(|((ck, c), (x, y))| ck - c + (x - y) / k)
            .collect();
        let delta = new_ck.iter().zip(&ck).map(|(n, o)| n - o).collect();
        self.ck = Some(new_ck);
        Ok((s, AlgorithmReply::Vector(delta)))
    }

    fn state(&self) -> Option<AlgorithmState> {
        self.ck.as_ref().map(|ck| AlgorithmState {
            name: "scaffold".into(),
            scalars: Vec::new(),
            vectors: vec![ck.clone()],
        })
    }

    fn restore(&mut self, state: AlgorithmState) -> Result<(), ClientError> {
        check_state(&state, 1, 0)?;
        self.ck = state.vectors.into_iter().next();
        Ok(())
    }
}
