//! In-memory labelled datasets and loading the image datasets from verified IDX files.

use std::path::Path;

use crate::DataError;
use crate::fetch::{DatasetInfo, FASHION_MNIST, FetchOptions, MNIST, ensure};
use crate::idx::read_idx;

/// Labelled examples held in memory: features as `f32` (images scaled to [0, 1], channels
/// last), labels as class indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len() × example_len()` features.
    pub x: Vec<f32>,
    /// One label per example, each `< classes`.
    pub y: Vec<u32>,
    /// Shape of one example: height, width, channels (`[1, 1, d]` for vectors).
    pub dims: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// Values per example.
    pub fn example_len(&self) -> usize {
        self.dims.iter().product()
    }
    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let d = self.example_len();
        let mut x = Vec::with_capacity(indices.len() * d);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
            y.push(self.y[i]);
        }
        Dataset { x, y, dims: self.dims, classes: self.classes }
    }
    /// Copies the examples at `indices` into the front of `x` and `y` (a batch buffer of
    /// at least `indices.len()` examples) and returns how many were copied.
    pub fn gather(&self, indices: &[usize], x: &mut [f32], y: &mut [u32]) -> usize {
        let d = self.example_len();
        for (j, &i) in indices.iter().enumerate() {
            x[j * d..(j + 1) * d].copy_from_slice(&self.x[i * d..(i + 1) * d]);
            y[j] = self.y[i];
        }
        indices.len()
    }
    /// How many examples of each class.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.y {
            c[l as usize] += 1;
        }
        c
    }
}

/// A train/test pair.
#[derive(Debug, Clone)]
pub struct TrainTest {
    /// Training examples.
    pub train: Dataset,
    /// Test examples.
    pub test: Dataset,
}

/// The built-in named datasets.
pub const DATASETS: [&str; 2] = ["mnist", "fashion-mnist"];

/// The fetch description of a named dataset.
pub fn dataset_info(name: &str) -> Result<&'static DatasetInfo, DataError> {
    match name {
        "mnist" => Ok(&MNIST),
        "fashion-mnist" => Ok(&FASHION_MNIST),
        other => Err(DataError::UnknownDataset(other.to_string())),
    }
}

/// Fetches (if needed), verifies and loads a named dataset.
pub fn load(name: &str, opts: &FetchOptions) -> Result<TrainTest, DataError> {
    let info = dataset_info(name)?;
    let dir = ensure(info, opts)?;
    load_idx_dir(&dir, info)
}

/// Loads the four IDX files of `info` from `dir` (already verified).
pub fn load_idx_dir(dir: &Path, info: &DatasetInfo) -> Result<TrainTest, DataError> {
    let [tri, trl, tei, tel] = info.files.map(|(f, _)| dir.join(f));
    Ok(TrainTest { train: images_and_labels(&tri, &trl, 10)?, test: images_and_labels(&tei, &tel, 10)? })
}

/// Builds a dataset from an IDX image file (`n × h × w`) and an IDX label file (`n`).
pub fn images_and_labels(images: &Path, labels: &Path, classes: usize) -> Result<Dataset, DataError> {
    let im = read_idx(images)?;
    let lb = read_idx(labels)?;
    if im.dims.len() != 3 {
        return Err(DataError::BadIdx {
            path: images.into(),
            problem: format!("expected 3 dimensions (n, h, w), found {}", im.dims.len()),
        });
    }
    if lb.dims.len() != 1 || lb.dims[0] != im.dims[0] {
        return Err(DataError::BadIdx {
            path: labels.into(),
            problem: format!("expected {} labels, found dimensions {:?}", im.dims[0], lb.dims),
        });
    }
    if let Some(bad) = lb.data.iter().find(|&&l| l as usize >= classes) {
        return Err(DataError::BadIdx { path: labels.into(), problem: format!("label {bad} is not below {classes}") });
    }
    Ok(Dataset {
        x: im.data.iter().map(|&p| p as f32 / 255.0).collect(),
        y: lb.data.iter().map(|&l| l as u32).collect(),
        dims: [im.dims[1], im.dims[2], 1],
        classes,
    })
}
