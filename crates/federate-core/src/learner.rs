//! The model-specific side of a party: loss, gradients and evaluation on flat parameters.
//!
//! Local algorithms (SGD today; FedProx, SCAFFOLD, ADMM and DP-SGD later) are written once on
//! top of `Learner`. Any training engine can implement it; `NnLearner` is the built-in one
//! over `federate-nn`.

use std::sync::Arc;

use federate_nn::{BatchStats, ClipNorm, ModelSpec, Network, NnError, Workspace};

use crate::params::{Layout, TensorSpec};

/// Computes losses and gradients for batches of one model.
///
/// The caller (a party's local training) owns the parameters and the gradient buffer: it
/// calls `loss_and_grad` (or `clipped_grad` under DP-SGD) once per batch and applies its own
/// update. Parameters are always `layout().len()` values; inputs are `input_len()` values per
/// example, labels below the model's class count. Calls are sequential.
pub trait Learner: Send {
    /// The parameter layout; the same for the learner's whole life.
    fn layout(&self) -> Arc<Layout>;
    /// Initial parameters drawn from `seed`: equal seeds give equal values.
    fn init(&self, seed: u64) -> Vec<f32>;
    /// Values per input example.
    fn input_len(&self) -> usize;
    /// Writes the gradient of the batch's mean loss at `params` into `grad` and returns the
    /// batch's loss and accuracy. On `Err` (sizes that do not fit, a label out of range) the
    /// batch was not processed, `grad` is unspecified and the learner stays usable.
    fn loss_and_grad(&mut self, params: &[f32], x: &[f32], y: &[u32], grad: &mut [f32]) -> Result<BatchStats, NnError>;
    /// Loss and accuracy of `params` over a whole set, without gradients or randomness
    /// (dropout off). Errors as `loss_and_grad`'s.
    fn evaluate(&mut self, params: &[f32], x: &[f32], y: &[u32]) -> Result<BatchStats, NnError>;
    /// Reseeds any randomness inside the model (dropout masks); a party calls it at the start
    /// of every fit with the task's dropout seed, so a fit's result depends only on the task.
    fn reseed(&mut self, seed: u64);
    /// DP-SGD: writes each example's gradient norm (in `norm`, of its own loss) into `norms`
    /// and the sum of the per-example gradients, each clipped to `clip`, into `grad`.
    /// Learners that cannot compute per-example gradients return an error (the default), and
    /// the party refuses DP tasks with it.
    #[allow(clippy::too_many_arguments)]
    fn clipped_grad(
        &mut self,
        _params: &[f32],
        _x: &[f32],
        _y: &[u32],
        _clip: f32,
        _norm: ClipNorm,
        _grad: &mut [f32],
        _norms: &mut [f32],
    ) -> Result<BatchStats, NnError> {
        Err(NnError::BadHyperParameter(
            "this learner cannot clip per-example gradients, so it cannot run DP-SGD".into(),
        ))
    }
    /// Frees the buffers kept between calls; the next call allocates them again. Results do
    /// not change (a fit reseeds the model's randomness before its first batch). Default:
    /// nothing to free.
    fn release(&mut self) {}
    /// Training FLOPs per example, if known (for throughput reports). Default: unknown.
    fn train_flops_per_example(&self) -> Option<f64> {
        None
    }
}

/// A `Learner` over a `federate-nn` network, with its workspaces (allocated on first use,
/// freed by `release`).
#[derive(Debug)]
pub struct NnLearner {
    net: Network,
    ws: Option<Workspace>,
    eval_ws: Option<Workspace>,
    batch: usize,
    /// The last `reseed`, applied to a training workspace allocated after it.
    seed: Option<u64>,
    layout: Arc<Layout>,
    threads: usize,
}

/// Batch size used when evaluating.
const EVAL_BATCH: usize = 256;

impl NnLearner {
    /// A learner for `spec` whose training batches hold at most `batch` examples; matrix
    /// products use `threads` threads of the current rayon pool.
    pub fn new(spec: ModelSpec, batch: usize, threads: usize) -> Result<Self, NnError> {
        let net = Network::new(spec)?;
        let layout = Arc::new(Layout::new(
            net.tensors()
                .iter()
                .map(|t| TensorSpec { name: t.name.clone(), shape: t.shape.clone(), offset: t.offset })
                .collect(),
        ));
        Ok(NnLearner { net, ws: None, eval_ws: None, batch, seed: None, layout, threads })
    }
    /// The network and the training workspace, allocating the workspace if it was released.
    fn parts(&mut self) -> (&Network, &mut Workspace) {
        let ws = self.ws.get_or_insert_with(|| {
            let mut ws = self.net.workspace(self.batch, self.threads);
            if let Some(seed) = self.seed {
                ws.reseed(seed);
            }
            ws
        });
        (&self.net, ws)
    }
    /// The network.
    pub fn network(&self) -> &Network {
        &self.net
    }
}

impl Learner for NnLearner {
    fn layout(&self) -> Arc<Layout> {
        self.layout.clone()
    }
    fn init(&self, seed: u64) -> Vec<f32> {
        self.net.init(seed)
    }
    fn input_len(&self) -> usize {
        self.net.input_len()
    }
    fn loss_and_grad(&mut self, params: &[f32], x: &[f32], y: &[u32], grad: &mut [f32]) -> Result<BatchStats, NnError> {
        let (net, ws) = self.parts();
        net.loss_and_grad(params, ws, x, y, grad)
    }
    fn evaluate(&mut self, params: &[f32], x: &[f32], y: &[u32]) -> Result<BatchStats, NnError> {
        let ws = self.eval_ws.get_or_insert_with(|| self.net.workspace(EVAL_BATCH, self.threads));
        self.net.evaluate(params, ws, x, y)
    }
    fn reseed(&mut self, seed: u64) {
        self.seed = Some(seed);
        if let Some(ws) = &mut self.ws {
            ws.reseed(seed);
        }
    }
    fn clipped_grad(
        &mut self,
        params: &[f32],
        x: &[f32],
        y: &[u32],
        clip: f32,
        norm: ClipNorm,
        grad: &mut [f32],
        norms: &mut [f32],
    ) -> Result<BatchStats, NnError> {
        let (net, ws) = self.parts();
        net.clipped_grad_in(params, ws, x, y, clip, norm, grad, norms)
    }
    fn release(&mut self) {
        self.ws = None;
        self.eval_ws = None;
    }
    fn train_flops_per_example(&self) -> Option<f64> {
        Some(self.net.flops_per_example().1)
    }
}
