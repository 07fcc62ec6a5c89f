//! `federate bench train`: training throughput of a built-in model per batch size, as
//! samples/s and as a fraction of the arithmetic floor (training FLOPs per example × samples/s
//! ÷ the GEMM rate measured on this machine with the same threads).

use std::time::Instant;

use anyhow::Result;
use federate_core::OptimizerSpec;
use federate_nn::{ModelSpec, Network, Shape, measure_gemm_gflops};

/// One batch size's measurement.
#[derive(Debug, Clone, Copy)]
pub struct TrainBench {
    /// Batch size.
    pub batch: usize,
    /// Training samples per second.
    pub samples_per_s: f64,
    /// Milliseconds per step.
    pub ms_per_step: f64,
    /// Achieved GFLOP/s.
    pub gflops: f64,
}

/// Measures training steps of `model` (MNIST-shaped input) at each batch size for about
/// `seconds` each, with `threads` threads; returns the GEMM peak and the rows.
/// With `dp_clip`, each step is DP-SGD's clipped per-example gradient sum instead, plus
/// N(0, C²) noise on every coordinate when a noise source is given.
pub fn train(
    model: &str,
    batches: &[usize],
    seconds: f64,
    threads: usize,
    dp_clip: Option<(f32, Option<federate_core::NoiseSource>)>,
) -> Result<(f64, f64, Vec<TrainBench>)> {
    let net = Network::new(ModelSpec::builtin(model, Shape::image(28, 28, 1), 10)?)?;
    let (_, flops) = net.flops_per_example();
    let peak = measure_gemm_gflops(1024, threads, 5).max(measure_gemm_gflops(2048, threads, 2));
    let mut rows = Vec::new();
    for &b in batches {
        let x: Vec<f32> = (0..b * 784).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect();
        let y: Vec<u32> = (0..b).map(|i| (i % 10) as u32).collect();
        let mut p = net.init(1);
        let mut g = vec![0.0; p.len()];
        let mut ws = net.workspace(b, threads);
        let mut opt = OptimizerSpec::Sgd { lr: 0.01, momentum: 0.9, weight_decay: 0.0 }.build(p.len())?;
        let mut norms = vec![0.0f32; b];
        let mut seed = 0u64;
        let mut step = |p: &mut Vec<f32>| -> Result<()> {
            match dp_clip {
                Some((c, noise)) => {
                    net.clipped_grad(p, &mut ws, &x, federate_nn::Targets::Classes(&y), c, &mut g, &mut norms)?;
                    if let Some(source) = noise {
                        seed += 1;
                        federate_core::dp::gaussian_noise(&mut g, c as f64, c as f64, source, seed)?;
                    }
                }
                None => net.loss_and_grad(p, &mut ws, &x, federate_nn::Targets::Classes(&y), &mut g).map(|_| ())?,
            }
            opt.step(p, &g);
            Ok(())
        };
        for _ in 0..3 {
            step(&mut p)?;
        }
        let t = Instant::now();
        let mut steps = 0usize;
        while steps < 5 || t.elapsed().as_secs_f64() < seconds {
            step(&mut p)?;
            steps += 1;
        }
        let s = t.elapsed().as_secs_f64();
        let sps = (steps * b) as f64 / s;
        rows.push(TrainBench {
            batch: b,
            samples_per_s: sps,
            ms_per_step: s * 1e3 / steps as f64,
            gflops: sps * flops / 1e9,
        });
    }
    Ok((peak, flops, rows))
}

/// One round of `federate bench net`.
#[derive(Debug, Clone)]
pub struct NetRound {
    /// The round.
    pub round: u32,
    /// Wall-clock seconds of the round.
    pub seconds: f64,
    /// The slowest party's own training time.
    pub max_train_seconds: f64,
    /// Parties that trained.
    pub parties: usize,
    /// Accuracy after the round.
    pub accuracy: f64,
}

/// The server's resident memory (this process), in MB: now and at its peak.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What `federate bench net` measured.
pub struct NetBench {
    /// Every round.
    pub rounds: Vec<NetRound>,
    /// Parameter bytes sent and received.
    pub sent: u64,
    /// Received.
    pub received: u64,
    /// Bytes of one model.
    pub model_bytes: u64,
    /// The server's resident memory before any party connected (MB).
    pub rss_idle_mb: f64,
    /// With every party connected, before round 1 (MB).
    pub rss_connected_mb: f64,
    /// The server's peak over the whole run (MB).
    pub rss_peak_mb: f64,
    /// Seconds until every party had joined.
    pub join_seconds: f64,
}

fn hub_config(ids: &[String], model_len: usize, zstd: bool) -> federate_net::server::HubConfig {
    use federate_net::server::HubConfig;
    use std::time::Duration;
    let (max_connections, max_handshakes, max_streams_per_connection, join_timeout) =
        HubConfig::default_limits(ids.len());
    HubConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        tls: None,
        allowed: ids.to_vec(),
        model_len,
        heartbeat: Duration::from_secs(5),
        party_timeout: Duration::from_secs(120),
        task_timeout: Duration::from_secs(600),
        rejoin_wait: Duration::from_secs(30),
        limits: federate_net::codec::Limits::default(),
        max_message_bytes: 16 << 20,
        chunk_bytes: 4 << 20,
        zstd,
        max_connections,
        max_handshakes,
        max_streams_per_connection,
        join_timeout: join_timeout.max(Duration::from_secs(60)),
        deny_file: None,
        federation: Default::default(),
    }
}

/// The party identities of `cfg` (party-1 … party-N).
fn party_ids(cfg: &crate::config::Config) -> Vec<String> {
    (1..=cfg.data.parties).map(|i| format!("party-{i}")).collect()
}

/// `federate bench net`: a server in this process and `data.parties` real party runners
/// (MNIST IID partitions, each training its own model) in a child process (`child_args` run
/// `federate bench net-parties` against the server's URL), so the server's memory is its own:
/// measured idle, with every party connected, and at its peak.
pub fn net(cfg: &crate::config::Config, zstd: bool, child_args: &[String]) -> Result<NetBench> {
    use federate_core::{ClientProxy, Event, FedAvg, Learner, NnLearner, Parameters, Server, ServerConfig};
    use federate_net::server::{Hub, RemoteParty};
    use std::time::Duration;

    let spec = crate::assemble::spec_for(cfg)?;
    let layout = NnLearner::new(spec.clone(), 1, 1)?.layout();
    let ids = party_ids(cfg);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (hub, addr) = rt.block_on(Hub::start(hub_config(&ids, layout.len(), zstd)))?;
    let (rss_idle_mb, _) = rss_mb();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(child_args)
        .args(["--server", &format!("http://{addr}")])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let n = ids.len();
    let t = Instant::now();
    let within = Duration::from_secs(120 + n as u64 / 20);
    let have = rt.block_on(hub.wait_for(n, within));
    let join_seconds = t.elapsed().as_secs_f64();
    if have < n {
        let _ = child.kill();
        anyhow::bail!("only {have} of {n} parties connected within {within:?} (is `ulimit -n` large enough?)");
    }
    let (rss_connected_mb, _) = rss_mb();
    let clients: Vec<Box<dyn ClientProxy>> =
        ids.iter().map(|id| Box::new(RemoteParty::new(id.clone(), hub.clone(), rt.handle().clone())) as _).collect();
    let strategy = FedAvg {
        fraction_fit: cfg.strategy.fraction_fit,
        min_fit_clients: cfg.strategy.min_fit_clients,
        fraction_evaluate: cfg.strategy.fraction_evaluate,
        min_replies: cfg.strategy.min_replies,
        training: cfg.local_training(),
        stragglers: 0.0,
        drop_stragglers: false,
        aggregator: Default::default(),
        running: None,
    };
    let init = Parameters::new(NnLearner::new(spec, 1, 1)?.init(1), layout.clone())
        .ok_or_else(|| anyhow::anyhow!("layout"))?;
    let mut server = Server::new(Box::new(strategy), clients);
    let mut rows = Vec::new();
    let result = server.run(init, &ServerConfig::new(cfg.rounds, cfg.seed), &mut |e| {
        if let Event::RoundFinished { record, .. } = e {
            rows.push(NetRound {
                round: record.round,
                seconds: record.seconds,
                max_train_seconds: record.fit.iter().filter_map(|f| f.train_seconds).fold(0.0, f64::max),
                parties: record.fit.len(),
                accuracy: record.accuracy.unwrap_or(0.0),
            });
        }
    });
    rt.block_on(hub.shutdown("benchmark complete", Duration::from_secs(10)));
    let (_, rss_peak_mb) = rss_mb();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    result?;
    let (sent, received) = hub.traffic();
    Ok(NetBench {
        rounds: rows,
        sent,
        received,
        model_bytes: layout.len() as u64 * 4,
        rss_idle_mb,
        rss_connected_mb,
        rss_peak_mb,
        join_seconds,
    })
}

/// `federate bench net-parties`: the parties of `federate bench net`, one real party runner
/// per partition of `cfg`, all in this process, until the server ends the federation.
pub fn net_parties(cfg: &crate::config::Config, server: &str, zstd: bool) -> Result<()> {
    use federate_core::{Learner, LocalClient, NnLearner};
    use federate_net::codec::Limits;
    use federate_net::party::{PartyOptions, run_party};
    use std::time::Duration;

    let data = crate::assemble::load_data(cfg)?;
    let parts = crate::assemble::split(cfg, &data)?;
    let spec = crate::assemble::model_spec(cfg, &data.train)?;
    let layout = NnLearner::new(spec.clone(), 1, 1)?.layout();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut tasks = Vec::with_capacity(parts.len());
    for p in parts {
        let learner = NnLearner::new(spec.clone(), cfg.train.batch_size, 1)?;
        let client = LocalClient::new(learner, p.train, p.test);
        let opts = PartyOptions {
            server: server.to_string(),
            id: p.id.clone(),
            tls: None,
            server_name: None,
            limits: Limits::default(),
            max_message_bytes: 16 << 20,
            chunk_bytes: 4 << 20,
            zstd,
            heartbeat: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
            give_up_after: Duration::from_secs(300),
            federation: Default::default(),
        };
        let layout = layout.clone();
        tasks.push(rt.spawn(async move { run_party(opts, Box::new(client), layout).await }));
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(())
}

/// One aggregation rule's measurement.
#[derive(Debug, Clone)]
pub struct AggregateBench {
    /// The rule.
    pub rule: String,
    /// Median milliseconds per aggregation.
    pub ms: f64,
}

/// `federate bench aggregate`: times each aggregation rule combining `parties` models of
/// `model`'s size (random values), the median of `reps` repetitions each (median, trimmed
/// mean and Krum spread over the rayon pool; the mean is one pass on one thread).
pub fn aggregate(model: &str, parties: usize, reps: usize) -> Result<(usize, Vec<AggregateBench>)> {
    use federate_core::{Aggregator, FitReply};
    use rand::RngExt;
    let net = Network::new(ModelSpec::builtin(model, Shape::image(28, 28, 1), 10)?)?;
    let len = net.init(1).len();
    let mut rng = federate_core::seed::stream(1, federate_core::seed::Stream::BenchAggregate, &[]);
    let replies: Vec<FitReply> = (0..parties)
        .map(|_| FitReply {
            params: (0..len).map(|_| rng.random::<f32>() - 0.5).collect(),
            num_examples: 600,
            ..Default::default()
        })
        .collect();
    let refs: Vec<&FitReply> = replies.iter().collect();
    let f = parties.saturating_sub(3) / 2;
    let rules = [
        ("mean".to_string(), Aggregator::Mean),
        ("median".to_string(), Aggregator::Median),
        ("trimmed-mean (β 0.2)".to_string(), Aggregator::TrimmedMean { trim: 0.2 }),
        (format!("krum (f {f})"), Aggregator::Krum { byzantine: f, select: 1 }),
    ];
    let mut rows = Vec::new();
    for (rule, agg) in rules {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let out = agg.combine(&refs)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(out);
        }
        times.sort_by(f64::total_cmp);
        rows.push(AggregateBench { rule, ms: times[times.len() / 2] });
    }
    Ok((len, rows))
}
