//! Losses over a batch of model outputs: softmax cross-entropy (multiclass), sigmoid
//! binary cross-entropy with an optional positive-class weight (binary), mean squared error
//! and Huber (regression). Each gives the batch's summed loss and, when asked, the gradient
//! of the *mean* loss with respect to the outputs, and can turn outputs into the scores a
//! metric reads (class probabilities, or the predicted value).

use serde::{Deserialize, Serialize};

use crate::{BatchStats, NnError};

/// The targets of a batch: a class index per example (classification) or a value per
/// example (regression).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Targets<'a> {
    /// Class indices.
    Classes(&'a [u32]),
    /// Target values.
    Values(&'a [f32]),
}

impl Targets<'_> {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The loss a model is trained with. It fixes what the last layer's outputs mean: one score
/// per class (softmax), the logit of the positive class (binary), or the predicted value
/// (regression).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// Softmax cross-entropy over `classes` outputs (multiclass).
    #[default]
    SoftmaxCrossEntropy,
    /// Sigmoid binary cross-entropy over one output, the logit of class 1. Examples of class 1
    /// weigh `pos_weight` (PyTorch's `BCEWithLogitsLoss(pos_weight)`), class 0 weighs 1.
    BinaryCrossEntropy {
        /// Weight of the positive class (1 = unweighted).
        #[serde(default = "one")]
        pos_weight: f32,
    },
    /// Mean squared error over one output.
    Mse,
    /// Huber loss over one output: ½e² for |e| ≤ δ, δ(|e| − ½δ) beyond.
    Huber {
        /// The threshold δ between the quadratic and the linear part.
        delta: f32,
    },
}

fn one() -> f32 {
    1.0
}

impl Loss {
    /// Outputs the last layer must produce for `classes` classes (regression: ignored).
    pub fn outputs(&self, classes: usize) -> usize {
        match self {
            Loss::SoftmaxCrossEntropy => classes,
            _ => 1,
        }
    }
    /// Whether the targets are values (regression) rather than classes.
    pub fn is_regression(&self) -> bool {
        matches!(self, Loss::Mse | Loss::Huber { .. })
    }
    /// Checks the loss's own settings.
    pub fn check(&self) -> Result<(), NnError> {
        match *self {
            Loss::BinaryCrossEntropy { pos_weight } if !(pos_weight > 0.0 && pos_weight.is_finite()) => Err(
                NnError::BadHyperParameter(format!("the positive-class weight {pos_weight} must be a positive number")),
            ),
            Loss::Huber { delta } if !(delta > 0.0 && delta.is_finite()) => {
                Err(NnError::BadHyperParameter(format!("the Huber threshold {delta} must be a positive number")))
            }
            _ => Ok(()),
        }
    }

    /// Summed loss and accuracy (classification) of `outputs` (`n × outs`) against `targets`;
    /// when `d` is given it receives the gradient of the *mean* loss over the batch.
    pub fn compute(
        &self,
        outputs: &[f32],
        targets: Targets<'_>,
        outs: usize,
        d: Option<&mut [f32]>,
    ) -> Result<BatchStats, NnError> {
        match (self, targets) {
            (Loss::SoftmaxCrossEntropy, Targets::Classes(y)) => softmax_cross_entropy(outputs, y, outs, d),
            (Loss::BinaryCrossEntropy { pos_weight }, Targets::Classes(y)) => {
                binary_cross_entropy(outputs, y, *pos_weight, d)
            }
            (Loss::Mse, Targets::Values(v)) => regression(outputs, v, d, |e| (e * e, 2.0 * e)),
            (Loss::Huber { delta }, Targets::Values(v)) => {
                let delta = *delta as f64;
                regression(outputs, v, d, |e| {
                    if e.abs() <= delta {
                        (0.5 * e * e, e)
                    } else {
                        (delta * (e.abs() - 0.5 * delta), delta * e.signum())
                    }
                })
            }
            (loss, Targets::Values(_)) => Err(NnError::TargetKind(format!(
                "the loss {loss:?} needs class labels but the targets are values: use a regression loss (mse, huber)"
            ))),
            (loss, Targets::Classes(_)) => Err(NnError::TargetKind(format!(
                "the loss {loss:?} needs target values but the targets are class labels: use a classification task"
            ))),
        }
    }

    /// Turns outputs into scores: softmax probabilities (`outs` per example), the probability
    /// of class 1 (binary), or the predicted value (regression), written into `scores`.
    pub fn scores(&self, outputs: &[f32], outs: usize, scores: &mut [f32]) {
        match self {
            Loss::SoftmaxCrossEntropy => {
                for (row, out) in outputs.chunks_exact(outs).zip(scores.chunks_exact_mut(outs)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                    for (s, &v) in out.iter_mut().zip(row) {
                        *s = (((v - max) as f64).exp() / sum) as f32;
                    }
                }
            }
            Loss::BinaryCrossEntropy { .. } => {
                for (s, &z) in scores.iter_mut().zip(outputs) {
                    *s = sigmoid(z as f64) as f32;
                }
            }
            Loss::Mse | Loss::Huber { .. } => scores[..outputs.len()].copy_from_slice(outputs),
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + eᶻ) without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// Sigmoid cross-entropy on one logit per example; labels must be 0 or 1.
fn binary_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    pos_weight: f32,
    mut d: Option<&mut [f32]>,
) -> Result<BatchStats, NnError> {
    let n = labels.len();
    if logits.len() != n {
        return Err(NnError::SizeMismatch { what: "outputs", got: logits.len(), expected: n });
    }
    let inv_n = 1.0 / n.max(1) as f64;
    let mut stats = BatchStats { count: n, ..Default::default() };
    for (i, (&z, &label)) in logits.iter().zip(labels).enumerate() {
        if label > 1 {
            return Err(NnError::BadLabel { label, classes: 2 });
        }
        let (z, y) = (z as f64, label as f64);
        let w = if label == 1 { pos_weight as f64 } else { 1.0 };
        // −[y log σ(z) + (1 − y) log(1 − σ(z))] = softplus(z) − y z.
        stats.loss_sum += w * (softplus(z) - y * z);
        if (z > 0.0) == (label == 1) {
            stats.correct += 1;
        }
        if let Some(d) = d.as_deref_mut() {
            d[i] = (w * (sigmoid(z) - y) * inv_n) as f32;
        }
    }
    Ok(stats)
}

/// A regression loss on one output per example: `f(e)` gives the loss and its derivative
/// at the error `e = output − target`.
fn regression(
    outputs: &[f32],
    values: &[f32],
    mut d: Option<&mut [f32]>,
    f: impl Fn(f64) -> (f64, f64),
) -> Result<BatchStats, NnError> {
    let n = values.len();
    if outputs.len() != n {
        return Err(NnError::SizeMismatch { what: "outputs", got: outputs.len(), expected: n });
    }
    let inv_n = 1.0 / n.max(1) as f64;
    let mut stats = BatchStats { count: n, ..Default::default() };
    for (i, (&z, &v)) in outputs.iter().zip(values).enumerate() {
        let (loss, grad) = f(z as f64 - v as f64);
        stats.loss_sum += loss;
        if let Some(d) = d.as_deref_mut() {
            d[i] = (grad * inv_n) as f32;
        }
    }
    Ok(stats)
}

/// Loss and accuracy of `logits` (`n × classes`) against `labels`; when `dlogits` is given
/// it receives the gradient of the *mean* loss, `(softmax − onehot) / n`.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    mut dlogits: Option<&mut [f32]>,
) -> Result<BatchStats, NnError> {
    let n = labels.len();
    if logits.len() != n * classes {
        return Err(NnError::SizeMismatch { what: "logits", got: logits.len(), expected: n * classes });
    }
    let inv_n = 1.0 / n.max(1) as f32;
    let mut stats = BatchStats { count: n, ..Default::default() };
    for (i, (row, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        if label as usize >= classes {
            return Err(NnError::BadLabel { label, classes });
        }
        let mut best = 0;
        let mut max = row[0];
        for (j, &v) in row.iter().enumerate() {
            if v > max {
                max = v;
                best = j;
            }
        }
        if best == label as usize {
            stats.correct += 1;
        }
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        stats.loss_sum += sum.ln() - (row[label as usize] - max) as f64;
        if let Some(d) = dlogits.as_deref_mut() {
            let d = &mut d[i * classes..(i + 1) * classes];
            for (j, (g, &v)) in d.iter_mut().zip(row).enumerate() {
                let p = (((v - max) as f64).exp() / sum) as f32;
                *g = (p - if j == label as usize { 1.0 } else { 0.0 }) * inv_n;
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of the summed loss match n × the mean-loss gradient.
    fn check_grad(loss: Loss, outputs: &[f32], targets: Targets<'_>, outs: usize) {
        let n = targets.len() as f64;
        let mut d = vec![0.0; outputs.len()];
        loss.compute(outputs, targets, outs, Some(&mut d)).unwrap();
        for i in 0..outputs.len() {
            let h = 1e-3;
            let mut up = outputs.to_vec();
            up[i] += h;
            let mut down = outputs.to_vec();
            down[i] -= h;
            let lu = loss.compute(&up, targets, outs, None).unwrap().loss_sum;
            let ld = loss.compute(&down, targets, outs, None).unwrap().loss_sum;
            let numeric = (lu - ld) / (2.0 * h as f64) / n;
            assert!((numeric - d[i] as f64).abs() < 1e-3, "{loss:?} output {i}: {numeric} vs {}", d[i]);
        }
    }

    #[test]
    fn every_loss_gradient_matches_finite_differences() {
        let z = [0.3f32, -1.2, 2.5, 0.0, -0.4];
        check_grad(Loss::BinaryCrossEntropy { pos_weight: 1.0 }, &z, Targets::Classes(&[1, 0, 1, 0, 1]), 1);
        check_grad(Loss::BinaryCrossEntropy { pos_weight: 3.0 }, &z, Targets::Classes(&[1, 0, 0, 1, 1]), 1);
        check_grad(Loss::Mse, &z, Targets::Values(&[1.0, -2.0, 0.5, 0.25, 3.0]), 1);
        check_grad(Loss::Huber { delta: 1.0 }, &z, Targets::Values(&[1.0, -2.0, 0.5, 0.25, 3.0]), 1);
        check_grad(Loss::SoftmaxCrossEntropy, &[0.1, 0.7, -0.3, 1.1, 0.2, -0.8], Targets::Classes(&[2, 0]), 3);
    }

    #[test]
    fn binary_cross_entropy_is_the_log_loss_of_the_sigmoid() {
        // σ(0) = ½: the loss is ln 2 whatever the label; σ(ln 3) = ¾.
        let s = Loss::BinaryCrossEntropy { pos_weight: 1.0 }
            .compute(&[0.0, 3f32.ln(), 3f32.ln()], Targets::Classes(&[1, 1, 0]), 1, None)
            .unwrap();
        let want = 2f64.ln() - 0.75f64.ln() - 0.25f64.ln();
        assert!((s.loss_sum - want).abs() < 1e-6, "{} vs {want}", s.loss_sum);
        assert_eq!(s.correct, 1, "0 is not > 0 (predicted class 0); ln 3 > 0 is right for label 1 only");
    }

    #[test]
    fn wrong_targets_and_labels_are_refused() {
        let e = Loss::Mse.compute(&[0.0], Targets::Classes(&[1]), 1, None).unwrap_err();
        assert!(e.to_string().contains("needs target values"), "{e}");
        let e = Loss::BinaryCrossEntropy { pos_weight: 1.0 }.compute(&[0.0], Targets::Classes(&[2]), 1, None);
        assert_eq!(e.unwrap_err(), NnError::BadLabel { label: 2, classes: 2 });
        assert!(Loss::Huber { delta: 0.0 }.check().is_err());
    }
}
