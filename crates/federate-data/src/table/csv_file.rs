//! The CSV source: a file with a header row, read with the `csv` crate; its records go through
//! the shared row reader (`rows.rs`), which checks every value under the schema.

use std::path::PathBuf;

use super::rows::{before_reading, read_rows};
use super::{DataSource, Schema, Table};
use crate::DataError;

/// A CSV file with a header row (comma-separated; quoted fields allowed).
#[derive(Debug, Clone)]
pub struct CsvFile {
    /// The file.
    pub path: PathBuf,
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
        let path = &self.path;
        before_reading(path, schema)?;
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| DataError::table(path, e.to_string()))?;
        let header: Vec<String> =
            rd.headers().map_err(|e| DataError::table(path, e.to_string()))?.iter().map(String::from).collect();
        if header.iter().all(|h| h.is_empty()) {
            return Err(DataError::table(path, "the file is empty: it needs a header row naming the columns".into()));
        }
        read_rows(path, "line", schema, key, &header, |record| match rd.read_record(record) {
            Ok(true) => Ok(Some(record.position().map_or(0, |p| p.line()))),
            Ok(false) => Ok(None),
            Err(e) => {
                let (line, problem) = csv_error(&e);
                Err(DataError::Table {
                    path: path.clone(),
                    at: line.map(|l| format!("line {l}")),
                    column: None,
                    problem,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Categorical, Missing, Scaling, Task, source_for};
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
