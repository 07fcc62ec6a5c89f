//! Per-example gradient norms and the clipped-sum gradient of DP-SGD, against the naive
//! computation one example at a time, on several models and random batches.

use federate_nn::{ClipNorm, LayerSpec, Loss, ModelSpec, Network, Padding, PaddingName, Shape, Targets};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn models() -> Vec<ModelSpec> {
    use LayerSpec::*;
    let same = Padding::Named(PaddingName::Same);
    vec![
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(8, 8, 2),
            classes: 4,
            layers: vec![
                Conv2d { out_channels: 3, kernel: 3, stride: 1, padding: same },
                Relu,
                MaxPool2d { kernel: 2, stride: None },
                Conv2d { out_channels: 4, kernel: 3, stride: 2, padding: Padding::Explicit(1) },
                Relu,
                Flatten,
                Linear { out: 6 },
                Relu,
                Linear { out: 4 },
            ],
        },
        ModelSpec::builtin("mlp", Shape::image(6, 6, 1), 3).unwrap(),
        ModelSpec::builtin("cnn", Shape::image(28, 28, 1), 10).unwrap(),
        // Every task clips the same way: binary cross-entropy and the regression losses.
        ModelSpec {
            loss: Loss::BinaryCrossEntropy { pos_weight: 2.5 },
            ..ModelSpec::builtin("mlp", Shape::flat(9), 1).unwrap()
        },
        ModelSpec { loss: Loss::Mse, ..ModelSpec::builtin("mlp", Shape::flat(9), 1).unwrap() },
        ModelSpec { loss: Loss::Huber { delta: 0.5 }, ..ModelSpec::builtin("logreg", Shape::flat(9), 1).unwrap() },
    ]
}

/// Random targets of the kind `net`'s loss reads.
struct Drawn {
    classes: Vec<u32>,
    values: Vec<f32>,
}

impl Drawn {
    fn new(net: &Network, n: usize, rng: &mut ChaCha8Rng) -> Self {
        match net.spec().loss {
            Loss::SoftmaxCrossEntropy => {
                Drawn { classes: (0..n).map(|_| rng.random_range(0..net.classes() as u32)).collect(), values: vec![] }
            }
            Loss::BinaryCrossEntropy { .. } => {
                Drawn { classes: (0..n).map(|_| rng.random_range(0..2u32)).collect(), values: vec![] }
            }
            _ => Drawn { classes: vec![], values: (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect() },
        }
    }
    fn range(&self, r: std::ops::Range<usize>) -> Targets<'_> {
        if self.values.is_empty() { Targets::Classes(&self.classes[r]) } else { Targets::Values(&self.values[r]) }
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt()
}

fn norm_in(kind: ClipNorm, v: &[f32]) -> f64 {
    match kind {
        ClipNorm::L2 => norm(v),
        ClipNorm::L1 => v.iter().map(|x| x.abs() as f64).sum(),
    }
}

#[test]
fn norms_and_clipped_sum_match_one_example_at_a_time() {
    for (m, spec) in models().into_iter().enumerate() {
        let net = Network::new(spec).unwrap();
        let n = if m == 2 { 3 } else { 7 };
        for (seed, kind) in [(0u64, ClipNorm::L2), (1, ClipNorm::L1), (2, ClipNorm::L2), (3, ClipNorm::L1)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 10 * m as u64);
            let p = net.init(seed);
            let d = net.input_len();
            let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let y = Drawn::new(&net, n, &mut rng);
            // Naive: each example alone.
            let mut one = net.workspace(1, 2);
            let mut per: Vec<Vec<f32>> = Vec::new();
            for i in 0..n {
                let mut g = vec![0.0; net.num_params()];
                net.loss_and_grad(&p, &mut one, &x[i * d..(i + 1) * d], y.range(i..i + 1), &mut g).unwrap();
                per.push(g);
            }
            let naive_norms: Vec<f64> = per.iter().map(|g| norm_in(kind, g)).collect();
            // A clip norm between the smallest and largest, so some are clipped and some not.
            let mut sorted = naive_norms.clone();
            sorted.sort_by(f64::total_cmp);
            let clip = sorted[n / 2] as f32;
            let mut naive_sum = vec![0.0f64; net.num_params()];
            for (g, nn) in per.iter().zip(&naive_norms) {
                let c = (clip as f64 / nn).min(1.0);
                for (s, v) in naive_sum.iter_mut().zip(g) {
                    *s += c * *v as f64;
                }
            }
            // Batched.
            let mut ws = net.workspace(n, 2);
            let mut grad = vec![0.0; net.num_params()];
            let mut norms = vec![0.0; n];
            net.clipped_grad_in(&p, &mut ws, &x, y.range(0..n), clip, kind, &mut grad, &mut norms).unwrap();
            for (a, b) in norms.iter().zip(&naive_norms) {
                assert!((*a as f64 - b).abs() <= 1e-4 * b.max(1e-3), "model {m}: norm {a} vs {b}");
            }
            let diff: f64 = grad.iter().zip(&naive_sum).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>().sqrt();
            let scale = naive_sum.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(diff <= 1e-4 * scale, "model {m} seed {seed}: clipped sum off by {diff} of {scale}");
            // Every clipped contribution is within the clip norm.
            assert!(norm_in(kind, &grad) <= clip as f64 * n as f64 * (1.0 + 1e-5));
        }
    }
}

#[test]
fn bad_clip_norms_are_refused() {
    let net = Network::new(ModelSpec::builtin("logreg", Shape::flat(4), 2).unwrap()).unwrap();
    let p = net.init(0);
    let mut ws = net.workspace(2, 1);
    let mut g = vec![0.0; net.num_params()];
    let mut norms = vec![0.0; 2];
    for clip in [0.0, -1.0, f32::NAN] {
        assert!(net.clipped_grad(&p, &mut ws, &[0.0; 8], Targets::Classes(&[0, 1]), clip, &mut g, &mut norms).is_err());
    }
}
