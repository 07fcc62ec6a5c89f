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
