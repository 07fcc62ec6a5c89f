//! `federate bench train`: training throughput of a built-in model per batch size, as
//! samples/s and as a fraction of the arithmetic floor (training FLOPs per example × samples/s
//! ÷ the GEMM rate measured on this machine with the same threads).

use std::time::Instant;

use anyhow::Result;
use federate_nn::{ModelSpec, Network, OptimizerSpec, Shape, measure_gemm_gflops};

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
pub fn train(model: &str, batches: &[usize], seconds: f64, threads: usize) -> Result<(f64, f64, Vec<TrainBench>)> {
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
        for _ in 0..3 {
            net.loss_and_grad(&p, &mut ws, &x, &y, &mut g)?;
            opt.step(&mut p, &g);
        }
        let t = Instant::now();
        let mut steps = 0usize;
        while steps < 5 || t.elapsed().as_secs_f64() < seconds {
            net.loss_and_grad(&p, &mut ws, &x, &y, &mut g)?;
            opt.step(&mut p, &g);
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
