//! The Parquet source: a Parquet file read row by row with the `parquet` crate (no arrow;
//! snappy, gzip and zstd pages). Each row's fields become text for the shared row reader, so
//! a Parquet table is checked exactly like a CSV one; a null is a missing value, and errors
//! name the row (from 1) instead of a line.

use std::path::PathBuf;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::rows::{before_reading, read_rows};
use super::{DataSource, Schema, Table};
use crate::DataError;

/// A Parquet file of flat columns.
#[derive(Debug, Clone)]
pub struct ParquetFile {
    /// The file.
    pub path: PathBuf,
}

/// A field as the text the row reader parses (a null: empty, that is missing).
fn text(f: &Field) -> String {
    match f {
        Field::Null => String::new(),
        Field::Str(s) => s.clone(),
        Field::Bool(b) => (*b as u8).to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::UByte(v) => v.to_string(),
        Field::UShort(v) => v.to_string(),
        Field::UInt(v) => v.to_string(),
        Field::ULong(v) => v.to_string(),
        Field::Float(v) => v.to_string(),
        Field::Double(v) => v.to_string(),
        other => other.to_string(),
    }
}

impl DataSource for ParquetFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self, schema: &Schema, key: Option<&str>) -> Result<Table, DataError> {
        let path = &self.path;
        before_reading(path, schema)?;
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| DataError::table(path, format!("not a readable Parquet file ({e})")))?;
        let header: Vec<String> =
            reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.path().string()).collect();
        let mut rows = reader
            .get_row_iter(None)
            .map_err(|e| DataError::table(path, format!("not a readable Parquet file ({e})")))?;
        let mut n = 0u64;
        read_rows(path, "row", schema, key, &header, |record| {
            let Some(row) = rows.next() else { return Ok(None) };
            n += 1;
            let row = row.map_err(|e| DataError::Table {
                path: path.clone(),
                at: Some(format!("row {n}")),
                column: None,
                problem: format!("cannot be read ({e})"),
            })?;
            record.clear();
            for (_, field) in row.get_column_iter() {
                record.push_field(&text(field));
            }
            Ok(Some(n))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;
    use crate::table::{CsvFile, Missing, Scaling, Task, source_for};

    /// A snappy-compressed Parquet file: two numeric columns (the second with a null) and a
    /// text label.
    fn write(path: &Path, a: &[f64], b: &[Option<f64>], y: &[&str]) {
        let schema = Arc::new(
            parse_message_type("message t { REQUIRED DOUBLE a; OPTIONAL DOUBLE b; REQUIRED BINARY y (UTF8); }")
                .unwrap(),
        );
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut i = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            match i {
                0 => {
                    col.typed::<DoubleType>().write_batch(a, None, None).unwrap();
                }
                1 => {
                    let present: Vec<f64> = b.iter().flatten().copied().collect();
                    let def: Vec<i16> = b.iter().map(|v| v.is_some() as i16).collect();
                    col.typed::<DoubleType>().write_batch(&present, Some(&def), None).unwrap();
                }
                _ => {
                    let v: Vec<ByteArray> = y.iter().map(|s| ByteArray::from(*s)).collect();
                    col.typed::<ByteArrayType>().write_batch(&v, None, None).unwrap();
                }
            }
            col.close().unwrap();
            i += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
    }

    fn schema() -> Schema {
        Schema {
            task: Task::Binary,
            label: "y".into(),
            features: None,
            exclude: vec![],
            classes: Some(vec!["benign".into(), "malignant".into()]),
            categorical: BTreeMap::new(),
            missing: Missing::ImputeMean,
            scaling: Scaling::Standardise,
        }
    }

    #[test]
    fn a_parquet_table_reads_as_the_same_csv_table_would() {
        let dir = tempfile::tempdir().unwrap();
        let pq = dir.path().join("t.parquet");
        write(&pq, &[1.5, 2.0, -3.25], &[Some(10.0), None, Some(30.0)], &["benign", "malignant", "benign"]);
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "a,b,y\n1.5,10,benign\n2,,malignant\n-3.25,30,benign\n").unwrap();
        let from_pq = source_for(&pq).unwrap().read(&schema(), None).unwrap();
        let from_csv = CsvFile { path: csv }.read(&schema(), None).unwrap();
        assert_eq!(from_pq.features, from_csv.features);
        assert_eq!(from_pq.data.y, [0, 1, 0]);
        let same = from_pq.data.x.iter().zip(&from_csv.data.x).all(|(p, c)| p == c || (p.is_nan() && c.is_nan()));
        assert!(same, "{:?} vs {:?}", from_pq.data.x, from_csv.data.x);
        // Errors name the row.
        let mut s = schema();
        s.missing = Missing::Error;
        let e = source_for(&pq).unwrap().read(&s, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}, row 2, column 'b': the value is missing: fill it, or set data.schema.missing = \"drop\" or \
                 \"impute-mean\"",
                pq.display()
            )
        );
        write(&pq, &[1.0], &[Some(1.0)], &["unsure"]);
        let e = source_for(&pq).unwrap().read(&schema(), None).unwrap_err().to_string();
        assert!(e.contains(", row 1, column 'y': 'unsure' is not one of the classes [benign, malignant]"), "{e}");
        std::fs::write(&pq, b"PAR1 not really").unwrap();
        let e = source_for(&pq).unwrap().read(&schema(), None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: not a readable Parquet file (", pq.display())), "{e}");
    }
}
