//! Errors from reading, fetching and partitioning data.

use std::path::PathBuf;
use thiserror::Error;

/// What went wrong with a dataset.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, so not also a source).
        error: std::io::Error,
    },
    /// A file that is not a valid IDX file.
    #[error("{path}: not a valid IDX file: {problem}; delete it and fetch the dataset again")]
    BadIdx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A file whose content does not match its published checksum.
    #[error(
        "{path}: SHA-256 is {got}, expected {expected}: the file is corrupt or not the published one; delete it and fetch again"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The digest computed.
        got: String,
        /// The published digest.
        expected: String,
    },
    /// Every source of a dataset failed.
    #[error("could not obtain {dataset}; tried:\n{}\nfix: {fix}", tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
    Unavailable {
        /// The dataset's name.
        dataset: String,
        /// Each source tried and why it failed.
        tried: Vec<String>,
        /// What the user can do instead.
        fix: String,
    },
    /// An unknown dataset name.
    #[error("unknown dataset '{0}': use mnist, fashion-mnist, breast-cancer, diabetes, grunfeld or wine")]
    UnknownDataset(String),
    /// A table file that cannot be read under its schema: the file, and where known the place
    /// in it (`line 3` of a text file, `row 3` of a Parquet file) and the column.
    #[error("{}{}{}: {problem}", path.display(), at.as_ref().map(|a| format!(", {a}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column '{c}'")).unwrap_or_default())]
    Table {
        /// The file.
        path: PathBuf,
        /// Where in it (`line N`, `row N`).
        at: Option<String>,
        /// The column.
        column: Option<String>,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A partition that cannot be made from the data at hand.
    #[error("{0}")]
    Partition(String),
}

impl DataError {
    /// A [`DataError::Table`] about the whole file.
    pub(crate) fn table(path: impl Into<PathBuf>, problem: String) -> Self {
        DataError::Table { path: path.into(), at: None, column: None, problem }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error }
    }
}
