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

/// Runs `check(simd, name)` on every instruction set pulp's dispatch may pick on this
/// machine (scalar, and on x86 AVX2 and AVX-512 where present), so that tests cover the
/// paths of machines other than this one (the reference kind has AVX2 only).
#[cfg(test)]
macro_rules! each_instruction_set {
    ($check:ident) => {{
        $check(pulp::Scalar::new(), "scalar");
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(simd) = pulp::x86::V3::try_new() {
                $check(simd, "AVX2");
            }
            if let Some(simd) = pulp::x86::V4::try_new() {
                $check(simd, "AVX-512");
            }
        }
    }};
}
#[cfg(test)]
pub(crate) use each_instruction_set;
