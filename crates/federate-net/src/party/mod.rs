//! The party runner: dials out to the server, says who it is, then answers instructions until
//! the server says the federation is over. Training runs on a blocking thread so heartbeats
//! keep flowing. A lost connection is retried with exponential backoff; a refusal (bad
//! certificate, not on the allow-list, wrong protocol version) is final.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use federate_core::{Client, ClientError, EvaluateTask, FitTask, Layout, Parameters};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::codec::{Limits, Transfers};
use crate::convert::{moments_from_proto, training_from_proto};
use crate::proto::federation_client::FederationClient;
use crate::proto::{Heartbeat, Hello, PartyMessage, ServerMessage, party_message, server_message};
use crate::server::PROTOCOL_VERSION;
use crate::tls::TlsFiles;

mod model;
mod send;
use federate_core::messages::Moments;
use model::{KeptModel, ModelFrom, model_from, task_model};
use send::{Done, send_error, send_result, send_statistics};

/// How a party connects.
#[derive(Debug, Clone)]
pub struct PartyOptions {
    /// Server URL, `https://host:port` (or `http://` with --insecure).
    pub server: String,
    /// This party's identity (must match its certificate).
    pub id: String,
    /// CA of the server plus this party's certificate and key; `None` is plaintext.
    pub tls: Option<TlsFiles>,
    /// The name on the server's certificate, when it differs from the URL's host.
    pub server_name: Option<String>,
    /// Limits on received parameter vectors.
    pub limits: Limits,
    /// Largest gRPC message.
    pub max_message_bytes: usize,
    /// Raw bytes per parameter chunk sent.
    pub chunk_bytes: usize,
    /// Compress parameter chunks with zstd.
    pub zstd: bool,
    /// Interval of this party's heartbeats.
    pub heartbeat: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Give up after this long without a working connection.
    pub give_up_after: Duration,
    /// The settings that must equal the federation's (sent in Hello; see
    /// `HubConfig::federation`).
    pub federation: std::collections::BTreeMap<String, String>,
}

/// Why a party stopped.
#[derive(Debug, thiserror::Error)]
pub enum PartyError {
    /// The server refused this party; retrying will not help.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// No connection could be made for too long.
    #[error("gave up after {0:?} without reaching the server: {1}")]
    Unreachable(Duration, String),
    /// Local configuration problem.
    #[error("{0}")]
    Config(String),
    /// A failure no retry fixes (certificates that do not match, TLS against plaintext).
    #[error("{0}")]
    Permanent(String),
}

enum SessionEnd {
    /// The server ended the federation.
    Finished(String),
    /// The connection broke (after joining, if the flag says so); try again.
    Lost(String, bool),
    /// The server refused this party after it joined; final.
    Refused(String),
}

fn out(m: party_message::Msg) -> PartyMessage {
    PartyMessage { msg: Some(m) }
}

async fn channel(opts: &PartyOptions) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(opts.server.clone())
        .map_err(|e| format!("bad server URL '{}': {e}", opts.server))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(opts.heartbeat)
        .keep_alive_while_idle(true);
    if let Some(t) = &opts.tls {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&t.ca)?))
            .identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
        if let Some(name) = &opts.server_name {
            tls = tls.domain_name(name.clone());
        }
        ep = ep.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    ep.connect().await.map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    })
}

/// Runs a party until the server ends the federation. `client` does the training and
/// evaluation; `layout` is its model's parameter layout.
pub async fn run_party(opts: PartyOptions, client: Box<dyn Client>, layout: Arc<Layout>) -> Result<String, PartyError> {
    check_local(&opts)?;
    let client = Arc::new(Mutex::new(client));
    let mut backoff = Duration::from_millis(250);
    let mut down_since = tokio::time::Instant::now();
    // Connections that reached the server but failed below gRPC in a row: plaintext against
    // TLS (or the reverse) looks like this and never heals.
    let mut garbled = 0;
    loop {
        match session(&opts, client.clone(), layout.clone()).await {
            Ok(SessionEnd::Finished(reason)) => return Ok(reason),
            Ok(SessionEnd::Refused(reason)) => return Err(PartyError::Refused(reason)),
            Err(refusal) => return Err(refusal),
            Ok(SessionEnd::Lost(reason, joined)) => {
                if let Some(cause) = permanent(&reason, opts.tls.is_some()) {
                    return Err(PartyError::Permanent(format!("{cause} ({reason})")));
                }
                garbled = if !joined && is_garbled(&reason) { garbled + 1 } else { 0 };
                if garbled >= 3 {
                    let cert = if opts.tls.is_some() {
                        "; or the server refuses this party's certificate (not issued by the federation's CA: the \
                         server's log names the reason)"
                    } else {
                        ""
                    };
                    return Err(PartyError::Permanent(format!(
                        "the server at {} answers, but the connection fails before joining, three times in a row \
                         ({reason}): check the scheme (https:// for a TLS server, http:// with --insecure for a \
                         plaintext one) and the port{cert}",
                        opts.server
                    )));
                }
                if joined {
                    backoff = Duration::from_millis(250);
                    down_since = tokio::time::Instant::now();
                }
                if down_since.elapsed() > opts.give_up_after {
                    return Err(PartyError::Unreachable(opts.give_up_after, reason));
                }
                warn!(party = %opts.id, "connection lost ({reason}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

/// Mistakes on this side that no retry fixes, found before dialling: a URL without its
/// scheme, a scheme that does not match the TLS setting, TLS files missing or not PEM.
fn check_local(opts: &PartyOptions) -> Result<(), PartyError> {
    let url = &opts.server;
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok {
        return Err(PartyError::Config(format!(
            "--server '{url}' needs a scheme: https://host:port (mutual TLS) or http://host:port (--insecure)"
        )));
    }
    if let Err(e) = Endpoint::from_shared(url.clone()) {
        return Err(PartyError::Config(format!("--server '{url}' is not a URL: {e}")));
    }
    match &opts.tls {
        None if url.starts_with("https://") => {
            return Err(PartyError::Config(
                "an https:// server needs TLS files (or use http:// with --insecure)".into(),
            ));
        }
        Some(_) if url.starts_with("http://") => {
            return Err(PartyError::Config(format!(
                "--server '{url}' is plaintext (http://) but TLS files were given: use https://"
            )));
        }
        Some(t) => {
            let certs = crate::tls::read_certs(&t.ca).and_then(|_| crate::tls::read_certs(&t.cert));
            certs.and_then(|_| crate::tls::read_key(&t.key)).map_err(|e| PartyError::Config(e.to_string()))?;
        }
        None => {}
    }
    Ok(())
}

/// Why a failed connection will fail the same way every time, if it will: the certificates
/// do not match (the server's is not from our CA or not for its name; ours is not from the
/// server's CA), or TLS met plaintext.
fn permanent(reason: &str, tls: bool) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    let any = |keys: &[&str]| keys.iter().any(|k| r.contains(k));
    if any(&["unknownissuer", "unknown issuer", "notvalidforname", "not valid for name", "invalid peer certificate"]) {
        return Some("the server's certificate is not one this party trusts (another CA, or not issued for this name)");
    }
    if any(&[
        "unknownca",
        "unknown ca",
        "badcertificate",
        "bad certificate",
        "certificaterequired",
        "certificate required",
    ]) {
        return Some("the server refused this party's certificate (not issued by the federation's CA?)");
    }
    if tls && any(&["invalidcontenttype", "corrupt message", "wrong version number"]) {
        return Some("TLS met a plaintext server: use http:// with --insecure if the server runs --insecure");
    }
    None
}

/// Whether a connection failed after reaching the server but below gRPC (a protocol mismatch
/// looks like this; a restarting server briefly too, so it takes three in a row).
fn is_garbled(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "h2 protocol error",
        "frame with invalid size",
        "connection closed",
        "unexpected eof",
        "broken pipe",
        "transport error (unknown)",
    ]
    .iter()
    .any(|k| r.contains(k))
}

/// One connection: returns how it ended, or a final refusal.
async fn session(
    opts: &PartyOptions,
    client: Arc<Mutex<Box<dyn Client>>>,
    layout: Arc<Layout>,
) -> Result<SessionEnd, PartyError> {
    let ch = match channel(opts).await {
        Ok(c) => c,
        Err(e) => return Ok(SessionEnd::Lost(e, false)),
    };
    let mut grpc = FederationClient::new(ch)
        .max_decoding_message_size(opts.max_message_bytes)
        .max_encoding_message_size(opts.max_message_bytes);
    let (tx, rx) = mpsc::channel::<PartyMessage>(64);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        party_id: opts.id.clone(),
        federation: opts.federation.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let _ = tx.send(out(party_message::Msg::Hello(hello))).await;
    let mut inbound = match grpc.join(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition) => {
            return Err(PartyError::Refused(s.message().to_string()));
        }
        Err(s) => return Ok(SessionEnd::Lost(format!("{} ({:?})", s.message(), s.code()), false)),
    };
    let silence = match inbound.message().await {
        Ok(Some(ServerMessage { msg: Some(server_message::Msg::Welcome(w)) })) => {
            info!(party = %opts.id, "joined the federation (protocol {})", w.protocol_version);
            Duration::from_millis(w.heartbeat_ms.max(100) as u64 * 4)
        }
        Ok(_) => return Ok(SessionEnd::Lost("no welcome".into(), false)),
        Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition) => {
            return Err(PartyError::Refused(s.message().to_string()));
        }
        Err(s) => return Ok(SessionEnd::Lost(s.message().to_string(), false)),
    };
    let hb_tx = tx.clone();
    let hb_every = opts.heartbeat;
    let heartbeats = tokio::spawn(async move {
        loop {
            tokio::time::sleep(hb_every).await;
            if hb_tx.send(out(party_message::Msg::Heartbeat(Heartbeat { unix_ms: 0 }))).await.is_err() {
                break;
            }
        }
    });
    let end = serve_instructions(opts, &mut inbound, &tx, client, layout, silence).await;
    heartbeats.abort();
    Ok(end)
}

enum Task {
    Fit(Box<FitTask>),
    Evaluate(EvaluateTask),
    /// Round 0: the statistics of the party's training rows.
    Stats,
}

/// The federation's round-0 statistics a task carries, checked; `None` when it carries none.
fn scaling(m: Option<crate::proto::Moments>, limits: Limits) -> Result<Option<Arc<Moments>>, String> {
    m.map(|m| {
        moments_from_proto(m, usize::try_from(limits.max_values).unwrap_or(usize::MAX))
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .transpose()
}

/// A task whose vectors are arriving.
struct Incoming {
    task_id: u64,
    /// The task, or why this party refuses it (settings it cannot read): a refused task's
    /// vectors are still received, so the stream stays in step, and the refusal is sent in
    /// place of a result.
    task: Result<Task, String>,
    transfers: Transfers,
    /// Where the task's model comes from.
    model: ModelFrom,
}

/// What the party does next after a message from the server.
enum Next {
    /// Wait for the next message.
    Wait,
    /// Every vector of the task is in: run it.
    Run(Box<Incoming>, Vec<Vec<f32>>),
    /// The session is over.
    End(SessionEnd),
}

async fn serve_instructions(
    opts: &PartyOptions,
    inbound: &mut tonic::Streaming<ServerMessage>,
    tx: &mpsc::Sender<PartyMessage>,
    client: Arc<Mutex<Box<dyn Client>>>,
    layout: Arc<Layout>,
    silence: Duration,
) -> SessionEnd {
    let mut current: Option<Incoming> = None;
    // Per connection, as the server keeps what it sent on it.
    let mut kept: KeptModel = None;
    loop {
        let m = match tokio::time::timeout(silence, inbound.message()).await {
            Err(_) => return SessionEnd::Lost(format!("server silent for {silence:?}"), true),
            Ok(Err(s)) => return SessionEnd::Lost(format!("{} ({:?})", s.message(), s.code()), true),
            Ok(Ok(None)) => return SessionEnd::Lost("server closed the stream".into(), true),
            Ok(Ok(Some(ServerMessage { msg: None }))) => continue,
            Ok(Ok(Some(ServerMessage { msg: Some(m) }))) => m,
        };
        match receive(opts, m, &mut current) {
            Next::Wait => {}
            Next::End(end) => return end,
            Next::Run(incoming, vectors) => {
                if let Some(end) = run_task(opts, tx, &client, &layout, incoming, vectors, &mut kept).await {
                    return end;
                }
            }
        }
    }
}

/// A fit instruction's task, or why this party refuses it (settings it cannot read).
fn fit_task(f: crate::proto::FitInstruction, limits: Limits) -> Result<Task, String> {
    match (f.training.as_ref().map(training_from_proto), scaling(f.scaling, limits)) {
        (Some(Ok(training)), Ok(scaling)) => Ok(Task::Fit(Box::new(FitTask {
            round: f.round,
            training,
            seed: f.seed,
            vector: None,
            scaling,
            model: None,
            changes: Vec::new(),
        }))),
        (Some(Err(e)), _) => Err(e.to_string()),
        (None, _) => Err("fit instruction without training settings".into()),
        (_, Err(e)) => Err(e),
    }
}

/// Takes one message from the server: an instruction starts a task's transfers, a chunk
/// continues them.
fn receive(opts: &PartyOptions, m: server_message::Msg, current: &mut Option<Incoming>) -> Next {
    let bad = |e: String| Next::End(SessionEnd::Lost(format!("bad parameters from the server: {e}"), true));
    let (task_id, task, params, chain, vector) = match m {
        server_message::Msg::Heartbeat(_) | server_message::Msg::Welcome(_) => return Next::Wait,
        server_message::Msg::Shutdown(s) => return Next::End(SessionEnd::Finished(s.reason)),
        // After joining, a refusal means another connection took this identity's seat:
        // reconnecting would take it back and the two would flap, so it is final.
        server_message::Msg::Refusal(r) => return Next::End(SessionEnd::Refused(r.reason)),
        server_message::Msg::Fit(mut f) => {
            let Some(params) = f.params else {
                return Next::End(SessionEnd::Lost("fit instruction without parameters".into(), true));
            };
            let (task_id, vector, chain) = (f.task_id, f.vector, std::mem::take(&mut f.chain));
            (task_id, fit_task(f, opts.limits), params, chain, vector)
        }
        server_message::Msg::Evaluate(e) => {
            let Some(params) = e.params else {
                return Next::End(SessionEnd::Lost("evaluate instruction without parameters".into(), true));
            };
            let task = scaling(e.scaling, opts.limits).map(|scaling| {
                Task::Evaluate(EvaluateTask { round: e.round, scaling, model: None, changes: Vec::new() })
            });
            (e.task_id, task, params, e.chain, None)
        }
        server_message::Msg::Stats(s) => {
            let none = Transfers::new([], opts.limits).map_err(|e| e.to_string());
            return match none {
                Ok(transfers) => Next::Run(
                    Box::new(Incoming {
                        task_id: s.task_id,
                        task: Ok(Task::Stats),
                        transfers,
                        model: ModelFrom::Transfer(0),
                    }),
                    Vec::new(),
                ),
                Err(e) => bad(e),
            };
        }
        server_message::Msg::Chunk(c) => {
            let Some(incoming) = current.as_mut() else {
                return Next::End(SessionEnd::Lost("chunk without an instruction".into(), true));
            };
            return match incoming.transfers.push(c) {
                Err(e) => bad(e.to_string()),
                Ok(None) => Next::Wait,
                Ok(Some(vectors)) => match current.take() {
                    Some(incoming) => Next::Run(Box::new(incoming), vectors),
                    None => Next::Wait,
                },
            };
        }
    };
    let (model, headers) = match model_from(params, chain) {
        Ok((model, headers)) => (model, headers.into_iter().chain(vector)),
        Err(e) => return bad(e),
    };
    match Transfers::new(headers, opts.limits) {
        Err(e) => bad(e.to_string()),
        Ok(mut transfers) => match transfers.ready() {
            Some(vectors) => Next::Run(Box::new(Incoming { task_id, task, transfers, model }), vectors),
            None => {
                *current = Some(Incoming { task_id, task, transfers, model });
                Next::Wait
            }
        },
    }
}

/// Runs a task whose vectors are all in and sends the result; `Some` if the session ends.
async fn run_task(
    opts: &PartyOptions,
    tx: &mpsc::Sender<PartyMessage>,
    client: &Arc<Mutex<Box<dyn Client>>>,
    layout: &Arc<Layout>,
    incoming: Box<Incoming>,
    vectors: Vec<Vec<f32>>,
    kept: &mut KeptModel,
) -> Option<SessionEnd> {
    let Incoming { task_id, task, model, .. } = *incoming;
    let mut vectors = vectors.into_iter();
    let values = if matches!(task, Ok(Task::Stats)) {
        Ok(Vec::new())
    } else {
        task_model(model, kept, &mut vectors, layout.len())
    };
    let values = match values {
        Ok(v) => v,
        Err(reason) => {
            send_error(tx, task_id, reason).await;
            return None;
        }
    };
    let mut task = match task {
        Ok(t) => t,
        Err(reason) => {
            send_error(tx, task_id, reason).await;
            return None;
        }
    };
    if matches!(task, Task::Stats) {
        return send_statistics(tx, client, task_id).await;
    }
    if let Task::Fit(t) = &mut task {
        // The algorithm's vector is as long as the model, or empty (the server has not sized
        // it yet; the party half reads empty as zeros).
        t.vector = vectors.next().map(Arc::new);
        if let Some(v) = t.vector.as_ref().filter(|v| !v.is_empty() && v.len() != layout.len()) {
            send_error(
                tx,
                task_id,
                format!("the algorithm's vector has {} values, the model {}", v.len(), layout.len()),
            )
            .await;
            return None;
        }
    }
    let Some(params) = Parameters::new(values, layout.clone()) else {
        send_error(tx, task_id, format!("the server's model has a different size than ours ({})", layout.len())).await;
        return None;
    };
    match &task {
        Task::Fit(t) => info!(party = %opts.id, "round {}: training", t.round),
        Task::Evaluate(t) => info!(party = %opts.id, "round {}: evaluating", t.round),
        Task::Stats => {}
    }
    let client = client.clone();
    let work = tokio::task::spawn_blocking(move || {
        let mut c = client.lock().map_err(|_| ClientError::Model("client state poisoned".into()))?;
        match task {
            Task::Fit(t) => c.fit(&params, &t).map(|r| Done::Fit(Box::new(r))),
            Task::Evaluate(t) => c.evaluate(&params, &t).map(Done::Evaluate),
            Task::Stats => Err(ClientError::Model("statistics are answered before this point".into())),
        }
    });
    let result = match work.await {
        Ok(r) => r,
        Err(e) => Err(ClientError::Model(format!("training thread failed: {e}"))),
    };
    let sent = send_result(opts, tx, task_id, result).await;
    (!sent).then(|| SessionEnd::Lost("could not send the result".into(), true))
}
