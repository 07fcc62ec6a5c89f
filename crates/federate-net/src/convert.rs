//! Conversions between the core types and their protocol messages.

use federate_core::{DpSgd, LocalAlgorithm, LocalTraining, Mechanism, Sampling, UpdateDp};
use federate_nn::OptimizerSpec;
use federate_privacy::Accountant;

use crate::proto;

/// Why a message could not be turned into a core value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub String);

/// Core local-training settings as a message.
pub fn training_to_proto(t: &LocalTraining) -> proto::LocalTraining {
    let optimizer = match t.optimizer {
        OptimizerSpec::Sgd { lr, momentum, weight_decay } => {
            proto::Optimizer { name: "sgd".into(), lr, momentum, weight_decay, ..Default::default() }
        }
        OptimizerSpec::Adam { lr, beta1, beta2, eps, weight_decay } => {
            proto::Optimizer { name: "adam".into(), lr, momentum: 0.0, weight_decay, beta1, beta2, eps }
        }
    };
    let dp = t.dp.map(|d| proto::DpSgd {
        noise_multiplier: d.noise_multiplier,
        clip: d.clip,
        sampling_rate: d.sampling_rate.unwrap_or(0.0),
        delta: d.delta,
        accountant: match d.accountant {
            Accountant::Rdp => "rdp".into(),
            Accountant::Pld => "pld".into(),
        },
        max_epsilon: d.max_epsilon.unwrap_or(0.0),
        mechanism: match d.mechanism {
            Mechanism::Gaussian => "gaussian".into(),
            Mechanism::Laplace => "laplace".into(),
        },
        epsilon_per_step: d.epsilon_per_step.unwrap_or(0.0),
        sampling: match d.sampling {
            Sampling::Poisson => "poisson".into(),
            Sampling::FixedSize => "fixed-size".into(),
        },
    });
    let update_dp = t.update_dp.map(|u| proto::UpdateDp {
        clip: u.clip,
        noise_std: u.noise_std,
        count_noise_std: u.count_noise_std,
    });
    let (local, mu, rho, full_batch, has_state) = match t.local {
        LocalAlgorithm::Sgd => ("sgd", 0.0, 0.0, false, false),
        LocalAlgorithm::Prox { mu } => ("prox", mu, 0.0, false, false),
        LocalAlgorithm::Gradient { full } => ("gradient", 0.0, 0.0, full, false),
        LocalAlgorithm::Admm { rho, has_state } => ("admm", 0.0, rho, false, has_state),
        LocalAlgorithm::Scaffold { has_state } => ("scaffold", 0.0, 0.0, false, has_state),
    };
    proto::LocalTraining {
        epochs: t.epochs as u32,
        batch_size: t.batch_size as u32,
        optimizer: Some(optimizer),
        dp,
        update_dp,
        local: local.into(),
        mu,
        rho,
        full_batch,
        has_state,
    }
}

/// A message's local-training settings, validated.
pub fn training_from_proto(t: &proto::LocalTraining) -> Result<LocalTraining, Malformed> {
    let o = t.optimizer.as_ref().ok_or_else(|| Malformed("training without optimizer".into()))?;
    let optimizer = match o.name.as_str() {
        "sgd" => OptimizerSpec::Sgd { lr: o.lr, momentum: o.momentum, weight_decay: o.weight_decay },
        "adam" => {
            OptimizerSpec::Adam { lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay }
        }
        other => return Err(Malformed(format!("unknown optimizer '{other}'"))),
    };
    optimizer.validate().map_err(|e| Malformed(e.to_string()))?;
    if t.epochs == 0 || t.batch_size == 0 {
        return Err(Malformed("epochs and batch_size must be at least 1".into()));
    }
    if t.epochs > 10_000 || t.batch_size > 1 << 20 {
        return Err(Malformed(format!("epochs {} / batch_size {} are beyond any sane run", t.epochs, t.batch_size)));
    }
    let dp = match &t.dp {
        None => None,
        Some(d) => {
            let accountant = match d.accountant.as_str() {
                "rdp" => Accountant::Rdp,
                "pld" => Accountant::Pld,
                other => return Err(Malformed(format!("unknown accountant '{other}'"))),
            };
            let mechanism = match d.mechanism.as_str() {
                "" | "gaussian" => Mechanism::Gaussian,
                "laplace" => Mechanism::Laplace,
                other => return Err(Malformed(format!("unknown mechanism '{other}'"))),
            };
            let sampling = match d.sampling.as_str() {
                "" | "poisson" => Sampling::Poisson,
                "fixed-size" => Sampling::FixedSize,
                other => return Err(Malformed(format!("unknown sampling '{other}'"))),
            };
            let dp = DpSgd {
                sampling,
                mechanism,
                epsilon_per_step: (d.epsilon_per_step != 0.0).then_some(d.epsilon_per_step),
                noise_multiplier: d.noise_multiplier,
                clip: d.clip,
                sampling_rate: (d.sampling_rate != 0.0).then_some(d.sampling_rate),
                delta: d.delta,
                accountant,
                max_epsilon: (d.max_epsilon != 0.0).then_some(d.max_epsilon),
            };
            dp.validate().map_err(Malformed)?;
            Some(dp)
        }
    };
    let update_dp = match &t.update_dp {
        None => None,
        Some(u) => {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !(u.clip > 0.0 && u.clip.is_finite() && ok(u.noise_std) && ok(u.count_noise_std)) {
                return Err(Malformed(format!(
                    "update_dp clip {} / noise {} / count noise {} out of range",
                    u.clip, u.noise_std, u.count_noise_std
                )));
            }
            Some(UpdateDp { clip: u.clip, noise_std: u.noise_std, count_noise_std: u.count_noise_std })
        }
    };
    let local = match t.local.as_str() {
        "" | "sgd" => LocalAlgorithm::Sgd,
        "prox" if t.mu >= 0.0 && t.mu.is_finite() => LocalAlgorithm::Prox { mu: t.mu },
        "gradient" => LocalAlgorithm::Gradient { full: t.full_batch },
        "admm" if t.rho > 0.0 && t.rho.is_finite() => LocalAlgorithm::Admm { rho: t.rho, has_state: t.has_state },
        "scaffold" => LocalAlgorithm::Scaffold { has_state: t.has_state },
        "prox" | "admm" => {
            return Err(Malformed(format!("{} with μ = {} / ρ = {} out of range", t.local, t.mu, t.rho)));
        }
        other => return Err(Malformed(format!("unknown local algorithm '{other}'"))),
    };
    Ok(LocalTraining { epochs: t.epochs as usize, batch_size: t.batch_size as usize, optimizer, dp, update_dp, local })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_round_trips_exactly() {
        for optimizer in [
            OptimizerSpec::Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-4 },
            OptimizerSpec::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        ] {
            let dp = DpSgd {
                mechanism: Mechanism::Laplace,
                epsilon_per_step: Some(0.5),
                noise_multiplier: 1.1,
                clip: 1.0,
                sampling_rate: None,
                delta: 1e-5,
                accountant: Accountant::Pld,
                max_epsilon: Some(3.0),
                sampling: Sampling::Poisson,
            };
            let u = UpdateDp { clip: 0.7, noise_std: 0.01, count_noise_std: 0.3 };
            for (dp, update_dp, local) in [
                (None, None, LocalAlgorithm::Sgd),
                (Some(dp), Some(u), LocalAlgorithm::Prox { mu: 0.01 }),
                (None, None, LocalAlgorithm::Gradient { full: true }),
                (None, None, LocalAlgorithm::Admm { rho: 0.5, has_state: true }),
                (None, None, LocalAlgorithm::Scaffold { has_state: false }),
            ] {
                let t = LocalTraining { epochs: 2, batch_size: 32, optimizer: optimizer.clone(), dp, update_dp, local };
                assert_eq!(training_from_proto(&training_to_proto(&t)).unwrap(), t);
            }
        }
        let mut bad = training_to_proto(&LocalTraining {
            epochs: 1,
            batch_size: 1,
            optimizer: OptimizerSpec::Sgd { lr: 0.1, momentum: 0.0, weight_decay: 0.0 },
            dp: None,
            update_dp: None,
            local: LocalAlgorithm::Sgd,
        });
        bad.optimizer.as_mut().unwrap().lr = -1.0;
        assert!(training_from_proto(&bad).is_err());
    }
}
