//! Deployment: `federate keys` (certificates), `federate serve` (the server, with atomic
//! checkpoints after every round and `--resume`) and `federate join` (a party). The same
//! config file drives `run`, `serve` and `join`, so a deployment reproduces a simulation bit
//! for bit (same seed, same thread count per party).
//!
//! Past the ~600-line guideline: keys, the checkpoint format, the party store, `serve` and
//! `join` live here together until the redesign issue splits them into `checkpoint.rs`,
//! `party_store.rs` and one module per command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use federate_core::{
    AdmmState, Client, ClientError, ClientProxy, Event, FitReply, FitTask, Learner, LocalClient, NnLearner, Parameters,
    PartyState, Server, ServerConfig, seed,
};
use federate_net::codec::Limits;
use federate_net::party::{PartyOptions, run_party};
use federate_net::server::{Hub, HubConfig, RemoteParty};
use federate_net::tls::TlsFiles;
use federate_nn::{ModelSpec, Shape};
use federate_privacy::Ledger;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Config;
use crate::report::{self, RunDir, atomic_write};
use crate::sim;

/// Input shape and classes of a named dataset, known without loading it (the server holds
/// no data).
pub fn dataset_shape(name: &str) -> Result<(Shape, usize)> {
    match name {
        "mnist" | "fashion-mnist" => Ok((Shape::image(28, 28, 1), 10)),
        "synthetic" => Ok((Shape::flat(60), 10)),
        other => bail!("data.dataset = '{other}' is unknown: use one of {}", federate_data::DATASETS.join(", ")),
    }
}

pub(crate) fn spec_for(cfg: &Config) -> Result<ModelSpec> {
    let (input, classes) = dataset_shape(&cfg.data.dataset)?;
    sim::spec_for_shape(cfg, input, classes)
}

/// What `federate keys` does.
pub enum KeysMode {
    /// A new CA, server certificate and party certificates.
    New,
    /// More party certificates from the CA already there.
    Add,
    /// On a party: its key and a certificate request.
    Request,
    /// On the CA: sign a party's request.
    Sign(PathBuf),
}

/// `federate keys`: a CA, a server certificate and one certificate per party, valid `days`
/// days (the CA ten times as long); or more parties from an existing CA; or a party's own key
/// and certificate request, and the CA's signature on it.
pub fn keys(out: &Path, parties: &[String], server_names: &[String], how: KeysMode, days: u32) -> Result<()> {
    let lifetime = federate_net::tls::Lifetime { leaf_days: days, ca_days: days.saturating_mul(10) };
    let one = || match parties {
        [id] => Ok(id.as_str()),
        _ => Err(anyhow::anyhow!("--csr and --sign take exactly one identity in --parties, got {}", parties.len())),
    };
    match how {
        KeysMode::New => {}
        KeysMode::Add => {
            federate_net::tls::add(out, parties, lifetime)?;
            println!(
                "signed {} with the CA in {}: wrote {}/parties/<id>.pem and .key (valid {days} days)",
                parties.join(", "),
                out.display(),
                out.display()
            );
            return Ok(());
        }
        KeysMode::Request => {
            let id = one()?;
            let csr = federate_net::tls::request(out, id)?;
            println!(
                "wrote the private key {}/parties/{id}.key (keep it here) and the request {}: send the request to \
                 the CA's operator (`federate keys --sign {id}.csr --parties {id}`), then put the returned \
                 {id}.pem in {}/parties/ and the federation's ca.pem in {}",
                out.display(),
                csr.display(),
                out.display(),
                out.display()
            );
            return Ok(());
        }
        KeysMode::Sign(csr) => {
            let id = one()?;
            let cert = federate_net::tls::sign(out, &csr, id, lifetime)?;
            println!(
                "signed the request of '{id}': wrote {} (valid {days} days); send it and {}/ca.pem to the party",
                cert.display(),
                out.display()
            );
            return Ok(());
        }
    }
    federate_net::tls::generate(out, server_names, parties, lifetime)?;
    println!(
        "wrote {0}/ca.pem, {0}/server.pem and .key, and {0}/parties/<id>.pem and .key for {1} (valid {days} days; \
         private keys readable by you only)",
        out.display(),
        parties.join(", ")
    );
    println!("keep ca.key offline; give each party ca.pem plus its own .pem and .key");
    Ok(())
}

/// What a checkpoint holds besides the parameters.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    format: u32,
    round: u32,
    seed: u64,
    strategy: String,
    /// The strategy's scalar state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy_state: Option<String>,
    /// Lengths of the strategy's state vectors, stored one after another in `strategy_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    strategy_vectors: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy_file: Option<String>,
    num_values: usize,
    params_file: String,
    /// SHA-256 (hex) of every file the checkpoint names: a file that does not match is
    /// refused, never loaded as a model.
    files: std::collections::BTreeMap<String, String>,
    /// The state of parties the server holds (a simulation's), in `parties_file` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parties: Vec<PartyMeta>,
    /// Every party's vectors, each `num_values` long: ADMM's dual then last solve, SCAFFOLD's c_k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parties_file: Option<String>,
}

/// One party's state in a checkpoint; its vectors are in the checkpoint's `parties_file`.
#[derive(Debug, Serialize, Deserialize)]
struct PartyMeta {
    id: String,
    /// Every DP release of the party's data (its privacy ledger).
    #[serde(default, skip_serializing_if = "is_empty_ledger")]
    ledger: Ledger,
    /// What builds before the ledger recorded: a bare step count, without the q and σ it was
    /// taken at. Read only to refuse it (it cannot be composed soundly).
    #[serde(default, skip_serializing)]
    dp_steps: u64,
    /// ADMM's ρ, when the party holds a dual and a last solve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admm_rho: Option<f32>,
    /// Whether the party holds a SCAFFOLD control variate.
    #[serde(default)]
    scaffold: bool,
}

const CHECKPOINT: &str = "checkpoint.json";

/// The checkpoint format this build writes and reads: 2 added checksums and moved the round
/// records out (they are in the run directory's rounds.jsonl, appended, never rewritten).
const FORMAT: u32 = 2;

/// Largest checkpoint.json read (it holds names, scalars and ledgers, not vectors).
const MAX_META_BYTES: u64 = 64 << 20;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_empty_ledger(l: &Ledger) -> bool {
    l.entries.is_empty()
}

fn f32_bytes<'a>(vectors: impl IntoIterator<Item = &'a [f32]>) -> Vec<u8> {
    vectors.into_iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads `name` in `dir` (a plain file name from the checkpoint) as exactly `len` f32 values
/// whose SHA-256 is the one `sums` records for it.
fn read_f32s(
    dir: &Path,
    name: &str,
    len: usize,
    sums: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<f32>> {
    let meta = dir.join(CHECKPOINT);
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        bail!("{}: bad file name '{name}' in the checkpoint", meta.display());
    }
    let p = dir.join(name);
    let Some(want) = len.checked_mul(4) else {
        bail!("{}: {len} values for {name} is beyond any model", meta.display());
    };
    // The size is checked before reading, so a wrong or hostile file is never loaded whole.
    let size = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?.len();
    if size != want as u64 {
        bail!("{}: {size} bytes, the checkpoint says {want}", p.display());
    }
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    if bytes.len() != want {
        bail!("{}: {} bytes, the checkpoint says {want}", p.display(), bytes.len());
    }
    match sums.get(name) {
        None => {
            bail!("{}: names {name} without its checksum; the checkpoint is not one federate wrote", meta.display())
        }
        Some(sum) if *sum != sha256_hex(&bytes) => bail!(
            "{}: its SHA-256 does not match the one in {} (corrupted or replaced): restore the checkpoint \
             directory from a backup, or start a new run",
            p.display(),
            meta.display()
        ),
        Some(_) => {}
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The parties' states as metadata plus their vectors, in the order a file stores them.
fn encode_parties<'a>(
    parties: impl IntoIterator<Item = (&'a str, &'a PartyState)>,
) -> (Vec<PartyMeta>, Vec<&'a [f32]>) {
    let mut metas = Vec::new();
    let mut vectors: Vec<&[f32]> = Vec::new();
    for (id, p) in parties {
        if let Some(a) = &p.admm {
            vectors.extend([a.dual.as_slice(), a.last.as_slice()]);
        }
        vectors.extend(p.scaffold.as_deref());
        metas.push(PartyMeta {
            id: id.to_string(),
            ledger: p.ledger.clone(),
            dp_steps: 0,
            admm_rho: p.admm.as_ref().map(|a| a.rho),
            scaffold: p.scaffold.is_some(),
        });
    }
    (metas, vectors)
}

/// Writes `vectors` (each `len` long) to `dir/name` when there are any; returns the file name.
fn write_vectors(
    dir: &Path,
    name: String,
    vectors: &[&[f32]],
    len: usize,
    sums: &mut std::collections::BTreeMap<String, String>,
) -> Result<Option<String>> {
    if let Some(v) = vectors.iter().find(|v| v.len() != len) {
        bail!("a party's state vector has {} values, the model {len}", v.len());
    }
    if vectors.is_empty() {
        return Ok(None);
    }
    write_summed(dir, &name, &f32_bytes(vectors.iter().copied()), sums)?;
    Ok(Some(name))
}

/// Writes `bytes` to `name` in `dir` atomically and records its SHA-256 in `sums`.
fn write_summed(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sums: &mut std::collections::BTreeMap<String, String>,
) -> Result<()> {
    atomic_write(&dir.join(name), bytes)?;
    sums.insert(name.to_string(), sha256_hex(bytes));
    Ok(())
}

/// The inverse of [`encode_parties`]: reads the vectors `metas` claim (each `len` long) from
/// `file` in `dir`.
fn decode_parties(
    dir: &Path,
    metas: Vec<PartyMeta>,
    file: Option<&str>,
    len: usize,
    sums: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, PartyState)>> {
    let count: usize = metas.iter().map(|p| 2 * usize::from(p.admm_rho.is_some()) + usize::from(p.scaffold)).sum();
    let all = match (file, count) {
        (_, 0) => Vec::new(),
        (Some(f), _) => read_f32s(dir, f, count.saturating_mul(len), sums)?,
        (None, _) => bail!("{}: party state without its vector file", dir.display()),
    };
    let mut chunks = all.chunks_exact(len.max(1)).map(<[f32]>::to_vec);
    let mut parties = Vec::with_capacity(metas.len());
    for p in metas {
        if p.dp_steps > 0 && p.ledger.entries.is_empty() {
            bail!(
                "{}: party '{}' has a DP step count ({}) from an older federate, without the sampling rate and \
                 noise it was taken at, so its privacy spent cannot be accounted; finish that run with the build \
                 that made it, or start a new one",
                dir.display(),
                p.id,
                p.dp_steps
            );
        }
        // Exactly `count` vectors were read, as many as the parties claim.
        let mut next = || chunks.next().unwrap_or_default();
        let admm = p.admm_rho.map(|rho| AdmmState { dual: next(), last: next(), rho });
        let scaffold = p.scaffold.then(next);
        parties.push((p.id, PartyState { ledger: p.ledger, admm, scaffold }));
    }
    Ok(parties)
}

/// What one checkpoint records: the round it follows, the global model, the strategy's and
/// the parties' state. The round records are not in it: they are appended to the run
/// directory's rounds.jsonl as rounds finish and read back from there on resume.
pub(crate) struct Checkpoint<'a> {
    pub(crate) round: u32,
    pub(crate) seed: u64,
    pub(crate) global: &'a Parameters,
    pub(crate) strategy: (&'a str, Option<federate_core::StrategyState>),
    pub(crate) parties: Vec<(String, PartyState)>,
}

/// Writes the checkpoint `c` into `dir`: the vectors to new files, then the metadata naming
/// them, each by write-to-temporary and rename, so a crash at any point leaves either the old
/// or the new checkpoint, never a torn one.
pub(crate) fn write_checkpoint(dir: &Path, c: Checkpoint<'_>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("checkpoint directory {}", dir.display()))?;
    let round = c.round;
    let mut files = std::collections::BTreeMap::new();
    let params_file = format!("params-{round:05}.f32");
    write_summed(dir, &params_file, &f32_bytes([c.global.values.as_slice()]), &mut files)?;
    let (state, lengths, strategy_file) = match c.strategy.1 {
        None => (None, Vec::new(), None),
        Some(s) => {
            let lengths: Vec<usize> = s.vectors.iter().map(Vec::len).collect();
            let file = (!lengths.is_empty()).then(|| format!("strategy-{round:05}.f32"));
            if let Some(f) = &file {
                write_summed(dir, f, &f32_bytes(s.vectors.iter().map(Vec::as_slice)), &mut files)?;
            }
            (Some(s.meta), lengths, file)
        }
    };
    let (parties, vectors) = encode_parties(c.parties.iter().map(|(id, p)| (id.as_str(), p)));
    let parties_file = write_vectors(dir, format!("parties-{round:05}.f32"), &vectors, c.global.len(), &mut files)?;
    let meta = CheckpointMeta {
        format: FORMAT,
        round,
        seed: c.seed,
        strategy: c.strategy.0.to_string(),
        strategy_state: state,
        strategy_vectors: lengths,
        strategy_file: strategy_file.clone(),
        num_values: c.global.len(),
        params_file: params_file.clone(),
        files,
        parties,
        parties_file: parties_file.clone(),
    };
    atomic_write(&dir.join(CHECKPOINT), &serde_json::to_vec_pretty(&meta)?)?;
    let current = [Some(&params_file), strategy_file.as_ref(), parties_file.as_ref()];
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = ["params-", "strategy-", "parties-"].iter().any(|p| name.starts_with(p));
        if ours && !current.contains(&Some(&name)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// What a checkpoint restores.
pub(crate) struct Restored {
    pub(crate) round: u32,
    pub(crate) values: Vec<f32>,
    pub(crate) strategy: String,
    pub(crate) strategy_state: Option<federate_core::StrategyState>,
    pub(crate) parties: Vec<(String, PartyState)>,
}

/// Reads the checkpoint in `dir` for a run with `seed` and a model of `layout_len` values.
/// Every file it names must match its recorded SHA-256; anything malformed (crafted JSON,
/// absurd sizes, truncated or random files) is an error naming the file, never a panic or a
/// model full of garbage.
pub(crate) fn read_checkpoint(dir: &Path, seed: u64, layout_len: usize) -> Result<Restored> {
    let meta_path = dir.join(CHECKPOINT);
    let size = std::fs::metadata(&meta_path)
        .with_context(|| {
            format!(
                "--resume: no checkpoint at {} (was the server ever run with this checkpoint_dir?)",
                meta_path.display()
            )
        })?
        .len();
    if size > MAX_META_BYTES {
        bail!(
            "{}: {size} bytes; a checkpoint's metadata is far smaller (not a federate checkpoint)",
            meta_path.display()
        );
    }
    let text = std::fs::read_to_string(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    let version: Version =
        serde_json::from_str(&text).with_context(|| format!("{}: not a federate checkpoint", meta_path.display()))?;
    if version.format != FORMAT {
        bail!(
            "{}: checkpoint format {} is not the one this build reads ({FORMAT}, with checksums): finish that run \
             with the build that wrote it, or start a new one",
            meta_path.display(),
            version.format
        );
    }
    let meta: CheckpointMeta =
        serde_json::from_str(&text).with_context(|| format!("{}: not a federate checkpoint", meta_path.display()))?;
    if meta.seed != seed {
        bail!("{}: the checkpoint was made with seed {}, the config says {seed}", meta_path.display(), meta.seed);
    }
    if meta.num_values != layout_len {
        bail!(
            "{}: the checkpoint's model has {} values, the configured model {layout_len}: same model and config needed",
            meta_path.display(),
            meta.num_values
        );
    }
    let values = read_f32s(dir, &meta.params_file, layout_len, &meta.files)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{}: value {i} of the model is {} (not finite)", dir.join(&meta.params_file).display(), values[i]);
    }
    let strategy_state = match meta.strategy_state {
        None => None,
        Some(text) => {
            let mut vectors = Vec::new();
            if let Some(f) = &meta.strategy_file {
                let total = meta.strategy_vectors.iter().try_fold(0usize, |a, &n| a.checked_add(n));
                let Some(total) = total else {
                    bail!("{}: the strategy's vector lengths overflow", meta_path.display());
                };
                let all = read_f32s(dir, f, total, &meta.files)?;
                let mut at = 0;
                for &n in &meta.strategy_vectors {
                    vectors.push(all[at..at + n].to_vec());
                    at += n;
                }
            }
            Some(federate_core::StrategyState { meta: text, vectors })
        }
    };
    let parties = decode_parties(dir, meta.parties, meta.parties_file.as_deref(), layout_len, &meta.files)?;
    Ok(Restored { round: meta.round, values, strategy: meta.strategy, strategy_state, parties })
}

/// Whether `federate serve` would find a checkpoint to resume from.
pub fn has_checkpoint(cfg: &Config, out: &Path) -> bool {
    cfg.server.checkpoint_dir.clone().unwrap_or_else(|| out.join("checkpoint")).join(CHECKPOINT).exists()
}

fn secs(s: f64) -> Duration {
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

/// `federate serve`.
pub fn serve(cfg: &Config, out: &Path, resume: bool, security: Security) -> Result<()> {
    let sv = &cfg.server;
    let listen: SocketAddr = sv
        .listen
        .parse()
        .with_context(|| format!("server.listen = '{}' is not an address like 0.0.0.0:7000", sv.listen))?;
    let tls = match (&sv.tls, security) {
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
    };
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
    let (completed, values, mut records, restored_strategy) = if resume {
        let r = read_checkpoint(&ckpt_dir, cfg.seed, layout.len())?;
        info!("resuming after round {} from {}", r.round, ckpt_dir.display());
        let records = report::read_rounds(&out.join("rounds.jsonl"), r.round)?;
        (r.round, r.values, records, Some((r.strategy, r.strategy_state)))
    } else {
        (0, learner.init(seed::derive(cfg.seed, seed::Stream::Init, &[])), Vec::new(), None)
    };
    let global = Parameters::new(values, layout.clone()).context("initial parameters")?;
    let mut dir = RunDir::open(out, cfg, &records)?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hub_cfg = HubConfig {
        listen,
        tls,
        allowed: parties.clone(),
        model_len: layout.len(),
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
    };
    let (hub, addr) = rt.block_on(Hub::start(hub_cfg))?;
    println!("federate serve: listening on {addr}; parties {}; run directory {}", parties.join(", "), out.display());
    let have = rt.block_on(hub.wait_for(parties.len(), secs(sv.start_wait_s)));
    let needed = cfg.strategy.min_fit_clients.max(1);
    if have < needed {
        rt.block_on(hub.shutdown("the federation could not start: too few parties", Duration::from_secs(2)));
        bail!(
            "only {have} of {} parties connected within server.start_wait_s = {} s, and strategy.min_fit_clients = \
             {needed}: no round was run and no model written (start the parties, check their --server address \
             and certificates, or raise start_wait_s)",
            parties.len(),
            sv.start_wait_s
        );
    }
    info!("{have} of {} parties connected; starting", parties.len());

    let clients: Vec<Box<dyn ClientProxy>> =
        parties.iter().map(|p| Box::new(RemoteParty::new(p.clone(), hub.clone(), rt.handle().clone())) as _).collect();
    // The server's own noise (central client-level DP) is secure unless the config says seeded.
    let noise = cfg.privacy.noise.unwrap_or(crate::config::NoiseName::Secure).source();
    let mut server = Server::new(sim::build_strategy(cfg, noise)?, clients).with_admission(sv.admission());
    if let Some((name, state)) = &restored_strategy {
        server
            .restore_strategy(name, state.as_ref())
            .with_context(|| format!("--resume from {}", ckpt_dir.display()))?;
    }
    let mut failure: Option<anyhow::Error> = None;
    let rounds = cfg.rounds;
    let mut observer = |e: Event<'_>| {
        if let Event::RoundFinished { record, global, strategy, .. } = e {
            records.push(record.clone());
            let res = dir.record(record).and_then(|_| {
                let c = Checkpoint { round: record.round, seed: cfg.seed, global, strategy, parties: Vec::new() };
                write_checkpoint(&ckpt_dir, c)
            });
            if let Err(e) = res {
                failure.get_or_insert(e);
            }
            let failed: Vec<String> = record.failures.iter().map(|f| format!("{} ({})", f.id, f.reason)).collect();
            println!(
                "round {:>3}/{rounds}  accuracy {}  parties {}  failures [{}]  {:.1} s{insecure_note}",
                record.round,
                record.accuracy.map(|a| format!("{:.2} %", a * 100.0)).unwrap_or_else(|| "-".into()),
                record.fit.len(),
                failed.join("; "),
                record.seconds
            );
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
    if let Some(e) = failure {
        return Err(e.context("writing the round record or checkpoint"));
    }
    if !records.iter().any(|r| r.aggregated) {
        let last = records.last().and_then(|r| r.error.clone()).unwrap_or_default();
        bail!(
            "no round produced a model ({} rounds, the last: {last}); no model written. The records are in {}",
            records.len(),
            out.join("rounds.jsonl").display()
        );
    }
    report::write_safetensors(&out.join("model.safetensors"), &global, cfg)?;
    println!(
        "final global accuracy {:.2} % after {} rounds; model {}",
        records.last().and_then(|r| r.accuracy).unwrap_or(0.0) * 100.0,
        records.len(),
        out.join("model.safetensors").display()
    );
    Ok(())
}

/// Where a joining party's data comes from.
pub enum PartyData {
    /// Partition `index` (1-based) of the configured dataset and split.
    Partition(usize),
    /// Its own IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz).
    IdxDir(PathBuf),
}

fn idx_file(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("{}: no {name} (or {name}.gz)", dir.display())
}

/// Where a `federate join` party keeps what it needs between rounds, rewritten atomically
/// after every round it trains:
///
/// - `<dir>/<id>.ledger.json`: its privacy ledger — every DP release of its data, in any
///   federation. It is never reset: a party restarted with another seed, model or set of
///   privacy settings goes on composing onto it, so its ε covers everything its data was
///   used for.
/// - `<dir>/<id>.<seed>-<values>.json` (+ `.f32`): the algorithm's state for one federation
///   (SCAFFOLD's c_k, ADMM's dual). Each federation has its own files, kept apart: joining
///   another federation neither restores nor overwrites them.
///
/// A restarted party reads them back, so it continues instead of being refused for missing
/// state.
pub(crate) struct PartyStore {
    dir: PathBuf,
    id: String,
    seed: u64,
    num_values: usize,
}

/// A party's per-federation state file.
#[derive(Debug, Serialize, Deserialize)]
struct PartyFile {
    format: u32,
    /// The federation's seed.
    seed: u64,
    num_values: usize,
    party: PartyMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vectors_file: Option<String>,
    /// SHA-256 (hex) of the vectors file.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

/// A party's ledger file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    format: u32,
    id: String,
    ledger: Ledger,
}

/// Largest party metadata or ledger file read (a ledger merges identical rounds, so it
/// holds one entry per change of settings).
const MAX_PARTY_FILE: u64 = 16 << 20;

impl PartyStore {
    pub(crate) fn new(dir: &Path, id: &str, seed: u64, num_values: usize) -> Self {
        PartyStore { dir: dir.to_path_buf(), id: id.to_string(), seed, num_values }
    }

    fn stem(&self) -> String {
        format!("{}.{}-{}", self.id, self.seed, self.num_values)
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem()))
    }

    fn ledger_path(&self) -> PathBuf {
        self.dir.join(format!("{}.ledger.json", self.id))
    }

    /// Saves `state`: the ledger first (so a crash can only over-count), then the vectors,
    /// then the file naming them.
    pub(crate) fn save(&self, state: &PartyState) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("party state directory {}", self.dir.display()))?;
        let ledger = LedgerFile { format: 1, id: self.id.clone(), ledger: state.ledger.clone() };
        atomic_write(&self.ledger_path(), &serde_json::to_vec_pretty(&ledger)?)?;
        let (mut metas, vectors) = encode_parties([(self.id.as_str(), state)]);
        let mut files = std::collections::BTreeMap::new();
        let vectors_file =
            write_vectors(&self.dir, format!("{}.f32", self.stem()), &vectors, self.num_values, &mut files)?;
        let Some(mut party) = metas.pop() else { bail!("no party state to save") };
        // The ledger lives in its own file, across federations.
        party.ledger = Ledger::new();
        let file = PartyFile { format: 3, seed: self.seed, num_values: self.num_values, party, vectors_file, files };
        atomic_write(&self.meta_path(), &serde_json::to_vec_pretty(&file)?)
    }

    /// Reads `path` as text if it exists and is of a sane size.
    fn read_small(path: &Path) -> Result<Option<String>> {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if size > MAX_PARTY_FILE {
            bail!(
                "{}: {size} bytes is not a party state file; move it away to start this party afresh, or fix \
                 --state-dir",
                path.display()
            );
        }
        Ok(Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?))
    }

    /// The state saved by earlier runs of this party: its ledger (whatever federation it
    /// was spent in) and this federation's algorithm state. A file that cannot be read is an
    /// error, never a silent fresh start.
    pub(crate) fn load(&self) -> Result<Option<PartyState>> {
        let bad = |path: &Path, why: String| {
            anyhow::anyhow!(
                "{}: {why}; this party's saved state (its privacy ledger, control variate or dual) cannot be \
                 restored. Move the file away to start this party afresh (its privacy spent is then no longer \
                 counted), or fix --state-dir",
                path.display()
            )
        };
        let mut state = PartyState::default();
        let mut found = false;
        let lpath = self.ledger_path();
        if let Some(text) = Self::read_small(&lpath)? {
            let file: LedgerFile =
                serde_json::from_str(&text).map_err(|e| bad(&lpath, format!("not a ledger file ({e})")))?;
            if file.format != 1 || file.id != self.id {
                return Err(bad(&lpath, format!("format {} of party '{}' is not this party's", file.format, file.id)));
            }
            for e in &file.ledger.entries {
                e.check().map_err(|err| bad(&lpath, format!("an entry cannot be accounted ({err})")))?;
            }
            state.ledger = file.ledger;
            found = true;
        }
        let path = self.meta_path();
        if let Some(text) = Self::read_small(&path)? {
            let file: PartyFile =
                serde_json::from_str(&text).map_err(|e| bad(&path, format!("not a party state file ({e})")))?;
            if file.format != 3 {
                return Err(bad(
                    &path,
                    format!("format {} is not supported by this build (3, with checksums)", file.format),
                ));
            }
            if file.party.id != self.id || file.seed != self.seed || file.num_values != self.num_values {
                return Err(bad(&path, format!("it belongs to party '{}' of another federation", file.party.id)));
            }
            let mut parties =
                decode_parties(&self.dir, vec![file.party], file.vectors_file.as_deref(), self.num_values, &file.files)
                    .map_err(|e| bad(&path, e.to_string()))?;
            if let Some((_, s)) = parties.pop() {
                state.admm = s.admm;
                state.scaffold = s.scaffold;
            }
            found = true;
        }
        Ok(found.then_some(state))
    }
}

/// A party that saves its state with a [`PartyStore`] after every round it trains. If the
/// save fails, the round's update is withheld and the state rolled back, so what is on disk
/// never falls behind what the server has seen; a round that fails half way also leaves the
/// state as it was.
pub(crate) struct Persisted<C> {
    inner: C,
    store: PartyStore,
}

impl<C: Client> Persisted<C> {
    /// `inner`, given back the state `store` holds (if any).
    pub(crate) fn new(mut inner: C, store: PartyStore) -> Result<Self> {
        if let Some(state) = store.load()? {
            println!(
                "{}: restored its saved state (privacy ledger: {} DP steps in {} entries, ADMM dual {}, SCAFFOLD \
                 control variate {})",
                store.id,
                state.ledger.steps(),
                state.ledger.entries.len(),
                if state.admm.is_some() { "yes" } else { "no" },
                if state.scaffold.is_some() { "yes" } else { "no" }
            );
            inner.restore(state).map_err(|e| anyhow::anyhow!("{}: {e}", store.meta_path().display()))?;
        }
        Ok(Persisted { inner, store })
    }
}

impl<C: Client> Client for Persisted<C> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let before = self.inner.state();
        let reply = match self.inner.fit(global, task) {
            Ok(r) => r,
            Err(e) => {
                // A round that failed half way must not cost the party what it kept.
                if let Some(b) = before {
                    self.inner.restore(b)?;
                }
                return Err(e);
            }
        };
        if let Some(now) = self.inner.state().filter(|s| !s.is_empty())
            && let Err(e) = self.store.save(&now)
        {
            if let Some(b) = before {
                self.inner.restore(b)?;
            }
            return Err(ClientError::Model(format!(
                "could not save this party's state ({e:#}); its update is withheld this round"
            )));
        }
        Ok(reply)
    }
    delegate_to_inner_client!();
}

/// A `federate join` party that logs, on its own console, what its local training computed
/// — including what a DP party does not send (exact training loss and accuracy).
struct LocalLog<L: Learner> {
    inner: LocalClient<L>,
    id: String,
}

impl<L: Learner> Client for LocalLog<L> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let reply = self.inner.fit(global, task);
        if reply.is_ok()
            && let Some(s) = self.inner.last_summary()
        {
            let eps = s.epsilon.map(|e| format!(", ε spent {e:.4}")).unwrap_or_default();
            info!(
                party = %self.id,
                "round {}: trained locally, {} steps, loss {:.4}, accuracy {:.2} % in {:.1} s (kept on this party){eps}",
                task.round,
                s.steps,
                s.train_loss,
                100.0 * s.train_accuracy,
                s.train_seconds
            );
        }
        reply
    }
    delegate_to_inner_client!();
}

/// `federate join`.
pub fn join(
    cfg: &Config,
    server: &str,
    id: &str,
    data: PartyData,
    tls: Option<TlsFiles>,
    server_name: Option<String>,
    state_dir: &Path,
) -> Result<()> {
    if !federate_net::tls::valid_identity(id) {
        bail!("--id '{id}' is not a valid identity (letters, digits, '-', '.')");
    }
    let (train, test) = match data {
        PartyData::Partition(i) => {
            if i == 0 || i > cfg.data.parties {
                bail!(
                    "--partition {i} is out of range: the config splits the data into {} parties (1..={})",
                    cfg.data.parties,
                    cfg.data.parties
                );
            }
            let all = sim::load_data(cfg)?;
            let mut parts = sim::split(cfg, &all)?;
            let p = parts.swap_remove(i - 1);
            (p.train, p.test)
        }
        PartyData::IdxDir(dir) => {
            let (_, classes) = dataset_shape(&cfg.data.dataset)?;
            let train = federate_data::images_and_labels(
                &idx_file(&dir, "train-images-idx3-ubyte")?,
                &idx_file(&dir, "train-labels-idx1-ubyte")?,
                classes,
            )?;
            let test = federate_data::images_and_labels(
                &idx_file(&dir, "t10k-images-idx3-ubyte")?,
                &idx_file(&dir, "t10k-labels-idx1-ubyte")?,
                classes,
            )?;
            (train, test)
        }
    };
    let spec = spec_for(cfg)?;
    let learner = NnLearner::new(spec, cfg.train.batch_size, rayon::current_num_threads())?;
    let layout = learner.layout();
    println!("federate join: {id} with {} training and {} test examples → {server}", train.len(), test.len());
    // A party's own DP randomness: secure unless its config asks for seeded noise.
    let noise = cfg.privacy.noise.unwrap_or(crate::config::NoiseName::Secure);
    // What this party agreed to in its own config: a server asking for less is refused.
    let floor = sim::privacy_floor(cfg, train.len());
    let client = LocalClient::new(learner, train, test).with_noise_source(noise.source()).with_privacy_floor(floor);
    let client = LocalLog { inner: client, id: id.to_string() };
    let client = Persisted::new(client, PartyStore::new(state_dir, id, cfg.seed, layout.len()))?;
    let sv = &cfg.server;
    let opts = PartyOptions {
        server: server.to_string(),
        id: id.to_string(),
        tls,
        server_name,
        limits: Limits { max_values: sv.max_values, max_chunk_bytes: sv.chunk_bytes.max(1024) },
        max_message_bytes: sv.max_message_bytes,
        chunk_bytes: sv.chunk_bytes,
        zstd: sv.zstd,
        heartbeat: secs(sv.heartbeat_s),
        max_backoff: Duration::from_secs(10),
        give_up_after: secs(sv.start_wait_s.max(sv.rejoin_wait_s) * 2.0),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let reason = rt.block_on(run_party(opts, Box::new(client), layout))?;
    println!("{id}: done ({reason})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use federate_core::{Layout, StrategyState, TensorSpec};
    use std::sync::Arc;

    fn checkpoint<'a>(
        round: u32,
        global: &'a Parameters,
        strategy: (&'a str, Option<StrategyState>),
        parties: Vec<(String, PartyState)>,
    ) -> Checkpoint<'a> {
        Checkpoint { round, seed: 7, global, strategy, parties }
    }

    #[test]
    fn checkpoints_carry_the_strategy_state() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![3], offset: 0 }]));
        let global = Parameters::new(vec![1.0, 2.0, 3.0], layout).unwrap();
        let state = StrategyState { meta: "fedadam".into(), vectors: vec![vec![0.5; 3], vec![0.25; 3]] };
        write_checkpoint(dir.path(), checkpoint(4, &global, ("fedadam", Some(state.clone())), vec![])).unwrap();
        let r = read_checkpoint(dir.path(), 7, 3).unwrap();
        assert_eq!((r.round, r.values, r.strategy.as_str()), (4, vec![1.0, 2.0, 3.0], "fedadam"));
        assert_eq!(r.strategy_state, Some(state));
        // The next checkpoint replaces the state file; a stateless strategy writes none.
        write_checkpoint(dir.path(), checkpoint(5, &global, ("fedavg", None), vec![])).unwrap();
        let r = read_checkpoint(dir.path(), 7, 3).unwrap();
        assert_eq!(r.strategy_state, None);
        let files: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(!files.iter().any(|f| f.starts_with("strategy-")), "{files:?}");
        // A truncated state file is an error that names it, not a silent reset.
        let state = StrategyState { meta: "fedadam".into(), vectors: vec![vec![0.5; 3]] };
        write_checkpoint(dir.path(), checkpoint(6, &global, ("fedadam", Some(state)), vec![])).unwrap();
        std::fs::write(dir.path().join("strategy-00006.f32"), [0u8; 4]).unwrap();
        let e = read_checkpoint(dir.path(), 7, 3).err().unwrap().to_string();
        assert!(e.contains("strategy-00006.f32"), "{e}");
    }

    #[test]
    fn corrupted_checkpoints_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![64], offset: 0 }]));
        let global = Parameters::new((0..64).map(|i| i as f32).collect(), layout).unwrap();
        let state = StrategyState { meta: "fedadam".into(), vectors: vec![vec![0.5; 64]] };
        write_checkpoint(dir.path(), checkpoint(2, &global, ("fedadam", Some(state)), vec![])).unwrap();
        read_checkpoint(dir.path(), 7, 64).unwrap();
        let params = dir.path().join("params-00002.f32");
        let good = std::fs::read(&params).unwrap();
        // Random bytes of the right size: refused by the checksum, never resumed into a model.
        let mut x = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..good.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&params, &random).unwrap();
        let e = format!("{:#}", read_checkpoint(dir.path(), 7, 64).err().unwrap());
        assert!(e.contains("params-00002.f32") && e.contains("SHA-256 does not match"), "{e}");
        // Truncated.
        std::fs::write(&params, &good[..100]).unwrap();
        let e = format!("{:#}", read_checkpoint(dir.path(), 7, 64).err().unwrap());
        assert!(e.contains("params-00002.f32") && e.contains("100 bytes"), "{e}");
        std::fs::write(&params, &good).unwrap();
        read_checkpoint(dir.path(), 7, 64).unwrap();
        // Crafted metadata: every field replaced by hostile values, each an error, never a panic.
        let meta_path = dir.path().join(CHECKPOINT);
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        let crafted: Vec<(&str, serde_json::Value)> = vec![
            ("format", serde_json::json!(1)),
            ("format", serde_json::json!("two")),
            ("strategy_vectors", serde_json::json!([u64::MAX, 2])),
            ("strategy_vectors", serde_json::json!([usize::MAX / 4 + 1])),
            ("strategy_vectors", serde_json::json!([10, 55])),
            ("params_file", serde_json::json!("../../etc/passwd")),
            ("params_file", serde_json::json!("missing.f32")),
            ("num_values", serde_json::json!(u64::MAX)),
            ("files", serde_json::json!({})),
            ("parties", serde_json::json!([{"id": "p", "admm_rho": 1.0, "scaffold": true}])),
            ("round", serde_json::json!(-1)),
        ];
        for (field, value) in crafted {
            let mut m = meta.clone();
            m[field] = value.clone();
            std::fs::write(&meta_path, serde_json::to_vec(&m).unwrap()).unwrap();
            let r = std::panic::catch_unwind(|| read_checkpoint(dir.path(), 7, 64).err().map(|e| format!("{e:#}")));
            let e = r.unwrap_or_else(|_| panic!("{field} = {value} panicked"));
            let e = e.unwrap_or_else(|| panic!("{field} = {value} was accepted"));
            assert!(e.contains(dir.path().to_str().unwrap()), "{field} = {value}: {e}");
        }
        std::fs::write(&meta_path, b"{\"format\": 2, \"round\": [").unwrap();
        assert!(read_checkpoint(dir.path(), 7, 64).is_err());
    }

    fn ledger(steps: u64) -> Ledger {
        let e = federate_privacy::Entry {
            noise: federate_privacy::Noise::Gaussian { sigma: 1.0 },
            draw: federate_privacy::Draw::Poisson,
            q: 0.01,
            steps,
        };
        Ledger { entries: vec![e] }
    }

    #[test]
    fn a_party_store_keeps_state_for_its_own_federation_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = PartyStore::new(dir.path(), "party-2", 7, 2);
        assert_eq!(store.load().unwrap(), None);
        let state = PartyState {
            ledger: ledger(40),
            admm: Some(AdmmState { dual: vec![0.25, -1.0], last: vec![3.0, 4.0], rho: 0.2 }),
            scaffold: None,
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state.clone()));
        // Another federation (other seed, other model) gets the ledger, never the algorithm
        // state; its own state is kept apart and does not replace this one's.
        let other = PartyStore::new(dir.path(), "party-2", 8, 2);
        let mut there = other.load().unwrap().unwrap();
        assert_eq!((there.ledger.clone(), there.admm.clone()), (ledger(40), None));
        there.ledger.record(ledger(5).entries[0]).unwrap();
        there.scaffold = Some(vec![1.0, 1.0]);
        other.save(&there).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!((back.ledger, back.admm), (ledger(45), state.admm.clone()));
        assert_eq!(PartyStore::new(dir.path(), "party-2", 7, 3).load().unwrap().unwrap().ledger, ledger(45));
        // A damaged file is an error that names it and the way out, not a fresh start.
        std::fs::write(dir.path().join("party-2.7-2.f32"), [0u8; 6]).unwrap();
        let e = format!("{:#}", store.load().unwrap_err());
        assert!(e.contains("party-2") && e.contains("Move the file away"), "{e}");
        std::fs::write(dir.path().join("party-2.7-2.json"), "{").unwrap();
        let e = format!("{:#}", store.load().unwrap_err());
        assert!(e.contains("party-2.7-2.json") && e.contains("not a party state file"), "{e}");
        std::fs::write(dir.path().join("party-2.ledger.json"), "[]").unwrap();
        let e = format!("{:#}", other.load().unwrap_err());
        assert!(e.contains("party-2.ledger.json") && e.contains("not a ledger file"), "{e}");
    }

    #[test]
    fn checkpoints_carry_every_partys_state() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![2], offset: 0 }]));
        let global = Parameters::new(vec![1.0, 2.0], layout).unwrap();
        let parties = vec![
            ("a".to_string(), PartyState { ledger: ledger(12), ..Default::default() }),
            (
                "b".to_string(),
                PartyState {
                    ledger: ledger(3),
                    admm: Some(AdmmState { dual: vec![0.5, -0.5], last: vec![1.5, 2.5], rho: 0.1 }),
                    scaffold: None,
                },
            ),
            ("c".to_string(), PartyState { scaffold: Some(vec![-1.0, 1e-7]), ..Default::default() }),
        ];
        write_checkpoint(dir.path(), checkpoint(3, &global, ("admm", None), parties.clone())).unwrap();
        assert_eq!(read_checkpoint(dir.path(), 7, 2).unwrap().parties, parties);
        // The next checkpoint replaces the parties' file.
        let fewer = parties[..1].to_vec();
        write_checkpoint(dir.path(), checkpoint(4, &global, ("admm", None), fewer.clone())).unwrap();
        assert_eq!(read_checkpoint(dir.path(), 7, 2).unwrap().parties, fewer);
        assert!(!dir.path().join("parties-00003.f32").exists());
        // A party file that lost values is an error naming it.
        write_checkpoint(dir.path(), checkpoint(5, &global, ("admm", None), parties)).unwrap();
        std::fs::write(dir.path().join("parties-00005.f32"), [0u8; 12]).unwrap();
        let e = read_checkpoint(dir.path(), 7, 2).err().unwrap().to_string();
        assert!(e.contains("parties-00005.f32"), "{e}");
    }
}
