//! Federated evaluation metrics from sufficient statistics. Each party reduces its own test
//! set's predictions to [`EvalStats`]: a confusion matrix, histograms of the positive class's
//! probability for positives and negatives (binary), calibration bins, and for regression the
//! sums of errors and targets. The server adds the parties' statistics and reads every metric
//! off the sum, so the federation's AUC, F1, calibration error or R² are those of the pooled
//! test sets without one per-example score leaving a party. The AUC is exact up to the bin
//! resolution: pairs whose scores share a bin count as ties (half), so with B bins it is off
//! by at most half the fraction of positive–negative pairs sharing a bin.

use std::collections::BTreeMap;

use crate::learner::Targets;
pub use crate::messages::{CalibrationBin, EvalStats, RegressionSums};

/// Bins of the score histograms the AUC is read from.
pub const AUC_BINS: usize = 10_000;
/// Bins of the calibration diagram (expected calibration error).
pub const CALIBRATION_BINS: usize = 15;
/// Largest class count for which a confusion matrix is reported (its size grows as the
/// square).
pub const MAX_CONFUSION_CLASSES: usize = 256;

/// A metric a run can show and stop at: its name, and whether higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricInfo {
    /// The name in configs, records and reports.
    pub name: &'static str,
    /// Whether larger values are better (accuracy) or smaller (RMSE).
    pub higher_is_better: bool,
    /// The tasks it applies to.
    pub tasks: &'static str,
}

/// Every metric, with the tasks it applies to.
pub const METRICS: [MetricInfo; 10] = [
    MetricInfo { name: "accuracy", higher_is_better: true, tasks: "classification" },
    MetricInfo { name: "balanced_accuracy", higher_is_better: true, tasks: "classification" },
    MetricInfo { name: "f1", higher_is_better: true, tasks: "classification (binary: of class 1; else macro)" },
    MetricInfo { name: "auc", higher_is_better: true, tasks: "binary" },
    MetricInfo { name: "log_loss", higher_is_better: false, tasks: "classification" },
    MetricInfo { name: "ece", higher_is_better: false, tasks: "classification" },
    MetricInfo { name: "rmse", higher_is_better: false, tasks: "regression" },
    MetricInfo { name: "mae", higher_is_better: false, tasks: "regression" },
    MetricInfo { name: "r2", higher_is_better: true, tasks: "regression" },
    MetricInfo { name: "loss", higher_is_better: false, tasks: "every task (the training loss)" },
];

/// The metric called `name`.
pub fn metric(name: &str) -> Option<MetricInfo> {
    METRICS.iter().copied().find(|m| m.name == name)
}

impl EvalStats {
    /// The statistics of one test set from its scores (`score_len` per example: class
    /// probabilities, the positive class's probability, or the predicted value) and targets.
    pub fn from_scores(scores: &[f32], score_len: usize, targets: Targets<'_>) -> Result<EvalStats, String> {
        let n = targets.len();
        if score_len == 0 || scores.len() != n * score_len {
            return Err(format!("{} scores for {n} examples of {score_len} each", scores.len()));
        }
        let labels = match targets {
            Targets::Values(v) => {
                let mut r = RegressionSums { count: n as u64, ..Default::default() };
                for (&p, &y) in scores.iter().zip(v) {
                    let (p, y) = (p as f64, y as f64);
                    r.sq_err += (p - y) * (p - y);
                    r.abs_err += (p - y).abs();
                    r.y += y;
                    r.y2 += y * y;
                }
                return Ok(EvalStats { regression: Some(r), ..Default::default() });
            }
            Targets::Classes(c) => c,
        };
        // One score is the positive class's probability: two classes.
        let classes = if score_len == 1 { 2 } else { score_len };
        let mut st = EvalStats {
            confusion: if classes <= MAX_CONFUSION_CLASSES { vec![0; classes * classes] } else { Vec::new() },
            calibration: vec![CalibrationBin::default(); CALIBRATION_BINS],
            ..Default::default()
        };
        let mut hist = (classes == 2).then(|| ScoreHistogram::new(AUC_BINS));
        let mut probs = vec![0.0f64; classes];
        for (row, &label) in scores.chunks_exact(score_len).zip(labels) {
            let label = label as usize;
            if label >= classes {
                return Err(format!("label {label} is not below {classes} classes"));
            }
            if score_len == 1 {
                probs[1] = (row[0] as f64).clamp(0.0, 1.0);
                probs[0] = 1.0 - probs[1];
            } else {
                for (p, &v) in probs.iter_mut().zip(row) {
                    *p = v as f64;
                }
            }
            if probs.iter().any(|p| p.is_nan()) {
                return Err("a score is NaN: the model's parameters are not finite".into());
            }
            // Ties go to the first class (the engine's argmax); 0.5 predicts class 0.
            let pred = probs.iter().enumerate().fold(0, |b, (j, &p)| if p > probs[b] { j } else { b });
            if !st.confusion.is_empty() {
                st.confusion[label * classes + pred] += 1;
            }
            let conf = probs[pred];
            let bin = &mut st.calibration[((conf * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1)];
            bin.count += 1;
            bin.confidence += conf;
            bin.correct += (pred == label) as u64;
            st.log_loss_sum -= probs[label].max(1e-15).ln();
            if let Some(h) = hist.as_mut() {
                h.add(probs[1], label == 1)?;
            }
        }
        if let Some(h) = hist {
            st.positives = h.positives;
            st.negatives = h.negatives;
        }
        Ok(st)
    }

    /// The statistics of a whole set's scores; for a regression table scaled in round 0
    /// (`pre`), predictions and targets are first turned back into the target's own units, so
    /// RMSE and MAE are in them.
    pub fn of_set(
        scores: &mut [f32],
        score_len: usize,
        data: &federate_data::Dataset,
        pre: Option<&federate_data::table::Preprocessing>,
    ) -> Result<EvalStats, String> {
        match pre.filter(|_| data.is_regression()) {
            Some(p) => {
                let targets: Vec<f32> = data.values.iter().map(|v| p.unscale_target(*v)).collect();
                scores.iter_mut().for_each(|v| *v = p.unscale_target(*v));
                EvalStats::from_scores(scores, score_len, Targets::Values(&targets))
            }
            None => EvalStats::from_scores(scores, score_len, data.targets()),
        }
    }

    /// Adds another party's statistics (of the same task and class count).
    pub fn merge(&mut self, other: &EvalStats) -> Result<(), String> {
        if *self == EvalStats::default() {
            *self = other.clone();
            return Ok(());
        }
        if *other == EvalStats::default() {
            return Ok(());
        }
        let same = self.confusion.len() == other.confusion.len()
            && self.positives.len() == other.positives.len()
            && self.negatives.len() == other.negatives.len()
            && self.calibration.len() == other.calibration.len()
            && self.regression.is_some() == other.regression.is_some();
        if !same {
            return Err("the parties' evaluation statistics are of different tasks or class counts".into());
        }
        add(&mut self.confusion, &other.confusion);
        add(&mut self.positives, &other.positives);
        add(&mut self.negatives, &other.negatives);
        for (a, b) in self.calibration.iter_mut().zip(&other.calibration) {
            a.count += b.count;
            a.confidence += b.confidence;
            a.correct += b.correct;
        }
        self.log_loss_sum += other.log_loss_sum;
        if let (Some(a), Some(b)) = (self.regression.as_mut(), other.regression) {
            a.count += b.count;
            a.sq_err += b.sq_err;
            a.abs_err += b.abs_err;
            a.y += b.y;
            a.y2 += b.y2;
        }
        Ok(())
    }

    /// Examples counted (0 when empty).
    pub fn count(&self) -> u64 {
        match self.regression {
            Some(r) => r.count,
            None => self.calibration.iter().map(|b| b.count).sum(),
        }
    }

    /// Every metric these statistics give, by name (see [`METRICS`]); a metric that is not
    /// defined for them (AUC with one class present, R² of a constant target) is left out.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(r) = self.regression {
            if r.count > 0 {
                let n = r.count as f64;
                m.insert("rmse".into(), (r.sq_err / n).sqrt());
                m.insert("mae".into(), r.abs_err / n);
                let total = r.y2 - r.y * r.y / n;
                if total > 1e-12 * r.y2.max(1.0) {
                    m.insert("r2".into(), 1.0 - r.sq_err / total);
                }
            }
            return m;
        }
        let n = self.count();
        if n == 0 {
            return m;
        }
        let correct: u64 = self.calibration.iter().map(|b| b.correct).sum();
        m.insert("accuracy".into(), correct as f64 / n as f64);
        m.insert("log_loss".into(), self.log_loss_sum / n as f64);
        let ece: f64 = self.calibration.iter().map(|b| (b.confidence - b.correct as f64).abs()).sum::<f64>() / n as f64;
        m.insert("ece".into(), ece);
        let k = (self.confusion.len() as f64).sqrt() as usize;
        if k * k == self.confusion.len() && k >= 2 {
            let at = |t: usize, p: usize| self.confusion[t * k + p] as f64;
            let mut recalls = Vec::new();
            let mut f1s = Vec::new();
            for c in 0..k {
                let tp = at(c, c);
                let actual: f64 = (0..k).map(|p| at(c, p)).sum();
                let predicted: f64 = (0..k).map(|t| at(t, c)).sum();
                if actual > 0.0 {
                    recalls.push(tp / actual);
                }
                f1s.push(if actual + predicted > 0.0 { 2.0 * tp / (actual + predicted) } else { 0.0 });
            }
            if !recalls.is_empty() {
                m.insert("balanced_accuracy".into(), recalls.iter().sum::<f64>() / recalls.len() as f64);
            }
            let f1 = if k == 2 { f1s[1] } else { f1s.iter().sum::<f64>() / k as f64 };
            m.insert("f1".into(), f1);
        }
        if !self.positives.is_empty() {
            let h = ScoreHistogram { positives: self.positives.clone(), negatives: self.negatives.clone() };
            if let Some(auc) = h.auc() {
                m.insert("auc".into(), auc);
            }
        }
        m
    }

    /// Checks statistics a peer sent: sizes within bounds, counts matching `num_examples`,
    /// sums finite. The reason, if they are unusable.
    pub fn check(&self, num_examples: usize) -> Result<(), String> {
        if *self == EvalStats::default() {
            return Ok(());
        }
        let k = (self.confusion.len() as f64).sqrt() as usize;
        if k * k != self.confusion.len() || k > MAX_CONFUSION_CLASSES {
            return Err(format!("a confusion matrix of {} counts is not square or too large", self.confusion.len()));
        }
        if !(self.positives.is_empty() || self.positives.len() == AUC_BINS)
            || self.negatives.len() != self.positives.len()
        {
            return Err(format!("score histograms must have {AUC_BINS} bins each"));
        }
        if !(self.calibration.is_empty() || self.calibration.len() == CALIBRATION_BINS) {
            return Err(format!("calibration must have {CALIBRATION_BINS} bins"));
        }
        let n = num_examples as u64;
        let sums = [
            self.confusion.iter().try_fold(0u64, |a, &b| a.checked_add(b)),
            self.positives.iter().chain(&self.negatives).try_fold(0u64, |a, &b| a.checked_add(b)),
        ];
        for s in sums {
            let Some(v) = s else { return Err("counts overflow".into()) };
            if v != 0 && v != n {
                return Err(format!("statistics count {v} examples but the reply says {num_examples}"));
            }
        }
        if self.count() != n {
            return Err(format!("statistics count {} examples but the reply says {num_examples}", self.count()));
        }
        let bad_bin = self.calibration.iter().any(|b| {
            !(b.confidence.is_finite() && b.confidence >= 0.0 && b.confidence <= b.count as f64 + 1e-6)
                || b.correct > b.count
        });
        if bad_bin || !(self.log_loss_sum.is_finite() && self.log_loss_sum >= 0.0) {
            return Err("calibration bins or log-loss out of range".into());
        }
        if let Some(r) = self.regression
            && !([r.sq_err, r.abs_err, r.y2].iter().all(|v| v.is_finite() && *v >= 0.0) && r.y.is_finite())
        {
            return Err("regression sums are not finite or negative".into());
        }
        Ok(())
    }
}

fn add(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.saturating_add(*y);
    }
}

/// Histograms of positive-class scores in [0, 1], for positive and negative examples.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreHistogram {
    /// Per bin: positive examples whose score falls in it.
    pub positives: Vec<u64>,
    /// Per bin: negative examples whose score falls in it.
    pub negatives: Vec<u64>,
}

impl ScoreHistogram {
    /// Empty, with `bins` equal bins over [0, 1].
    pub fn new(bins: usize) -> Self {
        ScoreHistogram { positives: vec![0; bins.max(1)], negatives: vec![0; bins.max(1)] }
    }

    /// Counts one example's score (clamped to [0, 1]; a NaN score is refused).
    pub fn add(&mut self, score: f64, positive: bool) -> Result<(), String> {
        if score.is_nan() {
            return Err("a NaN score cannot be binned".into());
        }
        let bins = self.positives.len();
        let b = ((score.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        if positive {
            self.positives[b] += 1;
        } else {
            self.negatives[b] += 1;
        }
        Ok(())
    }

    /// Adds another party's histogram (of the same bins).
    pub fn merge(&mut self, other: &ScoreHistogram) -> Result<(), String> {
        if other.positives.len() != self.positives.len() || other.negatives.len() != self.negatives.len() {
            return Err(format!(
                "histograms of {} and {} bins cannot be added",
                other.positives.len(),
                self.positives.len()
            ));
        }
        for (a, b) in self.positives.iter_mut().zip(&other.positives) {
            *a += b;
        }
        for (a, b) in self.negatives.iter_mut().zip(&other.negatives) {
            *a += b;
        }
        Ok(())
    }

    /// The area under the ROC curve: the probability that a random positive scores above a
    /// random negative, ties (same bin) counting half. `None` without both classes.
    pub fn auc(&self) -> Option<f64> {
        let p: u64 = self.positives.iter().sum();
        let n: u64 = self.negatives.iter().sum();
        if p == 0 || n == 0 {
            return None;
        }
        let mut below = 0u64;
        let mut wins = 0.0f64;
        for (pos, neg) in self.positives.iter().zip(&self.negatives) {
            wins += *pos as f64 * (below as f64 + 0.5 * *neg as f64);
            below += neg;
        }
        Some(wins / (p as f64 * n as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The exact AUC of pooled scores (Mann–Whitney, ties half).
    fn exact_auc(scores: &[(f64, bool)]) -> f64 {
        let pos: Vec<f64> = scores.iter().filter(|s| s.1).map(|s| s.0).collect();
        let neg: Vec<f64> = scores.iter().filter(|s| !s.1).map(|s| s.0).collect();
        let pair = |p: f64, n: f64| {
            if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            }
        };
        let wins: f64 = pos.iter().map(|&p| neg.iter().map(|&n| pair(p, n)).sum::<f64>()).sum();
        wins / (pos.len() * neg.len()) as f64
    }

    #[test]
    fn the_auc_of_merged_histograms_matches_the_exact_pooled_auc() {
        // Three hospitals of different sizes and prevalences; scores informative but noisy.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut pooled = Vec::new();
        let mut merged = ScoreHistogram::new(10_000);
        for (size, prevalence) in [(150usize, 0.2f64), (220, 0.45), (199, 0.6)] {
            let mut h = ScoreHistogram::new(10_000);
            for _ in 0..size {
                let positive = rng.random::<f64>() < prevalence;
                let score = (rng.random::<f64>() * 0.7 + if positive { 0.3 } else { 0.0 }).min(1.0);
                h.add(score, positive).unwrap();
                pooled.push((score, positive));
            }
            merged.merge(&h).unwrap();
        }
        let (got, want) = (merged.auc().unwrap(), exact_auc(&pooled));
        assert!((got - want).abs() < 1e-3, "histogram AUC {got} vs exact {want}");
        assert!(want > 0.7 && want < 0.95, "{want}");
        // Perfect separation and one class only.
        let mut h = ScoreHistogram::new(100);
        h.add(0.9, true).unwrap();
        h.add(0.1, false).unwrap();
        assert_eq!(h.auc(), Some(1.0));
        let mut one = ScoreHistogram::new(100);
        one.add(0.5, true).unwrap();
        assert_eq!(one.auc(), None);
        assert!(one.add(f64::NAN, true).is_err());
        assert!(one.merge(&ScoreHistogram::new(10)).is_err());
    }

    #[test]
    fn binary_metrics_match_hand_computed_values() {
        // Scores and labels: TP at 0.9 and 0.6, FN at 0.4, FP at 0.7, TN at 0.2 and 0.1.
        let scores = [0.9f32, 0.6, 0.4, 0.7, 0.2, 0.1];
        let labels = [1u32, 1, 1, 0, 0, 0];
        let st = EvalStats::from_scores(&scores, 1, Targets::Classes(&labels)).unwrap();
        let m = st.metrics();
        assert!((m["accuracy"] - 4.0 / 6.0).abs() < 1e-12);
        // Recall of class 1: 2/3, of class 0: 2/3.
        assert!((m["balanced_accuracy"] - 2.0 / 3.0).abs() < 1e-12);
        // F1 of class 1: 2·2 / (3 + 3).
        assert!((m["f1"] - 4.0 / 6.0).abs() < 1e-12);
        // AUC: of the 9 positive–negative pairs, 7 are ordered right (0.6 and 0.4 below 0.7).
        assert!((m["auc"] - 7.0 / 9.0).abs() < 1e-12, "{}", m["auc"]);
        let ll = -[0.9f64, 0.6, 0.4, 0.3, 0.8, 0.9].iter().map(|p| p.ln()).sum::<f64>() / 6.0;
        assert!((m["log_loss"] - ll).abs() < 1e-6, "{} vs {ll}", m["log_loss"]);
        // Confidences 0.9 0.6 0.6 0.7 0.8 0.9 (right, right, wrong, wrong, right, right). The
        // two 0.6 fall in neighbouring bins (0.6 and 1 − 0.4 round apart in f32); the two 0.9
        // share one and are both right, which sums as if apart: ECE is the mean
        // |confidence − right| = (0.1 + 0.4 + 0.6 + 0.7 + 0.2 + 0.1) / 6.
        let ece = [0.1f64, 0.4, 0.6, 0.7, 0.2, 0.1].iter().sum::<f64>() / 6.0;
        assert!((m["ece"] - ece).abs() < 1e-6, "{} vs {ece}", m["ece"]);
    }

    #[test]
    fn merged_party_statistics_equal_the_pooled_statistics() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Multiclass probabilities, three parties.
        let rows: Vec<([f32; 3], u32)> = (0..300)
            .map(|_| {
                let a: [f32; 3] = [rng.random(), rng.random(), rng.random()];
                let s: f32 = a.iter().sum();
                (a.map(|v| v / s), rng.random_range(0..3u32))
            })
            .collect();
        let stats = |rows: &[([f32; 3], u32)]| {
            let scores: Vec<f32> = rows.iter().flat_map(|r| r.0).collect();
            let labels: Vec<u32> = rows.iter().map(|r| r.1).collect();
            EvalStats::from_scores(&scores, 3, Targets::Classes(&labels)).unwrap()
        };
        let mut merged = EvalStats::default();
        for part in [&rows[..50], &rows[50..170], &rows[170..]] {
            merged.merge(&stats(part)).unwrap();
        }
        let pooled = stats(&rows);
        for (k, v) in pooled.metrics() {
            assert!((merged.metrics()[&k] - v).abs() < 1e-9, "{k}");
        }
        assert!(merged.check(300).is_ok());
        assert!(merged.check(299).unwrap_err().contains("300"));
        // Regression: RMSE, MAE and R² of the pooled set.
        let pred: Vec<f32> = (0..200).map(|i| i as f32 * 0.1).collect();
        let y: Vec<f32> = pred.iter().map(|p| p + rng.random_range(-1.0f32..1.0)).collect();
        let mut merged = EvalStats::default();
        for r in [0..80, 80..200] {
            merged.merge(&EvalStats::from_scores(&pred[r.clone()], 1, Targets::Values(&y[r])).unwrap()).unwrap();
        }
        let m = merged.metrics();
        let mean = y.iter().map(|v| *v as f64).sum::<f64>() / 200.0;
        let sse: f64 = pred.iter().zip(&y).map(|(p, v)| (*p as f64 - *v as f64).powi(2)).sum();
        let sst: f64 = y.iter().map(|v| (*v as f64 - mean).powi(2)).sum();
        assert!((m["r2"] - (1.0 - sse / sst)).abs() < 1e-9);
        assert!((m["rmse"] - (sse / 200.0).sqrt()).abs() < 1e-9);
        // Statistics of different tasks do not add up.
        assert!(merged.merge(&pooled).is_err());
    }
}
