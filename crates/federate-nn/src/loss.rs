//! Softmax cross-entropy: the mean loss over a batch and its gradient with respect to the
//! logits.

use crate::{BatchStats, NnError};

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
