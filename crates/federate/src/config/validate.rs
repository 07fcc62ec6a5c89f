//! Range checks that the types alone do not express, across sections.

use anyhow::{Result, bail};

use super::*;

/// Most parties a config may name (each costs the server a connection and a record).
const MAX_PARTIES: usize = 1_000_000;

/// Most worker threads.
const MAX_THREADS: usize = 1024;

/// Most local epochs per round.
const MAX_EPOCHS: usize = 100_000;

/// Range checks that the types alone do not express.
pub fn validate(c: &Config) -> Result<()> {
    check_data(c)?;
    check_train(c)?;
    check_strategy(c)?;
    check_privacy(c)?;
    check_server(c)?;
    check_model(c)?;
    c.compression.validate()?;
    c.loss()?;
    c.metric()?;
    Ok(())
}

/// Checks `rounds`, `threads` and `[data]`.
fn check_data(c: &Config) -> Result<()> {
    let d = &c.data;
    if c.rounds == 0 {
        bail!("rounds = 0: set rounds to at least 1");
    }
    if d.parties == 0 {
        bail!("data.parties = 0: a federation needs at least 1 party");
    }
    if d.parties > MAX_PARTIES {
        bail!(
            "data.parties = {} is more than {MAX_PARTIES}: federate is tested up to 10,000 connected parties",
            d.parties
        );
    }
    if c.party_threads > MAX_THREADS {
        bail!(
            "party_threads = {} is more than {MAX_THREADS}; 0 trains one party at a time on every thread",
            c.party_threads
        );
    }
    if c.threads > MAX_THREADS {
        bail!("threads = {} is more than {MAX_THREADS}; 0 uses one per core", c.threads);
    }
    if d.dataset == "images" && d.images.is_none() {
        bail!("data.dataset = \"images\" needs [data.images] with shape = [height, width, channels]");
    }
    let known = d.dataset == "synthetic" || d.dataset == "images" || d.is_table();
    if !known && federate_data::dataset_info(&d.dataset).is_err() {
        bail!(
            "data.dataset = '{}' is unknown: use one of {}, synthetic, {}, table (a CSV file of your own) or images \
             (a folder of your own)",
            d.dataset,
            federate_data::DATASETS.join(", "),
            federate_data::tables::TABLES.join(", ")
        );
    }
    if d.is_table() {
        check_table(c)?;
    } else if d.partition == PartitionKind::Natural && (d.dataset != "synthetic" || d.parties != d.synthetic_devices())
    {
        bail!(
            "data.partition = \"natural\" gives one party per device of dataset = \"synthetic\": set data.parties = \
             data.synthetic_devices ({})",
            d.synthetic_devices()
        );
    }
    if let Some((key, reader)) = d.ignored_key() {
        bail!(
            "data.{key} is read only by {reader}, and this config has data.partition = \"{}\" on dataset = \"{}\": \
             it would be ignored. Remove it, or choose what reads it",
            toml::Value::try_from(d.partition).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            d.dataset
        );
    }
    if !(d.synthetic_alpha() >= 0.0 && d.synthetic_beta() >= 0.0 && d.quantity_sigma() >= 0.0) {
        bail!("data.synthetic_alpha, data.synthetic_beta and data.quantity_sigma must be ≥ 0");
    }
    if d.partition == PartitionKind::WorkedExample && (d.train_per_party() == 0 || d.test_per_party() == 0) {
        bail!("data.train_per_party and data.test_per_party must be at least 1");
    }
    if d.partition == PartitionKind::Dirichlet && !(d.alpha() > 0.0 && d.alpha().is_finite()) {
        bail!("data.alpha = {} must be a positive number", d.alpha());
    }
    Ok(())
}

/// Checks a table's `[data]`: where its rows come from, its schema and its split.
fn check_table(c: &Config) -> Result<()> {
    let d = &c.data;
    if d.dataset == "table" {
        // Without either, only a server (which holds no rows) or a party joining with
        // `--data FILE` can use the config; `federate run` says so when it reads the rows.
        if d.path.is_some() && !d.sources.is_empty() {
            bail!("data.path and [[data.sources]] both give the rows: keep one");
        }
        if d.schema.is_none() {
            bail!("data.dataset = \"table\" needs [data.schema]: at least task and label");
        }
    }
    if !d.sources.is_empty() && d.sources.len() != d.parties {
        bail!(
            "data.parties = {} but {} [[data.sources]] are listed: set data.parties = {}",
            d.parties,
            d.sources.len(),
            d.sources.len()
        );
    }
    if let Some(schema) = d.table_schema() {
        schema.check().map_err(anyhow::Error::msg)?;
    }
    if !(d.test_fraction() > 0.0 && d.test_fraction() < 1.0) {
        bail!("data.test_fraction = {} must be in (0, 1)", d.test_fraction());
    }
    if d.sources.is_empty() {
        match d.partition {
            PartitionKind::WorkedExample => bail!(
                "data.partition = \"worked-example\" draws 2,000 images per party from MNIST; a table is split by \
                 iid, dirichlet, shards, quantity-skew, or natural (with data.partition_column)"
            ),
            PartitionKind::Natural if d.partition_column.is_none() => {
                bail!(
                    "data.partition = \"natural\" on a table needs data.partition_column (the column naming a row's party)"
                )
            }
            _ => {}
        }
    }
    let task = d.table_schema().map(|s| s.task);
    let label_skew = matches!(d.partition, PartitionKind::Dirichlet | PartitionKind::Shards);
    if task == Some(federate_data::table::Task::Regression) && label_skew && d.sources.is_empty() {
        bail!(
            "data.partition = dirichlet and shards split by class; a regression table has none: use iid, quantity-skew or natural"
        );
    }
    Ok(())
}

/// Checks `[train]`.
fn check_train(c: &Config) -> Result<()> {
    let t = &c.train;
    if t.epochs == 0 || t.epochs > MAX_EPOCHS {
        bail!("train.epochs = {} must be in 1..={MAX_EPOCHS} local epochs", t.epochs);
    }
    if t.batch_size == 0 {
        bail!("train.batch_size = 0: set at least 1");
    }
    t.optimizer_spec().validate().map_err(|e| anyhow::anyhow!("train: {e}"))?;
    Ok(())
}

/// Checks `[strategy]` and its pairings with `[attack]`, `[client_privacy]` and the optimiser.
fn check_strategy(c: &Config) -> Result<()> {
    let d = &c.data;
    let s = &c.strategy;
    // Every algorithm setting, checked against what the module that reads it declares.
    federate_core::algorithms::check_all(&s.algorithm_settings()?)?;
    if !(0.0..=1.0).contains(&s.stragglers) {
        bail!("strategy.stragglers = {} must be in [0, 1]", s.stragglers);
    }
    if !(0.0..0.5).contains(&s.trim) {
        bail!("strategy.trim = {} must be in [0, 0.5) (the fraction trimmed from each end)", s.trim);
    }
    if s.krum_select == 0 {
        bail!("strategy.krum_select = 0: Krum keeps at least 1 model");
    }
    let aggregator = s.aggregator()?;
    if aggregator != federate_core::Aggregator::Mean && c.client_privacy.mode.is_some() {
        bail!(
            "strategy.aggregator = \"{}\" does not apply to client-level DP, which sums clipped updates its own \
             way: set strategy.aggregator = \"mean\"",
            s.aggregator,
        );
    }
    let a = &c.attack;
    if a.parties > d.parties {
        bail!("attack.parties = {} is more than data.parties = {}", a.parties, d.parties);
    }
    if !(a.scale >= 0.0 && a.scale.is_finite()) {
        bail!("attack.scale = {} must be a finite number ≥ 0", a.scale);
    }
    if c.client_privacy.mode.is_some() && s.name != "fedavg" {
        bail!("[client_privacy] wraps fedavg only: set strategy.name = \"fedavg\" or client_privacy.mode = \"none\"");
    }
    if !(s.fraction_fit > 0.0 && s.fraction_fit <= 1.0) {
        bail!("strategy.fraction_fit = {} must be in (0, 1]", s.fraction_fit);
    }
    if !(0.0..=1.0).contains(&s.fraction_evaluate) {
        bail!("strategy.fraction_evaluate = {} must be in [0, 1]", s.fraction_evaluate);
    }
    // Every pairing the algorithm itself refuses (a robust aggregator it cannot use, an
    // optimiser it cannot normalise), before a run directory is written.
    c.strategy.algorithm()?.build(c.fedavg_base()?, &s.algorithm_settings()?)?;
    Ok(())
}

/// Checks `[privacy]`, `[client_privacy]` and `[evaluation]`.
fn check_privacy(c: &Config) -> Result<()> {
    let d = &c.data;
    let s = &c.strategy;
    if let Some(dp) = c.privacy.dp_sgd() {
        dp.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if s.name == "fedsgd" && s.full_batch && dp.sampling_rate.is_some() {
            bail!(
                "privacy.sampling_rate does not apply with strategy.full_batch = true (FedSGD's full-batch gradient \
                 uses every example: q = 1); remove privacy.sampling_rate or set strategy.full_batch = false"
            );
        }
    }
    if let Some(dp) = c.client_privacy.client_dp_for(s.fraction_fit * d.parties as f64) {
        dp.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(t) = c.evaluation.target_accuracy
        && !(t > 0.0 && t <= 1.0)
    {
        bail!("evaluation.target_accuracy = {t} must be a fraction in (0, 1], e.g. 0.99");
    }
    Ok(())
}

/// Checks `[server]`: timers, the allow-list, admission and the limits on peers.
fn check_server(c: &Config) -> Result<()> {
    let sv = &c.server;
    for (name, v) in [
        ("round_timeout_s", sv.round_timeout_s),
        ("rejoin_wait_s", sv.rejoin_wait_s),
        ("start_wait_s", sv.start_wait_s),
        ("heartbeat_s", sv.heartbeat_s),
        ("party_timeout_s", sv.party_timeout_s),
        ("join_timeout_s", sv.join_timeout_s),
    ] {
        // A week at most: beyond that a timer is a typo, and 1e30 s is no Duration at all.
        if !(v > 0.0 && v <= MAX_SECONDS) {
            bail!("server.{name} = {v} must be a positive number of seconds, at most {MAX_SECONDS} (a week)");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &sv.parties {
        if !seen.insert(p) {
            bail!("server.parties lists '{p}' twice: each party may be allowed once; remove the duplicate");
        }
    }
    sv.admission().validate(&sv.party_ids(c.data.parties)).map_err(anyhow::Error::msg)?;
    let parties = sv.party_ids(c.data.parties).len();
    if sv.max_connections.is_some_and(|m| m < parties || m > 1_000_000) {
        bail!(
            "server.max_connections = {} must be at least the number of parties ({parties}) and at most 1000000",
            sv.max_connections.unwrap_or(0)
        );
    }
    if !(1..=100_000).contains(&sv.max_handshakes) {
        bail!("server.max_handshakes = {} must be in 1..=100000", sv.max_handshakes);
    }
    if !(1..=1000).contains(&sv.max_streams_per_connection) {
        bail!("server.max_streams_per_connection = {} must be in 1..=1000", sv.max_streams_per_connection);
    }
    if sv.chunk_bytes < 4 || sv.chunk_bytes + 1024 > sv.max_message_bytes {
        bail!("server.chunk_bytes must be at least 4 and 1 KiB below server.max_message_bytes");
    }
    Ok(())
}

/// Checks `[model]`.
fn check_model(c: &Config) -> Result<()> {
    match c.model.name.as_str() {
        "custom" if c.model.layers.is_none() => {
            bail!("model.name = \"custom\" needs model.layers = [ ... ]")
        }
        "custom" => {}
        n if federate_nn::BUILTIN_MODELS.contains(&n) => {
            if c.model.layers.is_some() {
                bail!("model.layers is only read when model.name = \"custom\"; remove it or set name = \"custom\"");
            }
        }
        n => bail!("model.name = '{n}' is unknown: use one of {}, or custom", federate_nn::BUILTIN_MODELS.join(", ")),
    }
    Ok(())
}

/// The longest timer a config may set, in seconds (a week).
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;
