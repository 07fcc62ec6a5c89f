//! `federate bench`: the measurements' command lines and tables (the measuring is in
//! `crate::bench`).

use anyhow::Result;

use crate::init_threads;
use crate::{bench, config};

pub(crate) fn bench_aggregate(model: &str, parties: usize, reps: usize) -> Result<()> {
    if parties < 4 {
        anyhow::bail!("--parties {parties}: Krum needs at least 4 models to compare");
    }
    let (len, rows) = bench::aggregate(model, parties, reps)?;
    let mean = rows.first().map(|r| r.ms).unwrap_or(f64::NAN);
    let gb = (parties * len * 4) as f64 / 1e9;
    println!(
        "{parties} models of {len} values ({model}), {} threads (the mean uses one), median of {reps}:",
        rayon::current_num_threads()
    );
    println!("{:<22} {:>10} {:>10} {:>12}", "rule", "ms", "GB/s read", "× the mean");
    for r in &rows {
        println!("{:<22} {:>10.1} {:>10.2} {:>12.1}", r.rule, r.ms, gb / (r.ms / 1e3), r.ms / mean);
    }
    Ok(())
}

pub(crate) fn bench_train(
    model: &str,
    batches: &[usize],
    threads: usize,
    seconds: f64,
    dp_clip: Option<(f32, Option<federate_core::NoiseSource>)>,
) -> Result<()> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(!matches!(dp_clip, Some((c, _)) if c <= 0.0), "--dp-clip must be > 0");
    anyhow::ensure!(!batches.is_empty() && batches.iter().all(|&b| b >= 1), "--batches must list sizes ≥ 1");
    init_threads(threads)?;
    let (peak, flops, rows) = bench::train(model, batches, seconds, threads, dp_clip)?;
    println!(
        "model={model} mode={} threads={threads} train_mflop_per_example={:.1} gemm_peak_gflops={peak:.1} floor_samples_per_s={:.0}",
        match dp_clip {
            None => "sgd",
            Some((_, None)) => "dp-sgd-clip",
            Some((_, Some(federate_core::NoiseSource::Seeded))) => "dp-sgd-seeded-noise",
            Some((_, Some(federate_core::NoiseSource::Secure))) => "dp-sgd-secure-noise",
        },
        flops / 1e6,
        peak * 1e9 / flops
    );
    for r in rows {
        println!(
            "batch={} samples_per_s={:.0} ms_per_step={:.2} gflops={:.1} fraction_of_floor={:.2}",
            r.batch,
            r.samples_per_s,
            r.ms_per_step,
            r.gflops,
            r.gflops / peak
        );
    }
    Ok(())
}

pub(crate) fn bench_net_config(parties: usize, rounds: u32, model: &str) -> Result<config::Config> {
    config::load(
        None,
        &[
            format!("data.parties={parties}"),
            "data.partition=\"iid\"".into(),
            format!("rounds={rounds}"),
            format!("model.name=\"{model}\""),
            "train.epochs=1".into(),
        ],
    )
}

pub(crate) fn bench_net(parties: usize, rounds: u32, model: &str, zstd: bool) -> Result<()> {
    init_threads(2)?;
    let cfg = bench_net_config(parties, rounds, model)?;
    let mut child = vec![
        "bench".to_string(),
        "net-parties".into(),
        "--parties".into(),
        parties.to_string(),
        "--rounds".into(),
        rounds.to_string(),
        "--model".into(),
        model.into(),
    ];
    if zstd {
        child.push("--zstd".into());
    }
    let b = bench::net(&cfg, zstd, &child)?;
    println!("parties={parties} model={model} model_bytes={} zstd={zstd}", b.model_bytes);
    println!(
        "server_rss_idle_mb={:.1} server_rss_connected_mb={:.1} server_kb_per_connected_party={:.1} \
         server_rss_peak_mb={:.1} all_joined_seconds={:.1}",
        b.rss_idle_mb,
        b.rss_connected_mb,
        (b.rss_connected_mb - b.rss_idle_mb) * 1024.0 / parties.max(1) as f64,
        b.rss_peak_mb,
        b.join_seconds
    );
    for r in &b.rounds {
        println!(
            "round={} seconds={:.3} max_train_seconds={:.3} overhead_seconds={:.3} parties={} accuracy={:.4}",
            r.round,
            r.seconds,
            r.max_train_seconds,
            r.seconds - r.max_train_seconds,
            r.parties,
            r.accuracy
        );
    }
    let per_round = (b.sent + b.received) as f64 / b.rounds.len().max(1) as f64;
    println!(
        "bytes_per_round={per_round:.0} sent={} received={} ratio_to_model_x_parties={:.3}",
        b.sent,
        b.received,
        per_round / (b.model_bytes as f64 * parties as f64)
    );
    Ok(())
}

/// One row of `federate bench compression`.
struct CompressionRow {
    name: &'static str,
    accuracy: Option<f64>,
    /// Mean bytes per round, each way.
    up: f64,
    down: f64,
    /// Mean bytes per round if every task re-sent the model (no evaluation by reference).
    down_resend: f64,
    seconds: f64,
}

/// `federate bench compression`: the federation of `config` (default: the worked example)
/// for `rounds` rounds under each update codec, alone and with a compressed broadcast, with
/// the bytes each way per round and the final accuracy, against 32-bit floats.
pub(crate) fn bench_compression(config: Option<&std::path::Path>, sets: &[String], rounds: u32) -> Result<()> {
    let (q4, top1) = ("compression.update=\"q4\"", "compression.update=\"top-k\"");
    let (zstd, fraction) = ("compression.zstd=true", "compression.fraction=0.01");
    let codecs: [(&str, &[&str]); 8] = [
        ("none (32-bit floats)", &["compression.update=\"none\""]),
        ("q8", &["compression.update=\"q8\""]),
        ("q4", &[q4]),
        ("q4 + zstd", &[q4, zstd]),
        ("top-1% + error feedback", &[top1, fraction]),
        ("q4 / q8 broadcast", &[q4, "compression.broadcast=\"q8\"", zstd]),
        ("q4 / q4 broadcast", &[q4, "compression.broadcast=\"q4\"", zstd]),
        ("top-1% / q4 broadcast", &[top1, fraction, "compression.broadcast=\"q4\"", zstd]),
    ];
    let mut rows = Vec::new();
    let mut shown = None;
    init_threads(config::load(config, sets)?.threads)?;
    for (name, keys) in codecs {
        let mut all: Vec<String> = vec![format!("rounds={rounds}"), "evaluation.baseline=false".into()];
        all.extend(sets.iter().cloned());
        all.extend(keys.iter().map(|k| k.to_string()));
        let cfg = config::load(config, &all)?;
        let data = crate::assemble::federation_data(&cfg)?;
        let model_bytes = std::cell::Cell::new(0u64);
        let mut observer = |e: federate_core::Event<'_>| {
            if let federate_core::Event::RoundFinished { global, .. } = e {
                model_bytes.set(4 * global.values.len() as u64);
            }
        };
        let t = std::time::Instant::now();
        let result = crate::sim::simulate(&cfg, data, &mut observer, None, None)?;
        let n = result.records.len().max(1) as f64;
        let per = |f: &dyn Fn(&federate_core::RoundRecord) -> u64| result.records.iter().map(f).sum::<u64>() as f64 / n;
        let resend = |r: &federate_core::RoundRecord| {
            (r.fit.len() + r.failures.iter().filter(|f| f.stage == "fit").count() + r.evaluate.len()) as u64
                * model_bytes.get()
        };
        shown.get_or_insert_with(|| (cfg.data.dataset.clone(), cfg.data.parties, cfg.model.name.clone()));
        rows.push(CompressionRow {
            name,
            accuracy: result.records.last().and_then(|r| r.accuracy),
            up: per(&|r| r.bytes_up),
            down: per(&|r| r.bytes_down),
            down_resend: per(&resend),
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    let Some((dataset, parties, model)) = shown else { return Ok(()) };
    println!("{model} on {dataset}, {parties} parties, {rounds} rounds; bytes per round (MB = 10^6 bytes):");
    println!(
        "{:<24} {:>9} {:>9} {:>7} {:>9} {:>7} {:>9} {:>8} {:>9} {:>7}",
        "update / broadcast", "accuracy", "up MB", "up ×", "down MB", "down ×", "total MB", "total ×", "re-send ×", "s"
    );
    let first = rows.first().map_or((1.0, 1.0, 1.0), |r| (r.up, r.down, r.up + r.down_resend));
    for r in &rows {
        let total = r.up + r.down;
        println!(
            "{:<24} {:>8.2}% {:>9.3} {:>7.1} {:>9.3} {:>7.1} {:>9.2} {:>8.2} {:>9.2} {:>7.1}",
            r.name,
            r.accuracy.unwrap_or(f64::NAN) * 100.0,
            r.up / 1e6,
            first.0 / r.up,
            r.down / 1e6,
            first.1 / r.down,
            total / 1e6,
            (first.0 + first.1) / total,
            first.2 / total,
            r.seconds
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "(× against the first row; re-send ×: against 32-bit floats with the model re-sent for every task, {:.2} \
             MB down and {:.2} MB per round in all)",
            r.down_resend / 1e6,
            (r.up + r.down_resend) / 1e6
        );
    }
    Ok(())
}

/// The process's peak resident memory so far (VmHWM), in MB; `None` off Linux.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// `federate bench parties`: a cross-device simulation — `parties` parties holding MNIST
/// dealt IID, `per_round` of them training each round — with seconds per round and the
/// process's peak memory, the figures BENCHMARKS.md records for 10,000 parties.
pub(crate) fn bench_parties(parties: usize, per_round: usize, rounds: u32, sets: &[String]) -> Result<()> {
    anyhow::ensure!(parties >= 1 && (1..=parties).contains(&per_round), "--per-round must be in 1..=--parties");
    let fraction = per_round as f64 / parties as f64;
    let mut all: Vec<String> = vec![
        format!("data.parties={parties}"),
        "data.partition=\"iid\"".into(),
        format!("strategy.fraction_fit={fraction}"),
        format!("strategy.fraction_evaluate={fraction}"),
        "evaluation.baseline=false".into(),
        "train.epochs=1".into(),
        format!("rounds={rounds}"),
    ];
    all.extend(sets.iter().cloned());
    let cfg = config::load(None, &all)?;
    init_threads(cfg.threads)?;
    let before = peak_rss_mb();
    let data = crate::assemble::federation_data(&cfg)?;
    let result = crate::sim::simulate(&cfg, data, &mut |_| {}, None, None)?;
    let secs: Vec<f64> = result.records.iter().map(|r| r.seconds).collect();
    let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    println!(
        "parties={parties} per_round={per_round} rounds={} model={} threads={} party_threads={}",
        result.records.len(),
        cfg.model.name,
        rayon::current_num_threads(),
        crate::assemble::party_threads(&cfg)
    );
    println!(
        "seconds_round_1={:.2} seconds_per_round={mean:.2} accuracy={:.4} peak_rss_mb={:.0} peak_rss_before_data_mb={:.0}",
        secs.first().copied().unwrap_or(f64::NAN),
        result.records.last().and_then(|r| r.accuracy).unwrap_or(f64::NAN),
        peak_rss_mb().unwrap_or(f64::NAN),
        before.unwrap_or(f64::NAN)
    );
    Ok(())
}
