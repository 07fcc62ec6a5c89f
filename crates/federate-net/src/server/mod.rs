//! The server side of a deployment: a gRPC service parties dial into, the registry of
//! connected parties, and `RemoteParty`, the `ClientProxy` the core round loop drives.
//!
//! Each connected party has one task reading its stream. Instructions go out on the party's
//! outgoing channel; replies are matched to waiting calls by task id. A party that sends
//! something malformed or over the limits, stays silent past the timeout, does not read its
//! task within the round deadline, or disconnects is dropped with a logged reason and its
//! connection closed; its outstanding tasks fail, the others carry on, and it may connect
//! again.
//!
//! Every resource a peer can hold is bounded (see docs/security.md): connections in all
//! (`max_connections`), TLS handshakes in progress (`max_handshakes`, each at most
//! `join_timeout`), HTTP/2 streams per connection (`max_streams_per_connection`), one party
//! per connection and one live connection per identity (a second login for the same
//! identity replaces the first only after the first is told, with a `Refusal`, and closed),
//! and a connection that carries no joined party after `join_timeout` is closed. Text a party
//! sends (failure reasons, metric names, identities) is cut to [`MAX_TEXT`] bytes and its
//! control characters escaped before it reaches a log or a record.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federate_core::messages::Moments;
use federate_core::{ClientError, EvaluateReply, EvaluateTask, FitReply, FitTask, Parameters};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info, warn};

use crate::codec::{self, Limits};
use crate::convert::{moments_to_proto, training_to_proto};
use crate::proto::federation_server::FederationServer;
use crate::proto::{EvaluateInstruction, FitInstruction, ServerMessage, Shutdown, server_message};
use crate::tls::{TlsFiles, server_config};

mod guard;
mod model;
mod service;
mod transport;

use guard::{ConnGuard, DenyList, accept_loop};
pub use guard::{MAX_METRICS, MAX_TEXT, clean_text};
use model::ModelPayload;
use service::Service;
pub use transport::{HubTransport, RemoteParty};

/// The protocol version this build speaks.
/// 2: the task's party half by registered name with settings, typed reply fields, and an
/// algorithm's vector in a transfer of its own. 3: compressed updates, and models sent by
/// reference to a party that holds them (docs in proto/federate.proto).
pub const PROTOCOL_VERSION: u32 = 4;

/// How the server listens and treats parties.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Mutual TLS files; `None` is plaintext (only with an explicit --insecure).
    pub tls: Option<TlsFiles>,
    /// The parties allowed to join, by identity.
    pub allowed: Vec<String>,
    /// Values in the model (a reply of another size is refused).
    pub model_len: usize,
    /// Interval of the server's heartbeats.
    pub heartbeat: Duration,
    /// A party silent for this long is dropped.
    pub party_timeout: Duration,
    /// How long a task waits for its reply (the round deadline).
    pub task_timeout: Duration,
    /// How long a task waits for an absent party to connect before failing.
    pub rejoin_wait: Duration,
    /// Limits on received parameter vectors.
    pub limits: Limits,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Raw bytes per parameter chunk sent.
    pub chunk_bytes: usize,
    /// Compress parameter chunks with zstd.
    pub zstd: bool,
    /// Most open connections (joined or not); more are closed at once.
    pub max_connections: usize,
    /// Most TLS handshakes in progress; more connections are closed at once.
    pub max_handshakes: usize,
    /// Most concurrent HTTP/2 streams on one connection.
    pub max_streams_per_connection: u32,
    /// Time a new connection has to finish its handshake, say hello and join; one that
    /// carries no party after this is closed.
    pub join_timeout: Duration,
    /// Revoked identities, one per line (`#` comments), in a file the operator may edit while
    /// the server runs: a listed party is refused at its next handshake and dropped before
    /// its next task.
    pub deny_file: Option<std::path::PathBuf>,
    /// The federation's settings a party must share (seed, data split, model), as flattened
    /// key → value text; a party whose Hello gives another value for any of these keys, or a
    /// key the federation does not have, is refused naming it. Empty: no check.
    pub federation: std::collections::BTreeMap<String, String>,
}

impl HubConfig {
    /// The defaults for the limits on peers, for a federation of `parties` parties: room for
    /// every party twice over (reconnections) plus 64, 64 handshakes, 8 streams per connection,
    /// 10 s to join.
    pub fn default_limits(parties: usize) -> (usize, usize, u32, Duration) {
        (parties.saturating_mul(2).saturating_add(64), 64, 8, Duration::from_secs(10))
    }
}

/// A parameter vector encoded for the wire once, sent to many parties.
struct Encoded {
    header: crate::proto::ParametersHeader,
    chunks: Vec<crate::proto::Chunk>,
}

/// A fit reply whose update came compressed, decoded against the model the party was sent
/// (`global`) by the function the party used to compute what it sent; other replies as
/// they are.
pub(crate) fn decode_upload(
    reply: Result<FitReply, ClientError>,
    global: &Parameters,
    task: &FitTask,
) -> Result<FitReply, ClientError> {
    let mut f = reply?;
    if let Some(bytes) = &f.upload {
        if task.training.compression.is_none() {
            return Err(ClientError::Unavailable(
                "sent a compressed update where the task asked for 32-bit floats".into(),
            ));
        }
        f.params = federate_core::compress::decode_reply(bytes, &global.values)
            .map_err(|e| ClientError::Unavailable(format!("update refused: {e}")))?;
    }
    Ok(f)
}

/// What a fit task sends: the model, and the algorithm's shared vector in a transfer of its
/// own (SCAFFOLD's c); each encoded once per round, whatever the number of parties.
#[derive(Clone)]
struct FitPayload {
    model: ModelPayload,
    vector: Option<Arc<Encoded>>,
}

enum Reply {
    Fit(FitReply),
    Evaluate(EvaluateReply),
    Stats(Option<Moments>),
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Reply, ClientError>>>>;

struct Conn {
    generation: u64,
    tx: mpsc::Sender<Result<ServerMessage, Status>>,
    pending: Pending,
    guard: Arc<ConnGuard>,
    /// The numbered model last sent on this connection, which the party keeps.
    held: Mutex<Option<u32>>,
}

impl Conn {
    fn fail_all(&self, reason: &str) {
        let pending: Vec<_> = self.pending.lock().map(|mut p| p.drain().collect()).unwrap_or_default();
        for (_, tx) in pending {
            let _ = tx.send(Err(ClientError::Unavailable(reason.to_string())));
        }
    }
}

struct HubInner {
    cfg: HubConfig,
    allowed: HashSet<String>,
    parties: Mutex<HashMap<String, Arc<Conn>>>,
    /// Open connections by peer address.
    conns: Arc<Mutex<HashMap<SocketAddr, Arc<ConnGuard>>>>,
    changed: watch::Sender<u64>,
    next_id: AtomicU64,
    closing: std::sync::atomic::AtomicBool,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    /// The one transport every `RemoteParty` of this hub shares (so a round batches them);
    /// weak, since the transport holds the hub.
    transport: Mutex<std::sync::Weak<HubTransport>>,
    deny: DenyList,
}

/// The registry of connected parties, shared by the gRPC service and every `RemoteParty`.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn msg(m: server_message::Msg) -> ServerMessage {
    ServerMessage { msg: Some(m) }
}

impl Hub {
    /// Binds the listener and starts serving on the current tokio runtime. Returns the hub and
    /// the bound address (useful with port 0).
    pub async fn start(cfg: HubConfig) -> Result<(Hub, SocketAddr), ServeError> {
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
        let (changed, _) = watch::channel(0);
        let hub = Hub {
            inner: Arc::new(HubInner {
                allowed: cfg.allowed.iter().cloned().collect(),
                cfg: cfg.clone(),
                parties: Mutex::new(HashMap::new()),
                conns: Arc::new(Mutex::new(HashMap::new())),
                changed,
                next_id: AtomicU64::new(1),
                closing: std::sync::atomic::AtomicBool::new(false),
                bytes_out: AtomicU64::new(0),
                bytes_in: AtomicU64::new(0),
                transport: Mutex::new(std::sync::Weak::new()),
                deny: DenyList { path: cfg.deny_file.clone(), cache: Mutex::new((None, HashSet::new())) },
            }),
        };
        let svc = FederationServer::new(Service { hub: hub.clone() })
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(cfg.heartbeat))
            .http2_keepalive_timeout(Some(cfg.party_timeout))
            .max_concurrent_streams(Some(cfg.max_streams_per_connection.max(1)))
            .add_service(svc);
        match &cfg.tls {
            Some(files) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config(files)?);
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(accept_loop(listener, hub.clone(), move |tcp| acceptor.clone().accept(tcp), tx));
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming(ReceiverStream::new(rx)).await {
                        warn!("server stopped: {e}");
                    }
                });
            }
            None => {
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(accept_loop(listener, hub.clone(), |tcp| std::future::ready(Ok(tcp)), tx));
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming(ReceiverStream::new(rx)).await {
                        warn!("server stopped: {e}");
                    }
                });
            }
        }
        info!("listening on {addr} ({})", if cfg.tls.is_some() { "mutual TLS" } else { "PLAINTEXT, insecure" });
        Ok((hub, addr))
    }

    /// Identities currently connected.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.parties.lock().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until at least `n` parties are connected or `within` passes; returns how many are.
    pub async fn wait_for(&self, n: usize, within: Duration) -> usize {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let have = self.connected().len();
            if have >= n {
                return have;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return self.connected().len();
            }
        }
    }

    /// Parameter bytes sent to and received from parties so far (chunk payloads, after
    /// compression).
    pub fn traffic(&self) -> (u64, u64) {
        (self.inner.bytes_out.load(Ordering::Relaxed), self.inner.bytes_in.load(Ordering::Relaxed))
    }

    /// Tells every connected party the federation is over, waits up to `grace` for them to
    /// leave, and closes the connections of any that have not (a party that does not read
    /// cannot hold the server open).
    pub async fn shutdown(&self, reason: &str, grace: Duration) {
        self.inner.closing.store(true, Ordering::Relaxed);
        let conns: Vec<Arc<Conn>> =
            self.inner.parties.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        let mut sends = tokio::task::JoinSet::new();
        for c in conns {
            let m = msg(server_message::Msg::Shutdown(Shutdown { reason: reason.into() }));
            sends.spawn(async move { tokio::time::timeout(grace, c.tx.send(Ok(m))).await });
        }
        while sends.join_next().await.is_some() {}
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + grace;
        while !self.connected().is_empty() {
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                break;
            }
        }
        let stalled: Vec<(String, Arc<Conn>)> = self
            .inner
            .parties
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (id, c) in stalled {
            warn!(party = %id, "did not leave within {grace:?} of the shutdown; its connection is closed");
            self.drop_conn(&id, &c, "closed at shutdown");
        }
    }

    /// Open connections, joined or not (for limits and measurements).
    pub fn open_connections(&self) -> usize {
        self.inner.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    async fn conn(&self, id: &str) -> Result<Arc<Conn>, ClientError> {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.cfg.rejoin_wait;
        loop {
            if let Some(c) = self.inner.parties.lock().ok().and_then(|p| p.get(id).cloned()) {
                return Ok(c);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(ClientError::Unavailable(format!(
                    "not connected (waited {:?} for it to join)",
                    self.inner.cfg.rejoin_wait
                )));
            }
        }
    }

    /// Sends a task to party `id` and waits for its reply, all within the round deadline: a
    /// party that does not read its task in time is dropped and its connection closed, like a
    /// dead one; one that reads it but does not answer in time fails the task.
    async fn call(&self, id: &str, build: impl FnOnce(u64, &Conn) -> Vec<ServerMessage>) -> Result<Reply, ClientError> {
        let timeout = self.inner.cfg.task_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = self.conn(id).await?;
        if self.inner.deny.denied(id) {
            let reason = "revoked (listed in server.deny_file); its connection is closed".to_string();
            warn!(party = id, "{reason}");
            self.drop_conn(id, &conn, &reason);
            return Err(ClientError::Unavailable(reason));
        }
        let task_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(task_id, tx);
        }
        let messages = build(task_id, &conn);
        let sent = tokio::time::timeout_at(deadline, async {
            for m in messages {
                conn.tx.send(Ok(m)).await.map_err(|_| ())?;
            }
            Ok::<(), ()>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(())) => return Err(ClientError::Unavailable("disconnected while receiving its task".into())),
            Err(_) => {
                let reason = format!("did not read its task within the round deadline of {timeout:?}; dropped");
                self.drop_conn(id, &conn, &reason);
                return Err(ClientError::Unavailable(reason));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Unavailable("disconnected before replying".into())),
            Err(_) => {
                if let Ok(mut p) = conn.pending.lock() {
                    p.remove(&task_id);
                }
                Err(ClientError::Unavailable(format!("no reply within the deadline of {timeout:?}")))
            }
        }
    }

    /// Drops party `id`'s connection `conn`: deregistered, its tasks failed, the connection
    /// closed.
    fn drop_conn(&self, id: &str, conn: &Arc<Conn>, reason: &str) {
        self.deregister(id, conn, reason);
        conn.guard.kill();
    }

    /// `values` encoded once under a fresh transfer id, to be sent to any number of parties
    /// (chunk payloads are shared, not copied).
    fn encode(&self, values: &[f32]) -> Arc<Encoded> {
        let transfer = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (header, chunks) = codec::split(values, transfer, self.inner.cfg.chunk_bytes, self.inner.cfg.zstd);
        Arc::new(Encoded { header, chunks })
    }

    /// The chunk messages of `enc`, counted as sent.
    fn chunk_messages(&self, enc: &Encoded) -> Vec<ServerMessage> {
        let bytes: usize = enc.chunks.iter().map(|c| c.data.len()).sum();
        self.inner.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        enc.chunks.iter().map(|c| msg(server_message::Msg::Chunk(c.clone()))).collect()
    }

    /// What a fit task sends, encoded.
    fn fit_payload(&self, global: &Parameters, task: &FitTask) -> FitPayload {
        FitPayload {
            model: self.model_payload(global, task.model, &task.changes),
            vector: task.vector.as_ref().map(|v| self.encode(v)),
        }
    }

    /// Sends a fit task to party `id` and waits for its reply.
    pub async fn fit(&self, id: &str, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let payload = self.fit_payload(global, task);
        let reply = self.fit_encoded(id, &payload, task).await;
        decode_upload(reply, global, task)
    }

    /// Sends a fit task whose payload ([`Hub::fit_payload`]) is already encoded.
    async fn fit_encoded(&self, id: &str, payload: &FitPayload, task: &FitTask) -> Result<FitReply, ClientError> {
        let r = self
            .call(id, |task_id, conn| {
                let sent = conn.model_header(&payload.model, task.model);
                let head = msg(server_message::Msg::Fit(FitInstruction {
                    task_id,
                    round: task.round,
                    training: Some(training_to_proto(&task.training)),
                    seed: task.seed,
                    params: Some(sent.params),
                    vector: payload.vector.as_ref().map(|v| v.header),
                    scaling: task.scaling.as_deref().map(moments_to_proto),
                    chain: sent.chain,
                }));
                let model = sent.transfers.into_iter().flat_map(|m| self.chunk_messages(m));
                let vector = payload.vector.iter().flat_map(|v| self.chunk_messages(v));
                std::iter::once(head).chain(model).chain(vector).collect()
            })
            .await?;
        match r {
            Reply::Fit(f) => Ok(f),
            _ => Err(ClientError::Unavailable("answered a fit task with something else".into())),
        }
    }

    /// Sends an evaluation task to party `id` and waits for its reply.
    pub async fn evaluate(
        &self,
        id: &str,
        params: &Parameters,
        task: &EvaluateTask,
    ) -> Result<EvaluateReply, ClientError> {
        let payload = self.model_payload(params, task.model, &task.changes);
        self.evaluate_encoded(id, &payload, task).await
    }

    async fn evaluate_encoded(
        &self,
        id: &str,
        payload: &ModelPayload,
        task: &EvaluateTask,
    ) -> Result<EvaluateReply, ClientError> {
        let r = self
            .call(id, |task_id, conn| {
                let sent = conn.model_header(payload, task.model);
                let head = msg(server_message::Msg::Evaluate(EvaluateInstruction {
                    task_id,
                    round: task.round,
                    params: Some(sent.params),
                    scaling: task.scaling.as_deref().map(moments_to_proto),
                    chain: sent.chain,
                }));
                let model = sent.transfers.into_iter().flat_map(|m| self.chunk_messages(m));
                std::iter::once(head).chain(model).collect()
            })
            .await?;
        match r {
            Reply::Evaluate(e) => Ok(e),
            _ => Err(ClientError::Unavailable("answered an evaluation with something else".into())),
        }
    }

    /// Round 0: asks party `id` for the statistics of its training rows (`None`: it holds no
    /// table).
    pub async fn statistics(&self, id: &str) -> Result<Option<Moments>, ClientError> {
        let r = self
            .call(id, |task_id, _| vec![msg(server_message::Msg::Stats(crate::proto::StatsInstruction { task_id }))])
            .await?;
        match r {
            Reply::Stats(m) => Ok(m),
            _ => Err(ClientError::Unavailable("answered a statistics request with something else".into())),
        }
    }

    /// Makes `conn` the live connection of party `id`. One live connection per identity: an
    /// earlier one is told it was replaced (a `Refusal`, which its runner treats as final) and
    /// closed, and its tasks fail.
    fn register(&self, id: &str, conn: Arc<Conn>, peer: &str) {
        let old = self.inner.parties.lock().ok().and_then(|mut p| p.insert(id.to_string(), conn));
        if let Some(old) = old {
            let reason = format!("replaced by a new connection for the same identity from {peer}");
            warn!(party = id, "{reason}; the old connection is told and closed");
            old.fail_all(&reason);
            tokio::spawn(async move {
                let m = msg(server_message::Msg::Refusal(crate::proto::Refusal { reason }));
                let _ = tokio::time::timeout(Duration::from_secs(1), old.tx.send(Ok(m))).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                old.guard.kill();
            });
        }
        self.inner.changed.send_modify(|g| *g += 1);
    }

    fn deregister(&self, id: &str, conn: &Arc<Conn>, reason: &str) {
        if let Ok(mut p) = self.inner.parties.lock()
            && p.get(id).is_some_and(|c| c.generation == conn.generation)
        {
            p.remove(id);
        }
        conn.fail_all(reason);
        self.inner.changed.send_modify(|g| *g += 1);
    }
}
