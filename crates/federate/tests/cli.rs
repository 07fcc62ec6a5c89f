//! End-to-end tests of the `federate` binary on real MNIST: the worked example, bit-for-bit
//! reproducibility, and one-line errors for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn federate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_federate")).args(args).output().expect("run federate")
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mnist-3-parties.toml").display().to_string()
}

fn accuracies(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["accuracy"].as_f64().unwrap()
        })
        .collect()
}

#[test]
fn worked_example_two_rounds_is_far_above_chance() {
    let out = tempfile::tempdir().unwrap();
    let o = federate(&[
        "run",
        &example(),
        "--rounds",
        "2",
        "--set",
        "train.epochs=1",
        "--set",
        "evaluation.baseline=false",
        "--out",
        out.path().to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let acc = accuracies(out.path());
    assert_eq!(acc.len(), 2);
    // Chance is 10 %; one epoch per round on 3 × 2,000 examples already gives > 90 %.
    assert!(acc[1] > 0.90, "{acc:?}");
    let cfg = std::fs::read_to_string(out.path().join("config.toml")).unwrap();
    assert!(cfg.contains("rounds = 2") && cfg.contains("epochs = 1"), "{cfg}");
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n: usize = st.tensors().iter().map(|(_, t)| t.shape().iter().product::<usize>()).sum();
    assert_eq!(n, 1_663_370);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("party-3") && table.contains("federated"), "{table}");
}

#[test]
fn same_seed_gives_bit_identical_models() {
    let small = [
        "--rounds",
        "2",
        "--set",
        "data.train_per_party=300",
        "--set",
        "data.test_per_party=100",
        "--set",
        "evaluation.baseline=false",
        "--set",
        "model.name=mlp",
        "--quiet",
    ];
    let run = |seed: &str| {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec!["run", "--seed", seed, "--out", out.path().to_str().unwrap()];
        args.extend_from_slice(&small);
        let o = federate(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out.path().join("model.safetensors")).unwrap()
    };
    let a = run("7");
    let b = run("7");
    let c = run("8");
    assert_eq!(a, b, "same seed, different models");
    assert_ne!(a, c, "different seeds, same model");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let empty_cache = tempfile::tempdir().unwrap();
    let corrupt = tempfile::tempdir().unwrap();
    for (f, _) in federate_data::MNIST.files {
        std::fs::write(corrupt.path().join(f), b"\x00\x00\x08\x01\x00\x00\x00\x02ab").unwrap();
    }
    let bad_toml = corrupt.path().join("bad.toml");
    std::fs::write(&bad_toml, "rounds = [").unwrap();
    let cache = empty_cache.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--set", "train.lrr=0.1"], "lrr"),
        (vec!["--set", "train.lr=-0.1"], "learning rate"),
        (vec!["--set", "data.parties=0"], "parties = 0"),
        (vec!["--set", "data.train_per_party=30000"], "only 60000 exist"),
        (vec!["--set", "model.name=resnet"], "resnet"),
        (vec!["--set", "model.name=custom", "--set", r#"model.layers=[{type="conv3d"}]"#], "conv3d"),
        (vec!["--set", "model.name=custom", "--set", r#"model.layers=[{type="linear",out=10}]"#], "flatten"),
        // ~4·10^9 parameters: about 64 GB to train, more than this kind of machine has.
        (
            vec![
                "--set",
                "model.name=custom",
                "--set",
                r#"model.layers=[{type="flatten"},{type="linear",out=5000000},{type="linear",out=10}]"#,
            ],
            "needs about",
        ),
        (vec!["--set", "strategy.fraction_fit=2"], "fraction_fit"),
        // 10^8 outputs: refused before anything is allocated, not a 300 GB abort.
        (
            vec![
                "--set",
                "model.name=custom",
                "--set",
                r#"model.layers=[{type="flatten"},{type="linear",out=100000000},{type="linear",out=10}]"#,
            ],
            "model.layers",
        ),
        (vec!["--set", "server.heartbeat_s=1e30"], "at most"),
        (vec!["--set", "data.parties=1000000000000"], "data.parties"),
        (vec!["--set", "threads=1000000"], "threads"),
        (vec!["--set", "train.epochs=1000000000000"], "train.epochs"),
        (vec!["--set", "server.max_examples=0"], "server.max_examples"),
        (vec!["--set", "server.weight_by=\"declared\""], "server.declared.party-1"),
        (vec!["--rounds", "0"], "rounds = 0"),
        (vec!["--set", "data.offline=true", "--cache-dir", cache, "--data-dir", "/nonexistent"], "not found"),
        (
            vec!["--set", "data.offline=true", "--cache-dir", cache, "--data-dir", corrupt.path().to_str().unwrap()],
            "SHA-256",
        ),
        (vec![bad_toml.to_str().unwrap()], "bad.toml"),
        (vec!["/nonexistent/config.toml"], "cannot read config"),
    ];
    for (args, want) in cases {
        let out = tempfile::tempdir().unwrap();
        let mut full = vec!["run", "--quiet", "--out", out.path().to_str().unwrap()];
        full.extend(args.iter());
        let o = federate(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.starts_with("error: ") && err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn bench_net_reports_the_servers_own_memory_and_every_round() {
    let o = federate(&["bench", "net", "--parties", "20", "--rounds", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    let kb: f64 = s.split("server_kb_per_connected_party=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(kb > 0.0, "{s}");
    for r in ["round=1 ", "round=2 "] {
        let line = s.lines().find(|l| l.starts_with(r)).unwrap_or_else(|| panic!("{s}"));
        assert!(line.contains("parties=20"), "{line}");
    }
    // Per party: the model down for round 1's fit and for each round's evaluation (round 2's
    // fit refers to the model evaluated in round 1), the update up each round: 5 models in 2
    // rounds.
    assert!(s.contains("ratio_to_model_x_parties=2.500"), "{s}");
}

#[test]
fn bench_train_prints_one_line_per_batch() {
    let o = federate(&["bench", "train", "--model", "mlp", "--batches", "4,8", "--seconds", "0.05", "--threads", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    for b in ["batch=4 ", "batch=8 "] {
        let line = s.lines().find(|l| l.starts_with(b)).unwrap_or_else(|| panic!("{s}"));
        let sps: f64 = line.split("samples_per_s=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(sps > 0.0);
        assert!(line.contains("fraction_of_floor="));
    }
}

#[test]
fn bench_aggregate_times_every_rule() {
    let o = federate(&["bench", "aggregate", "--model", "logreg", "--parties", "5", "--reps", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with("5 models of 7850 values (logreg)"), "{s}");
    for rule in ["mean", "median", "trimmed-mean", "krum (f 1)"] {
        let line = s.lines().find(|l| l.starts_with(rule)).unwrap_or_else(|| panic!("{rule}: {s}"));
        let ms: f64 = line[22..].split_whitespace().next().unwrap().parse().unwrap();
        assert!(ms >= 0.0 && ms.is_finite(), "{line}");
    }
    let o = federate(&["bench", "aggregate", "--parties", "3"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--parties 3"));
}

#[test]
fn the_deployment_example_config_runs_as_a_simulation() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/deploy/federation.toml");
    let out = tempfile::tempdir().unwrap();
    let o = federate(&[
        "run",
        cfg.to_str().unwrap(),
        "--rounds",
        "1",
        "--set",
        "data.train_per_party=600",
        "--set",
        "data.test_per_party=100",
        "--set",
        "train.epochs=1",
        "--out",
        out.path().to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One epoch of 19 steps per party: well above chance (10 %), far from converged.
    assert!(accuracies(out.path())[0] > 0.3, "{:?}", accuracies(out.path()));
}

fn last_value(out: &Output, key: &str) -> f64 {
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().last().unwrap_or_default();
    line.strip_prefix(&format!("{key}=")).unwrap_or_else(|| panic!("{s}")).parse().unwrap()
}

#[test]
fn privacy_planning_commands() {
    let o = federate(&[
        "privacy",
        "epsilon",
        "--sampling-rate",
        "0.04",
        "--noise-multiplier",
        "1.5",
        "--steps",
        "2250",
        "--delta",
        "1e-5",
    ]);
    assert!(o.status.success());
    assert!((last_value(&o, "epsilon") - 7.3293).abs() < 1e-3);
    let o = federate(&[
        "privacy",
        "epsilon",
        "--sampling-rate",
        "0.032",
        "--noise-multiplier",
        "1.0",
        "--steps",
        "312",
        "--delta",
        "1e-5",
        "--accountant",
        "pld",
    ]);
    assert!(o.status.success());
    assert!((last_value(&o, "epsilon") - 3.667).abs() < 5e-3);
    let o = federate(&[
        "privacy",
        "noise",
        "--target-epsilon",
        "3",
        "--sampling-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
    ]);
    assert!(o.status.success());
    let sigma = last_value(&o, "noise_multiplier");
    assert!(sigma > 0.5 && sigma < 2.0, "{sigma}");
    for (args, want) in [
        (
            vec!["epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "0", "--steps", "10", "--delta", "1e-5"],
            "σ = 0",
        ),
        (
            vec!["epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1", "--steps", "10", "--delta", "1.5"],
            "δ = 1.5",
        ),
        (
            vec![
                "noise",
                "--target-epsilon",
                "0.000001",
                "--sampling-rate",
                "1",
                "--steps",
                "100000",
                "--delta",
                "1e-5",
            ],
            "cannot be reached",
        ),
    ] {
        let mut full = vec!["privacy"];
        full.extend(args.iter());
        let o = federate(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A small DP run: 3 parties × 600 MNIST examples, the MLP, one epoch per round, plus `sets`.
fn small_mlp_run(out: &Path, rounds: &str, sets: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--rounds",
        rounds,
        "--set",
        "data.train_per_party=600",
        "--set",
        "data.test_per_party=200",
        "--set",
        "model.name=mlp",
        "--set",
        "train.epochs=1",
        "--set",
        "train.lr=0.2",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    federate(&args)
}

fn read_rounds(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn dp_sgd_run_records_epsilon_per_round() {
    let out = tempfile::tempdir().unwrap();
    let o = small_mlp_run(
        out.path(),
        "2",
        &["privacy.mechanism=gaussian", "privacy.noise_multiplier=1.1", "privacy.clip=1.0"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rounds = read_rounds(out.path());
    let eps: Vec<f64> = rounds.iter().map(|r| r["epsilon"].as_f64().unwrap()).collect();
    assert!(eps[0] > 0.0 && eps[1] > eps[0], "{eps:?}");
    // The same run through the planning command: q = 32/600, 19 steps per round.
    let plan = federate(&[
        "privacy",
        "epsilon",
        "--sampling-rate",
        &(32.0f64 / 600.0).to_string(),
        "--noise-multiplier",
        "1.1",
        "--steps",
        "38",
        "--delta",
        "1e-5",
    ]);
    let planned: f64 =
        String::from_utf8_lossy(&plan.stdout).lines().last().unwrap()["epsilon=".len()..].parse().unwrap();
    assert!((planned - eps[1]).abs() < 1e-4, "{planned} vs {}", eps[1]);
    assert!(rounds[1]["accuracy"].as_f64().unwrap() > 0.3, "{}", rounds[1]["accuracy"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains('ε'), "{table}");
    // With a budget between the two, every party refuses round 2 and the run stops there.
    let budget = format!("privacy.target_epsilon={}", (eps[0] + eps[1]) / 2.0);
    let out2 = tempfile::tempdir().unwrap();
    let o = small_mlp_run(
        out2.path(),
        "5",
        &["privacy.mechanism=gaussian", "privacy.noise_multiplier=1.1", "privacy.clip=1.0", &budget],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stopped = read_rounds(out2.path());
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    assert!(stopped[1]["error"].as_str().unwrap().contains("privacy budget"), "{}", stopped[1]);
    assert!(stopped[1]["failures"][0]["reason"].as_str().unwrap().contains("over the budget"), "{}", stopped[1]);
    // Bad privacy settings are one-line errors.
    for (set, want) in
        [("privacy.noise_multiplier=0", "noise_multiplier"), ("privacy.clip=-1", "clip"), ("privacy.delta=2", "delta")]
    {
        let o = federate(&["run", "--quiet", "--set", "privacy.mechanism=gaussian", "--set", set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && err.lines().count() == 1, "{set}: {err}");
    }
}

#[test]
fn laplace_dp_sgd_accounting_matches_the_planner_and_beats_composition() {
    let out = tempfile::tempdir().unwrap();
    let o = small_mlp_run(
        out.path(),
        "2",
        &["train.lr=0.05", "privacy.mechanism=laplace", "privacy.epsilon_per_step=0.5", "privacy.clip=1.0"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rounds = read_rounds(out.path());
    // q = 32/600, round(1/q) = 19 steps a round. Composition theorems: ε' = ln(1 + q(e^0.5 − 1)),
    // the better of T·ε' and ε'√(2T ln(1/δ)) + T·ε'(e^ε' − 1); RDP may only do better.
    let q = 32.0f64 / 600.0;
    let e1 = (q * 0.5f64.exp_m1()).ln_1p();
    let composition = |t: f64| (t * e1).min(e1 * (2.0 * t * 1e5f64.ln()).sqrt() + t * e1 * e1.exp_m1());
    for (r, steps) in rounds.iter().zip([19u32, 38]) {
        let eps = r["epsilon"].as_f64().unwrap();
        assert!(eps <= composition(steps as f64) + 1e-12, "{eps} vs {}", composition(steps as f64));
        let plan = |acc: &str| {
            last_value(
                &federate(&[
                    "privacy",
                    "epsilon",
                    "--mechanism",
                    "laplace",
                    "--epsilon-per-step",
                    "0.5",
                    "--sampling-rate",
                    &q.to_string(),
                    "--steps",
                    &steps.to_string(),
                    "--delta",
                    "1e-5",
                    "--accountant",
                    acc,
                ]),
                "epsilon",
            )
        };
        assert!((eps - plan("rdp")).abs() < 1e-5, "{eps} vs {}", plan("rdp"));
        // The PLD accountant is tighter still.
        assert!(plan("pld") < eps, "{} vs {eps}", plan("pld"));
    }
    let e0 = last_value(
        &federate(&[
            "privacy",
            "noise",
            "--mechanism",
            "laplace",
            "--target-epsilon",
            "3",
            "--sampling-rate",
            "0.05",
            "--steps",
            "400",
            "--delta",
            "1e-5",
        ]),
        "epsilon_per_step",
    );
    assert!(e0 > 0.1 && e0 < 10.0, "{e0}");
    let o = federate(&[
        "privacy",
        "epsilon",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "10",
        "--delta",
        "1e-5",
        "--sampling",
        "fixed-size",
        "--accountant",
        "pld",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--accountant rdp"), "{err}");
    let o = federate(&["run", "--quiet", "--set", "privacy.mechanism=laplace"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("epsilon_per_step"), "{err}");
}

#[test]
fn fixed_size_sampling_with_secure_noise_runs_and_is_accounted() {
    let out = tempfile::tempdir().unwrap();
    let o = small_mlp_run(
        out.path(),
        "1",
        &[
            "privacy.mechanism=gaussian",
            "privacy.noise_multiplier=0.3",
            "privacy.sampling=fixed-size",
            "privacy.noise=secure",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rounds = read_rounds(out.path());
    let eps = rounds[0]["epsilon"].as_f64().unwrap();
    // 600 examples, batches of 32: q = 32/600, 19 steps.
    let plan = last_value(
        &federate(&[
            "privacy",
            "epsilon",
            "--sampling-rate",
            &(32.0f64 / 600.0).to_string(),
            "--noise-multiplier",
            "0.3",
            "--steps",
            "19",
            "--delta",
            "1e-5",
            "--sampling",
            "fixed-size",
        ]),
        "epsilon",
    );
    assert!((eps - plan).abs() < 1e-5, "{eps} vs {plan}");
    // It learns (seeded noise gives 66.7 % here, secure 66.3 %; chance is 10 %).
    assert!(rounds[0]["accuracy"].as_f64().unwrap() > 0.5, "{:?}", rounds[0]["accuracy"]);
}

#[test]
fn client_level_dp_records_the_client_epsilon() {
    let out = tempfile::tempdir().unwrap();
    let o = small_mlp_run(
        out.path(),
        "2",
        &[
            "data.parties=10",
            "data.train_per_party=100",
            "data.test_per_party=50",
            "strategy.fraction_fit=0.5",
            "client_privacy.mode=central",
            "client_privacy.noise_multiplier=0.8",
            "client_privacy.adaptive=true",
            "client_privacy.count_noise=0.5",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rounds = read_rounds(out.path());
    let eps: Vec<f64> = rounds.iter().map(|r| r["strategy"]["client_epsilon"].as_f64().unwrap()).collect();
    assert!(eps[1] > eps[0], "{eps:?}");
    // Adaptive clipping: the clip norm moved from its initial 1.0.
    assert_eq!(rounds[0]["strategy"]["clip_norm"].as_f64().unwrap(), 1.0);
    assert_ne!(rounds[1]["strategy"]["clip_norm"].as_f64().unwrap(), 1.0);
    // Distributed noise without secure aggregation is refused with the reason and the fix.
    let o = small_mlp_run(out.path(), "1", &["client_privacy.mode=distributed"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("secure aggregation") && err.contains("\"central\""), "{err}");
    // count_noise below z/2 is refused with the fix named.
    let o = small_mlp_run(
        out.path(),
        "1",
        &["client_privacy.mode=central", "client_privacy.adaptive=true", "client_privacy.count_noise=0.4"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("count_noise"), "{err}");
}

#[test]
fn scaffold_with_momentum_local_steps_does_not_diverge() {
    // Option II's control variate divides the local displacement by how far the steps move
    // per unit of gradient; with momentum 0.9 that is about 10× K·η. Dividing by K·η (the
    // paper's plain-SGD rule) made SCAFFOLD fall to 3 % by round 15 here while FedAvg climbed.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/algorithms");
    let last = |name: &str| {
        let out = tempfile::tempdir().unwrap();
        let cfg = dir.join(format!("{name}.toml"));
        let args = ["run", cfg.to_str().unwrap(), "--rounds", "15", "--set", "train.momentum=0.9", "--quiet", "--out"];
        let o = federate(&[&args[..], &[out.path().to_str().unwrap()]].concat());
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        *accuracies(out.path()).last().unwrap()
    };
    let (scaffold, fedavg) = (last("scaffold"), last("fedavg"));
    assert!(scaffold > 0.6 && scaffold > fedavg, "SCAFFOLD {scaffold}, FedAvg {fedavg}");
    let o = federate(&["run", dir.join("scaffold.toml").to_str().unwrap(), "--set", "train.optimizer=\"adam\""]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("train.optimizer"), "{err}");
}

#[test]
fn robust_aggregators_withstand_parties_that_send_poisoned_models() {
    // examples/robust/poisoned-mnist.toml: 10 parties of 600 MNIST examples, 3 of them
    // reversing and scaling their update ×10.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/robust/poisoned-mnist.toml");
    let run = |aggregator: &str| {
        let out = tempfile::tempdir().unwrap();
        let agg = format!("strategy.aggregator=\"{aggregator}\"");
        let args = ["run", cfg.to_str().unwrap(), "--rounds", "3", "--quiet", "--set", &agg, "--out"];
        let o = federate(&[&args[..], &[out.path().to_str().unwrap()]].concat());
        assert!(o.status.success(), "{aggregator}: {}", String::from_utf8_lossy(&o.stderr));
        *accuracies(out.path()).last().unwrap()
    };
    let mean = run("mean");
    assert!(mean < 0.3, "the plain mean should be ruined by the attackers, got {mean}");
    for aggregator in ["median", "trimmed-mean", "krum"] {
        let acc = run(aggregator);
        assert!(acc > 0.8, "{aggregator}: {acc} (mean: {mean})");
    }
    // Settings that cannot work are one-line errors naming the key.
    let algorithms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/algorithms");
    for (cfg, set, key) in [
        ("fedavg.toml", "strategy.aggregator=\"mode\"", "strategy.aggregator"),
        ("fedavg.toml", "strategy.trim=0.5", "strategy.trim"),
        ("scaffold.toml", "strategy.aggregator=\"median\"", "strategy.aggregator"),
        ("fedavg.toml", "attack.parties=31", "attack.parties"),
    ] {
        let o = federate(&["run", algorithms.join(cfg).to_str().unwrap(), "--quiet", "--set", set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(key), "{set}: {err}");
    }
}

#[test]
fn every_algorithm_example_runs_two_rounds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/algorithms");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 11, "{names:?}");
    for name in &names {
        let out = tempfile::tempdir().unwrap();
        let cfg = dir.join(format!("{name}.toml"));
        let o = federate(&[
            "run",
            cfg.to_str().unwrap(),
            "--rounds",
            "2",
            "--set",
            "train.epochs=2",
            "--quiet",
            "--out",
            out.path().to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let rounds = read_rounds(out.path());
        assert_eq!(rounds.len(), 2, "{name}");
        for r in &rounds {
            assert!(r["aggregated"].as_bool().unwrap(), "{name}: {r}");
            assert!(r["accuracy"].as_f64().unwrap() > 0.0, "{name}: {r}");
        }
    }
    // Bad settings are one-line errors that name the key.
    for (set, key) in [
        ("strategy.rho=0", "strategy.rho"),
        ("strategy.mu=-1", "strategy.mu"),
        ("strategy.server_lr=0", "strategy.server_lr"),
        ("strategy.name=fedmagic", "strategy.name"),
        ("strategy.alpha=0.1", "strategy.alpha is a setting of feddyn"),
        ("strategy.alhpa=0.1", "strategy.alhpa is not a setting"),
    ] {
        let o = federate(&["run", dir.join("admm.toml").to_str().unwrap(), "--quiet", "--set", set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(key), "{set}: {err}");
    }
}

#[test]
fn quantity_skew_gives_parties_of_different_sizes() {
    let out = tempfile::tempdir().unwrap();
    let o = federate(&[
        "run",
        "--rounds",
        "1",
        "--set",
        "data.partition=quantity-skew",
        "--set",
        "data.parties=5",
        "--set",
        "data.quantity_sigma=1.5",
        "--set",
        "model.name=logreg",
        "--set",
        "train.epochs=1",
        "--set",
        "evaluation.baseline=false",
        "--quiet",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = &read_rounds(out.path())[0];
    let sizes: Vec<u64> = r["fit"].as_array().unwrap().iter().map(|f| f["num_examples"].as_u64().unwrap()).collect();
    assert_eq!(sizes.iter().sum::<u64>(), 60_000, "{sizes:?}");
    assert!(sizes.iter().max().unwrap() > &(2 * sizes.iter().min().unwrap()), "{sizes:?}");
    // Each party's test set follows its training set (data.test_partition = "like-train"):
    // all 10,000 test images dealt in proportion to the training sizes, within rounding.
    let tests: Vec<u64> =
        r["evaluate"].as_array().unwrap().iter().map(|e| e["num_examples"].as_u64().unwrap()).collect();
    assert_eq!(tests.iter().sum::<u64>(), 10_000, "{tests:?}");
    for (n, t) in sizes.iter().zip(&tests) {
        let want = *n as f64 / 6.0;
        assert!((*t as f64 - want).abs() <= 10.0, "train {n} → test {t}, expected about {want}");
    }
}

/// What a run's rounds.jsonl says about each round, timings left out.
fn outcomes(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let fit: Vec<String> = v["fit"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| format!("{} {} {}", f["id"], f["epsilon"], f["train_loss"]))
                .collect();
            format!("{} {} {} {:?} {}", v["accuracy"], v["loss"], v["strategy"], fit, v["failures"])
        })
        .collect()
}

/// Runs `cfg` (with `sets`) for 5 rounds straight, and for 3 rounds then (after a crash cut a
/// line of rounds.jsonl short) resumed to 5 from the checkpoint of round 2: the two runs
/// must agree on every round and on the final model's bytes. Returns the resumed run's
/// directory.
fn resumed_equals_uninterrupted(cfg: &Path, sets: &[&str], tmp: &Path) -> std::path::PathBuf {
    let (full, part) = (tmp.join("full"), tmp.join("part"));
    let run = |out: &Path, rounds: &str| {
        let mut args = vec!["run", cfg.to_str().unwrap(), "--rounds", rounds, "--set", "checkpoint_every=2", "--quiet"];
        args.extend(sets.iter().flat_map(|s| ["--set", s]));
        args.extend(["--out", out.to_str().unwrap()]);
        let o = federate(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&full, "5");
    run(&part, "3");
    let mut f = std::fs::OpenOptions::new().append(true).open(part.join("rounds.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"round\":4,\"accur").unwrap();
    let o = federate(&["run", "--out", part.to_str().unwrap(), "--resume", "--quiet", "--rounds", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(outcomes(&full), outcomes(&part), "{}", cfg.display());
    assert_eq!(accuracies(&part).len(), 5);
    let model = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(model(&full) == model(&part), "the resumed run's model differs ({})", cfg.display());
    part
}

#[test]
fn a_stopped_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/algorithms");
    // FedAdam: the server's moment vectors must come back from the checkpoint too.
    let cfg = dir.join("fedadam.toml");
    let tmp = tempfile::tempdir().unwrap();
    let part = resumed_equals_uninterrupted(&cfg, &[], tmp.path());
    let cfg = cfg.to_str().unwrap();
    let resume = |extra: &[&str]| {
        let mut args = vec!["run", "--out", part.to_str().unwrap(), "--resume", "--quiet"];
        args.extend_from_slice(extra);
        federate(&args)
    };

    // What cannot be resumed says why.
    let err = |o: Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let e = err(resume(&["--rounds", "4"]));
    assert!(e.contains("after round 4") && e.contains("--rounds"), "{e}");
    let e = err(resume(&["--rounds", "8", "--set", "train.lr=0.5"]));
    assert!(e.contains("train.lr"), "{e}");
    let sc = dir.join("scaffold.toml");
    let e = err(resume(&[sc.to_str().unwrap(), "--rounds", "8"]));
    assert!(e.contains("strategy.name"), "{e}");
    let none = tmp.path().join("none");
    let o = federate(&[
        "run",
        cfg,
        "--rounds",
        "1",
        "--set",
        "checkpoint_every=0",
        "--quiet",
        "--out",
        none.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let e = err(federate(&["run", "--out", none.to_str().unwrap(), "--resume", "--rounds", "3"]));
    assert!(e.contains("no checkpoint"), "{e}");
}

#[test]
fn algorithms_whose_parties_keep_state_resume_exactly_too() {
    // SCAFFOLD's c_k, ADMM's duals (adaptive ρ), FedDyn's g_k and DP-SGD's accountant live in
    // the parties: the checkpoint must hold them, or the resumed rounds would differ.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/algorithms");
    // Compressed updates with error feedback: each party's residual (what the codec has not
    // sent yet; parties sit out rounds, keeping theirs) must come back exactly too.
    let cases: [(&str, &[&str]); 6] = [
        ("scaffold.toml", &[]),
        ("admm.toml", &[]),
        ("feddyn.toml", &[]),
        ("fedavg.toml", &["privacy.mechanism=\"gaussian\"", "privacy.noise_multiplier=1.0", "train.epochs=2"]),
        ("fedavg.toml", &["compression.update=\"top-k\"", "compression.fraction=0.05"]),
        ("scaffold.toml", &["compression.update=\"q4\"", "compression.zstd=true"]),
    ];
    for (name, sets) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let part = resumed_equals_uninterrupted(&dir.join(name), sets, tmp.path());
        let ckpt = std::fs::read_to_string(part.join("checkpoint/checkpoint.json")).unwrap();
        assert!(ckpt.contains("\"parties\""), "{name}: the checkpoint holds no party state");
        if !sets.is_empty() && sets[0].starts_with("compression") {
            assert!(ckpt.contains("\"residual\": true"), "{name} {sets:?}: no residual in the checkpoint");
        }
    }
}

#[test]
fn a_run_never_overwrites_an_earlier_one() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let go = |extra: &[&str]| {
        let d = dir.to_str().unwrap();
        let mut args = vec!["run", "--rounds", "1", "--quiet", "--out", d, "--set", "model.name=logreg"];
        args.extend(["--set", "data.train_per_party=100", "--set", "data.test_per_party=50"]);
        args.extend(["--set", "evaluation.baseline=false"]);
        args.extend_from_slice(extra);
        federate(&args)
    };
    let o = go(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = std::fs::read(dir.join("rounds.jsonl")).unwrap();
    // Again into the same directory: refused, and nothing of the first run is touched.
    let o = go(&["--seed", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.join("rounds.jsonl")).unwrap(), first);
    // --force moves it aside whole and starts afresh.
    let o = go(&["--seed", "3", "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let aside: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("run.old-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(out.path().join(&aside[0]).join("rounds.jsonl")).unwrap(), first);
    assert!(out.path().join(&aside[0]).join("model.safetensors").exists());
    assert_ne!(std::fs::read(dir.join("rounds.jsonl")).unwrap(), first);
}

/// Writes an IDX image file of `n` examples of `h`×`w` bytes and its label file.
fn write_idx(dir: &Path, stem: &str, n: u32, h: u32, w: u32, classes: u8) {
    let mut images = vec![0u8, 0, 8, 3];
    for v in [n, h, w] {
        images.extend(v.to_be_bytes());
    }
    images.extend((0..n * h * w).map(|i| (i % 251) as u8));
    let mut labels = vec![0u8, 0, 8, 1];
    labels.extend(n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % classes as u32) as u8));
    std::fs::write(dir.join(format!("{stem}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{stem}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn a_party_whose_data_does_not_fit_the_model_exits_before_joining() {
    // 1×13 "tabular" rows where the model (MNIST's CNN) takes 28×28×1: refused at once with
    // the shape, before any connection (the server address is never dialled).
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 40, 1, 13, 2);
    write_idx(dir.path(), "t10k", 10, 1, 13, 2);
    let idx = dir.path().to_str().unwrap();
    let args = ["join", "--id", "party-1", "--server", "http://127.0.0.1:9", "--insecure", "--idx-dir", idx];
    let start = std::time::Instant::now();
    let o = federate(&[&args[..], &["--state-dir", idx]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("examples of 1×13×1 = 13 values, but the model takes 28×28×1 = 784"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "it must not wait for the server");
}

/// `party_threads = 1` on 2 threads trains two parties side by side; each party's result
/// depends on its own thread count only, so the model is the one a single thread gives, bit
/// for bit — with DP-SGD (each party's noise and ledger) and compression with error feedback
/// (each party's residual) too.
#[test]
fn parties_trained_side_by_side_give_the_model_of_one_after_another() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, threads: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["run", "--rounds", "2", "--quiet", "--threads", threads, "--out", out.to_str().unwrap()];
        for s in ["data.parties=5", "data.train_per_party=64", "data.test_per_party=20", "evaluation.baseline=false"]
            .iter()
            .chain(extra)
        {
            args.extend(["--set", s]);
        }
        let o = federate(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    for (case, extra) in [
        ("plain", &[][..]),
        ("dp", &["privacy.mechanism=\"gaussian\"", "privacy.noise_multiplier=1.0"][..]),
        ("top-k", &["compression.update=\"top-k\"", "compression.fraction=0.1"][..]),
    ] {
        let one = run(&format!("{case}-1"), "1", extra);
        let side_by_side = run(&format!("{case}-2"), "2", &[extra, &["party_threads=1"]].concat());
        assert!(one == side_by_side, "{case}: the models differ");
    }
}

#[test]
fn bench_compression_and_bench_parties_print_their_tables() {
    let sets =
        ["--set", "model.name=\"logreg\"", "--set", "data.train_per_party=100", "--set", "data.test_per_party=50"];
    let o = federate(&[&["bench", "compression", "--rounds", "1"], &sets[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    // One row per codec; 32-bit floats are the reference (×1.0), 4-bit updates ~7×, a 4-bit
    // broadcast ~7× down after round 1's initial model (one round here: ~4× with it).
    let row = |name: &str| s.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {s}")).to_string();
    let column = |name: &str, back: usize| row(name).split_whitespace().nth_back(back).unwrap().parse::<f64>().unwrap();
    let (up_ratio, down_ratio) = (|name: &str| column(name, 6), |name: &str| column(name, 4));
    assert_eq!((up_ratio("none (32-bit floats)"), down_ratio("none (32-bit floats)")), (1.0, 1.0), "{s}");
    assert!(up_ratio("q4  ") > 6.0 && up_ratio("top-1% + error feedback") > 40.0, "{s}");
    assert_eq!(down_ratio("q4  "), 1.0, "{s}");
    assert!(down_ratio("q4 / q4 broadcast") > 4.0 && down_ratio("q4 / q8 broadcast") > 2.0, "{s}");
    let o = federate(&[
        "bench",
        "parties",
        "--parties",
        "60",
        "--per-round",
        "6",
        "--rounds",
        "2",
        "--set",
        "model.name=\"logreg\"",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("parties=60 per_round=6 rounds=2 model=logreg") && s.contains("peak_rss_mb="), "{s}");
    let o = federate(&["bench", "parties", "--parties", "5", "--per-round", "6"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--per-round"));
}
