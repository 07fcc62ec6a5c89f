//! `NnLearner`: the [`Learner`] over a `federate-nn` network, and the one module of this
//! crate that names federate-nn: it converts the engine's stats, clip norm and errors into
//! core's types.

use std::sync::{Arc, Mutex};

use federate_nn::{ModelSpec, Network, NnError, Workspace};

use crate::learner::{BatchStats, ClipNorm, Learner, LearnerError, Targets};
use crate::params::{Layout, TensorSpec};

fn stats(s: federate_nn::BatchStats) -> BatchStats {
    BatchStats { loss_sum: s.loss_sum, correct: s.correct, count: s.count }
}

/// The data's targets in the engine's type.
fn targets(t: Targets<'_>) -> federate_nn::Targets<'_> {
    match t {
        Targets::Classes(c) => federate_nn::Targets::Classes(c),
        Targets::Values(v) => federate_nn::Targets::Values(v),
    }
}

/// The engine's error in core's terms (the text is kept: it names the thing and the fix).
pub(crate) fn err(e: NnError) -> LearnerError {
    match e {
        NnError::BadHyperParameter(m) => LearnerError::Setting(m),
        other => LearnerError::Input(other.to_string()),
    }
}

/// Workspaces shared by the learners of one model in one process (a simulation's parties,
/// which train one after another): a learner takes one when it first needs it and gives it
/// back on `release`, so a thousand parties reuse one workspace instead of each allocating
/// and freeing its own (which left the allocator holding ~800 MB for the CNN). Every learner
/// sharing a pool must have the same model, batch size and thread count; a workspace of
/// another capacity is never handed out.
#[derive(Debug, Default)]
pub struct WorkspacePool {
    train: Mutex<Vec<Workspace>>,
    eval: Mutex<Vec<Workspace>>,
}

impl WorkspacePool {
    fn take(list: &Mutex<Vec<Workspace>>, capacity: usize) -> Option<Workspace> {
        let mut l = list.lock().ok()?;
        let i = l.iter().position(|w| w.capacity() == capacity)?;
        Some(l.swap_remove(i))
    }
    fn give(list: &Mutex<Vec<Workspace>>, ws: Workspace) {
        if let Ok(mut l) = list.lock() {
            l.push(ws);
        }
    }
}

/// A `Learner` over a `federate-nn` network, with its workspaces (allocated on first use, or
/// taken from a shared pool; freed, or given back, by `release`).
#[derive(Debug)]
pub struct NnLearner {
    net: Network,
    ws: Option<Workspace>,
    eval_ws: Option<Workspace>,
    pool: Option<Arc<WorkspacePool>>,
    batch: usize,
    /// The last `reseed`, applied to a training workspace allocated after it.
    seed: Option<u64>,
    layout: Arc<Layout>,
    threads: usize,
}

/// Batch size used when evaluating: forward passes only, so larger than training's; a dense
/// layer's weights (6.4 MB for the CNN's fc1) are read from memory once per batch, and 128
/// read them a quarter as often as 32 did (the anchor ~0.7 s faster, +18 MB peak).
const EVAL_BATCH: usize = 128;

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
        Ok(NnLearner { net, ws: None, eval_ws: None, pool: None, batch, seed: None, layout, threads })
    }
    /// Takes workspaces from `pool` and gives them back there on `release`.
    pub fn with_pool(mut self, pool: Arc<WorkspacePool>) -> Self {
        self.pool = Some(pool);
        self
    }
    /// The network and the training workspace, allocating the workspace if it was released.
    fn parts(&mut self) -> (&Network, &mut Workspace) {
        let ws = self.ws.get_or_insert_with(|| {
            let pooled = self.pool.as_ref().and_then(|p| WorkspacePool::take(&p.train, self.batch));
            let mut ws = pooled.unwrap_or_else(|| self.net.workspace(self.batch, self.threads));
            if let Some(seed) = self.seed {
                ws.reseed(seed);
            }
            ws
        });
        (&self.net, ws)
    }
    /// The evaluation workspace, allocated or taken from the pool.
    fn eval_parts(&mut self) -> (&Network, &mut Workspace) {
        let ws = self.eval_ws.get_or_insert_with(|| {
            let pooled = self.pool.as_ref().and_then(|p| WorkspacePool::take(&p.eval, EVAL_BATCH));
            pooled.unwrap_or_else(|| self.net.workspace(EVAL_BATCH, self.threads))
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
    fn loss_and_grad(
        &mut self,
        params: &[f32],
        x: &[f32],
        y: Targets<'_>,
        grad: &mut [f32],
    ) -> Result<BatchStats, LearnerError> {
        let (net, ws) = self.parts();
        net.loss_and_grad(params, ws, x, targets(y), grad).map(stats).map_err(err)
    }
    fn evaluate(&mut self, params: &[f32], x: &[f32], y: Targets<'_>) -> Result<BatchStats, LearnerError> {
        let (net, ws) = self.eval_parts();
        net.evaluate(params, ws, x, targets(y), None).map(stats).map_err(err)
    }
    fn score_len(&self) -> usize {
        self.net.outputs()
    }
    fn evaluate_scores(
        &mut self,
        params: &[f32],
        x: &[f32],
        y: Targets<'_>,
        scores: &mut [f32],
    ) -> Result<BatchStats, LearnerError> {
        let (net, ws) = self.eval_parts();
        net.evaluate(params, ws, x, targets(y), Some(scores)).map(stats).map_err(err)
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
        y: Targets<'_>,
        clip: f32,
        norm: ClipNorm,
        grad: &mut [f32],
        norms: &mut [f32],
    ) -> Result<BatchStats, LearnerError> {
        let norm = match norm {
            ClipNorm::L2 => federate_nn::ClipNorm::L2,
            ClipNorm::L1 => federate_nn::ClipNorm::L1,
        };
        let (net, ws) = self.parts();
        net.clipped_grad_in(params, ws, x, targets(y), clip, norm, grad, norms).map(stats).map_err(err)
    }
    fn release(&mut self) {
        match &self.pool {
            Some(p) => {
                if let Some(ws) = self.ws.take() {
                    WorkspacePool::give(&p.train, ws);
                }
                if let Some(ws) = self.eval_ws.take() {
                    WorkspacePool::give(&p.eval, ws);
                }
            }
            None => {
                self.ws = None;
                self.eval_ws = None;
            }
        }
    }
    fn train_flops_per_example(&self) -> Option<f64> {
        Some(self.net.flops_per_example().1)
    }
}
