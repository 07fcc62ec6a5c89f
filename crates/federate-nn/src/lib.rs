//! federate-nn: a small, focused training engine for federated learning.
//!
//! Explicit forward and backward passes per layer (NHWC activations), every heavy product
//! through the `gemm` crate, buffers allocated once per model and batch size, parameters and
//! gradients as flat `f32` vectors. It knows nothing about federation: `federate-core`
//! drives it through its `Learner` trait.
//!
//! Why our own engine: measured on a 2-core machine, no pure-Rust framework reached
//! PyTorch's CPU speed on the reference CNN, none exposes per-example gradients (which
//! DP-SGD needs), and libtorch is a 1 GB native dependency (see DESIGN.md).

mod error;
mod layers;
mod loss;
mod matmul;
mod network;
mod spec;

pub use error::NnError;
pub use loss::{Loss, Targets, softmax_cross_entropy};
pub use matmul::measure_gemm_gflops;
pub use network::per_example::ClipNorm;
pub use network::{BatchStats, Network, TensorInfo, Workspace, predictions};
pub use spec::{BUILTIN_MODELS, LayerSpec, ModelSpec, Padding, PaddingName, Shape};
