//! The server side of a deployment: a gRPC service parties dial into, the registry of
//! connected parties, and `RemoteParty`, the `ClientProxy` the core round loop drives.
//!
//! Each connected party has one task reading its stream. Instructions go out on the party's
//! outgoing channel; replies are matched to waiting calls by task id. A party that sends
//! something malformed or over the limits, stays silent past the timeout, or disconnects is
//! dropped with a logged reason; its outstanding tasks fail, the others carry on, and it may
//! connect again (the new connection replaces the old).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federate_core::{ClientError, ClientProxy, EvaluateReply, EvaluateTask, FitReply, FitTask, Parameters};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::codec::{self, Assembler, Limits};
use crate::convert::training_to_proto;
use crate::proto::federation_server::{Federation, FederationServer};
use crate::proto::{
    EvaluateInstruction, FitInstruction, Heartbeat, PartyMessage, ServerMessage, Shutdown, Welcome, party_message,
    server_message,
};
use crate::tls::{TlsFiles, party_identity_ok, server_config};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

enum Reply {
    Fit(FitReply),
    Evaluate(EvaluateReply),
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Reply, ClientError>>>>;

struct Conn {
    generation: u64,
    tx: mpsc::Sender<Result<ServerMessage, Status>>,
    pending: Pending,
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
    changed: watch::Sender<u64>,
    next_id: AtomicU64,
    closing: std::sync::atomic::AtomicBool,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
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
                changed,
                next_id: AtomicU64::new(1),
                closing: std::sync::atomic::AtomicBool::new(false),
                bytes_out: AtomicU64::new(0),
                bytes_in: AtomicU64::new(0),
            }),
        };
        let svc = FederationServer::new(Service { hub: hub.clone() })
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(cfg.heartbeat))
            .http2_keepalive_timeout(Some(cfg.party_timeout))
            .add_service(svc);
        match &cfg.tls {
            Some(files) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config(files)?);
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(accept_tls(listener, acceptor, tx));
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming(ReceiverStream::new(rx)).await {
                        warn!("server stopped: {e}");
                    }
                });
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming(incoming).await {
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

    /// Tells every connected party the federation is over.
    pub async fn shutdown(&self, reason: &str) {
        self.inner.closing.store(true, Ordering::Relaxed);
        let conns: Vec<Arc<Conn>> =
            self.inner.parties.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        for c in conns {
            let _ = c.tx.send(Ok(msg(server_message::Msg::Shutdown(Shutdown { reason: reason.into() })))).await;
        }
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

    async fn call(&self, id: &str, build: impl FnOnce(u64) -> Vec<ServerMessage>) -> Result<Reply, ClientError> {
        let conn = self.conn(id).await?;
        let task_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(task_id, tx);
        }
        for m in build(task_id) {
            if conn.tx.send(Ok(m)).await.is_err() {
                return Err(ClientError::Unavailable("disconnected while receiving its task".into()));
            }
        }
        let timeout = self.inner.cfg.task_timeout;
        match tokio::time::timeout(timeout, rx).await {
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

    fn params_messages(&self, transfer: u64, values: &[f32]) -> (crate::proto::ParametersHeader, Vec<ServerMessage>) {
        let (h, chunks) = codec::split(values, transfer, self.inner.cfg.chunk_bytes, self.inner.cfg.zstd);
        let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        self.inner.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        (h, chunks.into_iter().map(|c| msg(server_message::Msg::Chunk(c))).collect())
    }

    /// Sends a fit task to party `id` and waits for its reply.
    pub async fn fit(&self, id: &str, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        // A second vector (SCAFFOLD's c) travels after the model in the same transfer.
        let joined: Option<Vec<f32>> = task.extra.as_ref().map(|e| [global.values.as_slice(), e].concat());
        let r = self
            .call(id, |task_id| {
                let (header, chunks) = self.params_messages(task_id, joined.as_deref().unwrap_or(&global.values));
                let head = msg(server_message::Msg::Fit(FitInstruction {
                    task_id,
                    round: task.round,
                    training: Some(training_to_proto(&task.training)),
                    seed: task.seed,
                    params: Some(header),
                    with_extra: joined.is_some(),
                }));
                std::iter::once(head).chain(chunks).collect()
            })
            .await?;
        match r {
            Reply::Fit(f) => Ok(f),
            Reply::Evaluate(_) => Err(ClientError::Unavailable("answered a fit task with an evaluation".into())),
        }
    }

    /// Sends an evaluation task to party `id` and waits for its reply.
    pub async fn evaluate(
        &self,
        id: &str,
        params: &Parameters,
        task: &EvaluateTask,
    ) -> Result<EvaluateReply, ClientError> {
        let r = self
            .call(id, |task_id| {
                let (header, chunks) = self.params_messages(task_id, &params.values);
                let head = msg(server_message::Msg::Evaluate(EvaluateInstruction {
                    task_id,
                    round: task.round,
                    params: Some(header),
                }));
                std::iter::once(head).chain(chunks).collect()
            })
            .await?;
        match r {
            Reply::Evaluate(e) => Ok(e),
            Reply::Fit(_) => Err(ClientError::Unavailable("answered an evaluation with a fit".into())),
        }
    }

    fn register(&self, id: &str, tx: mpsc::Sender<Result<ServerMessage, Status>>) -> Arc<Conn> {
        let generation = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn { generation, tx, pending: Mutex::new(HashMap::new()) });
        let old = self.inner.parties.lock().ok().and_then(|mut p| p.insert(id.to_string(), conn.clone()));
        if let Some(old) = old {
            old.fail_all("replaced by a new connection of the same party");
            info!(party = id, "reconnected; the old connection is closed");
        }
        self.inner.changed.send_modify(|g| *g += 1);
        conn
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

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => warn!(%peer, "refused: TLS handshake failed: {e}"),
                Err(_) => warn!(%peer, "refused: TLS handshake did not finish within 10 s"),
            }
        });
    }
}

struct Service {
    hub: Hub,
}

/// What the reader of one party's stream is in the middle of receiving.
enum Receiving {
    Nothing,
    Fit { task_id: u64, num_examples: usize, metrics: BTreeMap<String, f64>, assembler: Assembler, extra: bool },
}

#[tonic::async_trait]
impl Federation for Service {
    type JoinStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn join(&self, req: Request<Streaming<PartyMessage>>) -> Result<Response<Self::JoinStream>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let certs = req.peer_certs();
        let mut inbound = req.into_inner();
        let cfg = &self.hub.inner.cfg;
        let refuse = |reason: String| {
            warn!(%peer, "refused: {reason}");
            Err(Status::permission_denied(reason))
        };
        let first = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return refuse("closed before saying hello".into()),
            Ok(Err(s)) => return refuse(format!("bad first message: {}", s.message())),
            Err(_) => return refuse("no hello within 10 s".into()),
        };
        let Some(party_message::Msg::Hello(hello)) = first.msg else {
            return refuse("the first message must be Hello".into());
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let reason = format!(
                "unsupported protocol version {} (this server speaks {PROTOCOL_VERSION}); upgrade the party",
                hello.protocol_version
            );
            warn!(%peer, "refused: {reason}");
            return Err(Status::failed_precondition(reason));
        }
        let id = hello.party_id.clone();
        if !self.hub.inner.allowed.contains(&id) {
            return refuse(format!("party '{id}' is not on the allow-list"));
        }
        if cfg.tls.is_some() {
            let ok = certs.as_ref().and_then(|c| c.first()).is_some_and(|c| party_identity_ok(c, &id));
            if !ok {
                return refuse(format!("the client certificate is not issued to '{id}'"));
            }
        }
        let (tx, rx) = mpsc::channel(256);
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_ms: cfg.heartbeat.as_millis() as u32,
            max_chunk_bytes: cfg.limits.max_chunk_bytes as u64,
        };
        let _ = tx.send(Ok(msg(server_message::Msg::Welcome(welcome)))).await;
        let conn = self.hub.register(&id, tx.clone());
        info!(party = %id, %peer, "joined");
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let reason = read_party(&hub, &id, &conn, &mut inbound).await;
            if hub.inner.closing.load(Ordering::Relaxed) {
                info!(party = %id, "left: {reason}");
            } else {
                warn!(party = %id, "dropped: {reason}");
            }
            hub.deregister(&id, &conn, &reason);
        });
        let heartbeat = cfg.heartbeat;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(heartbeat).await;
                let hb = msg(server_message::Msg::Heartbeat(Heartbeat { unix_ms: now_ms() }));
                if tx.send(Ok(hb)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reads one party's stream until it ends; returns why it ended.
async fn read_party(hub: &Hub, id: &str, conn: &Arc<Conn>, inbound: &mut Streaming<PartyMessage>) -> String {
    let cfg = &hub.inner.cfg;
    let mut state = Receiving::Nothing;
    let resolve = |task_id: u64, r: Result<Reply, ClientError>| {
        let tx = conn.pending.lock().ok().and_then(|mut p| p.remove(&task_id));
        match tx {
            Some(tx) => {
                let _ = tx.send(r);
            }
            None => warn!(party = id, task_id, "reply to a task that is not waiting (late or unknown); ignored"),
        }
    };
    loop {
        let m = match tokio::time::timeout(cfg.party_timeout, inbound.message()).await {
            Err(_) => return format!("silent for {:?}", cfg.party_timeout),
            Ok(Err(s)) => return format!("stream error: {} ({:?})", s.message(), s.code()),
            Ok(Ok(None)) => return "disconnected".into(),
            Ok(Ok(Some(m))) => m,
        };
        let Some(m) = m.msg else { return "empty message".into() };
        match (m, &mut state) {
            (party_message::Msg::Heartbeat(_), _) => {}
            (party_message::Msg::Fit(f), Receiving::Nothing) => {
                let Some(h) = f.params else { return "fit result without parameters".into() };
                let want = if f.with_extra { 2 * cfg.model_len } else { cfg.model_len } as u64;
                if h.num_values != want {
                    return format!("sent {} parameters, the model has {}", h.num_values, cfg.model_len);
                }
                let assembler = match Assembler::new(h, cfg.limits) {
                    Ok(a) => a,
                    Err(e) => return format!("bad parameter header: {e}"),
                };
                state = Receiving::Fit {
                    task_id: f.task_id,
                    num_examples: f.num_examples as usize,
                    metrics: f.metrics.into_iter().collect(),
                    assembler,
                    extra: f.with_extra,
                };
            }
            (party_message::Msg::Chunk(c), Receiving::Fit { assembler, .. }) => {
                hub.inner.bytes_in.fetch_add(c.data.len() as u64, Ordering::Relaxed);
                match assembler.push(c) {
                    Err(e) => return format!("bad parameter chunk: {e}"),
                    Ok(None) => {}
                    Ok(Some(mut params)) => {
                        if let Receiving::Fit { task_id, num_examples, metrics, extra, .. } =
                            std::mem::replace(&mut state, Receiving::Nothing)
                        {
                            let extra = extra.then(|| params.split_off(cfg.model_len));
                            if let Some(i) = params.iter().position(|v| !v.is_finite()) {
                                warn!(party = id, "update has a non-finite value at {i}; the strategy will refuse it");
                            }
                            resolve(task_id, Ok(Reply::Fit(FitReply { params, num_examples, metrics, extra })));
                        }
                    }
                }
            }
            (party_message::Msg::Evaluate(e), Receiving::Nothing) => {
                if !(e.loss.is_finite() && (0.0..=1.0).contains(&e.accuracy)) {
                    resolve(
                        e.task_id,
                        Err(ClientError::Unavailable(format!(
                            "evaluation out of range: loss {}, accuracy {}",
                            e.loss, e.accuracy
                        ))),
                    );
                    continue;
                }
                let r = EvaluateReply { num_examples: e.num_examples as usize, loss: e.loss, accuracy: e.accuracy };
                resolve(e.task_id, Ok(Reply::Evaluate(r)));
            }
            (party_message::Msg::Error(e), Receiving::Nothing) => {
                warn!(party = id, task_id = e.task_id, "task failed on the party: {}", e.reason);
                let err = if e.budget_spent {
                    ClientError::BudgetSpent(e.reason)
                } else {
                    ClientError::Unavailable(format!("failed on the party: {}", e.reason))
                };
                resolve(e.task_id, Err(err));
            }
            (party_message::Msg::Hello(_), _) => return "a second hello".into(),
            (other, _) => return format!("unexpected message {}", kind(&other)),
        }
    }
}

fn kind(m: &party_message::Msg) -> &'static str {
    match m {
        party_message::Msg::Hello(_) => "hello",
        party_message::Msg::Fit(_) => "fit result (another one is still arriving)",
        party_message::Msg::Evaluate(_) => "evaluation (while parameters are arriving)",
        party_message::Msg::Chunk(_) => "chunk (no transfer announced)",
        party_message::Msg::Heartbeat(_) => "heartbeat",
        party_message::Msg::Error(_) => "error (while parameters are arriving)",
    }
}

/// A party across the network, as the core round loop sees it.
pub struct RemoteParty {
    id: String,
    hub: Hub,
    rt: tokio::runtime::Handle,
}

impl RemoteParty {
    /// The proxy for identity `id`, calling through `hub` on runtime `rt`.
    pub fn new(id: impl Into<String>, hub: Hub, rt: tokio::runtime::Handle) -> Self {
        RemoteParty { id: id.into(), hub, rt }
    }
}

impl ClientProxy for RemoteParty {
    fn id(&self) -> &str {
        &self.id
    }
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        self.rt.block_on(self.hub.fit(&self.id, global, task))
    }
    fn evaluate(&mut self, params: &Parameters, task: &EvaluateTask) -> Result<EvaluateReply, ClientError> {
        self.rt.block_on(self.hub.evaluate(&self.id, params, task))
    }
    fn concurrent(&self) -> bool {
        true
    }
}
