//! The gRPC service: a peer's Join (hello, allow-list, certificate, deny-list, one party
//! per connection) and the reader of a joined party's stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use federate_core::{AlgorithmReply, ClientError, EvaluateReply, FitReply};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::codec::Transfers;
use crate::convert::{privacy_from_proto, summary_from_proto};
use crate::proto::federation_server::Federation;
use crate::proto::{Heartbeat, PartyMessage, ServerMessage, Welcome, party_message, server_message};
use crate::tls::party_identity_ok;

use super::*;

pub(super) struct Service {
    pub(super) hub: Hub,
}

/// What the reader of one party's stream is in the middle of receiving.
pub(super) enum Receiving {
    Nothing,
    /// A fit result's header arrived; its vectors are arriving. The reply is complete but for
    /// its parameters (and the algorithm's vector, when `vector`).
    Fit {
        task_id: u64,
        reply: Box<FitReply>,
        transfers: Transfers,
        vector: bool,
        /// The parameters arrive as a compressed update of this many bytes (0: as values).
        encoded: u64,
    },
}

impl Service {
    /// Checks a hello against the protocol version, the allow-list, the deny list and (under
    /// TLS) the client certificate; the party's identity if it may join.
    fn admit(
        &self,
        hello: &crate::proto::Hello,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
        peer: &str,
    ) -> Result<String, Status> {
        let refuse = |reason: String| {
            warn!(%peer, "refused: {reason}");
            Err(Status::permission_denied(reason))
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let newer = if hello.protocol_version < PROTOCOL_VERSION { "the party" } else { "this server" };
            let reason = format!(
                "unsupported protocol version {} (this server speaks {PROTOCOL_VERSION}): the party and the server \
                 run different federate versions; upgrade {newer} so both run the same one",
                hello.protocol_version
            );
            warn!(%peer, "refused: {reason}");
            return Err(Status::failed_precondition(reason));
        }
        let id = hello.party_id.clone();
        if !self.hub.inner.allowed.contains(&id) {
            return refuse(format!("party '{}' is not on the allow-list", clean_text(&id)));
        }
        if let Some(why) = federation_mismatch(&self.hub.inner.cfg.federation, &hello.federation) {
            return refuse(format!("party '{id}' {why}"));
        }
        if self.hub.inner.deny.denied(&id) {
            return refuse(format!("party '{id}' is revoked (listed in the server's deny_file)"));
        }
        if self.hub.inner.cfg.tls.is_some() {
            let ok = certs.and_then(|c| c.first()).is_some_and(|c| party_identity_ok(c, &id));
            if !ok {
                return refuse(format!("the client certificate is not issued to '{id}'"));
            }
        }
        Ok(id)
    }
}

/// Most settings a Hello may carry, and their longest key and value.
const MAX_SETTINGS: usize = 256;
const MAX_SETTING_KEY: usize = 64;
const MAX_SETTING_VALUE: usize = 256;

/// Why a party's settings do not fit the federation's, naming the first key that differs.
fn federation_mismatch(
    ours: &std::collections::BTreeMap<String, String>,
    theirs: &HashMap<String, String>,
) -> Option<String> {
    if ours.is_empty() {
        return None;
    }
    if theirs.len() > MAX_SETTINGS {
        return Some(format!("sent {} federation settings, more than {MAX_SETTINGS}", theirs.len()));
    }
    if let Some((k, v)) = theirs.iter().find(|(k, v)| k.len() > MAX_SETTING_KEY || v.len() > MAX_SETTING_VALUE) {
        let key: String = k.chars().take(MAX_SETTING_KEY).collect();
        return Some(format!(
            "sent the setting '{key}' of {} bytes (at most {MAX_SETTING_KEY} for a name, {MAX_SETTING_VALUE} for a \
             value: longer values travel as their SHA-256)",
            k.len() + v.len()
        ));
    }
    let mut keys: Vec<&String> = theirs.keys().collect();
    keys.sort();
    for k in keys {
        let v = &theirs[k];
        match ours.get(k) {
            Some(o) if o == v => {}
            Some(o) => {
                return Some(format!(
                    "has {} = {} where the federation has {o}: start it with the federation's config (the same seed, \
                     data split and model)",
                    clean_text(k),
                    clean_text(v)
                ));
            }
            None => {
                return Some(format!("has {} = {}, which the federation does not set", clean_text(k), clean_text(v)));
            }
        }
    }
    None
}

/// Sends heartbeats on `tx` until the connection closes. Never waits on a party: a heartbeat
/// that does not fit is skipped (the party is not reading, which the round deadline deals
/// with).
fn heartbeats(tx: mpsc::Sender<Result<ServerMessage, Status>>, guard: Arc<ConnGuard>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let hb = msg(server_message::Msg::Heartbeat(Heartbeat { unix_ms: now_ms() }));
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(hb)) {
                break;
            }
            if guard.killed.load(Ordering::SeqCst) {
                break;
            }
        }
    });
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
        let id = self.admit(&hello, certs.as_deref().map(Vec::as_slice), &peer)?;
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
        let conn = Arc::new(Conn {
            generation,
            tx: tx.clone(),
            pending: Mutex::new(HashMap::new()),
            guard: guard.clone(),
            held: Mutex::new(None),
        });
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
        heartbeats(tx, guard, cfg.heartbeat);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reads one party's stream until it ends; returns why it ended.
pub(super) async fn read_party(hub: &Hub, id: &str, conn: &Arc<Conn>, inbound: &mut Streaming<PartyMessage>) -> String {
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
            (party_message::Msg::Fit(f), Receiving::Nothing) => match fit_header(f, cfg) {
                Ok(next) => state = next,
                Err(reason) => return reason,
            },
            (party_message::Msg::Chunk(c), Receiving::Fit { transfers, .. }) => {
                hub.inner.bytes_in.fetch_add(c.data.len() as u64, Ordering::Relaxed);
                match transfers.push(c) {
                    Err(e) => return format!("bad parameter chunk: {e}"),
                    Ok(None) => {}
                    Ok(Some(vectors)) => {
                        if let Receiving::Fit { task_id, reply, vector, encoded, .. } =
                            std::mem::replace(&mut state, Receiving::Nothing)
                        {
                            let reply = match with_vectors(*reply, vectors, vector, encoded) {
                                Ok(r) => r,
                                Err(e) => return format!("bad compressed update: {e}"),
                            };
                            if let Some(i) = reply.params.iter().position(|v| !v.is_finite()) {
                                warn!(party = id, "update has a non-finite value at {i}; the strategy will refuse it");
                            }
                            resolve(task_id, Ok(Reply::Fit(reply)));
                        }
                    }
                }
            }
            (party_message::Msg::Evaluate(e), Receiving::Nothing) => {
                // Ranges and counts are the core's admission's to check, in one place.
                let num_examples = usize::try_from(e.num_examples).unwrap_or(usize::MAX);
                let stats = crate::convert::eval_stats_from_proto(e.stats);
                let r = EvaluateReply { num_examples, loss: e.loss, accuracy: e.accuracy, stats };
                resolve(e.task_id, Ok(Reply::Evaluate(r)));
            }
            (party_message::Msg::Stats(r), Receiving::Nothing) => {
                // Checked here (lengths, ranges); a party that sends statistics it cannot
                // have is refused for round 0, not dropped.
                let limit = usize::try_from(hub.inner.cfg.limits.max_values).unwrap_or(usize::MAX);
                let m = r.moments.map(|m| crate::convert::moments_from_proto(m, limit)).transpose();
                let m = m.map_err(|e| ClientError::Unavailable(format!("round-0 statistics refused: {e}")));
                resolve(r.task_id, m.map(Reply::Stats));
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

/// A fit result's header, checked (sizes against the model, counts of metrics): the state
/// that receives its vectors, or why the party is dropped.
fn fit_header(f: crate::proto::FitResult, cfg: &super::HubConfig) -> Result<Receiving, String> {
    use crate::proto::fit_result::Algorithm;
    let Some(h) = f.params else { return Err("fit result without parameters".into()) };
    let mut headers = vec![h];
    let mut algorithm = AlgorithmReply::None;
    let mut vector = false;
    match f.algorithm {
        None => {}
        Some(Algorithm::PrimalResidual(r)) => algorithm = AlgorithmReply::PrimalResidual(r),
        Some(Algorithm::Vector(v)) => {
            headers.push(v);
            vector = true;
        }
    }
    if let Some(h) = headers.iter().find(|h| h.by_reference || h.model != 0) {
        return Err(format!("sent a model reference (model {}) in a fit result; only the server sends those", h.model));
    }
    // The parameters may come as a compressed update, bounded by the most any codec can
    // take for this model; the algorithm's vector always comes as values.
    let encoded = headers[0].encoded_bytes;
    if encoded > 0 {
        let most = federate_core::compress::max_payload(cfg.model_len) as u64;
        if encoded > most || headers[0].num_values != encoded.div_ceil(4) {
            return Err(format!(
                "sent a compressed update of {encoded} bytes in {} values; a model of {} values takes at most {most} \
                 bytes in ⌈bytes/4⌉ values",
                headers[0].num_values, cfg.model_len
            ));
        }
    }
    if let Some((i, h)) = headers.iter().enumerate().find(|(i, h)| {
        h.num_values != cfg.model_len as u64 && !(*i == 0 && encoded > 0) || (*i > 0 && h.encoded_bytes > 0)
    }) {
        let what = if i == 0 { "parameters" } else { "values in the algorithm's vector" };
        return Err(format!("sent {} {what}, the model has {}", h.num_values, cfg.model_len));
    }
    let transfers = Transfers::new(headers, cfg.limits).map_err(|e| format!("bad parameter header: {e}"))?;
    if f.metrics.len() > MAX_METRICS {
        return Err(format!("sent {} metrics; at most {MAX_METRICS} are accepted", f.metrics.len()));
    }
    let reply = FitReply {
        params: Vec::new(),
        num_examples: usize::try_from(f.num_examples).unwrap_or(usize::MAX),
        training: summary_from_proto(f.training.as_ref()),
        privacy: privacy_from_proto(f.privacy.as_ref()),
        algorithm,
        metrics: f.metrics.into_iter().map(|(k, v)| (clean_text(&k), v)).collect(),
        upload: None,
    };
    Ok(Receiving::Fit { task_id: f.task_id, reply: Box::new(reply), transfers, vector, encoded })
}

/// The reply with the vectors its transfers carried: the parameters (or, when `encoded`, the
/// compressed update's bytes, which the hub decodes against the model it sent), then the
/// algorithm's vector when one was announced.
fn with_vectors(
    mut reply: FitReply,
    vectors: Vec<Vec<f32>>,
    vector: bool,
    encoded: u64,
) -> Result<FitReply, crate::codec::WireError> {
    let mut v = vectors.into_iter();
    let params = v.next().unwrap_or_default();
    if encoded > 0 {
        reply.upload = Some(crate::codec::encoded_bytes(&params, encoded)?);
    } else {
        reply.params = params;
    }
    if vector {
        reply.algorithm = AlgorithmReply::Vector(v.next().unwrap_or_default());
    }
    Ok(reply)
}

pub(super) fn kind(m: &party_message::Msg) -> &'static str {
    match m {
        party_message::Msg::Hello(_) => "hello",
        party_message::Msg::Fit(_) => "fit result (another one is still arriving)",
        party_message::Msg::Evaluate(_) => "evaluation (while parameters are arriving)",
        party_message::Msg::Chunk(_) => "chunk (no transfer announced)",
        party_message::Msg::Heartbeat(_) => "heartbeat",
        party_message::Msg::Error(_) => "error (while parameters are arriving)",
        party_message::Msg::Stats(_) => "statistics (while parameters are arriving)",
    }
}
