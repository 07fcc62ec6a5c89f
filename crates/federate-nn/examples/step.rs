//! Times training steps of the built-in CNN: `cargo run --release -p federate-nn --example step`.
use federate_nn::{ModelSpec, Network, OptimizerSpec, Shape};
use std::time::Instant;
fn main() {
    let net =
        Network::new(ModelSpec::builtin("cnn", Shape::image(28, 28, 1), 10).unwrap()).unwrap();
    let threads = rayon::current_num_threads();
    for b in [10usize, 32, 64] {
        let x: Vec<f32> = (0..b * 784).map(|i| (i % 255) as f32 / 255.0).collect();
        let y: Vec<u32> = (0..b).map(|i| (i % 10) as u32).collect();
        let mut p = net.init(1);
        let mut g = vec![0.0; p.len()];
        let mut ws = net.workspace(b, threads);
        let mut opt = OptimizerSpec::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
        }
        .build(p.len())
        .unwrap();
        for _ in 0..5 {
            net.loss_and_grad(&p, &mut ws, &x, &y, &mut g).unwrap();
            opt.step(&mut p, &g);
        }
        let steps = 3000 / b;
        let t = Instant::now();
        for _ in 0..steps {
            net.loss_and_grad(&p, &mut ws, &x, &y, &mut g).unwrap();
            opt.step(&mut p, &g);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "batch={b} samples_per_s={:.0} ms_per_step={:.2}",
            (steps * b) as f64 / s,
            s * 1e3 / steps as f64
        );
    }
}
