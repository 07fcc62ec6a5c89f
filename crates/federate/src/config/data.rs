//! The `[data]` section: which data, where it comes from (a built-in dataset, a table file
//! under a schema, or one source per party), and how it is split across parties.

use std::path::PathBuf;

use federate_data::table::Schema;
use serde::{Deserialize, Serialize};

/// How data is split across parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// Each party gets `train_per_party` training and `test_per_party` test examples drawn
    /// without replacement (the worked example).
    WorkedExample,
    /// The whole training set dealt IID.
    Iid,
    /// Dirichlet(α) label skew.
    Dirichlet,
    /// McMahan et al.'s label-sorted shards.
    Shards,
    /// Lognormal party sizes (σ = `quantity_sigma`), examples dealt IID.
    QuantitySkew,
    /// One party per natural key: the device of Synthetic(α, β), or the value of a table's
    /// `partition_column` (a hospital id).
    Natural,
}

/// How the test set is split under a non-IID partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestPartition {
    /// Each party's test examples follow its own training labels and size (the default).
    LikeTrain,
    /// Every party gets an IID slice of the test set, whatever its training data.
    Iid,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist`, `fashion-mnist`, `synthetic` (FedProx's Synthetic(α, β)), the built-in tables
    /// `breast-cancer` and `diabetes`, or `table` (a file: `path`, or one per party:
    /// `[[data.sources]]`).
    pub dataset: String,
    /// `dataset = "table"`: the table file (CSV), split across the parties; `dataset =
    /// "images"`: the image folder (class subdirectories, or `train/` and `test/` holding them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `dataset = "images"`: the shape images are brought to and the class names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesConfig>,
    /// Tables: how columns become examples (built-in tables have a default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Schema>,
    /// Tables: the fraction of rows held out for testing, stratified by class (default 0.25).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// Tables under `partition = "natural"`: the column whose value names a row's party.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_column: Option<String>,
    /// `dataset = "table"`: one source per party, in party order (a rehearsal of a real
    /// federation from its real files). Each party's rows are split into train and test by
    /// `test_fraction` unless it names its own test file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<PartySource>,
    /// The partitioner.
    pub partition: PartitionKind,
    /// Number of parties.
    pub parties: usize,
    /// Training examples per party (worked-example partition only; default 2,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_per_party: Option<usize>,
    /// Test examples per party (worked-example partition only; default 500).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_per_party: Option<usize>,
    /// Dirichlet concentration α (dirichlet partition only; default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Shards per party (shards partition only; default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards_per_party: Option<usize>,
    /// How the test set is split under `dirichlet`, `shards` and `quantity-skew`:
    /// `like-train` (default: each party is evaluated on its own distribution) or `iid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_partition: Option<TestPartition>,
    /// A directory already holding the IDX files (tried before any download).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Cache directory (default: $FEDERATE_CACHE_DIR, else the user's cache directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Never download, run npm or apt-get: use only the cache, `data_dir` and system packages.
    pub offline: bool,
    /// Quantity-skew partition: σ of the lognormal party sizes (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity_sigma: Option<f64>,
    /// Synthetic(α, β): α (model heterogeneity; dataset = "synthetic" only; default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic_alpha: Option<f64>,
    /// Synthetic(α, β): β (input heterogeneity; default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic_beta: Option<f64>,
    /// Synthetic(α, β): devices generated (default 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic_devices: Option<usize>,
}

impl DataConfig {
    /// Training examples per party under the worked-example partition.
    pub fn train_per_party(&self) -> usize {
        self.train_per_party.unwrap_or(2000)
    }
    /// Test examples per party under the worked-example partition.
    pub fn test_per_party(&self) -> usize {
        self.test_per_party.unwrap_or(500)
    }
    /// The Dirichlet concentration α.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(0.5)
    }
    /// Shards per party.
    pub fn shards_per_party(&self) -> usize {
        self.shards_per_party.unwrap_or(2)
    }
    /// σ of the lognormal party sizes.
    pub fn quantity_sigma(&self) -> f64 {
        self.quantity_sigma.unwrap_or(1.0)
    }
    /// Synthetic(α, β)'s α.
    pub fn synthetic_alpha(&self) -> f64 {
        self.synthetic_alpha.unwrap_or(1.0)
    }
    /// Synthetic(α, β)'s β.
    pub fn synthetic_beta(&self) -> f64 {
        self.synthetic_beta.unwrap_or(1.0)
    }
    /// Synthetic(α, β)'s devices.
    pub fn synthetic_devices(&self) -> usize {
        self.synthetic_devices.unwrap_or(30)
    }
    /// Tables: the held-out fraction.
    pub fn test_fraction(&self) -> f64 {
        self.test_fraction.unwrap_or(0.25)
    }
    /// Whether the data is a table (built-in or a file).
    pub fn is_table(&self) -> bool {
        self.dataset == "table" || federate_data::tables::TABLES.contains(&self.dataset.as_str())
    }
    /// The schema tables are read with: the config's, else the built-in table's.
    pub fn table_schema(&self) -> Option<Schema> {
        self.schema.clone().or_else(|| federate_data::tables::default_schema(&self.dataset))
    }

    /// The first key set that the chosen partition or dataset does not read, with who
    /// reads it: a value silently ignored would make a run differ from what its config says.
    pub fn ignored_key(&self) -> Option<(&'static str, &'static str)> {
        let p = self.partition;
        let keys: [(&str, bool, PartitionKind, &str); 5] = [
            ("train_per_party", self.train_per_party.is_some(), PartitionKind::WorkedExample, "worked-example"),
            ("test_per_party", self.test_per_party.is_some(), PartitionKind::WorkedExample, "worked-example"),
            ("alpha", self.alpha.is_some(), PartitionKind::Dirichlet, "dirichlet"),
            ("shards_per_party", self.shards_per_party.is_some(), PartitionKind::Shards, "shards"),
            ("quantity_sigma", self.quantity_sigma.is_some(), PartitionKind::QuantitySkew, "quantity-skew"),
        ];
        if let Some((key, _, _, reader)) = keys.into_iter().find(|(_, set, reads, _)| *set && *reads != p) {
            return Some((key, reader));
        }
        let skewed = matches!(p, PartitionKind::Dirichlet | PartitionKind::Shards | PartitionKind::QuantitySkew);
        if self.test_partition.is_some() && !skewed {
            return Some(("test_partition", "dirichlet, shards and quantity-skew"));
        }
        let table = self.is_table();
        let own = [
            (
                "path",
                self.path.is_some() && !(self.dataset == "table" || self.dataset == "images"),
                "dataset = \"table\" or \"images\"",
            ),
            ("images", self.images.is_some() && self.dataset != "images", "dataset = \"images\""),
            ("sources", !self.sources.is_empty() && self.dataset != "table", "dataset = \"table\""),
            ("schema", self.schema.is_some() && !table, "table datasets"),
            (
                "test_fraction",
                self.test_fraction.is_some() && !table && self.dataset != "images",
                "tables and image folders",
            ),
            (
                "partition_column",
                self.partition_column.is_some() && !(table && p == PartitionKind::Natural),
                "partition = \"natural\" of a table",
            ),
        ];
        if let Some((key, _, reader)) = own.into_iter().find(|(_, ignored, _)| *ignored) {
            return Some((key, reader));
        }
        let synthetic =
            [self.synthetic_alpha.is_some(), self.synthetic_beta.is_some(), self.synthetic_devices.is_some()];
        if self.dataset != "synthetic" && synthetic.iter().any(|&s| s) {
            let key = ["synthetic_alpha", "synthetic_beta", "synthetic_devices"][synthetic.iter().position(|&s| s)?];
            return Some((key, "dataset = \"synthetic\""));
        }
        None
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: "mnist".into(),
            path: None,
            images: None,
            schema: None,
            test_fraction: None,
            partition_column: None,
            sources: Vec::new(),
            partition: PartitionKind::WorkedExample,
            parties: 3,
            train_per_party: None,
            test_per_party: None,
            alpha: None,
            shards_per_party: None,
            test_partition: None,
            data_dir: None,
            cache_dir: None,
            offline: false,
            quantity_sigma: None,
            synthetic_alpha: None,
            synthetic_beta: None,
            synthetic_devices: None,
        }
    }
}

/// One party's own data in a simulation (`[[data.sources]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartySource {
    /// The party's identity (default `party-<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its table file.
    pub path: PathBuf,
    /// Its own test file (default: `data.test_fraction` of `path`'s rows, stratified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
}

/// An image folder's shape and classes (`[data.images]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// `[height, width, channels]` every image is brought to (channels 1: grey, 3: RGB).
    pub shape: [usize; 3],
    /// The class names, class 0 first (default: the folder's subdirectories, sorted; a
    /// server, which holds no folder, needs them listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}
