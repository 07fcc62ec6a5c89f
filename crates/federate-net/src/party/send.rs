//! What a party sends back: a fit reply with its transfers, round-0 statistics, or why a
//! task failed.

use std::sync::{Arc, Mutex};

use federate_core::{AlgorithmReply, Client, ClientError, FitReply};
use tokio::sync::mpsc;
use tracing::warn;

use super::{PartyOptions, SessionEnd, out};
use crate::codec;
use crate::convert::{privacy_to_proto, summary_to_proto};
use crate::proto::{EvaluateResult, FitResult, PartyMessage, StatsResult, TaskError, party_message};

/// Sends a fit reply: its header, the parameters' chunks, then the algorithm's vector's.
pub(super) async fn send_fit(opts: &PartyOptions, tx: &mpsc::Sender<PartyMessage>, task_id: u64, r: FitReply) -> bool {
    use crate::proto::fit_result::Algorithm;
    // A compressed update travels as its encoded bytes; the server decodes it.
    let (header, chunks) = match &r.upload {
        Some(bytes) => codec::split_encoded(bytes, task_id, opts.chunk_bytes),
        None => codec::split(&r.params, task_id, opts.chunk_bytes, opts.zstd),
    };
    let (algorithm, vector_chunks) = match &r.algorithm {
        AlgorithmReply::None => (None, Vec::new()),
        AlgorithmReply::PrimalResidual(v) => (Some(Algorithm::PrimalResidual(*v)), Vec::new()),
        AlgorithmReply::Vector(v) => {
            // Transfer ids only need to differ within the stream: the task id's high bit.
            let (h, c) = codec::split(v, task_id | 1 << 63, opts.chunk_bytes, opts.zstd);
            (Some(Algorithm::Vector(h)), c)
        }
    };
    let head = FitResult {
        task_id,
        num_examples: r.num_examples as u64,
        metrics: r.metrics.into_iter().collect(),
        params: Some(header),
        training: Some(summary_to_proto(&r.training)),
        privacy: Some(privacy_to_proto(&r.privacy)),
        algorithm,
    };
    let mut ok = tx.send(out(party_message::Msg::Fit(head))).await.is_ok();
    for c in chunks.into_iter().chain(vector_chunks) {
        ok = ok && tx.send(out(party_message::Msg::Chunk(c))).await.is_ok();
    }
    ok
}

pub(super) enum Done {
    Fit(Box<FitReply>),
    Evaluate(federate_core::EvaluateReply),
}

/// Round 0: the statistics of this party's training rows (none for images), or its error.
pub(super) async fn send_statistics(
    tx: &mpsc::Sender<PartyMessage>,
    client: &Arc<Mutex<Box<dyn Client>>>,
    task_id: u64,
) -> Option<SessionEnd> {
    let client = client.clone();
    let work = tokio::task::spawn_blocking(move || {
        let mut c = client.lock().map_err(|_| ClientError::Model("client state poisoned".into()))?;
        c.statistics()
    });
    let result = work.await.unwrap_or_else(|e| Err(ClientError::Model(format!("statistics thread failed: {e}"))));
    let sent = match result {
        Err(e) => {
            send_task_error(tx, task_id, e.to_string(), false).await;
            true
        }
        Ok(m) => {
            let r = StatsResult { task_id, moments: m.as_ref().map(crate::convert::moments_to_proto) };
            tx.send(out(party_message::Msg::Stats(r))).await.is_ok()
        }
    };
    (!sent).then(|| SessionEnd::Lost("could not send the result".into(), true))
}

pub(super) async fn send_error(tx: &mpsc::Sender<PartyMessage>, task_id: u64, reason: String) {
    send_task_error(tx, task_id, reason, false).await;
}

pub(super) async fn send_task_error(tx: &mpsc::Sender<PartyMessage>, task_id: u64, reason: String, budget_spent: bool) {
    warn!("task {task_id} failed: {reason}");
    let _ = tx.send(out(party_message::Msg::Error(TaskError { task_id, reason, budget_spent }))).await;
}

/// Sends a task's outcome: its result, or why it failed. `false` if the stream is gone.
pub(super) async fn send_result(
    opts: &PartyOptions,
    tx: &mpsc::Sender<PartyMessage>,
    task_id: u64,
    result: Result<Done, ClientError>,
) -> bool {
    match result {
        Err(e) => {
            let budget = matches!(e, ClientError::BudgetSpent(_));
            send_task_error(tx, task_id, e.to_string(), budget).await;
            true
        }
        Ok(Done::Fit(r)) => send_fit(opts, tx, task_id, *r).await,
        Ok(Done::Evaluate(r)) => tx
            .send(out(party_message::Msg::Evaluate(EvaluateResult {
                task_id,
                num_examples: r.num_examples as u64,
                loss: r.loss,
                accuracy: r.accuracy,
                stats: Some(crate::convert::eval_stats_to_proto(&r.stats)),
            })))
            .await
            .is_ok(),
    }
}
