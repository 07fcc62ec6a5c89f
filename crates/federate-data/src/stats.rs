//! Federated preprocessing statistics: per-feature counts, sums and sums of squares that
//! parties compute on their own rows and the server adds up — the only form secure
//! aggregation can combine, and enough for standardisation (z-scores) and min-max scaling
//! without pooling a row. Sums are kept in f64; the variance is E[x²] − mean², whose rounding
//! error is about ε·mean²/variance relative (10⁻¹⁴ for a feature of mean 1,000 and standard
//! deviation 100), far below what training can see.
//!
//! A missing value (NaN) is left out of its feature's statistics and, when the rows are
//! scaled, replaced by the federation's mean of that feature (mean imputation).

/// One party's (or the federation's) statistics of `d` features.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    /// Rows counted.
    pub count: u64,
    /// Per feature: values present (rows minus missing values).
    pub present: Vec<u64>,
    /// Per feature: Σ x.
    pub sum: Vec<f64>,
    /// Per feature: Σ x².
    pub sum_sq: Vec<f64>,
    /// Per feature: the smallest value seen (+∞ before any row).
    pub min: Vec<f64>,
    /// Per feature: the largest value seen (−∞ before any row).
    pub max: Vec<f64>,
}

impl Moments {
    /// No rows yet, `d` features.
    pub fn new(d: usize) -> Self {
        Moments {
            count: 0,
            present: vec![0; d],
            sum: vec![0.0; d],
            sum_sq: vec![0.0; d],
            min: vec![f64::INFINITY; d],
            max: vec![f64::NEG_INFINITY; d],
        }
    }

    /// The statistics of `rows` (row-major, `d` values each).
    pub fn of(rows: &[f32], d: usize) -> Self {
        let mut m = Moments::new(d);
        for row in rows.chunks_exact(d.max(1)) {
            m.count += 1;
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                let v = v as f64;
                m.present[j] += 1;
                m.sum[j] += v;
                m.sum_sq[j] += v * v;
                m.min[j] = m.min[j].min(v);
                m.max[j] = m.max[j].max(v);
            }
        }
        m
    }

    /// Adds another party's statistics (of the same features).
    pub fn merge(&mut self, other: &Moments) -> Result<(), String> {
        if other.sum.len() != self.sum.len() {
            return Err(format!("statistics of {} features cannot be added to {}", other.sum.len(), self.sum.len()));
        }
        self.count += other.count;
        for j in 0..self.sum.len() {
            self.present[j] += other.present[j];
            self.sum[j] += other.sum[j];
            self.sum_sq[j] += other.sum_sq[j];
            self.min[j] = self.min[j].min(other.min[j]);
            self.max[j] = self.max[j].max(other.max[j]);
        }
        Ok(())
    }

    /// Per feature: the mean and the (population) standard deviation.
    pub fn mean_std(&self) -> Vec<(f64, f64)> {
        (0..self.sum.len()).map(|j| self.column_mean_std(j)).collect()
    }

    /// Feature `j`'s mean and (population) standard deviation.
    pub fn column_mean_std(&self, j: usize) -> (f64, f64) {
        let n = self.present[j].max(1) as f64;
        let mean = self.sum[j] / n;
        (mean, (self.sum_sq[j] / n - mean * mean).max(0.0).sqrt())
    }

    /// Standardises `rows` in place to zero mean and unit variance per feature (a constant
    /// feature, and a missing value, become 0: the mean).
    pub fn standardise(&self, rows: &mut [f32]) {
        let ms = self.mean_std();
        for row in rows.chunks_exact_mut(ms.len().max(1)) {
            for (v, (mean, std)) in row.iter_mut().zip(&ms) {
                *v = if *std > 0.0 && !v.is_nan() { ((*v as f64 - mean) / std) as f32 } else { 0.0 };
            }
        }
    }

    /// Scales `rows` in place to [0, 1] per feature by the minimum and maximum (a constant
    /// feature becomes 0; a missing value the scaled mean).
    pub fn min_max(&self, rows: &mut [f32]) {
        let d = self.min.len().max(1);
        let means: Vec<f64> = self.mean_std().into_iter().map(|(m, _)| m).collect();
        for row in rows.chunks_exact_mut(d) {
            for (((v, lo), hi), mean) in row.iter_mut().zip(&self.min).zip(&self.max).zip(&means) {
                let span = hi - lo;
                let x = if v.is_nan() { *mean } else { *v as f64 };
                *v = if span > 0.0 { ((x - lo) / span) as f32 } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn statistics_added_across_parties_equal_the_pooled_ones() {
        // Features of very different scales, like a clinical table (areas in the 1,000s,
        // ratios near 0.1), split unevenly over three parties.
        let d = 4;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let scales = [(1000.0f32, 300.0f32), (0.1, 0.02), (-5.0, 2.0), (20.0, 0.0)];
        let rows: Vec<f32> = (0..569 * d)
            .map(|i| {
                let (mean, sd) = scales[i % d];
                mean + sd * (rng.random::<f32>() - 0.5) * 3.0
            })
            .collect();
        let cuts = [0, 100 * d, 350 * d, rows.len()];
        let mut merged = Moments::new(d);
        for w in cuts.windows(2) {
            merged.merge(&Moments::of(&rows[w[0]..w[1]], d)).unwrap();
        }
        // Pooled, two-pass.
        let n = 569.0;
        for (j, (mean, std)) in merged.mean_std().into_iter().enumerate() {
            let col: Vec<f64> = rows.iter().skip(j).step_by(d).map(|&v| v as f64).collect();
            let m = col.iter().sum::<f64>() / n;
            let s = (col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
            assert!((mean - m).abs() <= 1e-9 * m.abs().max(1.0), "feature {j}: mean {mean} vs {m}");
            assert!((std - s).abs() <= 1e-9 * s.max(1e-12), "feature {j}: std {std} vs {s}");
        }
        // Standardising with the federation's statistics equals standardising the pool.
        let mut fed = rows.clone();
        merged.standardise(&mut fed);
        let mut pooled = rows.clone();
        Moments::of(&rows, d).standardise(&mut pooled);
        let worst = fed.iter().zip(&pooled).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "largest difference {worst}");
        assert!(fed.iter().skip(3).step_by(d).all(|&v| v == 0.0), "a constant feature becomes 0");
        let mut mm = rows.clone();
        merged.min_max(&mut mm);
        assert!(mm.iter().enumerate().all(|(i, &v)| i % d == 3 || (0.0..=1.0).contains(&v)));
        assert!(merged.merge(&Moments::new(3)).is_err());
        // A missing value is left out of the statistics and imputed with the mean.
        let mut rows = vec![1.0f32, 10.0, f32::NAN, 20.0, 3.0, f32::NAN];
        let m = Moments::of(&rows, 2);
        assert_eq!(m.present, vec![2, 2]);
        assert_eq!(m.mean_std()[0], (2.0, 1.0));
        m.standardise(&mut rows);
        assert_eq!(rows, vec![-1.0, -1.0, 0.0, 1.0, 1.0, 0.0]);
    }
}
