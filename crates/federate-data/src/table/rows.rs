//! Reading the rows of a table file under a schema, whatever the format: the file's reader
//! (CSV, Parquet) gives a header and then one record of text fields at a time; each row's
//! label and features are checked as they come, and the first bad value is an error naming
//! the file, the line (or row) and the column.

use std::path::{Path, PathBuf};

use super::{Categorical, MAX_TABLE_BYTES, Missing, Schema, Table, fnv1a};
use crate::{DataError, Dataset};

/// How one column becomes features.
enum Encode {
    Numeric,
    OneHot(Vec<String>),
    Hashed(usize),
}

fn is_missing(v: &str) -> bool {
    matches!(v, "" | "NA" | "NaN" | "nan" | "N/A" | "n/a" | "null" | "NULL" | "?")
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
    /// What a record's number counts: `line` (text) or `row` (Parquet).
    unit: &'static str,
    label_at: usize,
    key_at: Option<usize>,
    columns: Vec<(usize, String, Encode)>,
    classes: Option<Vec<String>>,
    width: usize,
}

impl Plan<'_> {
    fn err(&self, line: Option<u64>, column: Option<&str>, problem: String) -> DataError {
        let at = line.map(|l| format!("{} {l}", self.unit));
        DataError::Table { path: self.path.clone(), at, column: column.map(str::to_string), problem }
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

/// Where everything the schema names is in `header`.
fn plan<'s>(
    path: &Path,
    unit: &'static str,
    schema: &'s Schema,
    header: &[String],
    key: Option<&str>,
) -> Result<Plan<'s>, DataError> {
    let err = |column: Option<&str>, problem: String| DataError::Table {
        path: path.to_path_buf(),
        at: None,
        column: column.map(str::to_string),
        problem,
    };
    {
        let col = |name: &str, key_name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                let shown: Vec<&str> = header.iter().take(12).map(String::as_str).collect();
                let more = if header.len() > 12 { ", ..." } else { "" };
                err(
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
            return Err(err(None, "no feature columns are left: list them in data.schema.features".into()));
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
        Ok(Plan {
            schema,
            path: path.to_path_buf(),
            unit,
            label_at,
            key_at,
            columns,
            classes: schema.class_names(),
            width,
        })
    }
}

/// What every table source checks before reading `path`: the schema on its own, and the
/// file's size against [`MAX_TABLE_BYTES`].
pub(super) fn before_reading(path: &Path, schema: &Schema) -> Result<(), DataError> {
    schema.check().map_err(|p| DataError::table(path, p))?;
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.len() > MAX_TABLE_BYTES {
        let problem = format!("{} bytes is above the {MAX_TABLE_BYTES}-byte limit", meta.len());
        return Err(DataError::table(path, problem));
    }
    Ok(())
}

/// Reads every record `next` gives (it fills the record and returns its number, or `None` at
/// the end) under `schema`, for the file at `path` whose columns are `header`.
pub(super) fn read_rows(
    path: &Path,
    unit: &'static str,
    schema: &Schema,
    key: Option<&str>,
    header: &[String],
    mut next: impl FnMut(&mut csv::StringRecord) -> Result<Option<u64>, DataError>,
) -> Result<Table, DataError> {
    let plan = plan(path, unit, schema, header, key)?;
    let (mut x, mut y, mut values, mut keys) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut row = vec![0.0f32; plan.width];
    let mut record = csv::StringRecord::new();
    while let Some(n) = next(&mut record)? {
        let at = Some(n);
        let Some(target) = plan.target(record.get(plan.label_at).unwrap_or(""), at)? else { continue };
        if !plan.features(&record, at, &mut row)? {
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
        return Err(DataError::table(path, "the file has a header but no rows of data".into()));
    }
    let dims = [1, 1, plan.width];
    let data = match &plan.classes {
        Some(names) => Dataset::classification(x, y, dims, names.len()),
        None => Dataset::regression(x, values, dims),
    };
    let (features, numeric) = schema.encoded(&schema.feature_columns(header, key));
    Ok(Table { data, features, numeric, keys: plan.key_at.map(|_| keys) })
}
