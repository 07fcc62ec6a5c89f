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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federate_core::{ClientError, ClientProxy, EvaluateReply, EvaluateTask, FitReply, FitTask, Parameters};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
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
}

/// A file's modification time and size, to notice that it changed.
type Stamp = Option<(SystemTime, u64)>;

/// The deny-list file, re-read whenever its size or modification time changes.
struct DenyList {
    path: Option<std::path::PathBuf>,
    cache: Mutex<(Stamp, HashSet<String>)>,
}

impl DenyList {
    /// Whether `id` is revoked. A file that vanished denies no one; one that cannot be read
    /// or is over 1 MiB keeps the last list read (and is logged).
    fn denied(&self, id: &str) -> bool {
        let Some(path) = &self.path else { return false };
        let Ok(mut cache) = self.cache.lock() else { return true };
        let stamp = std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
        if stamp != cache.0 {
            match stamp {
                None => *cache = (None, HashSet::new()),
                Some((_, len)) if len > 1 << 20 => {
                    warn!("{}: {len} bytes is too large for a deny-list; the previous list stays", path.display())
                }
                Some(st) => match std::fs::read_to_string(path) {
                    Ok(text) => {
                        let ids = text
                            .lines()
                            .map(|l| l.split('#').next().unwrap_or("").trim())
                            .filter(|l| !l.is_empty())
                            .map(String::from)
                            .collect();
                        *cache = (Some(st), ids);
                    }
                    Err(e) => warn!("{}: {e}; the previous deny-list stays", path.display()),
                },
            }
        }
        cache.1.contains(id)
    }
}

impl HubConfig {
    /// The defaults for the limits on peers, for a federation of `parties` parties: room for
    /// every party twice over (reconnections) plus 64, 64 handshakes, 8 streams per connection,
    /// 10 s to join.
    pub fn default_limits(parties: usize) -> (usize, usize, u32, Duration) {
        (parties.saturating_mul(2).saturating_add(64), 64, 8, Duration::from_secs(10))
    }
}

/// Longest text from a party (a failure reason, a metric name) kept in logs and records.
pub const MAX_TEXT: usize = 512;

/// Most metrics one reply may carry.
pub const MAX_METRICS: usize = 64;

/// `text` from a peer made safe for a log line or a record: control characters (newlines
/// that would forge log lines, terminal escapes) escaped, and cut to [`MAX_TEXT`] bytes at a
/// character boundary with the number of bytes left out.
pub fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT) + 16);
    for (i, c) in text.char_indices() {
        if out.len() >= MAX_TEXT {
            out.push_str(&format!("… ({} more bytes)", text.len() - i));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One accepted connection: its claim on the connection limit, the party it carries once
/// joined, and a kill switch that makes its reads and writes fail so the HTTP/2 layer drops
/// it with every stream on it.
struct ConnGuard {
    peer: SocketAddr,
    killed: AtomicBool,
    party: Mutex<Option<String>>,
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl ConnGuard {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let wakers = self.wakers.lock().map(|mut w| [w[0].take(), w[1].take()]).unwrap_or_default();
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Whether the connection is killed; otherwise remembers who to wake when it is.
    fn killed(&self, cx: &Context<'_>, slot: usize) -> bool {
        if self.killed.load(Ordering::SeqCst) {
            return true;
        }
        if let Ok(mut w) = self.wakers.lock() {
            match &w[slot] {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => w[slot] = Some(cx.waker().clone()),
            }
        }
        self.killed.load(Ordering::SeqCst)
    }
}

/// A connection's byte stream under its [`ConnGuard`]; dropping it gives its place back.
struct Guarded<IO> {
    io: IO,
    guard: Arc<ConnGuard>,
    conns: Arc<Mutex<HashMap<SocketAddr, Arc<ConnGuard>>>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<IO> Drop for Guarded<IO> {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conns.lock()
            && c.get(&self.guard.peer).is_some_and(|g| Arc::ptr_eq(g, &self.guard))
        {
            c.remove(&self.guard.peer);
        }
    }
}

fn aborted() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection closed by the server")
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.guard.killed(cx, 0) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.guard.killed(cx, 1) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.guard.killed(cx, 1) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A parameter vector encoded for the wire once, sent to many parties.
struct Encoded {
    header: crate::proto::ParametersHeader,
    chunks: Vec<crate::proto::Chunk>,
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
    guard: Arc<ConnGuard>,
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
    /// The one transport every `RemoteParty` of this hub shares (so a round batches them).
    transport: Mutex<Option<Arc<HubTransport>>>,
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
                transport: Mutex::new(None),
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
    async fn call(&self, id: &str, build: impl FnOnce(u64) -> Vec<ServerMessage>) -> Result<Reply, ClientError> {
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
        let messages = build(task_id);
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

    /// What a fit task sends: the model, followed by the task's second vector if any
    /// (SCAFFOLD's c) in the same transfer.
    fn fit_payload(&self, global: &Parameters, task: &FitTask) -> Arc<Encoded> {
        match &task.extra {
            Some(e) => self.encode(&[global.values.as_slice(), e].concat()),
            None => self.encode(&global.values),
        }
    }

    /// Sends a fit task to party `id` and waits for its reply.
    pub async fn fit(&self, id: &str, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let payload = self.fit_payload(global, task);
        self.fit_encoded(id, &payload, task).await
    }

    /// Sends a fit task whose payload ([`Hub::fit_payload`]) is already encoded.
    async fn fit_encoded(&self, id: &str, payload: &Encoded, task: &FitTask) -> Result<FitReply, ClientError> {
        let r = self
            .call(id, |task_id| {
                let head = msg(server_message::Msg::Fit(FitInstruction {
                    task_id,
                    round: task.round,
                    training: Some(training_to_proto(&task.training)),
                    seed: task.seed,
                    params: Some(payload.header),
                    with_extra: task.extra.is_some(),
                }));
                std::iter::once(head).chain(self.chunk_messages(payload)).collect()
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
        let payload = self.encode(&params.values);
        self.evaluate_encoded(id, &payload, task).await
    }

    async fn evaluate_encoded(
        &self,
        id: &str,
        payload: &Encoded,
        task: &EvaluateTask,
    ) -> Result<EvaluateReply, ClientError> {
        let r = self
            .call(id, |task_id| {
                let head = msg(server_message::Msg::Evaluate(EvaluateInstruction {
                    task_id,
                    round: task.round,
                    params: Some(payload.header),
                }));
                std::iter::once(head).chain(self.chunk_messages(payload)).collect()
            })
            .await?;
        match r {
            Reply::Evaluate(e) => Ok(e),
            Reply::Fit(_) => Err(ClientError::Unavailable("answered an evaluation with a fit".into())),
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

/// Accepts connections within the limits, upgrades each (TLS handshake, or nothing for
/// plaintext) within `join_timeout`, and hands it to the HTTP/2 server under a guard. A
/// connection over a limit is closed at once; refusals are logged at most every 5 s.
async fn accept_loop<IO, U, F>(
    listener: TcpListener,
    hub: Hub,
    upgrade: U,
    tx: mpsc::Sender<Result<Guarded<IO>, std::io::Error>>,
) where
    U: Fn(TcpStream) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = std::io::Result<IO>> + Send + 'static,
    IO: Send + 'static,
{
    let cfg = &hub.inner.cfg;
    let connections = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let handshakes = Arc::new(Semaphore::new(cfg.max_handshakes.max(1)));
    let join_timeout = cfg.join_timeout;
    let mut refused = 0u64;
    let mut last_warning = tokio::time::Instant::now() - Duration::from_secs(10);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permits = connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| "max_connections")
            .and_then(|c| handshakes.clone().try_acquire_owned().map(|h| (c, h)).map_err(|_| "max_handshakes"));
        let (permit, handshake) = match permits {
            Ok(p) => p,
            Err(limit) => {
                drop(tcp);
                refused += 1;
                if last_warning.elapsed() >= Duration::from_secs(5) {
                    warn!(%peer, "refused {refused} connection(s) over the limit server.{limit}");
                    refused = 0;
                    last_warning = tokio::time::Instant::now();
                }
                continue;
            }
        };
        let (upgrade, tx, hub) = (upgrade.clone(), tx.clone(), hub.clone());
        tokio::spawn(async move {
            let io = match tokio::time::timeout(join_timeout, upgrade(tcp)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return warn!(%peer, "refused: TLS handshake failed: {}", clean_text(&e.to_string())),
                Err(_) => return warn!(%peer, "refused: TLS handshake did not finish within {join_timeout:?}"),
            };
            drop(handshake);
            let guard = Arc::new(ConnGuard {
                peer,
                killed: AtomicBool::new(false),
                party: Mutex::new(None),
                wakers: Mutex::new([None, None]),
            });
            let conns = hub.inner.conns.clone();
            if let Ok(mut c) = conns.lock() {
                c.insert(peer, guard.clone());
            }
            let watch = guard.clone();
            tokio::spawn(async move {
                tokio::time::sleep(join_timeout).await;
                if watch.party.lock().map(|p| p.is_none()).unwrap_or(true) {
                    if !watch.killed.load(Ordering::SeqCst) {
                        warn!(%peer, "closed: no party joined on this connection within {join_timeout:?}");
                    }
                    watch.kill();
                }
            });
            let _ = tx.send(Ok(Guarded { io, guard, conns, _permit: permit })).await;
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
        let addr = req.remote_addr();
        let peer = addr.map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let guard = addr.and_then(|a| self.hub.inner.conns.lock().ok().and_then(|c| c.get(&a).cloned()));
        let certs = req.peer_certs();
        let mut inbound = req.into_inner();
        let cfg = &self.hub.inner.cfg;
        let refuse = |reason: String| {
            warn!(%peer, "refused: {reason}");
            Err(Status::permission_denied(reason))
        };
        let Some(guard) = guard else {
            return refuse("the connection is not one the server accepted (already closed?)".into());
        };
        if let Some(carried) = guard.party.lock().ok().and_then(|p| p.clone()) {
            return refuse(format!("this connection already carries party '{carried}': one party per connection"));
        }
        let first = match tokio::time::timeout(cfg.join_timeout, inbound.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return refuse("closed before saying hello".into()),
            Ok(Err(s)) => return refuse(format!("bad first message: {}", clean_text(s.message()))),
            Err(_) => return refuse(format!("no hello within {:?}", cfg.join_timeout)),
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
            return refuse(format!("party '{}' is not on the allow-list", clean_text(&id)));
        }
        if self.hub.inner.deny.denied(&id) {
            return refuse(format!("party '{id}' is revoked (listed in the server's deny_file)"));
        }
        if cfg.tls.is_some() {
            let ok = certs.as_ref().and_then(|c| c.first()).is_some_and(|c| party_identity_ok(c, &id));
            if !ok {
                return refuse(format!("the client certificate is not issued to '{id}'"));
            }
        }
        // Claimed here, atomically: two Join streams racing on one connection cannot both pass.
        match guard.party.lock() {
            Ok(mut p) if p.is_none() => *p = Some(id.clone()),
            Ok(p) => {
                let carried = p.clone().unwrap_or_default();
                drop(p);
                return refuse(format!("this connection already carries party '{carried}': one party per connection"));
            }
            Err(_) => return Err(Status::internal("connection state poisoned")),
        }
        // Small: what waits here is bounded by 32 chunks per party.
        let (tx, rx) = mpsc::channel(32);
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_ms: cfg.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            max_chunk_bytes: cfg.limits.max_chunk_bytes as u64,
        };
        let _ = tx.try_send(Ok(msg(server_message::Msg::Welcome(welcome))));
        let generation = self.hub.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let conn =
            Arc::new(Conn { generation, tx: tx.clone(), pending: Mutex::new(HashMap::new()), guard: guard.clone() });
        self.hub.register(&id, conn.clone(), &peer);
        info!(party = %id, %peer, "joined");
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let reason = read_party(&hub, &id, &conn, &mut inbound).await;
            if hub.inner.closing.load(Ordering::Relaxed) {
                info!(party = %id, "left: {reason}");
            } else {
                warn!(party = %id, "dropped: {reason}");
            }
            hub.drop_conn(&id, &conn, &reason);
        });
        let heartbeat = cfg.heartbeat;
        tokio::spawn(async move {
            // Never waits on a party: a heartbeat that does not fit is skipped (the party is
            // not reading, which the round deadline deals with).
            loop {
                tokio::time::sleep(heartbeat).await;
                let hb = msg(server_message::Msg::Heartbeat(Heartbeat { unix_ms: now_ms() }));
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(hb)) {
                    break;
                }
                if guard.killed.load(Ordering::SeqCst) {
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
            Ok(Err(s)) => return format!("stream error: {} ({:?})", clean_text(s.message()), s.code()),
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
                if f.metrics.len() > MAX_METRICS {
                    return format!("sent {} metrics; at most {MAX_METRICS} are accepted", f.metrics.len());
                }
                let metrics = f.metrics.into_iter().map(|(k, v)| (clean_text(&k), v)).collect();
                state = Receiving::Fit {
                    task_id: f.task_id,
                    num_examples: usize::try_from(f.num_examples).unwrap_or(usize::MAX),
                    metrics,
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
                // Ranges and counts are the core's admission's to check, in one place.
                let num_examples = usize::try_from(e.num_examples).unwrap_or(usize::MAX);
                let r = EvaluateReply { num_examples, loss: e.loss, accuracy: e.accuracy };
                resolve(e.task_id, Ok(Reply::Evaluate(r)));
            }
            (party_message::Msg::Error(e), Receiving::Nothing) => {
                let reason = clean_text(&e.reason);
                warn!(party = id, task_id = e.task_id, "task failed on the party: {reason}");
                let err = if e.budget_spent {
                    ClientError::BudgetSpent(reason)
                } else {
                    ClientError::Unavailable(format!("failed on the party: {reason}"))
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
    transport: Arc<HubTransport>,
}

impl RemoteParty {
    /// The proxy for identity `id`, calling through `hub` on runtime `rt`.
    pub fn new(id: impl Into<String>, hub: Hub, rt: tokio::runtime::Handle) -> Self {
        let transport = hub.transport(&rt);
        RemoteParty { id: id.into(), hub, rt, transport }
    }
}

impl Hub {
    /// The transport shared by every `RemoteParty` of this hub (made on first use).
    fn transport(&self, rt: &tokio::runtime::Handle) -> Arc<HubTransport> {
        let mut t = match self.inner.transport.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        t.get_or_insert_with(|| Arc::new(HubTransport { hub: self.clone(), rt: rt.clone() })).clone()
    }
}

/// A round's tasks for many remote parties, run as tasks on the runtime (no thread per
/// party): the server holds 10,000 connected parties in bounded memory.
pub struct HubTransport {
    hub: Hub,
    rt: tokio::runtime::Handle,
}

impl HubTransport {
    fn run_all<T, R, F, Fut>(&self, jobs: &[(&str, &T)], call: F) -> Vec<(Result<R, ClientError>, f64)>
    where
        T: Clone + Send + 'static,
        R: Send + 'static,
        F: Fn(usize, Hub, String, T) -> Fut,
        Fut: std::future::Future<Output = Result<R, ClientError>> + Send + 'static,
    {
        self.rt.block_on(async {
            let start = tokio::time::Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (i, (id, task)) in jobs.iter().enumerate() {
                let fut = call(i, self.hub.clone(), id.to_string(), (*task).clone());
                set.spawn(async move { (i, fut.await, start.elapsed().as_secs_f64()) });
            }
            let mut out: Vec<Option<(Result<R, ClientError>, f64)>> = jobs.iter().map(|_| None).collect();
            while let Some(done) = set.join_next().await {
                if let Ok((i, r, secs)) = done {
                    out[i] = Some((r, secs));
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| (Err(ClientError::Unavailable("the party's task panicked".into())), 0.0)))
                .collect()
        })
    }
}

impl federate_core::Transport for HubTransport {
    fn fit_all(&self, global: &Parameters, jobs: &[(&str, &FitTask)]) -> Vec<(Result<FitReply, ClientError>, f64)> {
        // One encoding per distinct payload (the model, plus the second vector the tasks
        // share, if any), not one per party.
        let mut payloads: Vec<(Option<*const Vec<f32>>, Arc<Encoded>)> = Vec::new();
        let mut per_job = Vec::with_capacity(jobs.len());
        for (_, task) in jobs {
            let key = task.extra.as_ref().map(Arc::as_ptr);
            let enc = match payloads.iter().find(|(k, _)| *k == key) {
                Some((_, e)) => e.clone(),
                None => {
                    let e = self.hub.fit_payload(global, task);
                    payloads.push((key, e.clone()));
                    e
                }
            };
            per_job.push(enc);
        }
        let per_job = Arc::new(per_job);
        self.run_all(jobs, move |i, hub, id, task| {
            let payloads = per_job.clone();
            async move { hub.fit_encoded(&id, &payloads[i], &task).await }
        })
    }

    fn evaluate_all(
        &self,
        params: &Parameters,
        jobs: &[(&str, &EvaluateTask)],
    ) -> Vec<(Result<EvaluateReply, ClientError>, f64)> {
        let payload = self.hub.encode(&params.values);
        self.run_all(jobs, move |_, hub, id, task| {
            let payload = payload.clone();
            async move { hub.evaluate_encoded(&id, &payload, &task).await }
        })
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
    fn transport(&self) -> Option<Arc<dyn federate_core::Transport>> {
        Some(self.transport.clone())
    }
}
