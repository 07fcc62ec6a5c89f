//! Finite-difference checks of every layer's backward pass and of the loss.
//!
//! For each network we compare the analytic gradient with central differences of the mean
//! loss, both along random directions (which exercise every parameter at once) and for
//! single coordinates of every tensor.

use federate_nn::{LayerSpec, ModelSpec, Network, Padding, PaddingName, Shape, Targets, softmax_cross_entropy};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(n: usize, d: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let y = (0..n).map(|_| rng.random_range(0..classes as u32)).collect();
    (x, y)
}

fn mean_loss(net: &Network, p: &[f32], x: &[f32], y: &[u32]) -> f64 {
    let mut ws = net.workspace(y.len(), threads());
    ws.reseed(7);
    let mut g = vec![0.0; net.num_params()];
    net.loss_and_grad(p, &mut ws, x, Targets::Classes(y), &mut g).unwrap().mean_loss()
}

fn check(spec: ModelSpec, n: usize) {
    let net = Network::new(spec).unwrap();
    let mut p = net.init(3);
    // Non-zero biases, so their gradients flow through every path.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for t in net.tensors() {
        if t.name.ends_with("bias") {
            for v in &mut p[t.offset..t.offset + t.len()] {
                *v = rng.random_range(-0.1..0.1);
            }
        }
    }
    let (x, y) = data(n, net.input_len(), net.classes(), 5);
    let mut ws = net.workspace(n, threads());
    ws.reseed(7);
    let mut g = vec![0.0; net.num_params()];
    net.loss_and_grad(&p, &mut ws, &x, Targets::Classes(&y), &mut g).unwrap();

    let eps = 1e-3f32;
    // Random directions.
    for trial in 0..3 {
        let v: Vec<f32> = (0..p.len()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let norm = v.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt() as f32;
        let v: Vec<f32> = v.iter().map(|a| a / norm).collect();
        let plus: Vec<f32> = p.iter().zip(&v).map(|(a, b)| a + eps * b).collect();
        let minus: Vec<f32> = p.iter().zip(&v).map(|(a, b)| a - eps * b).collect();
        let num = (mean_loss(&net, &plus, &x, &y) - mean_loss(&net, &minus, &x, &y)) / (2.0 * eps as f64);
        let ana: f64 = g.iter().zip(&v).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((num - ana).abs() <= 2e-2 * ana.abs().max(1e-2), "direction {trial}: numeric {num} vs analytic {ana}");
    }
    // A few coordinates of every tensor.
    for t in net.tensors() {
        for j in [0, t.len() / 2, t.len() - 1] {
            let i = t.offset + j;
            let mut q = p.clone();
            q[i] = p[i] + eps;
            let lp = mean_loss(&net, &q, &x, &y);
            q[i] = p[i] - eps;
            let lm = mean_loss(&net, &q, &x, &y);
            let num = (lp - lm) / (2.0 * eps as f64);
            assert!(
                (num - g[i] as f64).abs() <= 3e-2 * (g[i] as f64).abs() + 2e-4,
                "{}[{j}]: numeric {num} vs analytic {}",
                t.name,
                g[i]
            );
        }
    }
}

#[test]
fn linear_and_relu() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::flat(12),
            classes: 4,
            layers: vec![Linear { out: 9 }, Relu, Linear { out: 4 }],
        },
        6,
    );
}

#[test]
fn conv_same_pool_flatten() {
    use LayerSpec::*;
    let same = Padding::Named(PaddingName::Same);
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(8, 8, 2),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 4, kernel: 3, stride: 1, padding: same },
                Relu,
                MaxPool2d { kernel: 2, stride: None },
                Conv2d { out_channels: 5, kernel: 3, stride: 1, padding: same },
                Flatten,
                Linear { out: 3 },
            ],
        },
        4,
    );
}

#[test]
fn conv_strided_padded_and_valid() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(9, 7, 3),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 4, kernel: 3, stride: 2, padding: Padding::Explicit(1) },
                Relu,
                Conv2d { out_channels: 3, kernel: 2, stride: 1, padding: Padding::Named(PaddingName::Valid) },
                MaxPool2d { kernel: 2, stride: Some(1) },
                Flatten,
                Linear { out: 3 },
            ],
        },
        3,
    );
}

#[test]
fn dropout_with_fixed_mask() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::flat(10),
            classes: 3,
            layers: vec![Linear { out: 16 }, Relu, Dropout { p: 0.3 }, Linear { out: 3 }],
        },
        5,
    );
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let (logits, labels) = data(4, 5, 5, 9);
    let mut d = vec![0.0; logits.len()];
    softmax_cross_entropy(&logits, &labels, 5, Some(&mut d)).unwrap();
    let eps = 1e-3;
    for i in 0..logits.len() {
        let mut l = logits.clone();
        l[i] += eps;
        let lp = softmax_cross_entropy(&l, &labels, 5, None).unwrap().mean_loss();
        l[i] -= 2.0 * eps;
        let lm = softmax_cross_entropy(&l, &labels, 5, None).unwrap().mean_loss();
        let num = (lp - lm) / (2.0 * eps as f64);
        assert!((num - d[i] as f64).abs() < 1e-3, "logit {i}: {num} vs {}", d[i]);
    }
    // Hand-computed case: uniform logits over 4 classes give loss ln 4.
    let s = softmax_cross_entropy(&[0.0; 4], &[2], 4, None).unwrap();
    assert!((s.mean_loss() - 4f64.ln()).abs() < 1e-9);
    assert!(softmax_cross_entropy(&[0.0; 4], &[4], 4, None).is_err());
}

#[test]
fn cnn_has_the_published_parameter_count() {
    let cnn = Network::new(ModelSpec::builtin("cnn", Shape::image(28, 28, 1), 10).unwrap()).unwrap();
    assert_eq!(cnn.num_params(), 1_663_370);
    let mlp = Network::new(ModelSpec::builtin("mlp", Shape::image(28, 28, 1), 10).unwrap()).unwrap();
    assert_eq!(mlp.num_params(), 199_210);
    let (_, train) = cnn.flops_per_example();
    assert!((train / 1e6 - 72.4).abs() < 0.1, "{train}");
}

#[test]
fn same_seed_same_result_bit_for_bit() {
    let net = Network::new(ModelSpec::builtin("cnn", Shape::image(28, 28, 1), 10).unwrap()).unwrap();
    let (x, y) = data(16, 784, 10, 1);
    let run = || {
        let mut p = net.init(42);
        let mut ws = net.workspace(16, 2);
        let mut g = vec![0.0; p.len()];
        // SGD with momentum 0.9, written out (optimisers live in federate-core).
        let mut v = vec![0.0f32; p.len()];
        for _ in 0..3 {
            net.loss_and_grad(&p, &mut ws, &x, Targets::Classes(&y), &mut g).unwrap();
            for ((p, g), v) in p.iter_mut().zip(&g).zip(v.iter_mut()) {
                *v = 0.9 * *v + g;
                *p -= 0.05 * *v;
            }
        }
        p
    };
    let a = run();
    let b = run();
    assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()));
}

#[test]
fn conv_alone() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(5, 5, 2),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: Padding::Named(PaddingName::Same) },
                Flatten,
                Linear { out: 3 },
            ],
        },
        2,
    );
}

#[test]
fn pool_alone() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(4, 4, 2),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 2, kernel: 1, stride: 1, padding: Padding::Explicit(0) },
                MaxPool2d { kernel: 2, stride: None },
                Flatten,
                Linear { out: 3 },
            ],
        },
        2,
    );
}

#[test]
fn conv_conv() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(5, 5, 1),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: Padding::Named(PaddingName::Same) },
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: Padding::Named(PaddingName::Same) },
                Flatten,
                Linear { out: 3 },
            ],
        },
        2,
    );
}

#[test]
fn conv_relu() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(5, 5, 1),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: Padding::Named(PaddingName::Same) },
                Relu,
                Flatten,
                Linear { out: 3 },
            ],
        },
        2,
    );
}
#[test]
fn conv_relu_pool() {
    use LayerSpec::*;
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(4, 4, 1),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: Padding::Named(PaddingName::Same) },
                Relu,
                MaxPool2d { kernel: 2, stride: None },
                Flatten,
                Linear { out: 3 },
            ],
        },
        2,
    );
}
/// The thread count the matrix products may use (the batch-split path needs ≥ 2).
fn threads() -> usize {
    2
}
#[test]
fn conv_after_relu() {
    use LayerSpec::*;
    let same = Padding::Named(PaddingName::Same);
    check(
        ModelSpec {
            loss: Default::default(),
            input: Shape::image(5, 5, 1),
            classes: 3,
            layers: vec![
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: same },
                Relu,
                Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: same },
                Flatten,
                Linear { out: 3 },
            ],
        },
        2,
    );
}

/// The binary and regression losses through a whole network: the analytic gradient matches
/// central differences of the mean loss.
#[test]
fn binary_and_regression_networks_match_finite_differences() {
    use federate_nn::Loss;
    for loss in [Loss::BinaryCrossEntropy { pos_weight: 3.0 }, Loss::Mse, Loss::Huber { delta: 0.3 }] {
        let spec = ModelSpec { loss, ..ModelSpec::builtin("mlp", Shape::flat(7), 1).unwrap() };
        let net = Network::new(spec).unwrap();
        let p = net.init(4);
        let n = 6;
        let (x, labels) = data(n, 7, 2, 9);
        let values: Vec<f32> = labels.iter().enumerate().map(|(i, &l)| l as f32 * 1.5 - 0.3 * i as f32).collect();
        let t = if loss.is_regression() { Targets::Values(&values) } else { Targets::Classes(&labels) };
        let loss_at = |q: &[f32]| {
            let mut ws = net.workspace(n, threads());
            let mut g = vec![0.0; net.num_params()];
            net.loss_and_grad(q, &mut ws, &x, t, &mut g).unwrap().mean_loss()
        };
        let mut ws = net.workspace(n, threads());
        let mut g = vec![0.0; net.num_params()];
        net.loss_and_grad(&p, &mut ws, &x, t, &mut g).unwrap();
        let eps = 1e-3f32;
        for i in (0..p.len()).step_by(97).chain([p.len() - 1]) {
            let mut up = p.clone();
            up[i] += eps;
            let mut down = p.clone();
            down[i] -= eps;
            let num = (loss_at(&up) - loss_at(&down)) / (2.0 * eps as f64);
            assert!((num - g[i] as f64).abs() <= 2e-2 * num.abs().max(1e-2), "{loss:?} param {i}: {num} vs {}", g[i]);
        }
    }
}

/// Convolution → ReLU → max-pool runs fused (the pool adds the bias and applies the ReLU in
/// one pass); a no-op dropout between ReLU and pool keeps the three apart. Both must give the
/// same loss, logits and gradient, bit for bit — with pooling windows that overlap (3, stride
/// 2) and that do not, and with ties (inputs that are exactly zero).
#[test]
fn fused_conv_relu_pool_equals_the_layers_one_by_one() {
    use LayerSpec::*;
    let same = Padding::Named(PaddingName::Same);
    for (kernel, stride) in [(2, None), (3, Some(2))] {
        let spec = |split: bool| {
            let mut layers = vec![Conv2d { out_channels: 6, kernel: 3, stride: 1, padding: same }, Relu];
            if split {
                layers.push(Dropout { p: 0.0 });
            }
            layers.extend([MaxPool2d { kernel, stride }, Flatten, Linear { out: 3 }]);
            ModelSpec { loss: Default::default(), input: Shape::image(9, 9, 2), classes: 3, layers }
        };
        let (fused, apart) = (Network::new(spec(false)).unwrap(), Network::new(spec(true)).unwrap());
        let p = fused.init(4);
        assert_eq!(p, apart.init(4));
        let (mut x, y) = data(5, fused.input_len(), 3, 8);
        x.iter_mut().step_by(7).for_each(|v| *v = 0.0);
        let run = |net: &Network| {
            let mut ws = net.workspace(5, threads());
            let mut g = vec![0.0; net.num_params()];
            let s = net.loss_and_grad(&p, &mut ws, &x, Targets::Classes(&y), &mut g).unwrap();
            let logits = net.forward(&p, &mut ws, &x, false).unwrap().to_vec();
            (s.loss_sum.to_bits(), logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), g)
        };
        let (a, b) = (run(&fused), run(&apart));
        assert_eq!(a.0, b.0, "loss, pool {kernel}");
        assert_eq!(a.1, b.1, "logits, pool {kernel}");
        assert!(a.2.iter().zip(&b.2).all(|(u, v)| u.to_bits() == v.to_bits()), "gradient, pool {kernel}");
    }
}
