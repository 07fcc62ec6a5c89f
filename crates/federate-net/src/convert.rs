//! Conversions between the core types and their protocol messages.

use federate_core::{
    Codec, DpSgd, LocalAlgorithm, LocalTraining, Mechanism, OptimizerSpec, PrivacyReport, Sampling, TrainSummary,
    UpdateCompression, UpdateDp,
};
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
    proto::LocalTraining {
        epochs: t.epochs as u32,
        batch_size: t.batch_size as u32,
        optimizer: Some(optimizer),
        dp,
        update_dp,
        has_state: t.local.has_state,
        algorithm: t.local.name.clone(),
        algorithm_settings: t.local.settings.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        compression: t.compression.map(|c| {
            let (codec, bits, fraction, range) = match c.codec {
                Codec::Quantize { bits } => ("quantize", u32::from(bits), 0.0, 0.0),
                Codec::Grid { bits, range } => ("grid", u32::from(bits), 0.0, range),
                Codec::TopK { fraction } => ("top-k", 0, fraction, 0.0),
            };
            proto::UpdateCompression {
                codec: codec.into(),
                bits,
                fraction,
                error_feedback: c.error_feedback,
                zstd: c.zstd,
                range,
            }
        }),
    }
}

/// A task's compression setting, validated.
fn compression_from_proto(c: &proto::UpdateCompression) -> Result<UpdateCompression, Malformed> {
    let codec = match c.codec.as_str() {
        "quantize" => Codec::Quantize { bits: u8::try_from(c.bits).unwrap_or(0) },
        "grid" => Codec::Grid { bits: u8::try_from(c.bits).unwrap_or(0), range: c.range },
        "top-k" => Codec::TopK { fraction: c.fraction },
        other => return Err(Malformed(format!("unknown compression codec '{}'", other.escape_debug()))),
    };
    let u = UpdateCompression { codec, error_feedback: c.error_feedback, zstd: c.zstd };
    u.validate().map_err(Malformed)?;
    Ok(u)
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
    let local = local_from_proto(t)?;
    let compression = t.compression.as_ref().map(compression_from_proto).transpose()?;
    Ok(LocalTraining {
        epochs: t.epochs as usize,
        batch_size: t.batch_size as usize,
        optimizer,
        dp,
        update_dp,
        local,
        compression,
    })
}

/// Longest algorithm name or setting key accepted, and most settings.
const MAX_NAME: usize = 64;
const MAX_SETTINGS: usize = 16;

/// The task's party half: a name this build registers, a bounded set of finite settings
/// (their ranges are the party half's to check).
fn local_from_proto(t: &proto::LocalTraining) -> Result<LocalAlgorithm, Malformed> {
    let name = t.algorithm.as_str();
    if !name.is_empty() && federate_core::algorithms::find(name).is_none() {
        let shown: String = name.chars().take(MAX_NAME).collect();
        return Err(Malformed(format!(
            "unknown local algorithm '{}' (this party knows {}): run the same federate version as the server",
            shown.escape_debug(),
            federate_core::algorithms::names().join(", ")
        )));
    }
    if t.algorithm_settings.len() > MAX_SETTINGS {
        return Err(Malformed(format!("{} algorithm settings; at most {MAX_SETTINGS}", t.algorithm_settings.len())));
    }
    if let Some((k, v)) = t.algorithm_settings.iter().find(|(k, v)| k.len() > MAX_NAME || !v.is_finite()) {
        let k: String = k.chars().take(MAX_NAME).collect();
        return Err(Malformed(format!("algorithm setting '{}' = {v} is out of range", k.escape_debug())));
    }
    Ok(LocalAlgorithm {
        name: name.to_string(),
        settings: t.algorithm_settings.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        has_state: t.has_state,
    })
}

/// A training summary as a message.
pub fn summary_to_proto(s: &TrainSummary) -> proto::TrainSummary {
    proto::TrainSummary { steps: s.steps, loss: s.loss, accuracy: s.accuracy, seconds: s.seconds }
}

/// A message's training summary (ranges are the server's admission's to check).
pub fn summary_from_proto(s: Option<&proto::TrainSummary>) -> TrainSummary {
    s.map_or_else(TrainSummary::default, |s| TrainSummary {
        steps: s.steps,
        loss: s.loss,
        accuracy: s.accuracy,
        seconds: s.seconds,
    })
}

/// A privacy report as a message.
pub fn privacy_to_proto(p: &PrivacyReport) -> proto::PrivacyReport {
    proto::PrivacyReport { epsilon: p.epsilon, clip_indicator: p.clip_indicator }
}

/// A message's privacy report.
pub fn privacy_from_proto(p: Option<&proto::PrivacyReport>) -> PrivacyReport {
    p.map_or_else(PrivacyReport::default, |p| PrivacyReport { epsilon: p.epsilon, clip_indicator: p.clip_indicator })
}

/// A party's evaluation statistics as a message.
pub fn eval_stats_to_proto(s: &federate_core::metrics::EvalStats) -> proto::EvalStats {
    proto::EvalStats {
        confusion: s.confusion.clone(),
        positives: s.positives.clone(),
        negatives: s.negatives.clone(),
        calibration: s
            .calibration
            .iter()
            .map(|b| proto::CalibrationBin { count: b.count, confidence: b.confidence, correct: b.correct })
            .collect(),
        log_loss_sum: s.log_loss_sum,
        regression: s.regression.map(|r| proto::RegressionSums {
            count: r.count,
            sq_err: r.sq_err,
            abs_err: r.abs_err,
            y: r.y,
            y2: r.y2,
        }),
    }
}

/// Evaluation statistics from a message (sizes and ranges are the core's admission's to
/// check); none when absent.
pub fn eval_stats_from_proto(s: Option<proto::EvalStats>) -> federate_core::metrics::EvalStats {
    use federate_core::metrics::{CalibrationBin, EvalStats, RegressionSums};
    let Some(s) = s else { return EvalStats::default() };
    EvalStats {
        confusion: s.confusion,
        positives: s.positives,
        negatives: s.negatives,
        calibration: s
            .calibration
            .iter()
            .map(|b| CalibrationBin { count: b.count, confidence: b.confidence, correct: b.correct })
            .collect(),
        log_loss_sum: s.log_loss_sum,
        regression: s.regression.map(|r| RegressionSums {
            count: r.count,
            sq_err: r.sq_err,
            abs_err: r.abs_err,
            y: r.y,
            y2: r.y2,
        }),
    }
}

/// Round-0 statistics as a message.
pub fn moments_to_proto(m: &federate_core::messages::Moments) -> proto::Moments {
    proto::Moments {
        count: m.count,
        present: m.present.clone(),
        sum: m.sum.clone(),
        sum_sq: m.sum_sq.clone(),
        min: m.min.clone(),
        max: m.max.clone(),
    }
}

/// Round-0 statistics from a message, checked: every per-feature list of one length (at most
/// `max_features`), counts within the row count, sums finite, minimum not above maximum
/// where a value was seen.
pub fn moments_from_proto(
    m: proto::Moments,
    max_features: usize,
) -> Result<federate_core::messages::Moments, Malformed> {
    let d = m.sum.len();
    if d > max_features {
        return Err(Malformed(format!("statistics of {d} features, more than the limit of {max_features}")));
    }
    if [m.present.len(), m.sum_sq.len(), m.min.len(), m.max.len()].iter().any(|&l| l != d) {
        return Err(Malformed("statistics whose per-feature lists differ in length".into()));
    }
    for j in 0..d {
        let seen = m.present[j] > 0;
        let sane = m.present[j] <= m.count
            && m.sum[j].is_finite()
            && m.sum_sq[j].is_finite()
            && m.sum_sq[j] >= 0.0
            && (!seen || (m.min[j].is_finite() && m.max[j].is_finite() && m.min[j] <= m.max[j]));
        if !sane {
            return Err(Malformed(format!("statistics of feature {j} are out of range")));
        }
    }
    Ok(federate_core::messages::Moments {
        count: m.count,
        present: m.present,
        sum: m.sum,
        sum_sq: m.sum_sq,
        min: m.min,
        max: m.max,
    })
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
            let local = |name: &str, settings: &[(&str, f64)], has_state| LocalAlgorithm {
                name: name.into(),
                settings: settings.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                has_state,
            };
            let q4 = UpdateCompression { codec: Codec::Quantize { bits: 4 }, error_feedback: true, zstd: false };
            let top = UpdateCompression { codec: Codec::TopK { fraction: 0.01 }, error_feedback: false, zstd: true };
            let grid =
                UpdateCompression { codec: Codec::Grid { bits: 8, range: 0.5 }, error_feedback: true, zstd: false };
            for (dp, update_dp, local, compression) in [
                (None, None, LocalAlgorithm::default(), None),
                (Some(dp), Some(u), local("fedprox", &[("mu", 0.01)], false), Some(q4)),
                (None, None, local("fedsgd", &[("full", 1.0)], false), Some(top)),
                (None, None, local("admm", &[("rho", 0.5)], true), Some(grid)),
                (None, None, local("scaffold", &[], false), None),
                (None, None, local("feddyn", &[("alpha", 0.1)], true), None),
            ] {
                let optimizer = optimizer.clone();
                let t = LocalTraining { epochs: 2, batch_size: 32, optimizer, dp, update_dp, local, compression };
                assert_eq!(training_from_proto(&training_to_proto(&t)).unwrap(), t);
            }
        }
        let mut bad = training_to_proto(&LocalTraining {
            epochs: 1,
            batch_size: 1,
            optimizer: OptimizerSpec::Sgd { lr: 0.1, momentum: 0.0, weight_decay: 0.0 },
            dp: None,
            update_dp: None,
            local: LocalAlgorithm::default(),
            compression: None,
        });
        let mut compression = bad.clone();
        compression.compression =
            Some(proto::UpdateCompression { codec: "quantize".into(), bits: 3, ..Default::default() });
        assert!(training_from_proto(&compression).unwrap_err().to_string().contains("bits = 3"));
        compression.compression = Some(proto::UpdateCompression { codec: "gzip".into(), ..Default::default() });
        assert!(training_from_proto(&compression).unwrap_err().to_string().contains("unknown compression codec"));
        let mut unknown = bad.clone();
        bad.optimizer.as_mut().unwrap().lr = -1.0;
        assert!(training_from_proto(&bad).is_err());
        unknown.algorithm = "fedmagic".into();
        let e = training_from_proto(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown local algorithm 'fedmagic'") && e.contains("feddyn"), "{e}");
        unknown.algorithm = "fedprox".into();
        unknown.algorithm_settings.insert("mu".into(), f64::NAN);
        assert!(training_from_proto(&unknown).unwrap_err().to_string().contains("'mu' = NaN"));
    }
}
