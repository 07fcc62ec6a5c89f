//! DP-SGD's core: every example's gradient norm and the sum of clipped per-example
//! gradients, without running the batch one example at a time.
//!
//! One forward and one backward pass. During the backward pass, dense layers contribute
//! their per-example squared norms by the "ghost" identity ‖gᵢ aᵢᵀ‖² = ‖gᵢ‖²‖aᵢ‖² (plus ‖gᵢ‖²
//! for the bias), and convolutions compute each example's weight gradient (small GEMMs over
//! im2col tiles, examples shared among threads), since weight sharing rules out the ghost identity there.
//! Clipping factors cᵢ = min(1, C/‖∇ᵢ‖) then weight the sums: dense weights in one GEMM with
//! the output gradients' rows rescaled by cᵢ, convolutions as Σ cᵢ Gᵢ.

use rayon::prelude::*;

use crate::layers::bias::bias_grad;
use crate::layers::conv::Conv;
use crate::matmul::{Op, matmul};
use crate::network::Layer;
use crate::{BatchStats, Network, NnError, Targets, Workspace};

/// Which norm per-example gradients are clipped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipNorm {
    /// Euclidean norm (the Gaussian mechanism's sensitivity).
    L2,
    /// Sum of absolute values (the Laplace mechanism's sensitivity).
    L1,
}

/// Per-example buffers of one workspace.
#[derive(Debug)]
pub(crate) struct DpBuffers {
    /// Squared L2 gradient norm of each example, summed over layers.
    sq: Vec<f64>,
    /// L1 gradient norm of each example, summed over layers.
    l1: Vec<f64>,
    /// For each convolution layer: each example's weight gradient, then bias gradient.
    conv_w: Vec<Vec<f32>>,
    conv_b: Vec<Vec<f32>>,
    /// Rescaled output gradients of a dense layer.
    scaled: Vec<f32>,
}

impl DpBuffers {
    fn new(net: &Network, capacity: usize) -> Self {
        let mut conv_w = Vec::new();
        let mut conv_b = Vec::new();
        let mut scaled = 0;
        for l in &net.layers {
            match l {
                Layer::Conv(c) => {
                    conv_w.push(vec![0.0; capacity * c.weight_len()]);
                    conv_b.push(vec![0.0; capacity * c.output.c]);
                }
                Layer::Linear { output, .. } => {
                    scaled = scaled.max(capacity * output);
                    conv_w.push(Vec::new());
                    conv_b.push(Vec::new());
                }
                _ => {
                    conv_w.push(Vec::new());
                    conv_b.push(Vec::new());
                }
            }
        }
        DpBuffers { sq: vec![0.0; capacity], l1: vec![0.0; capacity], conv_w, conv_b, scaled: vec![0.0; scaled] }
    }

    /// Each example's weight and bias gradient of convolution layer `i`, and their squared
    /// norms, from the layer's input `x` and output gradient `dy`; `scratch` holds the
    /// threads' im2col tiles.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_per_example(
        &mut self,
        i: usize,
        c: &Conv,
        x: &[f32],
        dy: &[f32],
        scratch: &mut [f32],
        n: usize,
        threads: usize,
    ) {
        let (cout, isz) = (c.output.c, c.input.size());
        let pixels = c.output.h * c.output.w;
        let wl = c.weight_len();
        let sp = c.split(n, threads, scratch.len());
        let gw = &mut self.conv_w[i][..n * wl];
        let gb = &mut self.conv_b[i][..n * cout];
        let norms: Vec<Vec<(f64, f64)>> = gw
            .par_chunks_mut(sp.per * wl)
            .zip(gb.par_chunks_mut(sp.per * cout))
            .zip(scratch.par_chunks_mut(c.tile_len()))
            .enumerate()
            .map(|(g, ((gws, gbs), tile))| {
                let mut out = Vec::with_capacity(sp.per);
                for (j, (w, b)) in gws.chunks_exact_mut(wl).zip(gbs.chunks_exact_mut(cout)).enumerate() {
                    let e = g * sp.per + j;
                    let de = &dy[e * pixels * cout..(e + 1) * pixels * cout];
                    c.example_weight_grad(&x[e * isz..(e + 1) * isz], de, w, tile);
                    bias_grad(de, b, 1);
                    out.push(w.iter().chain(b.iter()).fold((0.0, 0.0), |(sq, l1), v| {
                        let v = *v as f64;
                        (sq + v * v, l1 + v.abs())
                    }));
                }
                out
            })
            .collect();
        for ((s, l), (vs, vl)) in self.sq.iter_mut().zip(self.l1.iter_mut()).zip(norms.into_iter().flatten()) {
            *s += vs;
            *l += vl;
        }
    }

    /// Per-example norms of a dense layer's weight and bias gradients: squared L2
    /// ‖gᵢ‖²(‖aᵢ‖² + 1), and L1 ‖gᵢ‖₁(‖aᵢ‖₁ + 1) (since |a_j g_k| = |a_j||g_k|).
    pub(crate) fn dense_norms(&mut self, a: &[f32], g: &[f32], input: usize, output: usize, n: usize) {
        for e in 0..n {
            let (an, a1) = sums(&a[e * input..(e + 1) * input]);
            let (gn, g1) = sums(&g[e * output..(e + 1) * output]);
            self.sq[e] += gn * (an + 1.0);
            self.l1[e] += g1 * (a1 + 1.0);
        }
    }
}

/// (Σ v², Σ |v|) in f64.
fn sums(v: &[f32]) -> (f64, f64) {
    v.iter().fold((0.0, 0.0), |(sq, l1), x| {
        let x = *x as f64;
        (sq + x * x, l1 + x.abs())
    })
}

impl Network {
    /// `clipped_grad` with the L2 norm (DP-SGD with Gaussian noise).
    #[allow(clippy::too_many_arguments)]
    pub fn clipped_grad(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        x: &[f32],
        targets: Targets<'_>,
        clip: f32,
        grad: &mut [f32],
        norms: &mut [f32],
    ) -> Result<BatchStats, NnError> {
        self.clipped_grad_in(params, ws, x, targets, clip, ClipNorm::L2, grad, norms)
    }

    /// For a batch: writes into `norms` each example's gradient norm ‖∇ᵢ‖ in `kind` (of its
    /// own loss, not divided by the batch size) and into `grad` the clipped sum
    /// Σᵢ min(1, clip/‖∇ᵢ‖)·∇ᵢ. DP-SGD adds noise to that sum and divides by the expected
    /// batch size. Returns the batch's loss and accuracy.
    #[allow(clippy::too_many_arguments)]
    pub fn clipped_grad_in(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        x: &[f32],
        targets: Targets<'_>,
        clip: f32,
        kind: ClipNorm,
        grad: &mut [f32],
        norms: &mut [f32],
    ) -> Result<BatchStats, NnError> {
        let n = targets.len();
        if grad.len() != self.num_params() {
            return Err(NnError::SizeMismatch { what: "gradient", got: grad.len(), expected: self.num_params() });
        }
        if norms.len() != n {
            return Err(NnError::SizeMismatch { what: "norms", got: norms.len(), expected: n });
        }
        if !(clip > 0.0 && clip.is_finite()) {
            return Err(NnError::BadHyperParameter(format!("clipping norm {clip} must be a positive number")));
        }
        self.check(params, x, n, ws)?;
        if ws.dp.is_none() {
            ws.dp = Some(DpBuffers::new(self, ws.capacity));
        }
        let stats = self.forward_loss(params, ws, x, targets)?;
        let (last, classes) = (self.layers.len(), self.classes());
        // Per-example losses, not the mean: undo the 1/n.
        for v in &mut ws.grads[last][..n * classes] {
            *v *= n as f32;
        }
        if let Some(dp) = ws.dp.as_mut() {
            dp.sq[..n].fill(0.0);
            dp.l1[..n].fill(0.0);
        }
        self.backward(params, ws, n, grad, true);
        let Some(dp) = ws.dp.as_mut() else { unreachable!("allocated above") };
        let scale: Vec<f32> = dp.sq[..n]
            .iter()
            .zip(&dp.l1[..n])
            .zip(norms.iter_mut())
            .map(|((sq, l1), out)| {
                let norm = match kind {
                    ClipNorm::L2 => sq.sqrt(),
                    ClipNorm::L1 => *l1,
                };
                *out = norm as f32;
                if norm > clip as f64 { (clip as f64 / norm) as f32 } else { 1.0 }
            })
            .collect();
        let threads = ws.threads;
        for (i, layer) in self.layers.iter().enumerate() {
            let Some((w0, w1, b1)) = self.param_at[i] else { continue };
            let (gw, gb) = grad[w0..b1].split_at_mut(w1 - w0);
            match layer {
                Layer::Conv(c) => {
                    let (wl, cout) = (c.weight_len(), c.output.c);
                    weighted_sum(gw, &dp.conv_w[i][..n * wl], &scale);
                    weighted_sum(gb, &dp.conv_b[i][..n * cout], &scale);
                }
                Layer::Linear { input, output } => {
                    let dy = &ws.grads[i + 1][..n * output];
                    let scaled = &mut dp.scaled[..n * output];
                    for ((dst, src), s) in scaled.chunks_exact_mut(*output).zip(dy.chunks_exact(*output)).zip(&scale) {
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = v * s;
                        }
                    }
                    let a = &ws.acts[i][..n * input];
                    matmul(*input, *output, n, gw, a, Op::T, scaled, Op::N, false, 1.0, threads);
                    bias_grad(scaled, gb, threads);
                }
                _ => {}
            }
        }
        Ok(stats)
    }
}

/// `out = Σᵢ scale[i] · rows[i]` (rows of `out.len()` values), in parallel over `out`.
fn weighted_sum(out: &mut [f32], rows: &[f32], scale: &[f32]) {
    let len = out.len();
    out.par_chunks_mut(4096).enumerate().for_each(|(c, o)| {
        let off = c * 4096;
        o.fill(0.0);
        for (e, s) in scale.iter().enumerate() {
            let r = &rows[e * len + off..e * len + off + o.len()];
            for (d, v) in o.iter_mut().zip(r) {
                *d += s * v;
            }
        }
    });
}
