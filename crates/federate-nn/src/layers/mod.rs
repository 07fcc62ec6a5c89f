//! The layer kernels. Each works on `n` examples at once in NHWC and writes into buffers the
//! network's workspace owns; none allocates a buffer (a dense layer's input gradient builds
//! a list of row segments, one pointer per example and thread).

pub(crate) mod bias;
pub(crate) mod conv;
pub(crate) mod dense;
pub(crate) mod direct;
pub(crate) mod pointwise;
pub(crate) mod pool;
pub(crate) mod winograd;
