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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset};

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
    /// The federation's statistics of the training rows (all features).
    pub moments: crate::stats::Moments,
}

impl Preprocessing {
    /// Scales the numeric features of `data` in place and fills its missing values with the
    /// federation's means.
    pub fn apply(&self, data: &mut Dataset) {
        let d = self.numeric.len();
        let ms = self.moments.mean_std();
        for row in data.x.chunks_exact_mut(d.max(1)) {
            for (j, v) in row.iter_mut().enumerate() {
                if !self.numeric[j] {
                    continue;
                }
                let (mean, std) = ms[j];
                let x = if v.is_nan() { mean } else { *v as f64 };
                *v = match self.scaling {
                    Scaling::Standardise if std > 0.0 => ((x - mean) / std) as f32,
                    Scaling::Standardise => 0.0,
                    Scaling::MinMax => {
                        let span = self.moments.max[j] - self.moments.min[j];
                        if span > 0.0 { ((x - self.moments.min[j]) / span) as f32 } else { 0.0 }
                    }
                    Scaling::None => x as f32,
                };
            }
        }
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

/// A CSV file with a header row (comma-separated; quoted fields allowed).
#[derive(Debug, Clone)]
pub struct CsvFile {
    /// The file.
    pub path: PathBuf,
}

/// The source of a file, chosen by its extension.
pub fn source_for(path: &Path) -> Result<Box<dyn DataSource>, DataError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "csv" => Ok(Box::new(CsvFile { path: path.to_path_buf() })),
        other => Err(DataError::Table {
            path: path.to_path_buf(),
            line: None,
            column: None,
            problem: format!("'.{other}' files are not a known table format: give a .csv file"),
        }),
    }
}

/// How one column becomes features.
enum Encode {
    Numeric,
    OneHot(Vec<String>),
    Hashed(usize),
}

fn is_missing(v: &str) -> bool {
    matches!(v, "" | "NA" | "NaN" | "nan" | "N/A" | "n/a" | "null" | "NULL" | "?")
}

/// FNV-1a: a stable hash, the same on every machine and version.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl DataSource for CsvFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self, schema: &Schema, key: Option<&str>) -> Result<Table, DataError> {
        let err = |line: Option<u64>, column: Option<&str>, problem: String| DataError::Table {
            path: self.path.clone(),
            line,
            column: column.map(str::to_string),
            problem,
        };
        schema.check().map_err(|p| err(None, None, p))?;
        let meta = std::fs::metadata(&self.path).map_err(|e| DataError::io(&self.path, e))?;
        if meta.len() > MAX_TABLE_BYTES {
            return Err(err(None, None, format!("{} bytes is above the {MAX_TABLE_BYTES}-byte limit", meta.len())));
        }
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_path(&self.path)
            .map_err(|e| err(None, None, e.to_string()))?;
        let header: Vec<String> =
            rd.headers().map_err(|e| err(Some(1), None, e.to_string()))?.iter().map(String::from).collect();
        if header.iter().all(|h| h.is_empty()) {
            return Err(err(None, None, "the file is empty: it needs a header row naming the columns".into()));
        }
        let col = |name: &str, key_name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                let shown: Vec<&str> = header.iter().take(12).map(String::as_str).collect();
                err(
                    None,
                    Some(name),
                    format!(
                        "no such column (named by {key_name}); the header has: {}{}",
                        shown.join(", "),
                        if header.len() > 12 { ", ..." } else { "" }
                    ),
                )
            })
        };
        let label_at = col(&schema.label, "data.schema.label")?;
        let key_at = key.map(|k| col(k, "the partition column")).transpose()?;
        for c in &schema.exclude {
            col(c, "data.schema.exclude")?;
        }
        for c in schema.categorical.keys() {
            col(c, "data.schema.categorical")?;
        }
        let feature_names = schema.feature_columns(&header, key);
        if feature_names.is_empty() {
            return Err(err(None, None, "no feature columns are left: list them in data.schema.features".into()));
        }
        let mut columns = Vec::with_capacity(feature_names.len());
        for name in &feature_names {
            let at = col(name, "data.schema.features")?;
            let enc = match schema.categorical.get(name) {
                Some(Categorical { vocabulary: Some(v), .. }) => Encode::OneHot(v.clone()),
                Some(Categorical { hashed: Some(b), .. }) => Encode::Hashed(*b),
                _ => Encode::Numeric,
            };
            columns.push((at, name.as_str(), enc));
        }
        let (features, numeric) = schema.encoded(&feature_names);
        let d = features.len();
        let classes = schema.class_names();
        let (mut x, mut y, mut values, mut keys) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut row_x = vec![0.0f32; d];
        let mut record = csv::StringRecord::new();
        loop {
            match rd.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let line = e.position().map(|p| p.line());
                    let problem = match e.kind() {
                        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!(
                            "the row has {len} fields but the header has {expected_len}: every row needs one value per column"
                        ),
                        _ => e.to_string(),
                    };
                    return Err(err(line, None, problem));
                }
            }
            let line = record.position().map(|p| p.line());
            let field = |i: usize| record.get(i).unwrap_or("");
            // Target.
            let raw = field(label_at);
            if is_missing(raw) {
                if schema.missing == Missing::Drop {
                    continue;
                }
                return Err(err(line, Some(&schema.label), "the label is missing: every row needs one".into()));
            }
            let target = match &classes {
                Some(names) => match names.iter().position(|c| c == raw) {
                    Some(k) => Ok(k as u32),
                    None => {
                        return Err(err(
                            line,
                            Some(&schema.label),
                            format!(
                                "'{raw}' is not one of the classes [{}]: add it to data.schema.classes or fix the row",
                                names.join(", ")
                            ),
                        ));
                    }
                },
                None => match raw.parse::<f32>() {
                    Ok(v) if v.is_finite() => Err(v),
                    _ => {
                        return Err(err(
                            line,
                            Some(&schema.label),
                            format!("'{raw}' is not a number (a regression target)"),
                        ));
                    }
                },
            };
            // Features.
            row_x.fill(0.0);
            let mut at = 0;
            let mut dropped = false;
            for (i, name, enc) in &columns {
                let raw = field(*i);
                match enc {
                    Encode::Numeric => {
                        if is_missing(raw) {
                            match schema.missing {
                                Missing::Error => {
                                    return Err(err(
                                        line,
                                        Some(name),
                                        "the value is missing: fill it, or set data.schema.missing = \"drop\" or \"impute-mean\"".into(),
                                    ));
                                }
                                Missing::Drop => dropped = true,
                                Missing::ImputeMean => row_x[at] = f32::NAN,
                            }
                        } else {
                            match raw.parse::<f32>() {
                                Ok(v) if v.is_finite() => row_x[at] = v,
                                _ => {
                                    return Err(err(
                                        line,
                                        Some(name),
                                        format!(
                                            "'{raw}' is not a number: fix the value, or declare the column in \
                                             data.schema.categorical if it is a category"
                                        ),
                                    ));
                                }
                            }
                        }
                        at += 1;
                    }
                    Encode::OneHot(vocab) => {
                        match vocab.iter().position(|v| v == raw) {
                            Some(k) => row_x[at + k] = 1.0,
                            None if is_missing(raw) && schema.missing != Missing::Error => {
                                dropped |= schema.missing == Missing::Drop;
                            }
                            None => {
                                return Err(err(
                                    line,
                                    Some(name),
                                    format!(
                                        "'{raw}' is not in the vocabulary [{}]: add it to \
                                         data.schema.categorical.{name}.vocabulary, or use hashed = N",
                                        vocab.join(", ")
                                    ),
                                ));
                            }
                        }
                        at += vocab.len();
                    }
                    Encode::Hashed(b) => {
                        if !is_missing(raw) {
                            row_x[at + (fnv1a(raw) % *b as u64) as usize] = 1.0;
                        }
                        at += b;
                    }
                }
            }
            if dropped {
                continue;
            }
            x.extend_from_slice(&row_x);
            match target {
                Ok(k) => y.push(k),
                Err(v) => values.push(v),
            }
            if let Some(k) = key_at {
                keys.push(field(k).to_string());
            }
        }
        if y.is_empty() && values.is_empty() {
            return Err(err(None, None, "the file has a header but no rows of data".into()));
        }
        let dims = [1, 1, d];
        let data = match &classes {
            Some(names) => Dataset::classification(x, y, dims, names.len()),
            None => Dataset::regression(x, values, dims),
        };
        Ok(Table { data, features, numeric, keys: key_at.map(|_| keys) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(task: Task) -> Schema {
        Schema {
            task,
            label: "y".into(),
            features: None,
            exclude: vec![],
            classes: None,
            categorical: BTreeMap::new(),
            missing: Missing::Error,
            scaling: Scaling::Standardise,
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn read(path: &Path, s: &Schema) -> Result<Table, String> {
        CsvFile { path: path.to_path_buf() }.read(s, None).map_err(|e| e.to_string())
    }

    #[test]
    fn columns_categories_and_classes_become_features_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "t.csv", "id,age,sex,site,y\n1,50,F,a,no\n2,61.5,M,b,yes\n3,,F,c,no\n");
        let mut s = schema(Task::Binary);
        s.classes = Some(vec!["no".into(), "yes".into()]);
        s.exclude = vec!["id".into()];
        s.categorical
            .insert("sex".into(), Categorical { vocabulary: Some(vec!["F".into(), "M".into()]), hashed: None });
        s.categorical.insert("site".into(), Categorical { vocabulary: None, hashed: Some(4) });
        s.missing = Missing::ImputeMean;
        let t = read(&p, &s).unwrap();
        assert_eq!(t.features, ["age", "sex=F", "sex=M", "site#0", "site#1", "site#2", "site#3"]);
        assert_eq!(t.numeric, [true, false, false, false, false, false, false]);
        assert_eq!(t.data.y, [0, 1, 0]);
        assert_eq!(t.data.classes, 2);
        assert_eq!(&t.data.x[..3], &[50.0, 1.0, 0.0]);
        assert!(t.data.x[14].is_nan(), "the missing age is NaN, for the federation's mean to fill");
        assert_eq!(t.data.x[7..14].iter().filter(|v| **v == 1.0).count(), 2, "one sex, one site bucket");
        s.missing = Missing::Drop;
        assert_eq!(read(&p, &s).unwrap().data.len(), 2);
        // A natural partition's key column comes back and is not a feature.
        let t = CsvFile { path: p.clone() }.read(&schema_with_classes(), Some("site")).unwrap();
        assert_eq!(t.keys.unwrap(), ["a", "b", "c"]);
        assert!(!t.features.iter().any(|f| f.starts_with("site")));
    }

    fn schema_with_classes() -> Schema {
        let mut s = schema(Task::Binary);
        s.classes = Some(vec!["no".into(), "yes".into()]);
        s.features = Some(vec!["id".into()]);
        s
    }

    #[test]
    fn regression_targets_are_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "r.csv", "a,b,y\n1,2,3.5\n4,5,-1\n");
        let t = read(&p, &schema(Task::Regression)).unwrap();
        assert!(t.data.is_regression());
        assert_eq!(t.data.values, [3.5, -1.0]);
        assert_eq!(t.data.x, [1.0, 2.0, 4.0, 5.0]);
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "missing.csv",
                "a,b\n1,0\n",
                ", column 'y': no such column (named by data.schema.label); the header has: a, b",
            ),
            (
                "text.csv",
                "a,y\n1,0\nabc,1\n",
                ", line 3, column 'a': 'abc' is not a number: fix the value, or declare the column in data.schema.categorical if it is a category",
            ),
            (
                "class.csv",
                "a,y\n1,0\n2,7\n",
                ", line 3, column 'y': '7' is not one of the classes [0, 1]: add it to data.schema.classes or fix the row",
            ),
            ("empty.csv", "", ": the file is empty: it needs a header row naming the columns"),
            ("header.csv", "a,y\n", ": the file has a header but no rows of data"),
            (
                "ragged.csv",
                "a,y\n1,0\n2,1,9\n",
                ", line 3: the row has 3 fields but the header has 2: every row needs one value per column",
            ),
            (
                "gap.csv",
                "a,y\n1,0\n,1\n",
                ", line 3, column 'a': the value is missing: fill it, or set data.schema.missing = \"drop\" or \"impute-mean\"",
            ),
        ];
        for (name, text, want) in cases {
            let p = write(&dir, name, text);
            let got = read(&p, &schema(Task::Binary)).unwrap_err();
            assert_eq!(got, format!("{}{want}", p.display()), "{name}");
        }
        let p = write(&dir, "t.tsv", "a\n");
        assert!(source_for(&p).err().unwrap().to_string().contains("'.tsv' files are not a known table format"));
    }

    #[test]
    fn schemas_that_cannot_work_are_refused_by_key() {
        let mut s = schema(Task::Multiclass);
        assert!(s.check().unwrap_err().starts_with("data.schema.classes"));
        s.classes = Some(vec!["a".into(), "a".into()]);
        assert!(s.check().unwrap_err().contains("listed twice"));
        let mut s = schema(Task::Binary);
        s.categorical.insert("c".into(), Categorical { vocabulary: None, hashed: None });
        assert!(s.check().unwrap_err().starts_with("data.schema.categorical.c"));
    }
}
