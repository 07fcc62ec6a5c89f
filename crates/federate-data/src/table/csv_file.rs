//! The CSV source: a file with a header row, read with the `csv` crate under a schema. Each
//! row's label and features are checked as they are read; the first bad value is an error
//! naming the file, the line and the column.

use std::path::PathBuf;

use super::{Categorical, DataSource, MAX_TABLE_BYTES, Missing, Schema, Table};
use crate::{DataError, Dataset};

/// A CSV file with a header row (comma-separated; quoted fields allowed).
#[derive(Debug, Clone)]
pub struct CsvFile {
    /// The file.
    pub path: PathBuf,
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

/// A row's target: a class index or a value.
enum Target {
    Class(u32),
    Value(f32),
}

/// How the rows of one file are read: where the label, key and feature columns are.
struct Plan<'s> {
    schema: &'s Schema,
    path: PathBuf,
    label_at: usize,
    key_at: Option<usize>,
    columns: Vec<(usize, String, Encode)>,
    classes: Option<Vec<String>>,
    width: usize,
}

impl Plan<'_> {
    fn err(&self, line: Option<u64>, column: Option<&str>, problem: String) -> DataError {
        DataError::Table { path: self.path.clone(), line, column: column.map(str::to_string), problem }
    }

    /// The target in `raw` (`None`: a missing label in a row to drop).
    fn target(&self, raw: &str, line: Option<u64>) -> Result<Option<Target>, DataError> {
        let label = Some(self.schema.label.as_str());
        if is_missing(raw) {
            if self.schema.missing == Missing::Drop {
                return Ok(None);
            }
            return Err(self.err(line, label, "the label is missing: every row needs one".into()));
        }
        match &self.classes {
            Some(names) => match names.iter().position(|c| c == raw) {
                Some(k) => Ok(Some(Target::Class(k as u32))),
                None => Err(self.err(
                    line,
                    label,
                    format!(
                        "'{raw}' is not one of the classes [{}]: add it to data.schema.classes or fix the row",
                        names.join(", ")
                    ),
                )),
            },
            None => match raw.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(Some(Target::Value(v))),
                _ => Err(self.err(line, label, format!("'{raw}' is not a number (a regression target)"))),
            },
        }
    }

    /// Writes the features of `record` into `row` (zeroed first); `false` for a row to drop.
    fn features(&self, record: &csv::StringRecord, line: Option<u64>, row: &mut [f32]) -> Result<bool, DataError> {
        row.fill(0.0);
        let mut at = 0;
        let mut keep = true;
        for (i, col, enc) in &self.columns {
            let raw = record.get(*i).unwrap_or("");
            let name = Some(col.as_str());
            match enc {
                Encode::Numeric => {
                    if !is_missing(raw) {
                        match raw.parse::<f32>() {
                            Ok(v) if v.is_finite() => row[at] = v,
                            _ => {
                                return Err(self.err(
                                    line,
                                    name,
                                    format!(
                                        "'{raw}' is not a number: fix the value, or declare the column in \
                                         data.schema.categorical if it is a category"
                                    ),
                                ));
                            }
                        }
                    } else {
                        match self.schema.missing {
                            Missing::Error => {
                                return Err(self.err(
                                    line,
                                    name,
                                    "the value is missing: fill it, or set data.schema.missing = \"drop\" or \
                                     \"impute-mean\""
                                        .into(),
                                ));
                            }
                            Missing::Drop => keep = false,
                            Missing::ImputeMean => row[at] = f32::NAN,
                        }
                    }
                    at += 1;
                }
                Encode::OneHot(vocab) => {
                    match vocab.iter().position(|v| v == raw) {
                        Some(k) => row[at + k] = 1.0,
                        None if is_missing(raw) && self.schema.missing != Missing::Error => {
                            keep &= self.schema.missing != Missing::Drop;
                        }
                        None => {
                            return Err(self.err(
                                line,
                                name,
                                format!(
                                    "'{raw}' is not in the vocabulary [{}]: add it to \
                                     data.schema.categorical.{col}.vocabulary, or use hashed = N",
                                    vocab.join(", ")
                                ),
                            ));
                        }
                    }
                    at += vocab.len();
                }
                Encode::Hashed(b) => {
                    if !is_missing(raw) {
                        row[at + (fnv1a(raw) % *b as u64) as usize] = 1.0;
                    }
                    at += b;
                }
            }
        }
        Ok(keep)
    }
}

impl CsvFile {
    fn err(&self, line: Option<u64>, column: Option<&str>, problem: String) -> DataError {
        DataError::Table { path: self.path.clone(), line, column: column.map(str::to_string), problem }
    }

    /// Where everything the schema names is in `header`.
    fn plan<'s>(&self, schema: &'s Schema, header: &[String], key: Option<&str>) -> Result<Plan<'s>, DataError> {
        let col = |name: &str, key_name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                let shown: Vec<&str> = header.iter().take(12).map(String::as_str).collect();
                let more = if header.len() > 12 { ", ..." } else { "" };
                self.err(
                    None,
                    Some(name),
                    format!("no such column (named by {key_name}); the header has: {}{more}", shown.join(", ")),
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
        let names = schema.feature_columns(header, key);
        if names.is_empty() {
            return Err(self.err(None, None, "no feature columns are left: list them in data.schema.features".into()));
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let at = col(name, "data.schema.features")?;
            let enc = match schema.categorical.get(name) {
                Some(Categorical { vocabulary: Some(v), .. }) => Encode::OneHot(v.clone()),
                Some(Categorical { hashed: Some(b), .. }) => Encode::Hashed(*b),
                _ => Encode::Numeric,
            };
            columns.push((at, name.clone(), enc));
        }
        let width = schema.encoded(&names).0.len();
        Ok(Plan { schema, path: self.path.clone(), label_at, key_at, columns, classes: schema.class_names(), width })
    }
}

/// A reading error of the csv crate as the file's own: a ragged row says so.
fn csv_error(e: &csv::Error) -> (Option<u64>, String) {
    let line = e.position().map(|p| p.line());
    let problem = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the row has {len} fields but the header has {expected_len}: every row needs one value per column")
        }
        _ => e.to_string(),
    };
    (line, problem)
}

impl DataSource for CsvFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self, schema: &Schema, key: Option<&str>) -> Result<Table, DataError> {
        schema.check().map_err(|p| self.err(None, None, p))?;
        let meta = std::fs::metadata(&self.path).map_err(|e| DataError::io(&self.path, e))?;
        if meta.len() > MAX_TABLE_BYTES {
            let problem = format!("{} bytes is above the {MAX_TABLE_BYTES}-byte limit", meta.len());
            return Err(self.err(None, None, problem));
        }
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_path(&self.path)
            .map_err(|e| self.err(None, None, e.to_string()))?;
        let header: Vec<String> =
            rd.headers().map_err(|e| self.err(Some(1), None, e.to_string()))?.iter().map(String::from).collect();
        if header.iter().all(|h| h.is_empty()) {
            return Err(self.err(None, None, "the file is empty: it needs a header row naming the columns".into()));
        }
        let plan = self.plan(schema, &header, key)?;
        let (mut x, mut y, mut values, mut keys) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut row = vec![0.0f32; plan.width];
        let mut record = csv::StringRecord::new();
        loop {
            match rd.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let (line, problem) = csv_error(&e);
                    return Err(self.err(line, None, problem));
                }
            }
            let line = record.position().map(|p| p.line());
            let Some(target) = plan.target(record.get(plan.label_at).unwrap_or(""), line)? else { continue };
            if !plan.features(&record, line, &mut row)? {
                continue;
            }
            x.extend_from_slice(&row);
            match target {
                Target::Class(k) => y.push(k),
                Target::Value(v) => values.push(v),
            }
            if let Some(k) = plan.key_at {
                keys.push(record.get(k).unwrap_or("").to_string());
            }
        }
        if y.is_empty() && values.is_empty() {
            return Err(self.err(None, None, "the file has a header but no rows of data".into()));
        }
        let dims = [1, 1, plan.width];
        let data = match &plan.classes {
            Some(names) => Dataset::classification(x, y, dims, names.len()),
            None => Dataset::regression(x, values, dims),
        };
        let (features, numeric) = schema.encoded(&schema.feature_columns(&header, key));
        Ok(Table { data, features, numeric, keys: plan.key_at.map(|_| keys) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Scaling, Task, source_for};
    use std::collections::BTreeMap;
    use std::path::Path;

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
