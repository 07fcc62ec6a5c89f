//! Exactness of the federated optimisers on real (generated) data: FedSGD with full-batch
//! gradients is centralised gradient descent, FedAvg with one party is local SGD, and
//! consensus ADMM and FedDyn reach the centralised optimum of an L2-regularised logistic
//! regression, and FedNova follows its normalised update and the federation's objective.

use federate_core::*;
use federate_data::Dataset;
use federate_data::synthetic::{SyntheticConfig, synthetic};
use federate_nn::{ModelSpec, Shape};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `parties` devices of Synthetic(0.5, 0.5), each cut to `per_party` training examples.
fn parties(parties: usize, per_party: usize) -> Vec<Dataset> {
    let cfg = SyntheticConfig { alpha: 0.5, beta: 0.5, devices: parties, ..Default::default() };
    let s = synthetic(&cfg, &mut ChaCha8Rng::seed_from_u64(11)).unwrap();
    federate_data::partition::by_key(&s.train_keys)
        .into_iter()
        .map(|idx| s.data.train.subset(&idx[..per_party.min(idx.len())]))
        .collect()
}

fn learner(batch: usize) -> NnLearner {
    NnLearner::new(ModelSpec::builtin("logreg", Shape::flat(60), 10).unwrap(), batch, 1).unwrap()
}

fn base(epochs: usize, batch: usize, lr: f32, weight_decay: f32) -> FedAvg {
    FedAvg {
        fraction_evaluate: 0.0,
        ..FedAvg::new(LocalTraining {
            epochs,
            batch_size: batch,
            optimizer: OptimizerSpec::Sgd { lr, momentum: 0.0, weight_decay },
            dp: None,
            update_dp: None,
            local: LocalAlgorithm::default(),
            compression: None,
        })
    }
}

fn server(strategy: Box<dyn Strategy>, data: &[Dataset], batch: usize) -> Server {
    let clients: Vec<Box<dyn ClientProxy>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let c = LocalClient::new(learner(batch), d.clone(), d.clone());
            Box::new(InProcess::new(format!("party-{i}"), c)) as Box<dyn ClientProxy>
        })
        .collect();
    Server::new(strategy, clients)
}

fn initial() -> Parameters {
    let l = learner(1);
    Parameters::new(l.init(5), l.layout()).unwrap()
}

fn run(s: &mut Server, rounds: u32) -> Parameters {
    s.run(initial(), &ServerConfig::new(rounds, 3), &mut |_| {}).unwrap().0
}

fn pooled(data: &[Dataset]) -> Dataset {
    let mut all = data[0].clone();
    for d in &data[1..] {
        all.x.extend_from_slice(&d.x);
        all.y.extend_from_slice(&d.y);
    }
    all
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().map(|v| v.abs() as f64).fold(0.0, f64::max).max(1e-12);
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn fedsgd_with_full_batch_gradients_is_centralised_gradient_descent() {
    let data = parties(3, 80);
    let sizes: Vec<usize> = data.iter().map(Dataset::len).collect();
    assert!(sizes.iter().any(|&n| n != sizes[0]) || sizes[0] == 80, "{sizes:?}");
    let mut s = server(Box::new(FedSgd::new(base(1, 32, 0.1, 0.0), 0.5, true).unwrap()), &data, 32);
    let fed = run(&mut s, 8);
    // Centralised: 8 steps of θ ← θ − 0.5·∇(mean loss over the pooled data).
    let all = pooled(&data);
    let mut l = learner(32);
    let mut theta = initial().values;
    let mut g = vec![0.0; theta.len()];
    for _ in 0..8 {
        gradient(&mut l, &theta, &all, 32, true, &mut g, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        for (t, g) in theta.iter_mut().zip(&g) {
            *t -= 0.5 * g;
        }
    }
    let err = max_rel(&fed.values, &theta);
    assert!(err < 1e-5, "FedSGD vs centralised GD: max relative difference {err}");
    assert!(max_rel(&theta, &initial().values) > 1e-2, "the steps moved the model");
}

#[test]
fn fedavg_with_one_party_is_local_sgd() {
    let data = parties(1, 200);
    let mut s = server(Box::new(base(3, 16, 0.05, 0.0)), &data, 16);
    let fed = run(&mut s, 2);
    // Locally: the same epochs with the same batch streams (derived from each round's task seed).
    let mut l = learner(16);
    let mut theta = initial().values;
    for round in 1..=2u32 {
        let task_seed = seed::derive(3, seed::Stream::Fit, &[round as u64, 0]);
        let cfg = base(3, 16, 0.05, 0.0).training;
        let mut opt = cfg.optimizer.build(theta.len()).unwrap();
        let mut rng = seed::stream(task_seed, seed::Stream::Batches, &[]);
        train_local(&mut l, &mut theta, &data[0], &cfg, &mut opt, &mut rng, 0).unwrap();
    }
    assert_eq!(fed.values, theta, "FedAvg with one party must equal local SGD bit for bit");
}

/// The L2-regularised objective Σ_k [L_k(θ) + (λ/2)‖θ‖²] (each party's mean loss, as ADMM
/// weighs them), in f64.
fn objective(data: &[Dataset], theta: &[f32], lambda: f64) -> f64 {
    let mut l = learner(64);
    let reg: f64 = theta.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() * lambda / 2.0;
    data.iter().map(|d| l.evaluate(theta, &d.x, d.targets()).unwrap().mean_loss() + reg).sum()
}

/// Σ_k ∇L_k(θ) + λθ per party: the gradient of the L2-regularised objective.
fn total_gradient(l: &mut NnLearner, data: &[Dataset], theta: &[f32], lambda: f32) -> Vec<f32> {
    let mut g = vec![0.0; theta.len()];
    let mut total = vec![0.0f32; theta.len()];
    for d in data {
        gradient(l, theta, d, 64, true, &mut g, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        for ((t, g), p) in total.iter_mut().zip(&g).zip(theta) {
            *t += g + lambda * p;
        }
    }
    total
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
}

/// The centralised optimum of Σ_k [L_k(θ) + (λ/2)‖θ‖²]: 20,000 steps of gradient descent.
fn centralised_optimum(data: &[Dataset], lambda: f32) -> Vec<f32> {
    let mut l = learner(64);
    let mut theta = initial().values;
    for _ in 0..20_000 {
        let step = total_gradient(&mut l, data, &theta, lambda);
        for (t, g) in theta.iter_mut().zip(&step) {
            *t -= 0.05 * g;
        }
    }
    theta
}

#[test]
fn admm_reaches_the_centralised_optimum() {
    let lambda = 0.05f32;
    let data = parties(3, 60);
    let theta = centralised_optimum(&data, lambda);
    let best = objective(&data, &theta, lambda as f64);
    eprintln!(
        "centralised: objective {best}, gradient norm {}",
        norm(&total_gradient(&mut learner(64), &data, &theta, lambda))
    );
    // ADMM: each party solves its subproblem by 300 full-batch gradient steps.
    let admm = Admm::new(base(300, 64, 0.05, lambda), 0.5, false).unwrap();
    let mut s = server(Box::new(admm), &data, 64);
    let z = run(&mut s, 200);
    let got = objective(&data, &z.values, lambda as f64);
    eprintln!(
        "admm: objective {got}, gradient norm {}",
        norm(&total_gradient(&mut learner(64), &data, &z.values, lambda))
    );
    let rel = (got - best) / best;
    assert!(rel.abs() < 1e-6, "ADMM objective {got} vs centralised {best}: relative {rel:e}");
    assert!(max_rel(&z.values, &theta) < 1e-3, "parameters differ by {}", max_rel(&z.values, &theta));
}

#[test]
fn bad_settings_are_errors() {
    let e = |r: Result<(), StrategyError>| r.unwrap_err().to_string();
    assert!(e(Admm::new(base(1, 1, 0.1, 0.0), 0.0, false).map(|_| ())).contains("rho"));
    assert!(e(FedSgd::new(base(1, 1, 0.1, 0.0), -1.0, true).map(|_| ())).contains("server_lr"));
    let cfg = FedOptConfig { optimizer: ServerOptimizer::Adam, lr: 0.0, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
    assert!(e(FedOpt::new(base(1, 1, 0.1, 0.0), cfg).map(|_| ())).contains("server_lr"));
    assert!(e(Scaffold::new(base(1, 1, 0.1, 0.0), 0.0).map(|_| ())).contains("server_lr"));
    // Stateful strategies refuse to resume without their state.
    let mut a = Admm::new(base(1, 1, 0.1, 0.0), 1.0, false).unwrap();
    assert!(a.restore(None).unwrap_err().to_string().contains("admm"));
    let mut f = FedOpt::new(base(1, 1, 0.1, 0.0), FedOptConfig { lr: 1.0, ..cfg }).unwrap();
    assert!(f.restore(None).unwrap_err().to_string().contains("fedadam"));
}

#[test]
fn admm_party_without_its_dual_refuses() {
    let data = parties(1, 50);
    let mut c = LocalClient::new(learner(16), data[0].clone(), data[0].clone());
    let mut t = base(1, 16, 0.1, 0.0).training;
    t.local = LocalAlgorithm {
        name: "admm".into(),
        settings: [("rho".to_string(), 1.0)].into_iter().collect(),
        has_state: true,
    };
    let task =
        FitTask { round: 2, training: t, seed: 1, vector: None, scaling: None, model: None, changes: Vec::new() };
    match c.fit(&initial(), &task) {
        Err(ClientError::MissingState(m)) => assert!(m.contains("dual"), "{m}"),
        other => panic!("expected MissingState, got {other:?}"),
    }
}

#[test]
fn scaffold_with_one_party_is_fedavg() {
    // With one party, c = c_k after every round, so the correction c − c_k vanishes.
    let data = parties(1, 120);
    let mut a = server(Box::new(base(2, 16, 0.05, 0.0)), &data, 16);
    let mut b = server(Box::new(Scaffold::new(base(2, 16, 0.05, 0.0), 1.0).unwrap()), &data, 16);
    let (fa, fb) = (run(&mut a, 3), run(&mut b, 3));
    let err = max_rel(&fb.values, &fa.values);
    assert!(err < 1e-5, "SCAFFOLD vs FedAvg with one party: {err}");
}

#[test]
fn server_optimisers_follow_their_update_rules() {
    // One party that always returns θ + 1: Δ = 1 every round.
    struct Plus;
    impl Client for Plus {
        fn fit(&mut self, g: &Parameters, _t: &FitTask) -> Result<FitReply, ClientError> {
            let params = g.values.iter().map(|v| v + 1.0).collect();
            Ok(FitReply { params, num_examples: 1, ..Default::default() })
        }
        fn evaluate(&mut self, _p: &Parameters, _t: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
            Ok(EvaluateReply { num_examples: 1, loss: 0.0, accuracy: 0.0, ..Default::default() })
        }
    }
    let zero = Parameters::new(
        vec![0.0],
        std::sync::Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![1], offset: 0 }])),
    )
    .unwrap();
    let after = |opt: ServerOptimizer, rounds: u32| {
        let cfg = FedOptConfig { optimizer: opt, lr: 0.5, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
        let mut s = Server::new(
            Box::new(FedOpt::new(base(1, 1, 0.1, 0.0), cfg).unwrap()),
            vec![Box::new(InProcess::new("p", Plus))],
        );
        s.run(zero.clone(), &ServerConfig::new(rounds, 1), &mut |_| {}).unwrap().0.values[0] as f64
    };
    // FedAvgM: v = 1, 1.9, 2.71 → θ = 0.5·(1 + 1.9 + 2.71) = 2.805.
    assert!((after(ServerOptimizer::Momentum, 3) - 2.805).abs() < 1e-5);
    // FedAdam, one round: m = 0.1, v = 0.99·τ² + 0.01 → θ = 0.5·0.1/(√v + τ).
    let v = 0.99f64 * 1e-6 + 0.01;
    assert!((after(ServerOptimizer::Adam, 1) - 0.05 / (v.sqrt() + 1e-3)).abs() < 1e-5);
    // FedAdagrad, one round: v = τ² + 1.
    let v = 1e-6f64 + 1.0;
    assert!((after(ServerOptimizer::Adagrad, 1) - 0.05 / (v.sqrt() + 1e-3)).abs() < 1e-5);
    // FedYogi, one round: v = τ² − 0.01·1·sign(τ² − 1) = τ² + 0.01.
    let v = 1e-6f64 + 0.01;
    assert!((after(ServerOptimizer::Yogi, 1) - 0.05 / (v.sqrt() + 1e-3)).abs() < 1e-5);
}

#[test]
fn scaffold_keeps_c_the_example_weighted_mean_of_the_parties_c_k() {
    // Four parties of 50, 100, 400 and 1,000 examples reply in changing subsets with
    // made-up Δc_k; the server's c must stay Σ n_k c_k / Σ n_k over the parties seen, and a
    // restored strategy must continue exactly.
    let sizes = [50usize, 100, 400, 1000];
    let layout = std::sync::Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![3], offset: 0 }]));
    let global = Parameters::new(vec![0.5, -1.0, 2.0], layout).unwrap();
    let mut s = Scaffold::new(base(1, 10, 0.1, 0.0), 1.0).unwrap();
    let mut held = vec![vec![0.0f64; 3]; 4];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let _ = s.configure_fit(1, 4, 1, &mut rng);
    let subsets: [&[usize]; 4] = [&[0, 3], &[1, 3], &[0, 2], &[1, 2, 3]];
    let mut restored: Option<Federated<Scaffold>> = None;
    for (round, subset) in subsets.iter().enumerate() {
        let replies: Vec<(usize, FitReply)> = subset
            .iter()
            .map(|&k| {
                let dc: Vec<f32> = (0..3).map(|j| (k * 3 + j + round) as f32 * 0.25 - 1.0).collect();
                for (h, d) in held[k].iter_mut().zip(&dc) {
                    *h += *d as f64;
                }
                let params = global.values.iter().map(|v| v + k as f32).collect();
                (
                    k,
                    FitReply {
                        params,
                        num_examples: sizes[k],
                        algorithm: AlgorithmReply::Vector(dc),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let (x, rejected) = s.aggregate_fit(round as u32 + 1, &global, &replies).unwrap();
        assert!(rejected.is_empty());
        // The model moves by the example-weighted mean of y_k − x.
        let n: usize = subset.iter().map(|&k| sizes[k]).sum();
        let step: f64 = subset.iter().map(|&k| (sizes[k] * k) as f64).sum::<f64>() / n as f64;
        assert!((x.values[0] as f64 - (0.5 + step)).abs() < 1e-5, "model step {} vs {step}", x.values[0] - 0.5);
        if let Some(r) = restored.as_mut() {
            let (xr, _) = r.aggregate_fit(round as u32 + 1, &global, &replies).unwrap();
            assert_eq!(xr.values, x.values);
        }
        let state = s.state().unwrap();
        let seen: Vec<usize> = (0..4).filter(|k| held[*k].iter().any(|v| *v != 0.0)).collect();
        let total: f64 = seen.iter().map(|&k| sizes[k] as f64).sum();
        for (j, got) in state.vectors[0].iter().enumerate() {
            let want: f64 = seen.iter().map(|&k| sizes[k] as f64 * held[k][j]).sum::<f64>() / total;
            let got = *got as f64;
            assert!((got - want).abs() < 1e-5, "round {}: c[{j}] = {got}, want {want}", round + 1);
        }
        if round == 1 {
            let mut r = Scaffold::new(base(1, 10, 0.1, 0.0), 1.0).unwrap();
            r.restore(Some(&state)).unwrap();
            restored = Some(r);
        }
    }
    let (a, b) = (s.state().unwrap(), restored.unwrap().state().unwrap());
    assert_eq!((a.meta, a.vectors), (b.meta, b.vectors));
    assert!(Scaffold::new(base(1, 10, 0.1, 0.0), 1.0).unwrap().restore(None).is_err());
}

/// A reply of `params` from a party of `n` examples that took `steps` local steps.
fn stepped(params: Vec<f32>, n: usize, steps: u64) -> FitReply {
    FitReply { params, num_examples: n, training: TrainSummary { steps, ..Default::default() }, ..Default::default() }
}

#[test]
fn fednova_normalises_each_update_by_its_path_length() {
    let layout = std::sync::Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![1], offset: 0 }]));
    let global = Parameters::new(vec![1.0], layout).unwrap();
    // Plain SGD at lr 0.1: a_k = 0.1·τ_k. Parties of 10 and 30 examples took 2 and 8 steps
    // and moved by 0.4 and 0.8: p = (¼, ¾), τ_eff = ¼·0.2 + ¾·0.8 = 0.65,
    // d = ¼·0.4/0.2 + ¾·0.8/0.8 = 1.25, θ = 1 − 0.65·1.25 = 0.1875 (FedAvg: 0.3).
    let replies = vec![(0, stepped(vec![0.6], 10, 2)), (1, stepped(vec![0.2], 30, 8))];
    let mut nova = algorithms::FedNova::new(base(1, 10, 0.1, 0.0), 1.0).unwrap();
    let (next, rejected) = nova.aggregate_fit(1, &global, &replies).unwrap();
    assert!(rejected.is_empty());
    assert!((next.values[0] - 0.1875).abs() < 1e-6, "{}", next.values[0]);
    let (avg, _) = base(1, 10, 0.1, 0.0).aggregate_fit(1, &global, &replies).unwrap();
    assert!((avg.values[0] - 0.3).abs() < 1e-6, "{}", avg.values[0]);
    // With momentum μ the path of τ steps is η(τ − μ(1 − μ^τ)/(1 − μ))/(1 − μ).
    let mut b = base(1, 10, 0.1, 0.0);
    b.training.optimizer = OptimizerSpec::Sgd { lr: 0.1, momentum: 0.5, weight_decay: 0.0 };
    let a = |t: f64| 0.1 * (t - 0.5 * (1.0 - 0.5f64.powf(t)) / 0.5) / 0.5;
    let (a1, a2) = (a(2.0), a(8.0));
    let want = 1.0 - (0.25 * a1 + 0.75 * a2) * (0.25 * 0.4 / a1 + 0.75 * 0.8 / a2);
    let (next, _) = algorithms::FedNova::new(b, 1.0).unwrap().aggregate_fit(1, &global, &replies).unwrap();
    assert!((next.values[0] as f64 - want).abs() < 1e-6, "{} vs {want}", next.values[0]);
    // A reply claiming no steps cannot be normalised: refused by name, the others stand.
    let replies = vec![(0, stepped(vec![0.6], 10, 0)), (1, stepped(vec![0.2], 30, 8))];
    let (next, rejected) = nova.aggregate_fit(2, &global, &replies).unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].reason.contains("0 local steps"), "{:?}", rejected);
    assert!((next.values[0] - 0.2).abs() < 1e-6, "{}", next.values[0]);
    // Adam has no path length, robust rules do not apply: both refused by name.
    let mut adam = base(1, 10, 0.1, 0.0);
    adam.training.optimizer = OptimizerSpec::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    assert!(algorithms::FedNova::new(adam, 1.0).err().unwrap().to_string().contains("train.optimizer"));
    let robust = FedAvg { aggregator: Aggregator::Median, ..base(1, 10, 0.1, 0.0) };
    assert!(algorithms::FedNova::new(robust, 1.0).err().unwrap().to_string().contains("strategy.aggregator"));
}

#[test]
fn fednova_with_equal_steps_is_fedavg_and_with_unequal_steps_optimises_the_federations_objective() {
    let lambda = 0.05f32;
    // Equal parties take equal steps: FedNova is FedAvg.
    let data = parties(3, 60);
    let mut a = server(Box::new(base(2, 20, 0.05, lambda)), &data, 20);
    let mut b = server(Box::new(algorithms::FedNova::new(base(2, 20, 0.05, lambda), 1.0).unwrap()), &data, 20);
    let err = max_rel(&run(&mut b, 3).values, &run(&mut a, 3).values);
    assert!(err < 1e-5, "FedNova vs FedAvg with equal steps: {err}");
    // Parties of 20, 60 and 180 examples take 1, 3 and 9 steps an epoch. The federation's
    // objective is the pooled mean loss, Σ (n_k/n) L_k; FedAvg's fixed point weighs each
    // party by n_k·τ_k instead, so it stops where the pooled gradient is far from zero.
    let sizes = [20usize, 60, 180];
    let big: Vec<Dataset> = parties(30, 180).into_iter().filter(|d| d.len() >= 180).take(3).collect();
    assert_eq!(big.len(), 3, "three devices of at least 180 examples");
    let data: Vec<Dataset> = big.iter().zip(sizes).map(|(d, n)| d.subset(&(0..n).collect::<Vec<_>>())).collect();
    let pooled_all = pooled(&data);
    let mut l = learner(256);
    let mut g = vec![0.0; initial().len()];
    let mut pooled_grad = |theta: &[f32]| {
        gradient(&mut l, theta, &pooled_all, 256, true, &mut g, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        g.iter().zip(theta).map(|(g, t)| ((g + lambda * t) as f64).powi(2)).sum::<f64>().sqrt()
    };
    let mut a = server(Box::new(base(5, 20, 0.01, lambda)), &data, 20);
    let mut b = server(Box::new(algorithms::FedNova::new(base(5, 20, 0.01, lambda), 1.0).unwrap()), &data, 20);
    let (fedavg, fednova) = (pooled_grad(&run(&mut a, 150).values), pooled_grad(&run(&mut b, 150).values));
    eprintln!("pooled gradient norm: FedAvg {fedavg:.5}, FedNova {fednova:.5}");
    assert!(fednova < 0.25 * fedavg, "FedNova {fednova} vs FedAvg {fedavg}");
}

#[test]
fn feddyn_reaches_the_centralised_optimum_where_fedavg_drifts() {
    let lambda = 0.05f32;
    let data = parties(3, 60);
    let theta = centralised_optimum(&data, lambda);
    let best = objective(&data, &theta, lambda as f64);
    // Each party solves its subproblem by 300 full-batch gradient steps.
    let dyn_ = algorithms::FedDyn::new(base(300, 64, 0.05, lambda), 0.5).unwrap();
    let mut s = server(Box::new(dyn_), &data, 64);
    let z = run(&mut s, 150);
    let got = objective(&data, &z.values, lambda as f64);
    let rel = (got - best) / best;
    eprintln!("feddyn: objective {got} vs {best} (relative {rel:e})");
    assert!(rel.abs() < 1e-5, "FedDyn objective {got} vs centralised {best}: relative {rel:e}");
    // FedAvg with the same local work stops at a point of its own (client drift).
    let mut s = server(Box::new(base(300, 64, 0.05, lambda)), &data, 64);
    let avg = objective(&data, &run(&mut s, 150).values, lambda as f64);
    let drift = (avg - best) / best;
    eprintln!("fedavg: objective {avg} (relative {drift:e})");
    assert!(drift > 100.0 * rel.abs().max(1e-9), "FedAvg {drift:e} vs FedDyn {rel:e}");
    // A party that took part but lost g_k refuses; bad α is an error naming it.
    let mut c = LocalClient::new(learner(16), data[0].clone(), data[0].clone());
    let mut t = base(1, 16, 0.1, 0.0).training;
    t.local = LocalAlgorithm {
        name: "feddyn".into(),
        settings: [("alpha".to_string(), 0.5)].into_iter().collect(),
        has_state: true,
    };
    match c.fit(
        &initial(),
        &FitTask { round: 2, training: t, seed: 1, vector: None, scaling: None, model: None, changes: Vec::new() },
    ) {
        Err(ClientError::MissingState(m)) => assert!(m.contains("FedDyn"), "{m}"),
        other => panic!("expected MissingState, got {other:?}"),
    }
    assert!(algorithms::FedDyn::new(base(1, 1, 0.1, 0.0), 0.0).err().unwrap().to_string().contains("strategy.alpha"));
}
