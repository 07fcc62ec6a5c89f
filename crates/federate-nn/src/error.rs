//! Errors a model description or a call into the engine can produce.

use thiserror::Error;

/// What went wrong building or running a network.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NnError {
    /// The model name is not one of the built-in models.
    #[error("unknown model '{0}': use one of cnn, mlp, logreg, or name = \"custom\" with a layer list")]
    UnknownModel(String),
    /// A layer list whose shapes do not chain.
    #[error("layer {index} ({layer}): {problem}")]
    BadLayer {
        /// Position of the layer in the list, from 0.
        index: usize,
        /// The layer's kind.
        layer: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A model whose last layer does not produce one score per class.
    #[error(
        "the model ends with {got} outputs but the data has {classes} classes: make the last layer linear with out = {classes}"
    )]
    OutputMismatch {
        /// Outputs the last layer produces.
        got: usize,
        /// Classes in the data.
        classes: usize,
    },
    /// An empty layer list.
    #[error("the model has no layers: give at least one linear layer")]
    NoLayers,
    /// A buffer of the wrong size was passed in.
    #[error("{what} has {got} values but {expected} were expected")]
    SizeMismatch {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length required.
        expected: usize,
    },
    /// A label outside 0..classes.
    #[error("label {label} is out of range for {classes} classes")]
    BadLabel {
        /// The label.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// Targets of the wrong kind for the loss (values for a classification loss, or the
    /// other way round).
    #[error("{0}")]
    TargetKind(String),
    /// An optimiser hyper-parameter out of range.
    #[error("{0}")]
    BadHyperParameter(String),
}
