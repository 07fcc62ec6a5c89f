//! Robust aggregation: combining the parties' models so that a few malicious (Byzantine)
//! parties cannot steer the result. The example-weighted mean that FedAvg uses follows any
//! single party that sends a large enough vector; these rules bound what `f` of `n` parties
//! can do:
//!
//! - coordinate-wise **median** (Yin et al. 2018): each value is the median of the parties'
//!   values, so fewer than half the parties cannot move it outside the honest range;
//! - coordinate-wise **trimmed mean** (Yin et al. 2018): drop the ⌊βn⌋ largest and smallest
//!   values of each coordinate and average the rest; tolerates up to ⌊βn⌋ attackers;
//! - **Krum** / **multi-Krum** (Blanchard et al. 2017): score each model by the summed squared
//!   distance to its n − f − 2 nearest neighbours and keep the m best-scored (m = 1: Krum),
//!   averaged by example count; needs n > 2f + 2.
//!
//! Written here because no maintained Rust crate implements these rules over flat f32
//! model vectors; each is a few dozen lines over `select_nth_unstable_by`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::messages::FitReply;
use crate::messages::StrategyError;

/// How the server combines the parties' models.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Aggregator {
    /// Σ_k (n_k / n) θ_k (FedAvg).
    #[default]
    Mean,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise mean after dropping the `trim` fraction of largest and of smallest
    /// values, `trim` in [0, 0.5).
    TrimmedMean {
        /// Fraction trimmed from each end.
        trim: f64,
    },
    /// Multi-Krum: keep the `select` models closest to their neighbours, assuming at most
    /// `byzantine` attackers, and average them by example count (`select` = 1: Krum).
    Krum {
        /// Attackers tolerated (f).
        byzantine: usize,
        /// Models kept (m ≥ 1).
        select: usize,
    },
}

impl Aggregator {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), StrategyError> {
        match *self {
            Aggregator::TrimmedMean { trim } if !(0.0..0.5).contains(&trim) => {
                Err(StrategyError::Config(format!("strategy.trim = {trim} must be in [0, 0.5)")))
            }
            Aggregator::Krum { select: 0, .. } => {
                Err(StrategyError::Config("strategy.krum_select must be at least 1".into()))
            }
            _ => Ok(()),
        }
    }

    /// A short name for records and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Aggregator::Mean => "mean",
            Aggregator::Median => "median",
            Aggregator::TrimmedMean { .. } => "trimmed-mean",
            Aggregator::Krum { .. } => "krum",
        }
    }

    /// Combines `replies` (all of the model's length) into one model. `None` when there are
    /// no replies or none carries examples.
    pub fn combine(&self, replies: &[&FitReply]) -> Result<Option<Vec<f32>>, StrategyError> {
        if replies.is_empty() {
            return Ok(None);
        }
        let len = replies[0].params.len();
        Ok(match *self {
            Aggregator::Mean => weighted_mean(replies, len),
            Aggregator::Median => Some(coordinate_wise(replies, len, median)),
            Aggregator::TrimmedMean { trim } => {
                let cut = (trim * replies.len() as f64).floor() as usize;
                Some(coordinate_wise(replies, len, |v| trimmed_mean(v, cut)))
            }
            Aggregator::Krum { byzantine, select } => {
                let n = replies.len();
                if n <= 2 * byzantine + 2 {
                    return Err(StrategyError::Config(format!(
                        "Krum with strategy.byzantine = {byzantine} needs more than {} replies, got {n}: train \
                         more parties per round or lower strategy.byzantine",
                        2 * byzantine + 2
                    )));
                }
                let kept: Vec<&FitReply> =
                    krum_select(replies, byzantine, select.min(n)).into_iter().map(|i| replies[i]).collect();
                weighted_mean(&kept, len)
            }
        })
    }
}

/// Refuses a robust rule for `strategy`, which combines its parties' replies its own way.
pub(crate) fn mean_only(aggregator: Aggregator, strategy: &str) -> Result<(), StrategyError> {
    if aggregator == Aggregator::Mean {
        return Ok(());
    }
    Err(StrategyError::Config(format!(
        "strategy.aggregator = \"{}\" does not apply to {strategy}, which combines the replies its own way: use \
         \"mean\"",
        aggregator.name()
    )))
}

fn weighted_mean(replies: &[&FitReply], len: usize) -> Option<Vec<f32>> {
    let mut acc = vec![0.0f64; len];
    // In f64: a sum of reported counts cannot overflow.
    let mut total = 0.0f64;
    for r in replies {
        let w = r.num_examples as f64;
        for (a, v) in acc.iter_mut().zip(&r.params) {
            *a += w * *v as f64;
        }
        total += w;
    }
    if total == 0.0 {
        return None;
    }
    let inv = 1.0 / total;
    Some(acc.iter().map(|a| (a * inv) as f32).collect())
}

/// Applies `f` to each coordinate's values across the replies, in blocks of coordinates
/// spread over the rayon pool (each coordinate on its own, so the result does not depend on
/// the number of threads).
fn coordinate_wise(replies: &[&FitReply], len: usize, f: impl Fn(&mut [f32]) -> f32 + Sync) -> Vec<f32> {
    const BLOCK: usize = 8192;
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, chunk)| {
        let start = b * BLOCK;
        let mut column = vec![0.0f32; replies.len()];
        for (j, o) in chunk.iter_mut().enumerate() {
            for (c, r) in column.iter_mut().zip(replies) {
                *c = r.params[start + j];
            }
            *o = f(&mut column);
        }
    });
    out
}

/// The median of `v` (the mean of the two middle values when their number is even).
fn median(v: &mut [f32]) -> f32 {
    let n = v.len();
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, f32::total_cmp);
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ((lo as f64 + hi as f64) / 2.0) as f32
}

/// The mean of `v` without its `cut` smallest and `cut` largest values.
fn trimmed_mean(v: &mut [f32], cut: usize) -> f32 {
    let n = v.len();
    let cut = cut.min((n - 1) / 2);
    v.sort_unstable_by(f32::total_cmp);
    let kept = &v[cut..n - cut];
    (kept.iter().map(|&x| x as f64).sum::<f64>() / kept.len() as f64) as f32
}

/// Indices of the `select` replies with the lowest Krum scores (ties to the lower index).
fn krum_select(replies: &[&FitReply], byzantine: usize, select: usize) -> Vec<usize> {
    let n = replies.len();
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).collect();
    // Squared distances: f32 partial sums over short runs (vectorised), added up in f64.
    let d2: Vec<f64> = pairs
        .par_iter()
        .map(|&(i, j)| {
            replies[i]
                .params
                .chunks(64)
                .zip(replies[j].params.chunks(64))
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() as f64)
                .sum()
        })
        .collect();
    let mut dist = vec![0.0f64; n * n];
    for (&(i, j), &d) in pairs.iter().zip(&d2) {
        dist[i * n + j] = d;
        dist[j * n + i] = d;
    }
    let neighbours = n - byzantine - 2;
    let mut scores: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i * n + j]).collect();
            row.sort_unstable_by(f64::total_cmp);
            (row[..neighbours].iter().sum(), i)
        })
        .collect();
    scores.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scores.into_iter().take(select).map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(params: Vec<f32>, n: usize) -> FitReply {
        FitReply { params, num_examples: n, ..Default::default() }
    }

    #[test]
    fn median_and_trimmed_mean_ignore_the_outliers() {
        let r: Vec<FitReply> = [1.0, 2.0, 3.0, 4.0, 1000.0].iter().map(|&v| reply(vec![v, -v], 10)).collect();
        let refs: Vec<&FitReply> = r.iter().collect();
        assert_eq!(Aggregator::Median.combine(&refs).unwrap(), Some(vec![3.0, -3.0]));
        let t = Aggregator::TrimmedMean { trim: 0.2 }.combine(&refs).unwrap().unwrap();
        assert_eq!(t, vec![3.0, -3.0]);
        // An even count: the mean of the middle two.
        assert_eq!(Aggregator::Median.combine(&refs[..4]).unwrap(), Some(vec![2.5, -2.5]));
        // The mean follows the outlier.
        let m = Aggregator::Mean.combine(&refs).unwrap().unwrap();
        assert_eq!(m, vec![202.0, -202.0]);
    }

    #[test]
    fn krum_keeps_the_clustered_models_and_weights_them_by_examples() {
        let mut r: Vec<FitReply> = (0..5).map(|i| reply(vec![i as f32 * 0.1, 1.0], 10 + i)).collect();
        r.push(reply(vec![50.0, -50.0], 1000));
        r.push(reply(vec![-50.0, 50.0], 1000));
        let refs: Vec<&FitReply> = r.iter().collect();
        let k = Aggregator::Krum { byzantine: 2, select: 1 }.combine(&refs).unwrap().unwrap();
        assert_eq!(k, vec![0.2, 1.0], "Krum picks the most central honest model");
        let mk = Aggregator::Krum { byzantine: 2, select: 3 }.combine(&refs).unwrap().unwrap();
        let want = (0.1 * 11.0 + 0.2 * 12.0 + 0.3 * 13.0) / 36.0;
        assert!((mk[0] - want as f32).abs() < 1e-6 && mk[1] == 1.0, "{mk:?}");
        // Too few replies for the assumed attackers is an error naming the setting.
        let e = Aggregator::Krum { byzantine: 3, select: 1 }.combine(&refs).unwrap_err().to_string();
        assert!(e.contains("strategy.byzantine"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Aggregator::TrimmedMean { trim: 0.5 }.validate().is_err());
        assert!(Aggregator::Krum { byzantine: 1, select: 0 }.validate().is_err());
        assert!(Aggregator::Median.validate().is_ok());
    }
}
