//! Federated classification metrics from histograms: each party bins the scores of its own
//! test examples (the model's probability of the positive class) separately for positives
//! and negatives; the server adds the histograms and reads the AUC off them. No per-example
//! score leaves a party, and the result is exact up to the bin resolution: pairs whose
//! scores fall in the same bin count as ties (half), so with B bins the AUC is off by at most
//! half the fraction of positive–negative pairs sharing a bin.
//!
//! Not yet wired into a round: the binary task of the bring-your-own-data issue reports
//! these histograms in its evaluation replies.

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
}
