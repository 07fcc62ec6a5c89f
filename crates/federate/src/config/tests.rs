//! Tests of the config: defaults, `--set`, validation, random configs.

use super::*;

#[test]
fn timers_are_bounded_and_the_allow_list_has_no_duplicates() {
    let e = load(None, &["server.heartbeat_s=1e30".into()]).unwrap_err().to_string();
    assert!(e.contains("server.heartbeat_s") && e.contains("a week"), "{e}");
    let e = load(None, &["server.round_timeout_s=nan".into()]).unwrap_err().to_string();
    assert!(e.contains("server.round_timeout_s"), "{e}");
    let e = load(None, &[r#"server.parties=["party-1","party-2","party-1"]"#.into()]).unwrap_err().to_string();
    assert!(e.contains("'party-1' twice"), "{e}");
    assert!(load(None, &["server.heartbeat_s=604800".into()]).is_ok());
}

#[test]
fn defaults_are_the_worked_example() {
    let c = load(None, &[]).unwrap();
    assert_eq!((c.data.parties, c.data.train_per_party(), c.data.test_per_party()), (3, 2000, 500));
    assert_eq!(c.model.name, "cnn");
}

#[test]
fn sets_override_and_unknown_keys_fail() {
    let c = load(None, &["train.lr=0.01".into(), "data.dataset=fashion-mnist".into(), "rounds=3".into()]).unwrap();
    assert_eq!(c.train.lr, 0.01);
    assert_eq!(c.data.dataset, "fashion-mnist");
    assert_eq!(c.rounds, 3);
    let e = load(None, &["train.lrr=0.01".into()]).unwrap_err().to_string();
    assert!(e.contains("lrr"), "{e}");
    let e = load(None, &["train.lr=-1".into()]).unwrap_err().to_string();
    assert!(e.contains("learning rate"), "{e}");
    let e = load(None, &["data.parties=0".into()]).unwrap_err().to_string();
    assert!(e.contains("parties = 0"), "{e}");
    assert!(load(None, &["nokey".into()]).is_err());
}

#[test]
fn resolved_config_round_trips() {
    let c =
        load(None, &["model.name=custom".into(), r#"model.layers=[{type="flatten"},{type="linear",out=10}]"#.into()])
            .unwrap();
    let text = toml::to_string(&c).unwrap();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, c);
}

/// Every dotted key of the default config (the schema a user can `--set`).
fn all_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.push(key.clone());
                walk(&key, v, out);
            }
        }
    }
    let mut keys = Vec::new();
    walk("", &toml::Value::try_from(Config::default()).unwrap(), &mut keys);
    keys.extend(
        ["model.layers", "server.max_connections", "server.declared.party-1", "privacy.noise_multiplier"]
            .map(String::from),
    );
    keys
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Random values under real keys (extremes, wrong types, hostile layer lists): config
    /// validation and the model check that follows answer Ok or a one-line error, never a
    /// panic.
    #[test]
    fn random_configs_never_panic(picks in proptest::collection::vec((0usize..1000, 0usize..1000), 1..6)) {
        const VALUES: &[&str] = &[
            "0", "-1", "1", "2", "3", "7", "0.5", "1e-300", "1e30", "-1e30", "nan", "inf", "-inf",
            "18446744073709551615", "9223372036854775807", "4294967296", "1000000000000", "\"\"", "\"x\"", "\"declared\"",
            "\"gaussian\"", "\"laplace\"", "\"custom\"", "\"cnn\"", "\"fedsgd\"", "\"scaffold\"", "true",
            "false", "[]", "{}", "[\"a\", \"a\"]", "{ train = 0 }", "{ train = 18446744073709551615 }",
            r#"[{type="flatten"},{type="linear",out=100000000000}]"#,
            r#"[{type="conv2d",out_channels=1073741824,kernel=5}]"#,
            r#"[{type="conv2d",out_channels=4,kernel=3,padding=4611686018427387904}]"#,
            r#"[{type="max_pool2d",kernel=0}]"#,
        ];
        let keys = all_keys();
        let sets: Vec<String> =
            picks.iter().map(|(k, v)| format!("{}={}", keys[k % keys.len()], VALUES[v % VALUES.len()])).collect();
        let outcome = std::panic::catch_unwind(|| {
            if let Ok(cfg) = load(None, &sets) {
                let _ = crate::assemble::spec_for(&cfg);
            }
        });
        proptest::prop_assert!(outcome.is_ok(), "panicked on {:?}", sets);
    }
}

#[test]
fn privacy_modes_use_core_enums_with_none_for_off() {
    let c = load(None, &[]).unwrap();
    assert_eq!((c.privacy.mechanism, c.client_privacy.mode), (None, None));
    let c = load(None, &["privacy.mechanism=\"laplace\"".into(), "privacy.epsilon_per_step=0.5".into()]).unwrap();
    assert_eq!(c.privacy.mechanism, Some(federate_core::Mechanism::Laplace));
    let c = load(None, &["client_privacy.mode=\"central\"".into()]).unwrap();
    assert_eq!(c.client_privacy.mode, Some(federate_core::ClientDpMode::Central));
    let e = load(None, &["privacy.mechanism=\"gausian\"".into()]).unwrap_err().to_string();
    assert!(e.contains("gausian") && e.contains("gaussian") && e.contains("none"), "{e}");
    let e = load(None, &["privacy.noise=\"loud\"".into()]).unwrap_err().to_string();
    assert!(e.contains("seeded") && e.contains("secure"), "{e}");
    // "none" is written back as "none", so a run directory's config.toml reads back the same.
    let text = toml::to_string(&load(None, &[]).unwrap()).unwrap();
    assert!(text.contains("mechanism = \"none\"") && text.contains("mode = \"none\""), "{text}");
}

#[test]
fn algorithm_settings_come_from_the_module_that_declares_them() {
    let c = load(None, &["strategy.name=\"feddyn\"".into(), "strategy.alpha=0.1".into()]).unwrap();
    assert_eq!(c.strategy.algorithm_settings().unwrap()["alpha"], 0.1);
    let e = load(None, &["strategy.name=\"feddyn\"".into(), "strategy.alpha=0".into()]).unwrap_err().to_string();
    assert!(e.contains("strategy.alpha = 0 must be > 0"), "{e}");
    let e = load(None, &["strategy.alpha=0.1".into()]).unwrap_err().to_string();
    assert!(e.contains("strategy.alpha is a setting of feddyn"), "{e}");
    let e = load(None, &["strategy.alhpa=0.1".into()]).unwrap_err().to_string();
    assert!(e.contains("strategy.alhpa is not a setting"), "{e}");
    let e = load(None, &["strategy.name=\"feddyn\"".into(), "strategy.alpha=\"big\"".into()]).unwrap_err().to_string();
    assert!(e.contains("strategy.alpha") && e.contains("number"), "{e}");
    let e = load(None, &["strategy.mu=-1".into()]).unwrap_err().to_string();
    assert!(e.contains("strategy.mu = -1 must be ≥ 0"), "{e}");
}

#[test]
fn a_data_key_the_partition_ignores_is_an_error_naming_it() {
    // 600 asked of an IID split that deals out all 60,000: refused, not silently ignored.
    let e = load(None, &["data.partition=\"iid\"".into(), "data.train_per_party=600".into()]).unwrap_err().to_string();
    assert!(e.contains("data.train_per_party is read only by worked-example") && e.contains("\"iid\""), "{e}");
    let e = load(None, &["data.alpha=0.1".into()]).unwrap_err().to_string();
    assert!(e.contains("data.alpha is read only by dirichlet"), "{e}");
    let e = load(None, &["data.synthetic_beta=0.5".into()]).unwrap_err().to_string();
    assert!(e.contains("data.synthetic_beta") && e.contains("synthetic"), "{e}");
    // Read by the partition chosen: fine, and the defaults apply when unset.
    let c = load(None, &["data.partition=\"dirichlet\"".into(), "data.alpha=0.1".into()]).unwrap();
    assert_eq!((c.data.alpha(), c.data.shards_per_party()), (0.1, 2));
    let c = load(None, &["data.partition=\"shards\"".into(), "data.shards_per_party=3".into()]).unwrap();
    assert_eq!(c.data.shards_per_party(), 3);
    let e = load(None, &["data.test_partition=\"iid\"".into()]).unwrap_err().to_string();
    assert!(e.contains("data.test_partition is read only by dirichlet, shards and quantity-skew"), "{e}");
    assert!(load(None, &["data.partition=\"shards\"".into(), "data.test_partition=\"iid\"".into()]).is_ok());
}
