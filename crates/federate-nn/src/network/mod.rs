//! A sequential network built from a `ModelSpec`: parameter layout, seeded initialisation,
//! and the forward and backward passes over a preallocated `Workspace`.
//!
//! Parameters and gradients are flat `f32` slices owned by the caller (federated algorithms
//! work on flat vectors); the network only knows where each tensor lives in them.

pub(crate) mod per_example;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::layers::bias::add_bias;
use crate::layers::conv::Conv;
use crate::layers::dense;
use crate::layers::pointwise::{dropout_backward, dropout_forward, relu_backward, relu_forward};
use crate::layers::pool::MaxPool;
use crate::matmul::{Op, matmul};
use crate::spec::{LayerSpec, ModelSpec, Padding, PaddingName, Shape};
use crate::{NnError, Targets};

/// One named tensor inside the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name, e.g. `layers.0.weight`.
    pub name: String,
    /// Dimensions (conv weights `[kh, kw, in, out]`, linear weights `[in, out]`).
    pub shape: Vec<usize>,
    /// First value's position in the flat vector.
    pub offset: usize,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Layer {
    Conv(Conv),
    Pool(MaxPool),
    Relu,
    Flatten,
    Dropout(f32),
    Linear { input: usize, output: usize },
}

/// A layer's part in a fused convolution → ReLU → max-pool: the convolution leaves out its
/// bias, the ReLU does nothing, and the pooling adds the bias, applies the ReLU and pools in
/// one pass (and routes the gradient straight to the convolution in the backward pass). The
/// results are bit for bit those of the three layers one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Runs on its own.
    Alone,
    /// The convolution of a fused triple.
    FusedConv,
    /// The ReLU of a fused triple.
    FusedRelu,
    /// The max-pool of a fused triple.
    FusedPool,
}

/// A sequential network: structure and parameter layout, no state.
#[derive(Debug, Clone)]
pub struct Network {
    spec: ModelSpec,
    pub(crate) layers: Vec<Layer>,
    /// Each layer's part in a fused convolution → ReLU → max-pool.
    pub(crate) roles: Vec<Role>,
    pub(crate) shapes: Vec<Shape>,
    /// For each layer, the offset of its weight and bias in the flat vector.
    pub(crate) param_at: Vec<Option<(usize, usize, usize)>>,
    tensors: Vec<TensorInfo>,
    num_params: usize,
}

/// Loss and accuracy over a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum of per-example losses.
    pub loss_sum: f64,
    /// Examples whose highest score was the label.
    pub correct: usize,
    /// Examples in the batch.
    pub count: usize,
}

impl BatchStats {
    /// Adds another batch's numbers.
    pub fn merge(&mut self, other: BatchStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.count += other.count;
    }
    /// Mean loss (0 for an empty batch).
    pub fn mean_loss(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.loss_sum / self.count as f64 }
    }
    /// Fraction correct (0 for an empty batch).
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.correct as f64 / self.count as f64 }
    }
}

/// Buffers for one network at one maximum batch size, allocated once.
#[derive(Debug)]
pub struct Workspace {
    pub(crate) capacity: usize,
    pub(crate) acts: Vec<Vec<f32>>,
    pub(crate) grads: Vec<Vec<f32>>,
    pub(crate) scratch: Vec<Vec<f32>>,
    pub(crate) argmax: Vec<Vec<u32>>,
    pub(crate) partial: Vec<f32>,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) threads: usize,
    /// Per-example state of DP-SGD, allocated on first use.
    pub(crate) dp: Option<per_example::DpBuffers>,
}

impl Workspace {
    /// The largest batch this workspace holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Reseeds the stream that draws dropout masks.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }
}

impl Network {
    /// Builds a network, checking that the layers chain.
    pub fn new(spec: ModelSpec) -> Result<Self, NnError> {
        let shapes = spec.shapes()?;
        let mut layers = Vec::with_capacity(spec.layers.len());
        let mut param_at = Vec::with_capacity(spec.layers.len());
        let mut tensors = Vec::new();
        let mut offset = 0;
        for (i, l) in spec.layers.iter().enumerate() {
            let (input, output) = (shapes[i], shapes[i + 1]);
            let layer = match *l {
                LayerSpec::Conv2d { kernel, stride, padding, .. } => {
                    let pad = match padding {
                        Padding::Explicit(p) => p,
                        Padding::Named(PaddingName::Valid) => 0,
                        Padding::Named(PaddingName::Same) => kernel / 2,
                    };
                    Layer::Conv(Conv { input, output, kernel, stride, pad })
                }
                LayerSpec::MaxPool2d { kernel, stride } => {
                    Layer::Pool(MaxPool { input, output, kernel, stride: stride.unwrap_or(kernel) })
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Flatten => Layer::Flatten,
                LayerSpec::Dropout { p } => Layer::Dropout(p),
                LayerSpec::Linear { out } => Layer::Linear { input: input.size(), output: out },
            };
            let wshape = match &layer {
                Layer::Conv(c) => Some(vec![c.kernel, c.kernel, input.c, output.c]),
                Layer::Linear { input, output } => Some(vec![*input, *output]),
                _ => None,
            };
            if let Some(ws) = wshape {
                let wlen: usize = ws.iter().product();
                let bias = output.c;
                tensors.push(TensorInfo { name: format!("layers.{i}.weight"), shape: ws, offset });
                tensors.push(TensorInfo { name: format!("layers.{i}.bias"), shape: vec![bias], offset: offset + wlen });
                param_at.push(Some((offset, offset + wlen, offset + wlen + bias)));
                offset += wlen + bias;
            } else {
                param_at.push(None);
            }
            layers.push(layer);
        }
        let mut roles = vec![Role::Alone; layers.len()];
        for i in 0..layers.len().saturating_sub(2) {
            if matches!(layers[i..i + 3], [Layer::Conv(_), Layer::Relu, Layer::Pool(_)]) {
                roles[i..i + 3].copy_from_slice(&[Role::FusedConv, Role::FusedRelu, Role::FusedPool]);
            }
        }
        Ok(Network { spec, layers, roles, shapes, param_at, tensors, num_params: offset })
    }

    /// The description this network was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.num_params
    }
    /// The named tensors, in order, covering the flat vector.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// Values per input example.
    pub fn input_len(&self) -> usize {
        self.spec.input.size()
    }
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.spec.classes
    }

    /// Seeded initialisation: He-uniform weights for layers followed by a ReLU, Glorot-uniform
    /// otherwise; zero biases.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = vec![0.0f32; self.num_params];
        for (i, at) in self.param_at.iter().enumerate() {
            let Some((w0, w1, _)) = *at else { continue };
            let (fan_in, fan_out) = match &self.layers[i] {
                Layer::Conv(c) => (c.row_len(), c.kernel * c.kernel * c.output.c),
                Layer::Linear { input, output } => (*input, *output),
                _ => unreachable!("only conv and linear layers own parameters"),
            };
            let relu_next = matches!(self.layers.get(i + 1), Some(Layer::Relu));
            let limit =
                if relu_next { (6.0 / fan_in as f64).sqrt() } else { (6.0 / (fan_in + fan_out) as f64).sqrt() } as f32;
            for p in &mut params[w0..w1] {
                *p = rng.random_range(-limit..limit);
            }
        }
        params
    }

    /// Buffers for batches of up to `capacity` examples; `threads` is how many threads the
    /// matrix products may use (the current rayon pool's size is a good choice).
    pub fn workspace(&self, capacity: usize, threads: usize) -> Workspace {
        let capacity = capacity.max(1);
        let threads = threads.max(1);
        let acts: Vec<Vec<f32>> = self.shapes.iter().map(|s| vec![0.0; capacity * s.size()]).collect();
        let grads: Vec<Vec<f32>> = self
            .shapes
            .iter()
            .enumerate()
            .map(|(i, s)| if i == 0 { Vec::new() } else { vec![0.0; capacity * s.size()] })
            .collect();
        let mut partial_len = 0;
        let scratch = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| match l {
                Layer::Conv(c) => {
                    partial_len = partial_len.max((threads - 1) * c.weight_len());
                    vec![0.0; c.scratch_len(threads)]
                }
                Layer::Dropout(_) => vec![0.0; capacity * self.shapes[i].size()],
                _ => Vec::new(),
            })
            .collect();
        for l in &self.layers {
            if let Layer::Linear { input, output } = l {
                partial_len = partial_len.max((threads - 1) * input * output);
            }
        }
        let argmax = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| match l {
                Layer::Pool(_) => vec![0u32; capacity * self.shapes[i + 1].size()],
                _ => Vec::new(),
            })
            .collect();
        Workspace {
            capacity,
            acts,
            grads,
            scratch,
            argmax,
            partial: vec![0.0; partial_len],
            rng: ChaCha8Rng::seed_from_u64(0),
            threads,
            dp: None,
        }
    }

    pub(crate) fn check(&self, params: &[f32], x: &[f32], n: usize, ws: &Workspace) -> Result<(), NnError> {
        if params.len() != self.num_params {
            return Err(NnError::SizeMismatch { what: "parameters", got: params.len(), expected: self.num_params });
        }
        if x.len() != n * self.input_len() {
            return Err(NnError::SizeMismatch { what: "batch inputs", got: x.len(), expected: n * self.input_len() });
        }
        if n > ws.capacity {
            return Err(NnError::SizeMismatch { what: "batch (workspace capacity)", got: n, expected: ws.capacity });
        }
        Ok(())
    }

    /// Runs the forward pass for `n = x.len() / input_len` examples and returns the logits
    /// (`n × classes`). `train` turns dropout on.
    pub fn forward<'w>(
        &self,
        params: &[f32],
        ws: &'w mut Workspace,
        x: &[f32],
        train: bool,
    ) -> Result<&'w [f32], NnError> {
        let n = x.len() / self.input_len().max(1);
        self.check(params, x, n, ws)?;
        ws.acts[0][..x.len()].copy_from_slice(x);
        let threads = ws.threads;
        for (i, layer) in self.layers.iter().enumerate() {
            let (before, after) = ws.acts.split_at_mut(i + 1);
            let xin = &before[i][..n * self.shapes[i].size()];
            let y = &mut after[0][..n * self.shapes[i + 1].size()];
            match layer {
                Layer::Conv(c) => {
                    let (w0, w1, b1) = self.param_at[i].unwrap_or_default();
                    let bias = (self.roles[i] != Role::FusedConv).then(|| &params[w1..b1]);
                    c.forward(&params[w0..w1], bias, xin, y, &mut ws.scratch[i], n, threads);
                }
                Layer::Pool(p) if self.roles[i] == Role::FusedPool => {
                    // The convolution's output (without its bias), two layers back.
                    let conv_out = &before[i - 1][..n * self.shapes[i - 1].size()];
                    let (_, w1, b1) = self.param_at[i - 2].unwrap_or_default();
                    p.forward_bias_relu(conv_out, &params[w1..b1], y, &mut ws.argmax[i], n);
                }
                Layer::Pool(p) => p.forward(xin, y, &mut ws.argmax[i], n),
                Layer::Relu if self.roles[i] == Role::FusedRelu => {}
                Layer::Relu => relu_forward(xin, y),
                Layer::Flatten => y.copy_from_slice(xin),
                Layer::Dropout(p) => {
                    if train && *p > 0.0 {
                        dropout_forward(*p, xin, y, &mut ws.scratch[i], &mut ws.rng);
                    } else {
                        y.copy_from_slice(xin);
                    }
                }
                Layer::Linear { input, output } => {
                    let (w0, w1, b1) = self.param_at[i].unwrap_or_default();
                    matmul(n, *output, *input, y, xin, Op::N, &params[w0..w1], Op::N, false, 1.0, threads);
                    add_bias(y, &params[w1..b1]);
                }
            }
        }
        let last = self.layers.len();
        Ok(&ws.acts[last][..n * self.spec.classes])
    }

    /// Forward and backward over one batch: writes the gradient of the mean loss (the spec's
    /// [`Loss`](crate::Loss)) into `grad` (every value is overwritten) and returns the batch's
    /// loss and accuracy.
    pub fn loss_and_grad(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        x: &[f32],
        targets: Targets<'_>,
        grad: &mut [f32],
    ) -> Result<BatchStats, NnError> {
        let n = targets.len();
        if grad.len() != self.num_params {
            return Err(NnError::SizeMismatch { what: "gradient", got: grad.len(), expected: self.num_params });
        }
        self.check(params, x, n, ws)?;
        let stats = self.forward_loss(params, ws, x, targets)?;
        self.backward(params, ws, n, grad, false);
        Ok(stats)
    }

    /// Training-mode forward pass and loss; leaves the gradient of the *mean* loss with
    /// respect to the outputs where the backward pass starts.
    pub(crate) fn forward_loss(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        x: &[f32],
        targets: Targets<'_>,
    ) -> Result<BatchStats, NnError> {
        let n = targets.len();
        self.forward(params, ws, x, true)?;
        let last = self.layers.len();
        let outs = self.spec.classes;
        self.spec.loss.compute(&ws.acts[last][..n * outs], targets, outs, Some(&mut ws.grads[last][..n * outs]))
    }

    /// Loss and accuracy of `params` on a batch, without gradients; with `scores`, also the
    /// scores of the spec's loss ([`Loss::scores`](crate::Loss::scores): class probabilities,
    /// the positive class's probability, or the predicted value; `outputs()` per example).
    pub fn evaluate_batch(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        x: &[f32],
        targets: Targets<'_>,
        scores: Option<&mut [f32]>,
    ) -> Result<BatchStats, NnError> {
        let n = targets.len();
        self.check(params, x, n, ws)?;
        let outs = self.spec.classes;
        let outputs = self.forward(params, ws, x, false)?;
        if let Some(s) = scores {
            if s.len() != n * outs {
                return Err(NnError::SizeMismatch { what: "scores", got: s.len(), expected: n * outs });
            }
            self.spec.loss.scores(outputs, outs, s);
        }
        self.spec.loss.compute(outputs, targets, outs, None)
    }

    /// The backward pass. With `per_example`, weight gradients are not summed into `grad`:
    /// each example's squared gradient norm goes to the DP buffers instead (and, for
    /// convolutions, each example's weight gradient), for `clipped_grad` to combine.
    pub(crate) fn backward(&self, params: &[f32], ws: &mut Workspace, n: usize, grad: &mut [f32], per_example: bool) {
        let threads = ws.threads;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let need_dx = i > 0;
            let (gb, ga) = ws.grads.split_at_mut(i + 1);
            let dy = &ga[0][..n * self.shapes[i + 1].size()];
            if self.roles[i] == Role::FusedPool
                && let Layer::Pool(p) = layer
            {
                // Straight to the convolution's output gradient (the ReLU's is skipped).
                let y = &ws.acts[i + 1][..n * self.shapes[i + 1].size()];
                p.backward_relu(dy, y, &ws.argmax[i], &mut gb[i - 1][..n * self.shapes[i - 1].size()], n);
                continue;
            }
            if self.roles[i] == Role::FusedRelu {
                continue;
            }
            let dx: Option<&mut [f32]> = if need_dx { Some(&mut gb[i][..n * self.shapes[i].size()]) } else { None };
            let xin = &ws.acts[i][..n * self.shapes[i].size()];
            let yout = &ws.acts[i + 1][..n * self.shapes[i + 1].size()];
            match layer {
                Layer::Conv(c) => {
                    let (w0, w1, b1) = self.param_at[i].unwrap_or_default();
                    if per_example {
                        if let Some(dp) = ws.dp.as_mut() {
                            dp.conv_per_example(i, c, xin, dy, &mut ws.scratch[i], n, threads);
                        }
                        if let Some(dx) = dx {
                            c.input_grad(&params[w0..w1], dy, dx, &mut ws.scratch[i], n, threads);
                        }
                    } else {
                        let (gw, gbias) = grad[w0..b1].split_at_mut(w1 - w0);
                        let (scratch, partial) = (&mut ws.scratch[i], &mut ws.partial);
                        c.backward(&params[w0..w1], xin, dy, gw, gbias, dx, scratch, partial, n, threads);
                    }
                }
                Layer::Pool(p) => {
                    if let Some(dx) = dx {
                        p.backward(dy, &ws.argmax[i], dx, n);
                    }
                }
                Layer::Relu => {
                    if let Some(dx) = dx {
                        relu_backward(yout, dy, dx);
                    }
                }
                Layer::Flatten => {
                    if let Some(dx) = dx {
                        dx.copy_from_slice(dy);
                    }
                }
                Layer::Dropout(p) => {
                    if let Some(dx) = dx {
                        if *p > 0.0 {
                            dropout_backward(&ws.scratch[i], dy, dx);
                        } else {
                            dx.copy_from_slice(dy);
                        }
                    }
                }
                Layer::Linear { input, output } if per_example => {
                    let (w0, w1, _) = self.param_at[i].unwrap_or_default();
                    if let Some(dp) = ws.dp.as_mut() {
                        dp.dense_norms(xin, dy, *input, *output, n);
                    }
                    if let Some(dx) = dx {
                        dense::input_grad(n, *input, *output, dx, dy, &params[w0..w1], threads);
                    }
                }
                Layer::Linear { input, output } => {
                    let (w0, w1, b1) = self.param_at[i].unwrap_or_default();
                    let (gw, gbias) = grad[w0..b1].split_at_mut(w1 - w0);
                    let (w, partial) = (&params[w0..w1], &mut ws.partial);
                    dense::backward((*input, *output, n), w, xin, dy, gw, gbias, dx, partial, threads);
                }
            }
        }
    }

    /// Multiply-add FLOPs per example: (forward, one training step). A training step is the
    /// forward pass plus, for each layer with weights, the weight gradient and (except for
    /// the first layer) the input gradient.
    pub fn flops_per_example(&self) -> (f64, f64) {
        let mut fwd = 0.0;
        let mut train = 0.0;
        for (i, l) in self.layers.iter().enumerate() {
            let f = match l {
                Layer::Conv(c) => 2.0 * (c.output.h * c.output.w * c.row_len() * c.output.c) as f64,
                Layer::Linear { input, output } => 2.0 * (*input * *output) as f64,
                _ => continue,
            };
            fwd += f;
            train += if i == 0 { 2.0 * f } else { 3.0 * f };
        }
        (fwd, train)
    }

    /// Evaluates `params` over a whole set in batches of the workspace's capacity; with
    /// `scores` (`outputs()` values per example), also writes every example's scores.
    pub fn evaluate(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        x: &[f32],
        targets: Targets<'_>,
        mut scores: Option<&mut [f32]>,
    ) -> Result<BatchStats, NnError> {
        let d = self.input_len();
        let n = targets.len();
        if x.len() != n * d {
            return Err(NnError::SizeMismatch { what: "inputs", got: x.len(), expected: n * d });
        }
        let outs = self.spec.classes;
        if let Some(s) = scores.as_deref()
            && s.len() != n * outs
        {
            return Err(NnError::SizeMismatch { what: "scores", got: s.len(), expected: n * outs });
        }
        let cap = ws.capacity;
        let mut total = BatchStats::default();
        for start in (0..n).step_by(cap.max(1)) {
            let end = (start + cap).min(n);
            let t = match targets {
                Targets::Classes(c) => Targets::Classes(&c[start..end]),
                Targets::Values(v) => Targets::Values(&v[start..end]),
            };
            let s = scores.as_deref_mut().map(|s| &mut s[start * outs..end * outs]);
            total.merge(self.evaluate_batch(params, ws, &x[start * d..end * d], t, s)?);
        }
        Ok(total)
    }

    /// Outputs of the last layer per example (classes under softmax, else 1).
    pub fn outputs(&self) -> usize {
        self.spec.classes
    }
}

/// Argmax of each row of `logits` (ties: the first), in parallel.
pub fn predictions(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .par_chunks(classes)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}
