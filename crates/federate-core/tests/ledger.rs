//! A party's own privacy ledger and floor: it refuses tasks that ask for less privacy than it
//! agreed to, and after a restart with other settings its ε is the composition of exactly
//! what it applied.

use federate_core::*;
use federate_data::Dataset;
use federate_data::synthetic::{SyntheticConfig, synthetic};
use federate_nn::{ModelSpec, Shape};
use federate_privacy::{Accountant, rdp};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn data() -> Dataset {
    let cfg = SyntheticConfig { alpha: 0.5, beta: 0.5, devices: 1, ..Default::default() };
    let s = synthetic(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let n = s.data.train.len().min(300);
    s.data.train.subset(&(0..n).collect::<Vec<_>>())
}

fn dp(sigma: f64) -> DpSgd {
    DpSgd {
        mechanism: Mechanism::Gaussian,
        noise_multiplier: sigma,
        epsilon_per_step: None,
        clip: 1.0,
        sampling_rate: None,
        delta: 1e-5,
        accountant: Accountant::Rdp,
        max_epsilon: None,
        sampling: Sampling::Poisson,
    }
}

fn task(round: u32, dp: Option<DpSgd>, batch: usize) -> FitTask {
    let training = LocalTraining {
        epochs: 1,
        batch_size: batch,
        optimizer: OptimizerSpec::Sgd { lr: 0.1, momentum: 0.0, weight_decay: 0.0 },
        dp,
        update_dp: None,
        local: LocalAlgorithm::default(),
        compression: None,
    };
    FitTask { round, training, seed: round as u64, vector: None, scaling: None, model: None, changes: Vec::new() }
}

fn party(d: &Dataset, own: DpSgd) -> LocalClient<NnLearner> {
    let learner = NnLearner::new(ModelSpec::builtin("logreg", Shape::flat(60), 10).unwrap(), 32, 1).unwrap();
    let q = own.rate(d.len(), 32);
    LocalClient::new(learner, d.clone(), d.clone()).with_privacy_floor(PrivacyFloor::new(Some(own), Some(q)))
}

/// ε(δ) of `parts` (q, σ, steps) composed by adding their RDP curves, computed here from
/// the per-step RDP alone.
fn composed(parts: &[(f64, f64, u64)]) -> f64 {
    let orders = rdp::default_orders();
    let mut total = vec![0.0; orders.len()];
    for &(q, sigma, steps) in parts {
        for (t, r) in total.iter_mut().zip(rdp::rdp(q, sigma, steps, &orders).unwrap()) {
            *t += r;
        }
    }
    rdp::epsilon_from_rdp(&orders, &total, 1e-5).unwrap().0
}

#[test]
fn a_party_refuses_less_privacy_than_its_floor_and_composes_what_it_applied() {
    let d = data();
    let q = 32.0 / d.len() as f64;
    let steps = (1.0 / q).round() as u64;
    let global = {
        let l = NnLearner::new(ModelSpec::builtin("logreg", Shape::flat(60), 10).unwrap(), 32, 1).unwrap();
        Parameters::new(l.init(1), l.layout()).unwrap()
    };
    let mut p = party(&d, dp(1.0));
    let r = p.fit(&global, &task(1, Some(dp(1.0)), 32)).unwrap();
    let e1 = r.privacy.epsilon.unwrap();
    assert!((e1 - composed(&[(q, 1.0, steps)])).abs() < 1e-12, "{e1}");
    let before = p.state().unwrap();
    // A server asking for less noise, a larger batch (higher q), or no DP at all is refused,
    // and the refusal costs the ledger nothing.
    for (t, want) in [
        (task(2, Some(dp(0.5)), 32), "below this party's floor"),
        (task(2, Some(dp(1.0)), 64), "sampling rate"),
        (task(2, None, 32), "without DP-SGD"),
        (
            task(2, Some(DpSgd { mechanism: Mechanism::Laplace, epsilon_per_step: Some(1.0), ..dp(1.0) }), 32),
            "mechanism",
        ),
    ] {
        match p.fit(&global, &t) {
            Err(ClientError::Refused(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("expected a refusal containing '{want}', got {other:?}"),
        }
    }
    assert_eq!(p.state().unwrap(), before);
    // More noise than the floor is fine.
    p.fit(&global, &task(2, Some(dp(2.0)), 32)).unwrap();
    // The party restarts with other settings (σ = 1.5) and its saved ledger: its ε is the
    // composition of the three rounds it applied, not of the last one, and not a reset.
    let saved = p.state().unwrap();
    let mut p = party(&d, dp(1.5));
    p.restore(saved).unwrap();
    let r = p.fit(&global, &task(3, Some(dp(1.5)), 32)).unwrap();
    let want = composed(&[(q, 1.0, steps), (q, 2.0, steps), (q, 1.5, steps)]);
    let got = r.privacy.epsilon.unwrap();
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    assert_eq!(p.ledger().entries.len(), 3);
    assert_eq!(p.ledger().steps(), 3 * steps);
    // A budget of the party's own stops it before the round that would pass it.
    let mut own = dp(1.5);
    own.max_epsilon = Some(got * 1.01);
    let mut p2 = party(&d, own);
    p2.restore(p.state().unwrap()).unwrap();
    assert!(matches!(p2.fit(&global, &task(4, Some(dp(1.5)), 32)), Err(ClientError::BudgetSpent(_))));
    // What is sent: the update, the count, ε and the step count; nothing exact about the data.
    assert_eq!(r.training, TrainSummary { steps, loss: None, accuracy: None, seconds: None });
    assert_eq!(r.privacy, PrivacyReport { epsilon: Some(got), clip_indicator: None });
    assert!(r.metrics.is_empty() && r.algorithm == AlgorithmReply::None);
    let s = p.last_summary().unwrap();
    assert!(s.train_loss.is_finite() && s.train_accuracy > 0.0, "the party keeps its own numbers: {s:?}");
}

#[test]
fn an_update_dp_party_releases_its_clip_indicator_only_when_noised() {
    let summary = LocalSummary {
        train_loss: 0.7,
        train_accuracy: 0.8,
        steps: 9,
        train_seconds: 1.5,
        clip_indicator: Some(0.5),
        epsilon: None,
    };
    let mut training = task(1, None, 32).training;
    let all = TrainSummary { steps: 9, loss: Some(0.7), accuracy: Some(0.8), seconds: Some(1.5) };
    let private = TrainSummary { steps: 9, loss: None, accuracy: None, seconds: None };
    // Without DP everything goes (the indicator only exists under update-level DP).
    assert_eq!(release(&training, &summary), (all, PrivacyReport { epsilon: None, clip_indicator: None }));
    // Update-level DP without count noise: the exact bit stays, with the loss and accuracy.
    training.update_dp = Some(UpdateDp { clip: 1.0, noise_std: 0.1, count_noise_std: 0.0 });
    assert_eq!(release(&training, &summary), (private, PrivacyReport::default()));
    // With count noise (adaptive clipping) the noised bit is what the server needs.
    training.update_dp = Some(UpdateDp { clip: 1.0, noise_std: 0.1, count_noise_std: 0.5 });
    let bit = PrivacyReport { epsilon: None, clip_indicator: Some(0.5) };
    assert_eq!(release(&training, &summary), (private, bit));
}
