//! Splitting a federation's data across its parties, from the run's seed: each party's
//! training and test sets under the configured partition.

use std::sync::Arc;

use anyhow::{Context, Result};
use federate_core::seed;
use federate_data::{Dataset, Examples, TrainTest, partition};

use crate::config::{Config, PartitionKind, TestPartition};

/// One party's data (shared with the party a simulation builds from it: one copy).
pub struct PartyData {
    /// Identity.
    pub id: String,
    /// Training examples.
    pub train: Arc<Dataset>,
    /// Test examples.
    pub test: Arc<Dataset>,
}

/// Synthetic(α, β) as configured, from the run's seed.
pub(crate) fn synthetic(cfg: &Config) -> Result<federate_data::synthetic::Keyed> {
    let d = &cfg.data;
    let sc = federate_data::synthetic::SyntheticConfig {
        alpha: d.synthetic_alpha(),
        beta: d.synthetic_beta(),
        devices: d.synthetic_devices(),
        ..Default::default()
    };
    Ok(federate_data::synthetic::synthetic(&sc, &mut seed::stream(cfg.seed, seed::Stream::Synthetic, &[]))?)
}

/// Splits the data across parties as configured, from the run's partition stream.
pub fn split(cfg: &Config, data: &TrainTest) -> Result<Vec<PartyData>> {
    split_sets(cfg, &data.train, &data.test)
}

/// [`split`] of any training and test sets: a partition reads only their sizes and labels,
/// and each party's examples are taken from them (images converted from bytes only then).
pub fn split_sets<T: Examples>(cfg: &Config, train: &T, test: &T) -> Result<Vec<PartyData>> {
    let d = &cfg.data;
    let k = d.parties;
    let mut rng = seed::stream(cfg.seed, seed::Stream::Partition, &[]);
    let (train_parts, test_parts) = match d.partition {
        PartitionKind::WorkedExample => (
            partition::disjoint_sample(train.count(), k, d.train_per_party(), &mut rng)
                .context("data.train_per_party")?,
            partition::disjoint_sample(test.count(), k, d.test_per_party(), &mut rng).context("data.test_per_party")?,
        ),
        PartitionKind::Iid => (partition::iid(train.count(), k, &mut rng)?, partition::iid(test.count(), k, &mut rng)?),
        PartitionKind::Dirichlet | PartitionKind::Shards | PartitionKind::QuantitySkew => {
            let parts = match d.partition {
                PartitionKind::Dirichlet => {
                    partition::dirichlet(train.labels(), train.class_count(), k, d.alpha(), 10, &mut rng)?
                }
                PartitionKind::Shards => partition::shards(train.labels(), k, d.shards_per_party(), &mut rng)?,
                _ => partition::quantity_skew(train.count(), k, d.quantity_sigma(), 10, &mut rng)?,
            };
            // Each party is evaluated on its own distribution unless the config asks for IID
            // (regression targets have no classes to follow: IID).
            let test_parts = match d.test_partition.unwrap_or(TestPartition::LikeTrain) {
                _ if test.class_count() == 0 => partition::iid(test.count(), k, &mut rng)?,
                TestPartition::Iid => partition::iid(test.count(), k, &mut rng)?,
                TestPartition::LikeTrain => {
                    partition::like_train(&parts, train.labels(), test.labels(), train.class_count(), &mut rng)?
                }
            };
            (parts, test_parts)
        }
        PartitionKind::Natural => {
            let keyed = synthetic(cfg)?;
            (partition::by_key(&keyed.train_keys), partition::by_key(&keyed.test_keys))
        }
    };
    Ok(train_parts
        .iter()
        .zip(&test_parts)
        .enumerate()
        .map(|(i, (tr, te))| PartyData {
            id: format!("party-{}", i + 1),
            train: Arc::new(train.take(tr)),
            test: Arc::new(test.take(te)),
        })
        .collect())
}
