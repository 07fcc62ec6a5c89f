//! Hostile and broken parties against a real server on loopback: non-finite updates, wrong
//! parameter counts, oversized messages and unknown protocol versions are each refused with
//! a reason, while an honest party in the same round is served and aggregated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use federate_core::{ClientProxy, FedAvg, Layout, LocalTraining, Parameters, Server, ServerConfig, TensorSpec};
use federate_net::codec::{self, Assembler, Limits};
use federate_net::proto::federation_client::FederationClient;
use federate_net::proto::{
    Chunk, EvaluateResult, FitResult, Hello, PartyMessage, ServerMessage, party_message, server_message,
};
use federate_net::server::{Hub, HubConfig, PROTOCOL_VERSION, RemoteParty};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const N: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Honest,
    NonFinite,
    WrongCount,
    Oversized,
}

fn out(m: party_message::Msg) -> PartyMessage {
    PartyMessage { msg: Some(m) }
}

/// A party speaking the protocol by hand, misbehaving as told when asked to train.
async fn raw_party(url: String, id: &str, b: Behaviour) {
    let mut client = FederationClient::connect(url).await.unwrap().max_encoding_message_size(1 << 20);
    let (tx, rx) = mpsc::channel(64);
    tx.send(out(party_message::Msg::Hello(Hello { protocol_version: PROTOCOL_VERSION, party_id: id.into() })))
        .await
        .unwrap();
    let mut inbound = client.join(ReceiverStream::new(rx)).await.unwrap().into_inner();
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
    let mut current: Option<(u64, bool, Assembler)> = None;
    while let Ok(Some(ServerMessage { msg: Some(m) })) = inbound.message().await {
        match m {
            server_message::Msg::Fit(f) => {
                current = Some((f.task_id, true, Assembler::new(f.params.unwrap(), Limits::default()).unwrap()))
            }
            server_message::Msg::Evaluate(e) => {
                current = Some((e.task_id, false, Assembler::new(e.params.unwrap(), Limits::default()).unwrap()))
            }
            server_message::Msg::Chunk(c) => {
                let Some((task_id, fit, a)) = current.as_mut() else { continue };
                let Some(values) = a.push(c).unwrap() else { continue };
                let (task_id, fit) = (*task_id, *fit);
                current = None;
                if !fit {
                    let r = EvaluateResult { task_id, num_examples: 5, loss: 0.5, accuracy: 0.5 };
                    let _ = tx.send(out(party_message::Msg::Evaluate(r))).await;
                    continue;
                }
                let mut params: Vec<f32> = values.iter().map(|v| v + 1.0).collect();
                match b {
                    Behaviour::Honest => {}
                    Behaviour::NonFinite => params[3] = f32::NAN,
                    Behaviour::WrongCount => params.pop().map(|_| ()).unwrap_or(()),
                    Behaviour::Oversized => {
                        let huge = Chunk { transfer_id: task_id, index: 0, data: vec![0u8; 128 << 10] };
                        let _ = tx.send(out(party_message::Msg::Chunk(huge))).await;
                        continue;
                    }
                }
                let (h, chunks) = codec::split(&params, task_id, 16, false);
                let head = FitResult {
                    task_id,
                    num_examples: 10,
                    metrics: HashMap::new(),
                    params: Some(h),
                    with_extra: false,
                };
                let _ = tx.send(out(party_message::Msg::Fit(head))).await;
                for c in chunks {
                    let _ = tx.send(out(party_message::Msg::Chunk(c))).await;
                }
            }
            _ => {}
        }
    }
}

fn hub_config(allowed: &[&str]) -> HubConfig {
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
    }
}

#[test]
fn bad_updates_are_refused_and_the_honest_party_is_served() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ids = ["honest", "nonfinite", "wrongcount", "oversized"];
    let (hub, addr) = rt.block_on(Hub::start(hub_config(&ids))).unwrap();
    let url = format!("http://{addr}");
    for (id, b) in
        ids.iter().zip([Behaviour::Honest, Behaviour::NonFinite, Behaviour::WrongCount, Behaviour::Oversized])
    {
        rt.spawn(raw_party(url.clone(), id, b));
    }
    assert_eq!(rt.block_on(hub.wait_for(4, Duration::from_secs(10))), 4);
    let clients: Vec<Box<dyn ClientProxy>> =
        ids.iter().map(|id| Box::new(RemoteParty::new(*id, hub.clone(), rt.handle().clone())) as _).collect();
    let strategy = FedAvg::new(LocalTraining::sgd(1, 1, 0.1));
    let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![N], offset: 0 }]));
    let init = Parameters::new(vec![0.5; N], layout).unwrap();
    let mut server = Server::new(Box::new(strategy), clients);
    let (global, records) = server.run(init, &ServerConfig::new(1, 1), &mut |_| {}).unwrap();
    let r = &records[0];
    assert!(r.aggregated);
    assert_eq!(r.fit.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), vec!["honest"], "{r:?}");
    assert_eq!(global.values, vec![1.5; N]);
    let reason = |id: &str| {
        r.failures
            .iter()
            .filter(|f| f.id == id && f.stage == "fit")
            .map(|f| f.reason.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(reason("nonfinite").contains("not finite"), "{r:?}");
    assert!(reason("wrongcount").contains("sent 9 parameters, the model has 10"), "{r:?}");
    let big = reason("oversized");
    assert!(big.contains("too large") || big.contains("OutOfRange") || big.contains("ResourceExhausted"), "{big}");
    // The honest party is still connected and served after all that.
    assert!(hub.connected().contains(&"honest".to_string()));
}

#[test]
fn unknown_protocol_versions_and_strangers_are_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_hub, addr) = rt.block_on(Hub::start(hub_config(&["a"]))).unwrap();
    let url = format!("http://{addr}");
    let attempt = |version: u32, id: &'static str| {
        let url = url.clone();
        rt.block_on(async move {
            let mut client = FederationClient::connect(url).await.unwrap();
            let (tx, rx) = mpsc::channel(4);
            tx.send(out(party_message::Msg::Hello(Hello { protocol_version: version, party_id: id.into() })))
                .await
                .unwrap();
            client.join(ReceiverStream::new(rx)).await.map(|_| ()).unwrap_err()
        })
    };
    let e = attempt(99, "a");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("unsupported protocol version 99"), "{e}");
    let e = attempt(PROTOCOL_VERSION, "stranger");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("not on the allow-list"), "{e}");
}
