//! Load: 200 parties, each running the real party runner with its own model and data, hosted
//! as tasks of one process, complete 3 rounds against a server on loopback.

use std::sync::Arc;
use std::time::Duration;

use federate_core::{
    ClientProxy, FedAvg, Learner, LocalClient, LocalTraining, NnLearner, Parameters, Server, ServerConfig,
};
use federate_data::Dataset;
use federate_net::codec::Limits;
use federate_net::party::{PartyOptions, run_party};
use federate_net::server::{Hub, HubConfig, RemoteParty};
use federate_nn::{LayerSpec, ModelSpec, Shape};

const PARTIES: usize = 200;

fn data(seed: u64, n: usize) -> Dataset {
    // Two Gaussian blobs in 16 dimensions: a task logistic regression can learn.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut x = Vec::with_capacity(n * 16);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        for _ in 0..16 {
            x.push(next() + if label == 1 { 0.6 } else { -0.6 });
        }
        y.push(label);
    }
    Dataset::classification(x, y, [1, 1, 16], 2)
}

fn spec() -> ModelSpec {
    ModelSpec {
        loss: Default::default(),
        input: Shape::flat(16),
        classes: 2,
        layers: vec![LayerSpec::Linear { out: 2 }],
    }
}

/// A hub on loopback and one real party runner per client (named party-1 …), all
/// connected; returns the hub and the server's proxies for the parties.
fn federation(
    rt: &tokio::runtime::Runtime,
    layout: &Arc<federate_core::Layout>,
    clients: Vec<LocalClient<NnLearner>>,
    chunk_bytes: usize,
    zstd: bool,
) -> (Hub, Vec<Box<dyn ClientProxy>>) {
    let ids: Vec<String> = (1..=clients.len()).map(|i| format!("party-{i}")).collect();
    let (max_connections, max_handshakes, max_streams_per_connection, join_timeout) =
        HubConfig::default_limits(ids.len());
    let cfg = HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        allowed: ids.clone(),
        model_len: layout.len(),
        heartbeat: Duration::from_secs(2),
        party_timeout: Duration::from_secs(30),
        task_timeout: Duration::from_secs(60),
        rejoin_wait: Duration::from_secs(30),
        limits: Limits::default(),
        max_message_bytes: 4 << 20,
        chunk_bytes,
        zstd,
        max_connections,
        max_handshakes,
        max_streams_per_connection,
        join_timeout,
        deny_file: None,
        federation: Default::default(),
    };
    let (hub, addr) = rt.block_on(Hub::start(cfg)).unwrap();
    for (id, client) in ids.iter().zip(clients) {
        let opts = PartyOptions {
            server: format!("http://{addr}"),
            id: id.clone(),
            tls: None,
            server_name: None,
            limits: Limits::default(),
            max_message_bytes: 4 << 20,
            chunk_bytes,
            zstd,
            heartbeat: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            give_up_after: Duration::from_secs(60),
            federation: Default::default(),
        };
        let layout = layout.clone();
        rt.spawn(async move { run_party(opts, Box::new(client), layout).await });
    }
    assert_eq!(rt.block_on(hub.wait_for(ids.len(), Duration::from_secs(60))), ids.len());
    let proxies =
        ids.iter().map(|id| Box::new(RemoteParty::new(id.clone(), hub.clone(), rt.handle().clone())) as _).collect();
    (hub, proxies)
}

#[test]
fn two_hundred_parties_complete_three_rounds() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let layout = NnLearner::new(spec(), 8, 1).unwrap().layout();
    let parties = (0..PARTIES)
        .map(|i| LocalClient::new(NnLearner::new(spec(), 8, 1).unwrap(), data(i as u64, 40), data(1000 + i as u64, 10)))
        .collect();
    let (hub, clients) = federation(&rt, &layout, parties, 1 << 20, false);
    let strategy = FedAvg { min_replies: PARTIES, ..FedAvg::new(LocalTraining::sgd(1, 8, 0.1)) };
    let init = NnLearner::new(spec(), 1, 1).unwrap().init(1);
    let init = Parameters::new(init, Arc::clone(&layout)).unwrap();
    let mut server = Server::new(Box::new(strategy), clients);
    let (_, records) = server.run(init, &ServerConfig::new(3, 1), &mut |_| {}).unwrap();
    rt.block_on(hub.shutdown("done", Duration::from_secs(5)));
    for r in &records {
        assert_eq!(r.fit.len(), PARTIES, "round {}: {:?}", r.round, r.failures);
        assert_eq!(r.evaluate.len(), PARTIES);
    }
    assert!(records[2].accuracy.unwrap() > 0.9, "{:?}", records[2].accuracy);
    let (out, inb) = hub.traffic();
    let model_bytes = layout.len() as u64 * 4;
    // The model goes down once per round and party, for evaluation, plus once for round 1's
    // fit: later fits refer to the model the party evaluated the round before. The update
    // comes up once per round and party. The rounds' records count the same bytes.
    assert_eq!(out, (3 + 1) * PARTIES as u64 * model_bytes);
    assert_eq!(inb, 3 * PARTIES as u64 * model_bytes);
    assert_eq!(records.iter().map(|r| r.bytes_down).sum::<u64>(), out);
    assert_eq!(records.iter().map(|r| r.bytes_up).sum::<u64>(), inb);
}

/// Stateful algorithms over the wire: SCAFFOLD (a second vector each way) and ADMM (party-
/// side duals) with 4 parties on loopback give the same model as in-process parties.
#[test]
fn scaffold_and_admm_over_the_network_equal_the_simulation() {
    use federate_core::{Admm, InProcess, Scaffold, Strategy};
    const N: usize = 4;
    let layout = NnLearner::new(spec(), 8, 1).unwrap().layout();
    let training = LocalTraining::sgd(2, 8, 0.1);
    let strategies = |name: &str| -> Box<dyn Strategy> {
        let base = FedAvg { fraction_fit: 0.5, ..FedAvg::new(training.clone()) };
        match name {
            "scaffold" => Box::new(Scaffold::new(base, 1.0).unwrap()),
            _ => Box::new(Admm::new(base, 0.5, true).unwrap()),
        }
    };
    let client = |i: usize| LocalClient::new(NnLearner::new(spec(), 8, 1).unwrap(), data(i as u64, 40), data(99, 10));
    let init = Parameters::new(NnLearner::new(spec(), 1, 1).unwrap().init(1), Arc::clone(&layout)).unwrap();
    for name in ["scaffold", "admm"] {
        // In process.
        let local: Vec<Box<dyn ClientProxy>> =
            (0..N).map(|i| Box::new(InProcess::new(format!("party-{}", i + 1), client(i))) as _).collect();
        let (want, _) =
            Server::new(strategies(name), local).run(init.clone(), &ServerConfig::new(4, 2), &mut |_| {}).unwrap();
        // Over loopback, in chunks of 64 bytes with zstd.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (hub, remote) = federation(&rt, &layout, (0..N).map(client).collect(), 64, true);
        let (got, records) =
            Server::new(strategies(name), remote).run(init.clone(), &ServerConfig::new(4, 2), &mut |_| {}).unwrap();
        rt.block_on(hub.shutdown("done", Duration::from_secs(5)));
        assert!(records.iter().all(|r| r.failures.is_empty()), "{name}: {:?}", records.last().map(|r| &r.failures));
        assert_eq!(got.values, want.values, "{name}: network and in-process runs differ");
    }
}

/// A task whose party half this party does not know (a newer server, or a hostile one) is
/// refused with the reason, its vectors still read so the stream stays in step: the same
/// connection then serves the next, ordinary task.
#[test]
fn a_task_the_party_cannot_read_is_refused_and_the_connection_goes_on() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let layout = NnLearner::new(spec(), 8, 1).unwrap().layout();
    let party = LocalClient::new(NnLearner::new(spec(), 8, 1).unwrap(), data(1, 40), data(2, 10));
    let (hub, _) = federation(&rt, &layout, vec![party], 64, false);
    let global = Parameters::new(NnLearner::new(spec(), 1, 1).unwrap().init(1), Arc::clone(&layout)).unwrap();
    let mut training = LocalTraining::sgd(1, 8, 0.1);
    training.local.name = "fedmagic".into();
    let odd = federate_core::FitTask {
        round: 1,
        training,
        seed: 1,
        vector: Some(Arc::new(vec![0.5; layout.len()])),
        scaling: None,
        model: None,
        changes: Vec::new(),
    };
    let e = rt.block_on(hub.fit("party-1", &global, &odd)).unwrap_err().to_string();
    assert!(e.contains("unknown local algorithm 'fedmagic'"), "{e}");
    let plain = federate_core::FitTask {
        round: 2,
        training: LocalTraining::sgd(1, 8, 0.1),
        seed: 2,
        vector: None,
        scaling: None,
        model: None,
        changes: Vec::new(),
    };
    let r = rt.block_on(hub.fit("party-1", &global, &plain)).unwrap();
    assert_eq!((r.params.len(), r.num_examples), (layout.len(), 40));
    assert_eq!(hub.connected(), vec!["party-1".to_string()]);
    rt.block_on(hub.shutdown("done", Duration::from_secs(2)));
}

/// A compressed broadcast over the wire: parties that sit rounds out (half train, half
/// evaluate) are sent the values, the others the 4-bit change, and each party decodes exactly
/// the model the server defines, so the run equals in-process parties bit for bit; the hub's
/// traffic is what the rounds' records count (an encoded transfer is padded to whole 4-byte
/// words).
#[test]
fn a_compressed_broadcast_over_the_network_equals_the_simulation_and_counts_its_bytes() {
    use federate_core::{BroadcastCompression, InProcess};
    const N: usize = 6;
    let spec = ModelSpec {
        layers: vec![LayerSpec::Linear { out: 32 }, LayerSpec::Relu, LayerSpec::Linear { out: 2 }],
        ..spec()
    };
    let layout = NnLearner::new(spec.clone(), 8, 1).unwrap().layout();
    let strategy = || {
        let base = FedAvg { fraction_fit: 0.5, fraction_evaluate: 0.5, ..FedAvg::new(LocalTraining::sgd(1, 8, 0.1)) };
        Box::new(base)
    };
    let client = |i: usize| {
        LocalClient::new(NnLearner::new(spec.clone(), 8, 1).unwrap(), data(i as u64, 40), data(99 + i as u64, 10))
    };
    let init = Parameters::new(NnLearner::new(spec.clone(), 1, 1).unwrap().init(1), Arc::clone(&layout)).unwrap();
    let q4 = BroadcastCompression { bits: 4, zstd: true };
    let cfg = ServerConfig::new(5, 3);
    let local: Vec<Box<dyn ClientProxy>> =
        (0..N).map(|i| Box::new(InProcess::new(format!("party-{}", i + 1), client(i))) as _).collect();
    let mut sim = Server::new(strategy(), local).with_broadcast(q4).unwrap();
    let (want, sim_records) = sim.run(init.clone(), &cfg, &mut |_| {}).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (hub, remote) = federation(&rt, &layout, (0..N).map(client).collect(), 1 << 20, false);
    let (got, records) =
        Server::new(strategy(), remote).with_broadcast(q4).unwrap().run(init.clone(), &cfg, &mut |_| {}).unwrap();
    rt.block_on(hub.shutdown("done", Duration::from_secs(5)));
    assert!(
        records.iter().all(|r| r.failures.is_empty()),
        "{:?}",
        records.iter().map(|r| &r.failures).collect::<Vec<_>>()
    );
    assert_eq!(got.values, want.values, "network and in-process runs differ");
    assert_ne!(got.values, init.values);
    let counted: u64 = records.iter().map(|r| r.bytes_down).sum();
    assert_eq!(counted, sim_records.iter().map(|r| r.bytes_down).sum::<u64>());
    let sends: u64 = records.iter().map(|r| (r.fit.len() + r.evaluate.len()) as u64).sum();
    let (out, _) = hub.traffic();
    let padding = 4 * federate_core::broadcast::MAX_CHAIN as u64 * sends;
    assert!(counted <= out && out < counted + padding, "hub sent {out} bytes, the records count {counted}");
    // Every party is sent the changes from the model it holds (the first time, from the
    // initial model's 4-bit values), each about an eighth of the values: under a fifth of what
    // 32-bit models cost (with only the last change kept, the values to parties that sat a
    // round out take it over a quarter).
    let floats = sends * 4 * layout.len() as u64;
    assert!(counted < floats / 5, "{counted} bytes down, {floats} as 32-bit floats");
}
