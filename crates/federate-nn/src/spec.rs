//! Model descriptions: the layer list a network is built from, the built-in models,
//! and shape inference that turns a list that does not chain into a clear error.
//!
//! A description is plain data (serde), so a model can be written as a layer list in TOML.
//! It knows nothing about buffers or arithmetic; `Network` builds from it.

use serde::{Deserialize, Serialize};

use crate::NnError;

/// The shape of one example's activation, channels last (NHWC without the N).
/// A flat vector of `d` values is `Shape { h: 1, w: 1, c: d }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Shape {
    /// An image shape.
    pub fn image(h: usize, w: usize, c: usize) -> Self {
        Shape { h, w, c }
    }
    /// A flat vector shape.
    pub fn flat(d: usize) -> Self {
        Shape { h: 1, w: 1, c: d }
    }
    /// Values per example.
    pub fn size(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Whether this is a flat vector.
    pub fn is_flat(&self) -> bool {
        self.h == 1 && self.w == 1
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_flat() { write!(f, "[{}]", self.c) } else { write!(f, "[{}x{}x{}]", self.h, self.w, self.c) }
    }
}

/// Zero padding of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Padding {
    /// `"same"` or `"valid"`.
    Named(PaddingName),
    /// The same number of zeros on every side.
    Explicit(usize),
}

/// Named padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingName {
    /// Output has the input's size (at stride 1); needs an odd kernel.
    Same,
    /// No padding.
    Valid,
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Explicit(0)
    }
}

fn one() -> usize {
    1
}

/// One layer of a sequential model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// 2-D convolution, square kernel, weights stored `[kh, kw, in, out]`, plus bias.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding.
        #[serde(default)]
        padding: Padding,
    },
    /// Max pooling over square windows.
    MaxPool2d {
        /// Window side.
        kernel: usize,
        /// Stride; defaults to the window side.
        #[serde(default)]
        stride: Option<usize>,
    },
    /// Rectified linear unit.
    Relu,
    /// Flattens an image to a vector (channels-last order).
    Flatten,
    /// Inverted dropout: zeroes each value with probability `p` while training.
    Dropout {
        /// Drop probability in [0, 1).
        p: f32,
    },
    /// Fully connected layer, weights stored `[in, out]`, plus bias.
    Linear {
        /// Output features.
        out: usize,
    },
}

impl LayerSpec {
    /// A short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::MaxPool2d { .. } => "max_pool2d",
            LayerSpec::Relu => "relu",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Linear { .. } => "linear",
        }
    }
}

/// A sequential model: input shape, class count and layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Shape of one input example.
    pub input: Shape,
    /// Outputs of the last layer: the number of classes under softmax cross-entropy, 1 under
    /// the binary and regression losses.
    pub classes: usize,
    /// The layers, applied in order.
    pub layers: Vec<LayerSpec>,
    /// The loss the model is trained with (models saved before it existed used softmax
    /// cross-entropy, the default).
    #[serde(default)]
    pub loss: crate::Loss,
}

/// Largest size of any one dimension, kernel, padding or stride (beyond it a layer is a typo,
/// and the arithmetic on it could overflow).
pub const MAX_DIM: usize = 1 << 30;

/// Largest number of values in one activation (per example) or one weight tensor.
pub const MAX_VALUES: u64 = 1 << 32;

/// Names of the built-in models.
pub const BUILTIN_MODELS: [&str; 3] = ["cnn", "mlp", "logreg"];

impl ModelSpec {
    /// A built-in model for the given input shape and class count:
    /// `cnn` (McMahan et al. 2017), `mlp` (784-200-200-10 on MNIST) or `logreg`.
    pub fn builtin(name: &str, input: Shape, classes: usize) -> Result<Self, NnError> {
        use LayerSpec::*;
        let same = Padding::Named(PaddingName::Same);
        let layers = match name {
            "cnn" => vec![
                Conv2d { out_channels: 32, kernel: 5, stride: 1, padding: same },
                Relu,
                MaxPool2d { kernel: 2, stride: None },
                Conv2d { out_channels: 64, kernel: 5, stride: 1, padding: same },
                Relu,
                MaxPool2d { kernel: 2, stride: None },
                Flatten,
                Linear { out: 512 },
                Relu,
                Linear { out: classes },
            ],
            "mlp" => vec![Flatten, Linear { out: 200 }, Relu, Linear { out: 200 }, Relu, Linear { out: classes }],
            "logreg" => vec![Flatten, Linear { out: classes }],
            other => return Err(NnError::UnknownModel(other.to_string())),
        };
        Ok(ModelSpec { input, classes, layers, loss: crate::Loss::default() })
    }

    /// The activation shape after each layer (`shapes[0]` is the input), or an error naming
    /// the first layer whose input does not fit.
    pub fn shapes(&self) -> Result<Vec<Shape>, NnError> {
        if self.layers.is_empty() {
            return Err(NnError::NoLayers);
        }
        let big = |n: usize| n > MAX_DIM;
        if big(self.input.h) || big(self.input.w) || big(self.input.c) || big(self.classes) {
            return Err(NnError::BadLayer {
                index: 0,
                layer: "input".into(),
                problem: format!(
                    "input {} or {} classes is beyond {MAX_DIM} in one dimension",
                    self.input, self.classes
                ),
            });
        }
        let mut shapes = vec![self.input];
        for (index, layer) in self.layers.iter().enumerate() {
            let s = *shapes.last().unwrap_or(&self.input);
            let bad = |problem: String| NnError::BadLayer { index, layer: layer.kind().to_string(), problem };
            let sizes = match *layer {
                LayerSpec::Conv2d { out_channels, kernel, stride, padding } => {
                    vec![out_channels, kernel, stride, if let Padding::Explicit(p) = padding { p } else { 0 }]
                }
                LayerSpec::MaxPool2d { kernel, stride } => vec![kernel, stride.unwrap_or(kernel)],
                LayerSpec::Linear { out } => vec![out],
                _ => Vec::new(),
            };
            if sizes.iter().any(|&n| big(n)) {
                return Err(bad(format!("a size above {MAX_DIM} is not a layer one machine can hold")));
            }
            let next = self.next_shape(layer, s).map_err(bad)?;
            if next.h as u64 * next.w as u64 * next.c as u64 > MAX_VALUES || big(next.c) {
                return Err(bad(format!("its output {next} has more than {MAX_VALUES} values per example")));
            }
            shapes.push(next);
        }
        let last = shapes[shapes.len() - 1];
        self.loss.check()?;
        if self.classes != 1 && self.loss != crate::Loss::SoftmaxCrossEntropy {
            return Err(NnError::BadHyperParameter(format!(
                "the loss {:?} reads one output, but the model is declared with {} outputs",
                self.loss, self.classes
            )));
        }
        if !last.is_flat() || last.c != self.classes {
            return Err(NnError::OutputMismatch { got: last.size(), classes: self.classes });
        }
        Ok(shapes)
    }

    /// The shape after `layer` applied to `s`, or what is wrong with the layer there.
    fn next_shape(&self, layer: &LayerSpec, s: Shape) -> Result<Shape, String> {
        Ok(match *layer {
            LayerSpec::Conv2d { out_channels, kernel, stride, padding } => {
                if out_channels == 0 || kernel == 0 || stride == 0 {
                    return Err("out_channels, kernel and stride must be at least 1".into());
                }
                let pad = match padding {
                    Padding::Explicit(p) => p,
                    Padding::Named(PaddingName::Valid) => 0,
                    Padding::Named(PaddingName::Same) => {
                        if kernel % 2 == 0 {
                            return Err(format!(
                                "padding \"same\" needs an odd kernel, got {kernel}: use an explicit padding"
                            ));
                        }
                        kernel / 2
                    }
                };
                if s.is_flat() && s.c != self.input.c {
                    return Err(format!(
                        "input is the flat vector {s}; a convolution needs an image: move it before flatten"
                    ));
                }
                if s.h + 2 * pad < kernel || s.w + 2 * pad < kernel {
                    return Err(format!(
                        "kernel {kernel} is larger than the padded input {s}: use a smaller kernel or more padding"
                    ));
                }
                Shape::image((s.h + 2 * pad - kernel) / stride + 1, (s.w + 2 * pad - kernel) / stride + 1, out_channels)
            }
            LayerSpec::MaxPool2d { kernel, stride } => {
                let stride = stride.unwrap_or(kernel);
                if kernel == 0 || stride == 0 {
                    return Err("kernel and stride must be at least 1".into());
                }
                if s.h < kernel || s.w < kernel {
                    return Err(format!(
                        "window {kernel} is larger than the input {s}: use a smaller window or remove the layer"
                    ));
                }
                Shape::image((s.h - kernel) / stride + 1, (s.w - kernel) / stride + 1, s.c)
            }
            LayerSpec::Relu => s,
            LayerSpec::Dropout { p } => {
                if !(0.0..1.0).contains(&p) {
                    return Err(format!("p = {p} must be in [0, 1)"));
                }
                s
            }
            LayerSpec::Flatten => Shape::flat(s.size()),
            LayerSpec::Linear { out } => {
                if out == 0 {
                    return Err("out must be at least 1".into());
                }
                if !s.is_flat() {
                    return Err(format!(
                        "input is the image {s}; a linear layer needs a vector: insert {{ type = \"flatten\" }} before it"
                    ));
                }
                Shape::flat(out)
            }
        })
    }
}

impl ModelSpec {
    /// The weights and biases of each layer that has them, computed without overflow (after
    /// [`ModelSpec::shapes`] has checked the sizes).
    pub fn num_params(&self) -> Result<u128, NnError> {
        Ok(self.params_given(&self.shapes()?))
    }

    /// Roughly the bytes one learner training at `batch` holds: the parameters four times
    /// (values, gradients, optimizer state, a copy for the update) and every activation with its
    /// gradient for a batch, as f32. Used to refuse a model before allocating it.
    pub fn memory_estimate(&self, batch: usize) -> Result<u128, NnError> {
        let shapes = self.shapes()?;
        let activations: u128 = shapes.iter().map(|s| s.h as u128 * s.w as u128 * s.c as u128).sum();
        Ok(4 * (4 * self.params_given(&shapes) + 2 * batch.max(1) as u128 * activations))
    }

    /// The parameter count of the layers, given their input `shapes`.
    fn params_given(&self, shapes: &[Shape]) -> u128 {
        self.layers
            .iter()
            .zip(shapes)
            .map(|(layer, s)| match *layer {
                LayerSpec::Conv2d { out_channels, kernel, .. } => {
                    (kernel as u128 * kernel as u128 * s.c as u128 + 1) * out_channels as u128
                }
                LayerSpec::Linear { out } => (s.size() as u128 + 1) * out as u128,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_errors_and_memory_is_estimated_without_overflow() {
        let spec = ModelSpec {
            loss: Default::default(),
            input: Shape::flat(784),
            classes: 100_000_000,
            layers: vec![LayerSpec::Linear { out: 100_000_000 }],
        };
        // 10^8 outputs is a shape one can name, but 785 · 10^8 weights is ~314 GB to train.
        assert_eq!(spec.num_params().unwrap(), 785 * 100_000_000);
        assert!(spec.memory_estimate(32).unwrap() > 300_000_000_000);
        let huge = ModelSpec {
            loss: Default::default(),
            input: Shape::flat(784),
            classes: 10,
            layers: vec![LayerSpec::Linear { out: usize::MAX }],
        };
        assert!(huge.shapes().unwrap_err().to_string().contains("not a layer one machine can hold"));
        let conv = ModelSpec {
            loss: Default::default(),
            input: Shape::image(28, 28, 1),
            classes: 10,
            layers: vec![LayerSpec::Conv2d {
                out_channels: 4,
                kernel: 3,
                stride: 1,
                padding: Padding::Explicit(usize::MAX / 2),
            }],
        };
        assert!(conv.shapes().is_err());
        let cnn = ModelSpec::builtin("cnn", Shape::image(28, 28, 1), 10).unwrap();
        assert_eq!(cnn.num_params().unwrap(), 1_663_370);
    }

    #[test]
    fn cnn_shapes_chain() {
        let spec = ModelSpec::builtin("cnn", Shape::image(28, 28, 1), 10).unwrap();
        let shapes = spec.shapes().unwrap();
        assert_eq!(shapes[3], Shape::image(14, 14, 32));
        assert_eq!(shapes[6], Shape::image(7, 7, 64));
        assert_eq!(*shapes.last().unwrap(), Shape::flat(10));
    }

    #[test]
    fn unchained_layers_are_named() {
        let spec = ModelSpec {
            loss: Default::default(),
            input: Shape::image(28, 28, 1),
            classes: 10,
            layers: vec![LayerSpec::Linear { out: 10 }],
        };
        let err = spec.shapes().unwrap_err().to_string();
        assert!(err.contains("layer 0 (linear)") && err.contains("flatten"), "{err}");
        let spec = ModelSpec {
            loss: Default::default(),
            input: Shape::image(28, 28, 1),
            classes: 10,
            layers: vec![LayerSpec::Flatten, LayerSpec::Linear { out: 7 }],
        };
        assert!(matches!(spec.shapes(), Err(NnError::OutputMismatch { got: 7, classes: 10 })));
        assert!(matches!(ModelSpec::builtin("resnet", Shape::flat(3), 2), Err(NnError::UnknownModel(_))));
    }

    #[test]
    fn layer_list_parses_from_toml() {
        #[derive(Deserialize)]
        struct M {
            layers: Vec<LayerSpec>,
        }
        let m: M = toml::from_str(
            r#"layers = [{ type = "conv2d", out_channels = 8, kernel = 3, padding = "same" }, { type = "relu" }]"#,
        )
        .unwrap();
        assert_eq!(
            m.layers[0],
            LayerSpec::Conv2d { out_channels: 8, kernel: 3, stride: 1, padding: Padding::Named(PaddingName::Same) }
        );
        assert!(toml::from_str::<M>(r#"layers = [{ type = "linear", out = 3, size = 3 }]"#).is_err());
    }
}
