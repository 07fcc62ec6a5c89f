//! The Synthetic(α, β) federated dataset of the FedProx paper (Li et al. 2020, §5.1), as its
//! reference generator draws it: for each of `devices` devices,
//!
//! - examples ⌊lognormal(4, 2)⌋ + 50;
//! - u_k ~ N(0, α²); W_k (classes × features) and b_k ~ N(u_k, 1) elementwise;
//! - B_k ~ N(0, β²); v_k ~ N(B_k, 1) per feature;
//! - x ~ N(v_k, diag(j^−1.2)), j = 1..features; y = argmax(W_k x + b_k);
//! - the first 90 % of each device's examples for training, the rest for testing.
//!
//! α controls how much the local models differ, β how much the local inputs differ;
//! (0, 0) is the least and (1, 1) the most heterogeneous setting of the paper. α and β are
//! standard deviations, as in the reference code. Every device is one key, so the natural
//! partition gives each party one device.

use rand::Rng;
use rand_distr::{Distribution, LogNormal, Normal, StandardNormal};

use crate::{DataError, Dataset, TrainTest};

/// Settings of Synthetic(α, β).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticConfig {
    /// α: spread of the devices' model means.
    pub alpha: f64,
    /// β: spread of the devices' input means.
    pub beta: f64,
    /// Devices (30 in the paper).
    pub devices: usize,
    /// Features (60).
    pub features: usize,
    /// Classes (10).
    pub classes: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig { alpha: 1.0, beta: 1.0, devices: 30, features: 60, classes: 10 }
    }
}

/// A generated federated dataset: the pooled train and test sets plus the device of every
/// example (the key of the natural partition).
#[derive(Debug, Clone)]
pub struct Keyed {
    /// Pooled examples.
    pub data: TrainTest,
    /// Device of each training example.
    pub train_keys: Vec<u64>,
    /// Device of each test example.
    pub test_keys: Vec<u64>,
}

/// Draws Synthetic(α, β) from `rng`.
pub fn synthetic<R: Rng>(cfg: &SyntheticConfig, rng: &mut R) -> Result<Keyed, DataError> {
    let bad = |m: String| Err(DataError::Partition(m));
    if !(cfg.alpha >= 0.0 && cfg.alpha.is_finite() && cfg.beta >= 0.0 && cfg.beta.is_finite()) {
        return bad(format!("synthetic α = {} and β = {} must be ≥ 0", cfg.alpha, cfg.beta));
    }
    if cfg.devices == 0 || cfg.features == 0 || cfg.classes < 2 {
        return bad("synthetic data needs ≥ 1 device, ≥ 1 feature and ≥ 2 classes".into());
    }
    let (d, c) = (cfg.features, cfg.classes);
    let sizes = LogNormal::new(4.0, 2.0).map_err(|e| DataError::Partition(e.to_string()))?;
    let normal = |mean: f64, sd: f64| Normal::new(mean, sd).map_err(|e| DataError::Partition(e.to_string()));
    let sd_x: Vec<f64> = (1..=d).map(|j| (j as f64).powf(-1.2).sqrt()).collect();
    // The reference generator caps nothing; ⌊lognormal(4, 2)⌋ has a long tail. A cap keeps
    // memory bounded on unlucky draws without changing typical ones.
    const MAX_PER_DEVICE: usize = 100_000;
    let counts: Vec<usize> = (0..cfg.devices).map(|_| (sizes.sample(rng) as usize).min(MAX_PER_DEVICE) + 50).collect();
    let (mut train, mut test) = (empty(d, c), empty(d, c));
    let (mut train_keys, mut test_keys) = (Vec::new(), Vec::new());
    for (k, &n) in counts.iter().enumerate() {
        let u = normal(0.0, cfg.alpha)?.sample(rng);
        let bk = normal(0.0, cfg.beta)?.sample(rng);
        let w: Vec<f64> = (0..c * d)
            .map(|_| {
                u + {
                    let z: f64 = StandardNormal.sample(rng);
                    z
                }
            })
            .collect();
        let b: Vec<f64> = (0..c)
            .map(|_| {
                u + {
                    let z: f64 = StandardNormal.sample(rng);
                    z
                }
            })
            .collect();
        let v: Vec<f64> = (0..d)
            .map(|_| {
                bk + {
                    let z: f64 = StandardNormal.sample(rng);
                    z
                }
            })
            .collect();
        let n_train = (n as f64 * 0.9) as usize;
        for i in 0..n {
            let x: Vec<f64> = (0..d)
                .map(|j| {
                    v[j] + sd_x[j] * {
                        let z: f64 = StandardNormal.sample(rng);
                        z
                    }
                })
                .collect();
            let mut best = (0usize, f64::NEG_INFINITY);
            for class in 0..c {
                let z = b[class] + (0..d).map(|j| w[class * d + j] * x[j]).sum::<f64>();
                if z > best.1 {
                    best = (class, z);
                }
            }
            let (set, keys) = if i < n_train { (&mut train, &mut train_keys) } else { (&mut test, &mut test_keys) };
            set.x.extend(x.iter().map(|&v| v as f32));
            set.y.push(best.0 as u32);
            keys.push(k as u64);
        }
    }
    Ok(Keyed { data: TrainTest { train, test }, train_keys, test_keys })
}

fn empty(d: usize, c: usize) -> Dataset {
    Dataset::classification(Vec::new(), Vec::new(), [1, 1, d], c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shapes_sizes_and_heterogeneity() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = synthetic(&SyntheticConfig::default(), &mut rng).unwrap();
        let (tr, te) = (&s.data.train, &s.data.test);
        assert_eq!(tr.dims, [1, 1, 60]);
        assert_eq!(tr.x.len(), tr.len() * 60);
        assert_eq!((s.train_keys.len(), s.test_keys.len()), (tr.len(), te.len()));
        // Every device has at least 50 examples, 90 % of them for training.
        for k in 0..30u64 {
            let n_tr = s.train_keys.iter().filter(|&&x| x == k).count();
            let n_te = s.test_keys.iter().filter(|&&x| x == k).count();
            assert!(n_tr + n_te >= 50, "device {k}: {n_tr} + {n_te}");
            assert_eq!(n_tr, ((n_tr + n_te) as f64 * 0.9) as usize);
        }
        // Labels differ between devices (each device has its own model).
        let top = |k: u64| {
            let mut c = [0usize; 10];
            for (y, _) in tr.y.iter().zip(&s.train_keys).filter(|(_, x)| **x == k) {
                c[*y as usize] += 1;
            }
            (0..10).max_by_key(|&i| c[i]).unwrap()
        };
        assert!((0..30).map(top).collect::<std::collections::BTreeSet<_>>().len() > 1);
        // Same seed, same data.
        let again = synthetic(&SyntheticConfig::default(), &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!(again.data.train, s.data.train);
        assert!(synthetic(&SyntheticConfig { alpha: -1.0, ..Default::default() }, &mut rng).is_err());
    }
}
