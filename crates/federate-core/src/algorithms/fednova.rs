//! FedNova (Wang, Liu, Liang, Joshi & Poor 2020): normalised averaging. Parties that take more
//! local steps (more data, more epochs, no straggling) move further; FedAvg's plain average
//! then optimises a mix of the parties' objectives weighted by their step counts instead of
//! the federation's. FedNova divides each update by the party's path length a_k (how far its
//! local steps move per unit of gradient: τ_k for plain SGD, more with momentum) and scales
//! the averaged direction by τ_eff = Σ p_k a_k:
//!
//! θ ← θ − η_g · τ_eff · Σ_k p_k (θ − θ_k)/a_k,  p_k = n_k / Σ n_k.
//!
//! With equal step counts this is FedAvg (η_g = 1). The party half is plain local SGD: a_k
//! comes from the step count the party reports in its typed training summary and the task's
//! optimiser, so no new reply field and no party-side state are needed.

use super::{Algorithm, FedAvg, Federated, Range, ServerHalf, Setting, too_few};
use crate::messages::{FitReply, Rejection, StrategyError};
use crate::params::Parameters;
use crate::strategy::usable_replies;

/// FedNova in the registry.
pub(super) static ALGORITHM: Algorithm = Algorithm {
    name: "fednova",
    about: "local SGD; updates normalised by each party's path length: θ ← θ − η τ_eff Σ p_k (θ − θ_k)/a_k",
    settings: &[Setting {
        key: "server_lr", default: 1.0, range: Range::Positive, about: "η_g: the global step size"
    }],
    strategy: |base, s| Ok(Box::new(FedNova::new(base, s.get("server_lr"))?)),
    party: None,
};

/// FedNova's server half.
pub struct FedNova {
    lr: f64,
}

impl FedNova {
    /// FedNova with global step size `lr` (1 in the paper) around `base`, whose local
    /// optimiser must be SGD (a_k is defined for SGD with or without momentum).
    pub fn new(base: FedAvg, lr: f64) -> Result<Federated<FedNova>, StrategyError> {
        base.validate()?;
        Range::Positive.check("server_lr", lr)?;
        crate::robust::mean_only(base.aggregator, "FedNova")?;
        if base.training.optimizer.path_length(1).is_none() {
            return Err(StrategyError::Config(
                "FedNova normalises by the path length of SGD steps (with or without momentum): set \
                 train.optimizer = \"sgd\""
                    .into(),
            ));
        }
        Ok(Federated { base, algorithm: FedNova { lr } })
    }
}

impl ServerHalf for FedNova {
    fn name(&self) -> &str {
        "fednova"
    }

    fn aggregate(
        &mut self,
        base: &FedAvg,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let (usable, mut rejected) = usable_replies(global, replies);
        let mut kept = Vec::with_capacity(usable.len());
        for (c, r) in usable {
            let a = base.training.optimizer.path_length(r.training.steps).filter(|a| *a > 0.0 && a.is_finite());
            match a {
                Some(a) if r.training.steps > 0 => kept.push((r, a)),
                _ => rejected
                    .push(Rejection { client: c, reason: "reported 0 local steps (FedNova divides by them)".into() }),
            }
        }
        if kept.len() < base.min_replies.max(1) {
            return Err(too_few(round, kept.len(), base.min_replies));
        }
        let n: f64 = kept.iter().map(|(r, _)| r.num_examples as f64).sum();
        let tau_eff: f64 = kept.iter().map(|(r, a)| r.num_examples as f64 / n * a).sum();
        let mut d = vec![0.0f64; global.len()];
        for (r, a) in &kept {
            let w = r.num_examples as f64 / n / a;
            for ((d, g), x) in d.iter_mut().zip(&global.values).zip(&r.params) {
                *d += w * (*g as f64 - *x as f64);
            }
        }
        let step = self.lr * tau_eff;
        let values = global.values.iter().zip(&d).map(|(g, d)| (*g as f64 - step * d) as f32).collect();
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }
}
