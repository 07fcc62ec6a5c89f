//! `federate serve`: the server of a deployment, with an atomic checkpoint after every
//! round and `--resume`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use federate_core::{ClientProxy, Event, Learner, NnLearner, Parameters, Server, ServerConfig, seed};
use federate_net::codec::Limits;
use federate_net::server::{Hub, HubConfig, RemoteParty};
use tracing::{info, warn};

use crate::assemble::{self, spec_for};
use crate::config::Config;
use crate::report::{self, RunDir};

use crate::checkpoint::read_checkpoint;

pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// How `federate serve` authenticates parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Mutual TLS from `[server.tls]`.
    Tls,
    /// Plaintext on a loopback address (`--insecure`).
    InsecureLoopback,
    /// Plaintext on any address (`--insecure --insecure-non-loopback`).
    InsecureAnywhere,
}

impl Security {
    /// From the command-line flags.
    pub fn from_flags(insecure: bool, non_loopback: bool) -> Self {
        match (insecure, non_loopback) {
            (false, _) => Security::Tls,
            (true, false) => Security::InsecureLoopback,
            (true, true) => Security::InsecureAnywhere,
        }
    }
}

/// The TLS files `security` allows on `listen`, or the error that refuses the combination.
fn tls_for(cfg: &Config, listen: SocketAddr, security: Security) -> Result<Option<federate_net::tls::TlsFiles>> {
    Ok(match (&cfg.server.tls, security) {
        (Some(t), Security::Tls) => Some(t.clone()),
        (_, Security::InsecureLoopback) if !listen.ip().is_loopback() => bail!(
            "--insecure listens in plaintext and lets anyone take any party's seat, so it is refused on {listen}, \
             which is not a loopback address: use mutual TLS (`federate keys`), listen on 127.0.0.1, or add \
             --insecure-non-loopback if this network is truly private"
        ),
        (_, Security::InsecureLoopback | Security::InsecureAnywhere) => {
            warn!("--insecure: PLAINTEXT, no authentication of parties; never use this across a real network");
            None
        }
        (None, Security::Tls) => bail!(
            "[server.tls] (ca, cert, key) is required; create them with `federate keys`, or pass --insecure for a local test"
        ),
    })
}

/// The hub's settings from `[server]`.
fn hub_config(
    cfg: &Config,
    listen: SocketAddr,
    tls: Option<federate_net::tls::TlsFiles>,
    parties: &[String],
    model_len: usize,
) -> HubConfig {
    let sv = &cfg.server;
    HubConfig {
        listen,
        tls,
        allowed: parties.to_vec(),
        model_len,
        heartbeat: secs(sv.heartbeat_s),
        party_timeout: secs(sv.party_timeout_s),
        task_timeout: secs(sv.round_timeout_s),
        rejoin_wait: secs(sv.rejoin_wait_s),
        limits: Limits { max_values: sv.max_values, max_chunk_bytes: sv.chunk_bytes.max(1024) },
        max_message_bytes: sv.max_message_bytes,
        chunk_bytes: sv.chunk_bytes,
        zstd: sv.zstd,
        max_connections: sv.max_connections.unwrap_or(HubConfig::default_limits(parties.len()).0),
        max_handshakes: sv.max_handshakes,
        max_streams_per_connection: sv.max_streams_per_connection,
        join_timeout: secs(sv.join_timeout_s),
        deny_file: sv.deny_file.clone(),
        federation: crate::config::federation_keys(cfg, true),
    }
}

/// Where a served run starts: rounds done, the model, their records, the strategy's state.
type Start = (u32, Vec<f32>, Vec<federate_core::RoundRecord>, Option<(String, Option<federate_core::StrategyState>)>);

/// The checkpoint in `ckpt_dir` when resuming, else round 0 and the seed's initial model.
fn start(cfg: &Config, out: &Path, ckpt_dir: &Path, resume: bool, learner: &NnLearner) -> Result<Start> {
    Ok(if resume {
        let r = read_checkpoint(ckpt_dir, cfg.seed, learner.layout().len())?;
        info!("resuming after round {} from {}", r.round, ckpt_dir.display());
        let records = report::read_rounds(&out.join("rounds.jsonl"), r.round)?;
        (r.round, r.values, records, Some((r.strategy, r.strategy_state)))
    } else {
        (0, learner.init(seed::derive(cfg.seed, seed::Stream::Init, &[])), Vec::new(), None)
    })
}

/// `federate serve`.
pub fn serve(cfg: &Config, out: &Path, resume: bool, security: Security) -> Result<()> {
    let sv = &cfg.server;
    let listen: SocketAddr = sv
        .listen
        .parse()
        .with_context(|| format!("server.listen = '{}' is not an address like 0.0.0.0:7000", sv.listen))?;
    let tls = tls_for(cfg, listen, security)?;
    let insecure_note = if tls.is_none() { "  INSECURE (plaintext, parties not authenticated)" } else { "" };
    let parties = sv.party_ids(cfg.data.parties);
    for p in &parties {
        if !federate_net::tls::valid_identity(p) {
            bail!("server.parties: '{p}' is not a valid identity (letters, digits, '-', '.')");
        }
    }
    let spec = spec_for(cfg)?;
    let learner = NnLearner::new(spec, 1, 1)?;
    let layout = learner.layout();
    let ckpt_dir = sv.checkpoint_dir.clone().unwrap_or_else(|| out.join("checkpoint"));
    let (completed, values, mut records, restored_strategy) = start(cfg, out, &ckpt_dir, resume, &learner)?;
    let global = Parameters::new(values, layout.clone()).context("initial parameters")?;
    let mut dir = RunDir::open(out, cfg, &records)?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hub_cfg = hub_config(cfg, listen, tls, &parties, layout.len());
    let (hub, addr) = rt.block_on(Hub::start(hub_cfg))?;
    println!("federate serve: listening on {addr}; parties {}; run directory {}", parties.join(", "), out.display());
    let needed = wait_for_parties(cfg, &rt, &hub, parties.len())?;

    let clients: Vec<Box<dyn ClientProxy>> =
        parties.iter().map(|p| Box::new(RemoteParty::new(p.clone(), hub.clone(), rt.handle().clone())) as _).collect();
    // The server's own noise (central client-level DP) is secure unless the config says seeded.
    let noise = cfg.privacy.noise.unwrap_or(federate_core::NoiseSource::Secure);
    let mut server = assemble::server(cfg, assemble::build_strategy(cfg, noise)?, clients, sv.admission())?;
    if let Some((name, state)) = &restored_strategy {
        server
            .restore_strategy(name, state.as_ref())
            .with_context(|| format!("--resume from {}", ckpt_dir.display()))?;
    }
    let preprocessing = match round_zero(cfg, &mut server, needed, out) {
        Ok(p) => p,
        Err(e) => {
            rt.block_on(hub.shutdown("round 0 failed: the federation cannot start", Duration::from_secs(2)));
            return Err(e);
        }
    };
    let mut log = crate::round_log::RoundLog {
        ckpt_dir: ckpt_dir.clone(),
        every: 1,
        seed: cfg.seed,
        rounds: cfg.rounds,
        note: insecure_note,
        metric: cfg.metric()?.name,
        error: None,
    };
    let mut observer = |e: Event<'_>| {
        if let Event::RoundFinished { record, global, strategy, parties } = e {
            records.push(record.clone());
            println!("{}", log.finished(&mut dir, record, global, strategy, parties));
        }
    };
    // Who trains each round comes from the OS, not the seed: a party's participation must
    // not be predictable by whoever knows the config (client-level DP's amplification).
    let cfg_server =
        ServerConfig { sampling: federate_core::PartySampling::Os, ..ServerConfig::new(cfg.rounds, cfg.seed) };
    let result = server.resume(global, completed, &cfg_server, &mut observer);
    rt.block_on(hub.shutdown("the federation is complete", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    let (global, _) = result?;
    if let Some(e) = log.error {
        return Err(e.context("writing the round record or checkpoint"));
    }
    finish(cfg, out, &global, &records, preprocessing.as_ref())
}

/// Waits for the parties to connect; the number a round needs, or an error (the hub shut)
/// when fewer came within `server.start_wait_s`.
fn wait_for_parties(cfg: &Config, rt: &tokio::runtime::Runtime, hub: &Hub, parties: usize) -> Result<usize> {
    let sv = &cfg.server;
    let have = rt.block_on(hub.wait_for(parties, secs(sv.start_wait_s)));
    let needed = cfg.strategy.min_fit_clients.max(1);
    if have < needed {
        rt.block_on(hub.shutdown("the federation could not start: too few parties", Duration::from_secs(2)));
        bail!(
            "only {have} of {parties} parties connected within server.start_wait_s = {} s, and \
             strategy.min_fit_clients = {needed}: no round was run and no model written (start the parties, check \
             their --server address and certificates, or raise start_wait_s)",
            sv.start_wait_s
        );
    }
    info!("{have} of {parties} parties connected; starting");
    Ok(needed)
}

/// Round 0 of a table federation: the parties' statistics added up (every time the server
/// starts, resumed or not: the parties' rows do not change, so neither does the sum), recorded
/// in `preprocessing.json`. Nothing for images.
fn round_zero(
    cfg: &Config,
    server: &mut Server,
    needed: usize,
    out: &Path,
) -> Result<Option<federate_data::table::Preprocessing>> {
    if !cfg.data.is_table() {
        return Ok(None);
    }
    let Some(m) = server.round_zero(needed)? else {
        bail!(
            "round 0: no party holds a table, and data.dataset = \"{}\" is one: start the parties with this config",
            cfg.data.dataset
        );
    };
    info!("round 0: {} training rows' statistics added up", m.count);
    let pre = assemble::table_layout(cfg).map(|l| l.with((*m).clone()));
    if let Some(p) = &pre {
        report::atomic_write(&out.join("preprocessing.json"), serde_json::to_string_pretty(p)?.as_bytes())?;
    }
    Ok(pre)
}

/// Writes the model of a served run that produced one, or says why there is none.
fn finish(
    cfg: &Config,
    out: &Path,
    global: &Parameters,
    records: &[federate_core::RoundRecord],
    pre: Option<&federate_data::table::Preprocessing>,
) -> Result<()> {
    if !records.iter().any(|r| r.aggregated) {
        let last = records.last().and_then(|r| r.error.clone()).unwrap_or_default();
        bail!(
            "no round produced a model ({} rounds, the last: {last}); no model written. The records are in {}",
            records.len(),
            out.join("rounds.jsonl").display()
        );
    }
    report::write_safetensors(&out.join("model.safetensors"), global, cfg, pre)?;
    println!(
        "final global {} after {} rounds; model {}",
        report::final_measure(records.last(), &cfg.metric()?),
        records.len(),
        out.join("model.safetensors").display()
    );
    Ok(())
}
