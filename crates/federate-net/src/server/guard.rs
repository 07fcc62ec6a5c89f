//! What bounds a peer before it is a party: the accept loop (connection and handshake
//! limits, time to join), the guard that can close a connection with all its streams, the
//! deny-list, and the cleaning of text a peer sends.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::*;

/// A file's modification time and size, to notice that it changed.
pub(super) type Stamp = Option<(SystemTime, u64)>;

/// The deny-list file, re-read whenever its size or modification time changes.
pub(super) struct DenyList {
    pub(super) path: Option<std::path::PathBuf>,
    pub(super) cache: Mutex<(Stamp, HashSet<String>)>,
}

impl DenyList {
    /// Whether `id` is revoked. A file that vanished denies no one; one that cannot be read
    /// or is over 1 MiB keeps the last list read (and is logged).
    pub(super) fn denied(&self, id: &str) -> bool {
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
pub(super) struct ConnGuard {
    pub(super) peer: SocketAddr,
    pub(super) killed: AtomicBool,
    pub(super) party: Mutex<Option<String>>,
    pub(super) wakers: Mutex<[Option<Waker>; 2]>,
}

impl ConnGuard {
    pub(super) fn kill(&self) {
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
pub(super) struct Guarded<IO> {
    pub(super) io: IO,
    pub(super) guard: Arc<ConnGuard>,
    pub(super) conns: Arc<Mutex<HashMap<SocketAddr, Arc<ConnGuard>>>>,
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
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

pub(super) fn aborted() -> std::io::Error {
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

/// Accepts connections within the limits, upgrades each (TLS handshake, or nothing for
/// plaintext) within `join_timeout`, and hands it to the HTTP/2 server under a guard. A
/// connection over a limit is closed at once; refusals are logged at most every 5 s.
pub(super) async fn accept_loop<IO, U, F>(
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
