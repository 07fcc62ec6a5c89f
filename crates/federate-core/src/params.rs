//! Model parameters as one flat `f32` vector plus a shared layout of named tensors.
//! Every federated algorithm works on the flat vector; only the learner knows shapes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One named tensor's place in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name, e.g. `layers.0.weight`.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Offset of the first value.
    pub offset: usize,
}

/// The tensors a flat parameter vector holds, in order, covering it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    tensors: Vec<TensorSpec>,
    len: usize,
}

impl Layout {
    /// A layout from tensors laid out back to back from offset 0.
    pub fn new(tensors: Vec<TensorSpec>) -> Self {
        let len = tensors.iter().map(|t| t.offset + t.shape.iter().product::<usize>()).max().unwrap_or(0);
        Layout { tensors, len }
    }
    /// The tensors.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }
    /// Total number of values.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the layout holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Model parameters: flat values and the layout that names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    /// The values.
    pub values: Vec<f32>,
    /// Their layout (shared by every copy).
    pub layout: Arc<Layout>,
}

impl Parameters {
    /// Wraps values with their layout; `None` if the lengths differ.
    pub fn new(values: Vec<f32>, layout: Arc<Layout>) -> Option<Self> {
        (values.len() == layout.len()).then_some(Parameters { values, layout })
    }
    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}
