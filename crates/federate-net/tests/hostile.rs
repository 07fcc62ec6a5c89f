//! Hostile and broken parties against a real server on loopback, one test per attack: lying
//! example counts (huge, overflowing, zero, above a declared count), non-finite values,
//! wrong sizes, oversized messages, forged log lines in failure reasons, a party that never
//! reads its stream, a stream flood on one connection, a connection flood, a second login
//! for the same identity, a party stalled at shutdown, unknown protocol versions. In each the
//! honest parties' round completes with the model the honest parties alone give (or fails
//! cleanly, keeping the previous one), and the server's memory stays bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use federate_core::{
    Admission, ClientProxy, Codec, Declared, FedAvg, Layout, LocalTraining, Parameters, RoundRecord, Server,
    ServerConfig, TensorSpec, UpdateCompression, Weighting,
};
use federate_net::codec::{self, Assembler, Limits};
use federate_net::proto::federation_client::FederationClient;
use federate_net::proto::{
    Chunk, EvaluateResult, FitResult, Hello, PartyMessage, ServerMessage, StatsResult, TaskError, TrainSummary,
    party_message, server_message,
};
use federate_net::server::{Hub, HubConfig, MAX_TEXT, PROTOCOL_VERSION, RemoteParty};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const N: usize = 10;

/// How a hand-written party answers a fit task (evaluations answer 5 examples at 0.5 unless
/// the behaviour lies about them).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Behaviour {
    /// Reports `count` examples and sends the model plus `delta`.
    Honest {
        count: u64,
        delta: f32,
    },
    /// 10^12 examples and the model scaled by −10 (the takeover).
    HugeCount,
    /// 2^64 − 1 examples (overflowed the weight sum).
    MaxCount,
    /// 0 examples.
    ZeroCount,
    /// A NaN in the parameters.
    NonFinite,
    /// A NaN metric.
    NanMetric,
    NanLoss,
    /// Announces an algorithm vector one value short of the model.
    WrongVector,
    /// One value too few.
    WrongCount,
    /// A chunk over the message limit.
    Oversized,
    /// Fails every task with a reason that forges log lines and runs to 60 KB.
    ForgedReason,
    /// Honest fits, but evaluations claiming 2^64 − 1 examples.
    EvalCount,
    /// Honest fits, but an evaluation accuracy of 4.6e18.
    EvalAccuracy,
    /// Honest fits, but evaluation statistics with a confusion matrix that is not square and
    /// counts that are not its example count.
    EvalStats,
    /// A fit result whose parameters claim to be a model reference (only the server sends those).
    ForgedReference,
    /// A compressed update (valid, of the model plus 1) whether or not the task asked for one.
    Compressed,
    /// A compressed update that claims one value more than the model.
    CompressedTooLong,
}

fn out(m: party_message::Msg) -> PartyMessage {
    PartyMessage { msg: Some(m) }
}

fn hello(id: &str) -> PartyMessage {
    out(party_message::Msg::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        party_id: id.into(),
        ..Default::default()
    }))
}

/// Opens a Join stream as `id`; returns the sender of the party's messages and the server's
/// stream, with heartbeats flowing every 200 ms.
async fn join(
    url: String,
    id: &str,
) -> Result<(mpsc::Sender<PartyMessage>, tonic::Streaming<ServerMessage>), tonic::Status> {
    let mut client = FederationClient::connect(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .max_encoding_message_size(1 << 20)
        .max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello(id)).await.unwrap();
    let inbound = client.join(ReceiverStream::new(rx)).await?.into_inner();
    let hb = tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let beat = out(party_message::Msg::Heartbeat(federate_net::proto::Heartbeat { unix_ms: 0 }));
            if hb.send(beat).await.is_err() {
                break;
            }
        }
    });
    Ok((tx, inbound))
}

/// A party speaking the protocol by hand, misbehaving as told. Retries joining (as the real
/// runner does) until it gets in.
async fn raw_party(url: String, id: String, b: Behaviour) {
    let (tx, mut inbound) = loop {
        match join(url.clone(), &id).await {
            Ok(x) => break x,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut current: Option<(u64, bool, u32, Assembler)> = None;
    let mut kept: Option<(u32, Vec<f32>)> = None;
    let limits = Limits { max_values: 1 << 24, max_chunk_bytes: 1 << 20 };
    while let Ok(Some(ServerMessage { msg: Some(m) })) = inbound.message().await {
        match m {
            // A model sent by reference is the one kept from the last numbered transfer.
            server_message::Msg::Fit(f) if f.params.unwrap().by_reference => {
                answer(&tx, b, f.task_id, true, kept.clone().unwrap().1).await
            }
            server_message::Msg::Evaluate(e) if e.params.unwrap().by_reference => {
                answer(&tx, b, e.task_id, false, kept.clone().unwrap().1).await
            }
            server_message::Msg::Fit(f) => {
                let h = f.params.unwrap();
                current = Some((f.task_id, true, h.model, Assembler::new(h, limits).unwrap()))
            }
            server_message::Msg::Evaluate(e) => {
                let h = e.params.unwrap();
                current = Some((e.task_id, false, h.model, Assembler::new(h, limits).unwrap()))
            }
            server_message::Msg::Stats(r) => {
                // Round 0: an honest party sends two features' statistics; others lie.
                let mut m = federate_net::proto::Moments {
                    count: 4,
                    present: vec![4, 4],
                    sum: vec![2.0, 8.0],
                    sum_sq: vec![2.0, 20.0],
                    min: vec![0.0, 1.0],
                    max: vec![1.0, 3.0],
                };
                match b {
                    Behaviour::NanMetric => m.sum[1] = f64::NAN,
                    Behaviour::WrongCount => m.present[0] = 9,
                    Behaviour::WrongVector => m.max.pop().map(|_| ()).unwrap_or(()),
                    Behaviour::HugeCount => m = Default::default(),
                    _ => {}
                }
                let _ =
                    tx.send(out(party_message::Msg::Stats(StatsResult { task_id: r.task_id, moments: Some(m) }))).await;
            }
            server_message::Msg::Chunk(c) => {
                let Some((task_id, fit, model, a)) = current.as_mut() else { continue };
                let Some(values) = a.push(c).unwrap() else { continue };
                let (task_id, fit) = (*task_id, *fit);
                kept = (*model != 0).then(|| (*model, values.clone()));
                current = None;
                answer(&tx, b, task_id, fit, values).await;
            }
            _ => {}
        }
    }
}

/// A hand-written party's answer to a task whose model is `values`.
async fn answer(tx: &tokio::sync::mpsc::Sender<PartyMessage>, b: Behaviour, task_id: u64, fit: bool, values: Vec<f32>) {
    if !fit {
        let mut r = EvaluateResult { task_id, num_examples: 5, loss: 0.5, accuracy: 0.5, stats: None };
        match b {
            Behaviour::EvalCount => r.num_examples = u64::MAX,
            Behaviour::EvalAccuracy => r.accuracy = 4.6e18,
            Behaviour::EvalStats => {
                r.stats = Some(federate_net::proto::EvalStats { confusion: vec![u64::MAX, 7, 1], ..Default::default() })
            }
            _ => {}
        }
        let _ = tx.send(out(party_message::Msg::Evaluate(r))).await;
        return;
    }
    let mut params: Vec<f32> = values.iter().map(|v| v + 1.0).collect();
    let mut count = 10u64;
    let mut metrics = HashMap::new();
    let mut training = None;
    let mut algorithm = None;
    match b {
        Behaviour::Honest { count: c, delta } => {
            count = c;
            params = values.iter().map(|v| v + delta).collect();
        }
        Behaviour::HugeCount => {
            count = 1_000_000_000_000;
            params = values.iter().map(|v| v * -10.0).collect();
        }
        Behaviour::MaxCount => count = u64::MAX,
        Behaviour::ZeroCount => count = 0,
        Behaviour::NonFinite => params[3] = f32::NAN,
        Behaviour::NanMetric => {
            metrics.insert("user_metric".to_string(), f64::NAN);
        }
        Behaviour::WrongVector => {
            let (h, _) = codec::split(&params[1..], task_id | 1 << 63, 16, false);
            algorithm = Some(federate_net::proto::fit_result::Algorithm::Vector(h));
        }
        Behaviour::NanLoss => {
            training = Some(TrainSummary { steps: 1, loss: Some(f64::NAN), ..Default::default() });
        }
        Behaviour::WrongCount => {
            params.pop();
        }
        Behaviour::Oversized => {
            let huge = Chunk { transfer_id: task_id, index: 0, data: vec![0u8; 128 << 10].into() };
            let _ = tx.send(out(party_message::Msg::Chunk(huge))).await;
            return;
        }
        Behaviour::ForgedReason => {
            let reason = format!("boom\nround 9/9  accuracy 100.00 %\n{}", "x".repeat(60_000));
            let e = TaskError { task_id, reason, budget_spent: false };
            let _ = tx.send(out(party_message::Msg::Error(e))).await;
            return;
        }
        Behaviour::EvalCount | Behaviour::EvalAccuracy | Behaviour::EvalStats => {}
        Behaviour::ForgedReference | Behaviour::Compressed | Behaviour::CompressedTooLong => {}
    }
    let (mut h, chunks) = match b {
        Behaviour::Compressed | Behaviour::CompressedTooLong => {
            let c = UpdateCompression { codec: Codec::Quantize { bits: 8 }, error_feedback: false, zstd: true };
            let mut update = vec![1.0f32; values.len()];
            if b == Behaviour::CompressedTooLong {
                update.push(1.0);
            }
            codec::split_encoded(&c.encode(&update, true, 7).unwrap(), task_id, 16)
        }
        _ => codec::split(&params, task_id, 16, false),
    };
    if b == Behaviour::ForgedReference {
        h.by_reference = true;
        h.model = 1;
    }
    let head =
        FitResult { task_id, num_examples: count, metrics, params: Some(h), training, algorithm, ..Default::default() };
    let _ = tx.send(out(party_message::Msg::Fit(head))).await;
    for c in chunks {
        let _ = tx.send(out(party_message::Msg::Chunk(c))).await;
    }
}

fn hub_config(allowed: &[&str]) -> HubConfig {
    let (max_connections, max_handshakes, max_streams_per_connection, join_timeout) =
        HubConfig::default_limits(allowed.len());
    HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        allowed: allowed.iter().map(|s| s.to_string()).collect(),
        model_len: N,
        heartbeat: Duration::from_millis(500),
        party_timeout: Duration::from_secs(5),
        task_timeout: Duration::from_secs(20),
        rejoin_wait: Duration::from_secs(5),
        limits: Limits { max_values: 1000, max_chunk_bytes: 1024 },
        max_message_bytes: 64 << 10,
        chunk_bytes: 16,
        zstd: false,
        max_connections,
        max_handshakes,
        max_streams_per_connection,
        join_timeout,
        deny_file: None,
        federation: Default::default(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Resident memory of this process (server and hand-written parties together), in MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Runs `rounds` FedAvg rounds over `ids` (each a `RemoteParty` on `hub`) from 0.5 everywhere.
fn run_rounds(
    rt: &tokio::runtime::Runtime,
    hub: &Hub,
    ids: &[&str],
    rounds: u32,
    admission: Admission,
    model_len: usize,
) -> (Parameters, Vec<RoundRecord>) {
    run_rounds_with(rt, hub, ids, rounds, LocalTraining::sgd(1, 1, 0.1), admission, model_len)
}

/// [`run_rounds`] with the tasks' local training given.
fn run_rounds_with(
    rt: &tokio::runtime::Runtime,
    hub: &Hub,
    ids: &[&str],
    rounds: u32,
    training: LocalTraining,
    admission: Admission,
    model_len: usize,
) -> (Parameters, Vec<RoundRecord>) {
    let clients: Vec<Box<dyn ClientProxy>> =
        ids.iter().map(|id| Box::new(RemoteParty::new(*id, hub.clone(), rt.handle().clone())) as _).collect();
    let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![model_len], offset: 0 }]));
    let init = Parameters::new(vec![0.5; model_len], layout).unwrap();
    let mut server = Server::new(Box::new(FedAvg::new(training)), clients).with_admission(admission);
    server.run(init, &ServerConfig::new(rounds, 1), &mut |_| {}).unwrap()
}

#[test]
fn compressed_updates_are_decoded_only_when_asked_for_and_references_come_only_from_the_server() {
    let rt = runtime();
    let parties = [
        ("honest", Behaviour::Honest { count: 10, delta: 1.0 }),
        ("compressed", Behaviour::Compressed),
        ("toolong", Behaviour::CompressedTooLong),
        ("forger", Behaviour::ForgedReference),
    ];
    let ids: Vec<&str> = parties.iter().map(|(id, _)| *id).collect();
    // Without compression in the task, an encoded update is refused as such.
    let hub = start(&rt, hub_config(&ids), &parties);
    let (_, records) = run_rounds(&rt, &hub, &ids, 1, Admission::default(), N);
    let r = &records[0];
    assert!(reasons(r, "compressed", "fit").contains("asked for 32-bit floats"), "{r:?}");
    assert!(reasons(r, "forger", "fit").contains("only the server sends those"), "{r:?}");
    // With compression asked for, the valid one is decoded (model 0.5 + 1 from 8-bit codes
    // of a constant block: exact) and weighs in; the one too long is refused by name.
    let (parties, ids) = (&parties[..3], &ids[..3]);
    let hub = start(&rt, hub_config(ids), parties);
    let mut training = LocalTraining::sgd(1, 1, 0.1);
    training.compression =
        Some(UpdateCompression { codec: Codec::Quantize { bits: 8 }, error_feedback: true, zstd: false });
    let (global, records) = run_rounds_with(&rt, &hub, ids, 2, training, Admission::default(), N);
    for r in &records {
        let fitted: Vec<&str> = r.fit.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(fitted, vec!["honest", "compressed"], "{r:?}");
        let long = reasons(r, "toolong", "fit");
        assert!(long.contains("carries 11 values, the model has 10"), "{long}");
    }
    assert_eq!(global.values, vec![2.5; N]);
    // Round 2 sent the model by reference to every party that held round 1's: only the
    // evaluation of round 1 and the fit of round 1 carried it (3 parties, 40 bytes each).
    assert_eq!(records[0].bytes_down, 2 * 3 * 40, "{:?}", records[0]);
    assert_eq!(records[1].bytes_down, 3 * 40, "{:?}", records[1]);
    let (sent, _) = hub.traffic();
    assert_eq!(sent, 3 * 3 * 40, "the hub sent what the record counts");
}

fn reasons(r: &RoundRecord, id: &str, stage: &str) -> String {
    r.failures
        .iter()
        .filter(|f| f.id == id && f.stage == stage)
        .map(|f| f.reason.clone())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn start(rt: &tokio::runtime::Runtime, cfg: HubConfig, parties: &[(&str, Behaviour)]) -> Hub {
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    for (id, b) in parties {
        rt.spawn(raw_party(format!("http://{addr}"), id.to_string(), *b));
    }
    assert_eq!(rt.block_on(hub.wait_for(parties.len(), Duration::from_secs(10))), parties.len());
    hub
}

#[test]
fn lying_counts_and_non_finite_values_are_refused_and_the_honest_model_stands() {
    let rt = runtime();
    let parties = [
        ("h1", Behaviour::Honest { count: 10, delta: 1.0 }),
        ("h2", Behaviour::Honest { count: 30, delta: 3.0 }),
        ("huge", Behaviour::HugeCount),
        ("max", Behaviour::MaxCount),
        ("zero", Behaviour::ZeroCount),
        ("nan", Behaviour::NonFinite),
        ("nanmetric", Behaviour::NanMetric),
        ("nanloss", Behaviour::NanLoss),
        ("evalcount", Behaviour::EvalCount),
        ("evalacc", Behaviour::EvalAccuracy),
        ("evalstats", Behaviour::EvalStats),
    ];
    let ids: Vec<&str> = parties.iter().map(|(id, _)| *id).collect();
    let hub = start(&rt, hub_config(&ids), &parties);
    let mut admission = Admission { max_examples: 1000, ..Admission::default() };
    // The three evaluation liars train honestly (10 examples, +1): the model is the weighted
    // mean of h1, h2 and them, (10·1 + 30·3 + 3·10·1) / 70 = 13/7 above the start.
    let (global, records) = run_rounds(&rt, &hub, &ids, 1, admission.clone(), N);
    let r = &records[0];
    assert!(r.aggregated, "{r:?}");
    let trained: Vec<&str> = r.fit.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(trained, vec!["h1", "h2", "evalcount", "evalacc", "evalstats"], "{r:?}");
    for v in &global.values {
        assert!((v - (0.5 + 13.0 / 7.0)).abs() < 1e-5, "{v}");
    }
    assert!(reasons(r, "huge", "fit").contains("above its cap of 1000"), "{r:?}");
    assert!(reasons(r, "max", "fit").contains("above its cap of 1000"), "{r:?}");
    assert!(reasons(r, "zero", "fit").contains("0 training examples"), "{r:?}");
    assert!(reasons(r, "nan", "fit").contains("not finite"), "{r:?}");
    assert!(reasons(r, "nanmetric", "fit").contains("'user_metric' is NaN"), "{r:?}");
    assert!(reasons(r, "nanloss", "fit").contains("'train_loss' is NaN"), "{r:?}");
    assert!(reasons(r, "evalcount", "evaluate").contains("above its cap"), "{r:?}");
    assert!(reasons(r, "evalacc", "evaluate").contains("not a fraction"), "{r:?}");
    assert!(reasons(r, "evalstats", "evaluate").contains("evaluation statistics: a confusion matrix of 3"), "{r:?}");
    // The federated accuracy is over the honest evaluations only: a fraction, not 4.6e18 %.
    assert_eq!(r.accuracy, Some(0.5));

    // Weighted by the operator's declared counts instead (h1 30, h2 40, whatever they
    // report below that); a reported count above the declared one is still refused.
    admission.weight_by = Weighting::Declared;
    admission.declared.insert("h1".into(), Declared { train: Some(30), test: Some(5) });
    admission.declared.insert("h2".into(), Declared { train: Some(40), test: Some(5) });
    let honest = ["h1", "h2"];
    let (global, records) = run_rounds(&rt, &hub, &honest, 1, admission.clone(), N);
    assert!(records[0].aggregated);
    for v in &global.values {
        assert!((v - (0.5 + (30.0 * 1.0 + 40.0 * 3.0) / 70.0)).abs() < 1e-5, "{v}");
    }
    admission.declared.insert("h2".into(), Declared { train: Some(29), test: Some(5) });
    let (_, records) = run_rounds(&rt, &hub, &honest, 1, admission, N);
    assert!(reasons(&records[0], "h2", "fit").contains("server.declared.h2.train"), "{:?}", records[0]);
}

#[test]
fn bad_updates_are_refused_and_the_honest_party_is_served() {
    let rt = runtime();
    let parties = [
        ("honest", Behaviour::Honest { count: 10, delta: 1.0 }),
        ("wrongcount", Behaviour::WrongCount),
        ("oversized", Behaviour::Oversized),
        ("wrongvector", Behaviour::WrongVector),
    ];
    let ids: Vec<&str> = parties.iter().map(|(id, _)| *id).collect();
    let hub = start(&rt, hub_config(&ids), &parties);
    let (global, records) = run_rounds(&rt, &hub, &ids, 1, Admission::default(), N);
    let r = &records[0];
    assert_eq!(r.fit.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), vec!["honest"], "{r:?}");
    assert_eq!(global.values, vec![1.5; N]);
    assert!(reasons(r, "wrongcount", "fit").contains("sent 9 parameters, the model has 10"), "{r:?}");
    let v = reasons(r, "wrongvector", "fit");
    assert!(v.contains("sent 9 values in the algorithm's vector, the model has 10"), "{v}");
    let big = reasons(r, "oversized", "fit");
    assert!(big.contains("too large") || big.contains("OutOfRange") || big.contains("ResourceExhausted"), "{big}");
    assert!(hub.connected().contains(&"honest".to_string()));
}

#[test]
fn forged_and_oversized_reasons_are_cut_and_escaped() {
    let rt = runtime();
    let parties = [("honest", Behaviour::Honest { count: 10, delta: 1.0 }), ("forger", Behaviour::ForgedReason)];
    let ids: Vec<&str> = parties.iter().map(|(id, _)| *id).collect();
    let hub = start(&rt, hub_config(&ids), &parties);
    let (global, records) = run_rounds(&rt, &hub, &ids, 3, Admission::default(), N);
    assert_eq!(global.values, vec![3.5; N]);
    for r in &records {
        let reason = reasons(r, "forger", "fit");
        assert!(reason.contains("boom\\nround 9/9"), "{reason}");
        assert!(!reason.contains('\n'), "{reason}");
        assert!(reason.len() < MAX_TEXT + 100, "{} bytes", reason.len());
        assert!(reason.contains("more bytes)"), "{reason}");
    }
    // Three rounds of 60 KB reasons leave records of a few KB, not megabytes.
    let bytes = serde_json::to_vec(&records).unwrap().len();
    assert!(bytes < 10_000, "{bytes} bytes of records");
}

/// A party that joins, sends heartbeats, and never reads a byte of what the server sends.
async fn deaf_party(url: String, id: &str) -> tonic::Streaming<ServerMessage> {
    let (_tx, inbound) = join(url, id).await.unwrap();
    // Keep the sender alive (heartbeats keep flowing) by leaking it into a task.
    tokio::spawn(async move {
        let _keep = _tx;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    inbound
}

#[test]
fn a_party_that_never_reads_is_dropped_within_the_round_deadline() {
    let rt = runtime();
    // A model large enough (8 MB) that the task cannot fit in the HTTP/2 window and the
    // server's outgoing queue: sending it needs the party to read.
    let model_len = 2_000_000;
    let mut cfg = hub_config(&["honest", "deaf"]);
    cfg.model_len = model_len;
    cfg.limits = Limits { max_values: 1 << 22, max_chunk_bytes: 64 << 10 };
    cfg.chunk_bytes = 32 << 10;
    cfg.task_timeout = Duration::from_secs(3);
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    let url = format!("http://{addr}");
    rt.spawn(raw_party(url.clone(), "honest".into(), Behaviour::Honest { count: 10, delta: 1.0 }));
    let deaf = rt.block_on(deaf_party(url, "deaf"));
    assert_eq!(rt.block_on(hub.wait_for(2, Duration::from_secs(10))), 2);
    let before = rss_mb();
    let t = Instant::now();
    let (global, records) = run_rounds(&rt, &hub, &["honest", "deaf"], 1, Admission::default(), model_len);
    let took = t.elapsed();
    let r = &records[0];
    assert!(r.aggregated, "{r:?}");
    assert!(global.values.iter().all(|v| (v - 1.5).abs() < 1e-6));
    assert!(reasons(r, "deaf", "fit").contains("did not read its task"), "{r:?}");
    assert!(!hub.connected().contains(&"deaf".to_string()), "the deaf party is dropped");
    eprintln!("never-reading party: round {took:?}, memory {before:.0} → {:.0} MB", rss_mb());
    // Fit (3 s deadline) and evaluation (the deaf party is gone by then): well under a minute.
    assert!(took < Duration::from_secs(30), "{took:?}");
    drop(deaf);
}

#[test]
fn a_party_stalled_at_shutdown_cannot_hold_the_server_open() {
    let rt = runtime();
    let (hub, addr) = rt.block_on(Hub::start(hub_config(&["stalled"]))).unwrap();
    let stalled = rt.block_on(deaf_party(format!("http://{addr}"), "stalled"));
    assert_eq!(rt.block_on(hub.wait_for(1, Duration::from_secs(10))), 1);
    let t = Instant::now();
    rt.block_on(hub.shutdown("done", Duration::from_secs(1)));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(hub.connected().is_empty());
    drop(stalled);
}

#[test]
fn five_thousand_streams_on_one_connection_get_one_seat() {
    let rt = runtime();
    let parties = [("honest", Behaviour::Honest { count: 10, delta: 1.0 })];
    let mut cfg = hub_config(&["honest", "flooder"]);
    cfg.join_timeout = Duration::from_secs(2);
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    let url = format!("http://{addr}");
    let before = rss_mb();
    let (accepted, refused) = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..5000 {
            let mut client = FederationClient::new(channel.clone());
            tasks.spawn(async move {
                let (tx, rx) = mpsc::channel(4);
                tx.send(hello("flooder")).await.unwrap();
                let r = client.join(ReceiverStream::new(rx)).await;
                // Hold an accepted stream open until the end of the test.
                r.map(|s| (s, tx))
            });
        }
        let (mut ok, mut refused) = (Vec::new(), 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(s) => ok.push(s),
                // Refused by the server ("one party per connection"), or by HTTP/2 itself
                // (REFUSED_STREAM, over max_concurrent_streams) before the client learned the limit.
                Err(s) => {
                    let by_h2 = format!("{s:?}").contains("REFUSED_STREAM");
                    assert!(s.message().contains("one party per connection") || by_h2, "{s:?}");
                    refused += 1;
                }
            }
        }
        (ok, refused)
    });
    assert_eq!(accepted.len(), 1, "one seat per connection");
    assert_eq!(refused, 4999);
    for (id, b) in parties {
        rt.spawn(raw_party(url.clone(), id.into(), b));
    }
    assert!(rt.block_on(hub.wait_for(2, Duration::from_secs(10))) >= 1);
    let (global, records) = run_rounds(&rt, &hub, &["honest"], 1, Admission::default(), N);
    assert!(records[0].aggregated);
    assert_eq!(global.values, vec![1.5; N]);
    let after = rss_mb();
    eprintln!("5,000 streams on one connection: memory {before:.0} → {after:.0} MB");
    assert!(after - before < 256.0, "{before} → {after} MB");
}

#[test]
fn a_connection_flood_is_bounded_and_honest_parties_get_in() {
    let rt = runtime();
    let mut cfg = hub_config(&["honest"]);
    cfg.max_connections = 50;
    cfg.join_timeout = Duration::from_secs(2);
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    let before = rss_mb();
    // 300 sockets that connect and say nothing.
    let idle: Vec<std::net::TcpStream> = (0..300).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let open = hub.open_connections();
    assert!(open <= 50, "{open} connections open over a limit of 50");
    // The honest party retries as the real runner does; the idle sockets are closed after the
    // join timeout, so it gets in.
    let t = Instant::now();
    rt.spawn(raw_party(format!("http://{addr}"), "honest".into(), Behaviour::Honest { count: 10, delta: 1.0 }));
    assert_eq!(rt.block_on(hub.wait_for(1, Duration::from_secs(15))), 1);
    let joined = t.elapsed();
    let (global, records) = run_rounds(&rt, &hub, &["honest"], 1, Admission::default(), N);
    assert!(records[0].aggregated);
    assert_eq!(global.values, vec![1.5; N]);
    // Every idle socket is closed by now: reading reaches end-of-stream (after the server's
    // HTTP/2 settings, if it got that far) or a reset, never a read timeout.
    for mut s in idle.into_iter().take(20) {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    let timed_out = matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
                    assert!(!timed_out, "an idle socket is still open: {e}");
                    break;
                }
            }
        }
    }
    assert!(hub.open_connections() <= 2, "{} still open", hub.open_connections());
    eprintln!("300 idle sockets: honest party joined after {joined:?}; memory {before:.0} → {:.0} MB", rss_mb());
}

#[test]
fn a_second_login_replaces_the_first_only_after_telling_it() {
    let rt = runtime();
    let (hub, addr) = rt.block_on(Hub::start(hub_config(&["a"]))).unwrap();
    let url = format!("http://{addr}");
    let (_tx1, mut first) = rt.block_on(join(url.clone(), "a")).unwrap();
    assert_eq!(rt.block_on(hub.wait_for(1, Duration::from_secs(5))), 1);
    rt.spawn(raw_party(url, "a".into(), Behaviour::Honest { count: 10, delta: 1.0 }));
    // The first connection hears why, then its stream ends.
    let told = rt.block_on(async {
        let mut told = None;
        while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(10), first.message()).await {
            if let Some(server_message::Msg::Refusal(r)) = m.msg {
                told = Some(r.reason);
            }
        }
        told
    });
    let told = told.expect("the first connection was told");
    assert!(told.contains("replaced by a new connection for the same identity"), "{told}");
    let (global, records) = run_rounds(&rt, &hub, &["a"], 1, Admission::default(), N);
    assert!(records[0].aggregated, "{:?}", records[0]);
    assert_eq!(global.values, vec![1.5; N]);
    assert_eq!(hub.connected(), vec!["a".to_string()]);
}

#[test]
fn unknown_protocol_versions_and_strangers_are_refused() {
    let rt = runtime();
    let (_hub, addr) = rt.block_on(Hub::start(hub_config(&["a"]))).unwrap();
    let url = format!("http://{addr}");
    let attempt = |version: u32, id: &'static str| {
        let url = url.clone();
        rt.block_on(async move {
            let mut client = FederationClient::connect(url).await.unwrap();
            let (tx, rx) = mpsc::channel(4);
            tx.send(out(party_message::Msg::Hello(Hello {
                protocol_version: version,
                party_id: id.into(),
                ..Default::default()
            })))
            .await
            .unwrap();
            client.join(ReceiverStream::new(rx)).await.map(|_| ()).unwrap_err()
        })
    };
    let e = attempt(99, "a");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("unsupported protocol version 99") && e.message().contains("upgrade this server"));
    // Parties of earlier builds (protocol 1: closed algorithm list, metrics map; 2: no
    // models by reference; 3: no compressed broadcast) are told why.
    for old in [1, 2, 3] {
        let e = attempt(old, "a");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let m = e.message();
        assert!(
            m.contains(&format!("unsupported protocol version {old} (this server speaks 4)"))
                && m.contains("upgrade the party"),
            "{m}"
        );
    }
    let e = attempt(PROTOCOL_VERSION, "stranger\nround 9/9 accuracy 100 %");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("not on the allow-list"), "{e}");
    assert!(!e.message().contains('\n'), "{e}");
}

#[test]
fn a_party_with_other_federation_settings_is_refused_naming_the_key() {
    let rt = runtime();
    let mut cfg = hub_config(&["a"]);
    cfg.federation = [("seed", "42"), ("data.partition", "\"iid\""), ("model.name", "\"cnn\"")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    let url = format!("http://{addr}");
    // Joins with `settings`; on success the party's sending half is returned, so its stream
    // stays open (the server counts it as joined) until the caller drops it.
    let attempt = |settings: Vec<(String, String)>| {
        let url = url.clone();
        rt.block_on(async move {
            let mut client = FederationClient::connect(url).await.unwrap();
            let (tx, rx) = mpsc::channel(4);
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION,
                party_id: "a".into(),
                federation: settings.into_iter().collect(),
            };
            tx.send(out(party_message::Msg::Hello(hello))).await.unwrap();
            client.join(ReceiverStream::new(rx)).await.map(|inbound| (tx, inbound))
        })
    };
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    // Another seed would split the data differently: refused, naming the key and both values.
    let e = attempt(vec![kv("seed", "7"), kv("model.name", "\"cnn\"")]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("seed = 7 where the federation has 42"), "{e}");
    let e = attempt(vec![kv("data.shards_per_party", "3")]).unwrap_err();
    assert!(e.message().contains("data.shards_per_party = 3, which the federation does not set"), "{e}");
    let many: Vec<(String, String)> = (0..300).map(|i| kv(&format!("k{i}"), "1")).collect();
    assert!(attempt(many).unwrap_err().message().contains("sent 300 federation settings, more than 256"));
    let long = vec![kv("data.schema.features", &"x".repeat(300))];
    let e = attempt(long).unwrap_err();
    assert!(e.message().contains("sent the setting 'data.schema.features' of 320 bytes"), "{e}");
    // A party bringing its own data sends only the model and dataset: the matching subset joins.
    let joined = attempt(vec![kv("model.name", "\"cnn\"")]).unwrap();
    assert_eq!(rt.block_on(hub.wait_for(1, Duration::from_secs(5))), 1);
    drop(joined);
}

#[test]
fn a_revoked_party_is_dropped_before_its_next_task_and_refused_at_its_next_login() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let deny = dir.path().join("revoked.txt");
    std::fs::write(&deny, "# revoked identities\n").unwrap();
    let mut cfg = hub_config(&["honest", "bad"]);
    cfg.deny_file = Some(deny.clone());
    let parties =
        [("honest", Behaviour::Honest { count: 10, delta: 1.0 }), ("bad", Behaviour::Honest { count: 10, delta: 3.0 })];
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    for (id, b) in parties {
        rt.spawn(raw_party(format!("http://{addr}"), id.to_string(), b));
    }
    assert_eq!(rt.block_on(hub.wait_for(2, Duration::from_secs(10))), 2);
    let (global, _) = run_rounds(&rt, &hub, &["honest", "bad"], 1, Admission::default(), N);
    assert_eq!(global.values, vec![2.5; N], "both count before the revocation");
    // Revoked while connected: the next round goes on without it, its connection is closed.
    std::fs::write(&deny, "# revoked identities\nbad  # key leaked\n").unwrap();
    let (global, records) = run_rounds(&rt, &hub, &["honest", "bad"], 1, Admission::default(), N);
    assert_eq!(global.values, vec![1.5; N]);
    assert!(reasons(&records[0], "bad", "fit").contains("revoked"), "{:?}", records[0]);
    assert!(!hub.connected().contains(&"bad".to_string()));
    // And it cannot come back.
    let e = rt.block_on(join(format!("http://{addr}"), "bad")).map(|_| ()).unwrap_err();
    assert!(e.message().contains("revoked"), "{e}");
}

#[test]
fn round_zero_statistics_that_cannot_be_true_are_refused_by_name_and_never_added() {
    let rt = runtime();
    let parties = [
        ("h1", Behaviour::Honest { count: 10, delta: 1.0 }),
        ("h2", Behaviour::Honest { count: 10, delta: 1.0 }),
        ("nan", Behaviour::NanMetric),
        ("present", Behaviour::WrongCount),
        ("ragged", Behaviour::WrongVector),
        ("width", Behaviour::HugeCount),
    ];
    let ids: Vec<&str> = parties.iter().map(|(id, _)| *id).collect();
    let hub = start(&rt, hub_config(&ids), &parties);
    let clients: Vec<Box<dyn ClientProxy>> =
        ids.iter().map(|id| Box::new(RemoteParty::new(*id, hub.clone(), rt.handle().clone())) as _).collect();
    let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![N], offset: 0 }]));
    let _ = Parameters::new(vec![0.5; N], layout);
    let mut server = Server::new(Box::new(FedAvg::new(LocalTraining::sgd(1, 1, 0.1))), clients);
    // Four liars: round 0 still needs only 2, and adds the honest two only.
    let m = server.round_zero(2).unwrap().unwrap();
    assert_eq!((m.count, m.sum.clone()), (8, vec![4.0, 16.0]));
    // Asking for more than the honest parties fails, naming each liar and why.
    let e = server.round_zero(3).unwrap_err().to_string();
    for (id, why) in [
        ("nan", "statistics of feature 1 are out of range"),
        ("present", "statistics of feature 0 are out of range"),
        ("ragged", "per-feature lists differ in length"),
        ("width", "statistics of 0 features cannot be added to 2"),
    ] {
        assert!(e.contains(&format!("{id}: ")) && e.contains(why), "{id}: {e}");
    }
    assert!(e.contains("2 parties sent the statistics of their rows, 3 are needed"), "{e}");
}
