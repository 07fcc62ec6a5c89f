//! Tables from files: a [`Schema`] says which column is the label, which are features, which
//! are categories and how missing values are treated, and a [`DataSource`] reads a file into a
//! [`Table`] under it. CSV is read with the `csv` crate; every bad input is an error naming
//! the file, the line and the column (a missing column, a non-numeric value, an unseen class
//! or category, a ragged row, an empty file).
//!
//! Features come out as `f32` in the order of [`Table::features`]: numeric columns as they
//! are (a missing value as NaN when the schema imputes it, for the federation's statistics to
//! fill), categorical columns one-hot over their declared vocabulary or hashed into a fixed
//! number of buckets (FNV-1a, the same on every party).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::Moments;
use crate::{DataError, Dataset};

mod csv_file;
#[cfg(feature = "parquet")]
mod parquet_file;
mod rows;
pub use csv_file::CsvFile;
#[cfg(feature = "parquet")]
pub use parquet_file::ParquetFile;

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Two classes; the second of `classes` is the positive one.
    Binary,
    /// Two or more classes.
    Multiclass,
    /// A real-valued target.
    Regression,
}

/// What to do with a missing value (an empty field, `NA`, `NaN`, `N/A`, `null` or `?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    /// Refuse the file, naming the line and column (default).
    #[default]
    Error,
    /// Leave the row out.
    Drop,
    /// Replace it by the federation's mean of the column (numeric features only).
    ImputeMean,
}

/// How numeric features are scaled, from statistics the parties add up in round 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// Zero mean and unit variance per feature (default).
    #[default]
    Standardise,
    /// To [0, 1] by the federation's minimum and maximum.
    MinMax,
    /// As they are.
    None,
}

/// How a categorical column becomes features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Categorical {
    /// One-hot over these values (any other value is an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Vec<String>>,
    /// One-hot over this many hash buckets (any value is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed: Option<usize>,
}

/// How a table's columns become examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// `binary`, `multiclass` or `regression`.
    pub task: Task,
    /// The label (target) column.
    pub label: String,
    /// The feature columns, in order (default: every column but the label, `exclude` and the
    /// partition column, in file order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Columns that are not features (identifiers, dates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Classification: the label's values, class 0 first (binary: the second is positive).
    /// Default for binary: `["0", "1"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Categorical feature columns and how each is encoded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categorical: BTreeMap<String, Categorical>,
    /// Missing values: `error` (default), `drop` or `impute-mean`.
    #[serde(default)]
    pub missing: Missing,
    /// Scaling of numeric features: `standardise` (default), `min-max` or `none`.
    #[serde(default)]
    pub scaling: Scaling,
}

/// Largest number of classes a schema may declare.
pub const MAX_CLASSES: usize = 1000;
/// Largest number of hash buckets of one categorical column.
pub const MAX_BUCKETS: usize = 1 << 16;
/// Largest table file read (bytes).
pub const MAX_TABLE_BYTES: u64 = 8 << 30;

impl Schema {
    /// The class names (classification), or none (regression).
    pub fn class_names(&self) -> Option<Vec<String>> {
        match self.task {
            Task::Regression => None,
            Task::Binary => Some(self.classes.clone().unwrap_or_else(|| vec!["0".into(), "1".into()])),
            Task::Multiclass => self.classes.clone(),
        }
    }

    /// Checks the schema on its own (before any file is read); the message names the key.
    pub fn check(&self) -> Result<(), String> {
        match (self.task, &self.classes) {
            (Task::Regression, Some(_)) => {
                return Err("data.schema.classes: a regression task has no classes; remove the key".into());
            }
            (Task::Binary, Some(c)) if c.len() != 2 => {
                return Err(format!("data.schema.classes: a binary task has 2 classes, {} are listed", c.len()));
            }
            (Task::Multiclass, None) => {
                return Err("data.schema.classes: a multiclass task must list its classes (class 0 first)".into());
            }
            (Task::Multiclass, Some(c)) if c.len() < 2 || c.len() > MAX_CLASSES => {
                return Err(format!("data.schema.classes: list 2 to {MAX_CLASSES} classes, not {}", c.len()));
            }
            _ => {}
        }
        if let Some(c) = &self.classes {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = c.iter().find(|v| !seen.insert(v.as_str())) {
                return Err(format!("data.schema.classes: '{dup}' is listed twice"));
            }
        }
        for (col, cat) in &self.categorical {
            match (&cat.vocabulary, cat.hashed) {
                (Some(v), None) if !v.is_empty() => {}
                (None, Some(b)) if (1..=MAX_BUCKETS).contains(&b) => {}
                (None, Some(b)) => {
                    return Err(format!("data.schema.categorical.{col}.hashed: {b} buckets; use 1 to {MAX_BUCKETS}"));
                }
                _ => {
                    return Err(format!(
                        "data.schema.categorical.{col}: give either vocabulary = [...] (one-hot) or hashed = N (buckets)"
                    ));
                }
            }
            if *col == self.label {
                return Err(format!("data.schema.categorical.{col}: the label column is not a feature"));
            }
        }
        if self.features.as_ref().is_some_and(|f| f.contains(&self.label)) {
            return Err(format!("data.schema.features: lists the label column '{}'", self.label));
        }
        Ok(())
    }
}

impl Schema {
    /// The feature columns of a file with `header`: `features` if listed, else every column
    /// but the label, `exclude` and the `key` column, in file order.
    pub fn feature_columns(&self, header: &[String], key: Option<&str>) -> Vec<String> {
        match &self.features {
            Some(f) => f.clone(),
            None => header
                .iter()
                .filter(|h| **h != self.label && Some(h.as_str()) != key && !self.exclude.contains(h))
                .cloned()
                .collect(),
        }
    }

    /// The encoded features of `columns` (a column each, a value of its vocabulary or a hash
    /// bucket each for categories) and which of them are numeric.
    pub fn encoded(&self, columns: &[String]) -> (Vec<String>, Vec<bool>) {
        let (mut names, mut numeric) = (Vec::new(), Vec::new());
        for name in columns {
            match self.categorical.get(name) {
                Some(Categorical { vocabulary: Some(v), .. }) => {
                    names.extend(v.iter().map(|x| format!("{name}={x}")));
                }
                Some(Categorical { hashed: Some(b), .. }) => names.extend((0..*b).map(|k| format!("{name}#{k}"))),
                _ => {
                    names.push(name.clone());
                    numeric.resize(names.len() - 1, false);
                    numeric.push(true);
                    continue;
                }
            }
            numeric.resize(names.len(), false);
        }
        (names, numeric)
    }

    /// The width of an example when the feature columns are known without a file: listed in
    /// `features`, or given as `header` (a built-in table's). `None` otherwise.
    pub fn width(&self, header: Option<&[String]>) -> Option<usize> {
        let columns = match (&self.features, header) {
            (Some(f), _) => f.clone(),
            (None, Some(h)) => self.feature_columns(h, None),
            (None, None) => return None,
        };
        Some(self.encoded(&columns).0.len())
    }
}

/// A table read under a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The examples (`[1, 1, d]`, classes from the schema, or regression).
    pub data: Dataset,
    /// The name of each feature value, in order (`col` for numeric columns, `col=value` and
    /// `col#bucket` for one-hot and hashed categories).
    pub features: Vec<String>,
    /// Which features are numeric (scaled from the federation's statistics); one-hot values
    /// are left as 0/1.
    pub numeric: Vec<bool>,
    /// The value of the key column in each row, when one was asked for (natural partitions).
    pub keys: Option<Vec<String>>,
}

/// The preprocessing a federation agreed in round 0: which features there are, which are
/// numeric, how they are scaled, and the statistics the parties added up. It is recorded in
/// the run directory and saved with the model, so a prediction scales its inputs the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Encoded feature names, in model-input order.
    pub features: Vec<String>,
    /// Which features are numeric (scaled); the others are one-hot 0/1 values.
    pub numeric: Vec<bool>,
    /// How numeric features are scaled.
    pub scaling: Scaling,
    /// The federation's statistics of the training rows: every feature, and for regression
    /// the target last.
    pub moments: Moments,
}

/// FNV-1a of `s`: a stable hash, the same on every machine and version (hashed categories,
/// and the held-out split of a party's own file, seeded by its identity).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The statistics round 0 adds up for a party's training rows: one column per feature and,
/// for regression, one more for the target (so targets are scaled too, and a model's
/// learning rate does not depend on the target's units).
pub fn statistics(data: &Dataset) -> Moments {
    let d = data.example_len();
    if !data.is_regression() {
        return Moments::of(&data.x, d);
    }
    let mut rows = Vec::with_capacity(data.len() * (d + 1));
    for (row, v) in data.x.chunks_exact(d.max(1)).zip(&data.values) {
        rows.extend_from_slice(row);
        rows.push(*v);
    }
    Moments::of(&rows, d + 1)
}

impl Preprocessing {
    /// Column `j` of the statistics at `x`, scaled (a missing value: the mean, scaled).
    fn scale(&self, j: usize, x: f64, ms: &[(f64, f64)]) -> f32 {
        let (mean, std) = ms[j];
        let x = if x.is_nan() { mean } else { x };
        match self.scaling {
            Scaling::Standardise if std > 0.0 => ((x - mean) / std) as f32,
            Scaling::Standardise => 0.0,
            Scaling::MinMax => {
                let span = self.moments.max[j] - self.moments.min[j];
                if span > 0.0 { ((x - self.moments.min[j]) / span) as f32 } else { 0.0 }
            }
            Scaling::None => x as f32,
        }
    }

    /// Whether the statistics carry a target column (regression).
    pub fn scales_targets(&self) -> bool {
        self.moments.sum.len() == self.numeric.len() + 1
    }

    /// Scales the numeric features of `data` in place, fills its missing values with the
    /// federation's means, and for regression scales the targets the same way.
    pub fn apply(&self, data: &mut Dataset) {
        let d = self.numeric.len();
        let ms = self.moments.mean_std();
        for row in data.x.chunks_exact_mut(d.max(1)) {
            for (j, v) in row.iter_mut().enumerate() {
                if self.numeric[j] {
                    *v = self.scale(j, *v as f64, &ms);
                }
            }
        }
        if self.scales_targets() && data.is_regression() {
            for v in data.values.iter_mut() {
                *v = self.scale(d, *v as f64, &ms);
            }
        }
    }

    /// A target (or prediction) back in the table's own units: the inverse of the scaling
    /// `apply` gave targets (identity for classification).
    pub fn unscale_target(&self, z: f32) -> f32 {
        if !self.scales_targets() {
            return z;
        }
        let d = self.numeric.len();
        let (mean, std) = self.moments.column_mean_std(d);
        let z = z as f64;
        (match self.scaling {
            Scaling::Standardise if std > 0.0 => z * std + mean,
            Scaling::Standardise => mean,
            Scaling::MinMax => z * (self.moments.max[d] - self.moments.min[d]) + self.moments.min[d],
            Scaling::None => z,
        }) as f32
    }
}

/// Something a party's examples are read from.
pub trait DataSource {
    /// What it is, for messages (a path).
    fn describe(&self) -> String;
    /// Reads every row under `schema`; with `key`, also each row's value of that column
    /// (which is then not a feature).
    fn read(&self, schema: &Schema, key: Option<&str>) -> Result<Table, DataError>;
}

/// The source of a file, chosen by its extension.
pub fn source_for(path: &Path) -> Result<Box<dyn DataSource>, DataError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "csv" => Ok(Box::new(CsvFile { path: path.to_path_buf() })),
        #[cfg(feature = "parquet")]
        "parquet" | "pq" => Ok(Box::new(ParquetFile { path: path.to_path_buf() })),
        other => Err(DataError::table(
            path,
            format!("'.{other}' files are not a known table format: give a .csv or .parquet file"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_targets_are_scaled_with_the_features_and_come_back_exactly() {
        let data = Dataset::regression(vec![1.0, 2.0, 3.0, 5.0], vec![100.0, 300.0], [1, 1, 2]);
        let m = statistics(&data);
        assert_eq!(m.sum, vec![4.0, 7.0, 400.0], "two features, then the target");
        for scaling in [Scaling::Standardise, Scaling::MinMax, Scaling::None] {
            let pre = Preprocessing {
                features: vec!["a".into(), "b".into()],
                numeric: vec![true, true],
                scaling,
                moments: m.clone(),
            };
            let mut scaled = data.clone();
            pre.apply(&mut scaled);
            if scaling == Scaling::Standardise {
                assert_eq!(scaled.values, [-1.0, 1.0]);
                assert_eq!(scaled.x, [-1.0, -1.0, 1.0, 1.0]);
            }
            let back: Vec<f32> = scaled.values.iter().map(|v| pre.unscale_target(*v)).collect();
            assert_eq!(back, data.values, "{scaling:?}");
        }
        // Classification statistics carry no target column.
        let c = Dataset::classification(vec![1.0, 2.0], vec![0, 1], [1, 1, 1], 2);
        assert_eq!(statistics(&c).sum.len(), 1);
    }
}
