//! In-memory labelled datasets and loading the image datasets from verified IDX files.

use std::path::Path;

use crate::DataError;
use crate::fetch::{DatasetInfo, FASHION_MNIST, FetchOptions, MNIST, ensure};
use crate::idx::read_idx;

/// Labelled examples held in memory: features as `f32` (images scaled to [0, 1], channels
/// last), and either a class index per example (classification) or a target value per
/// example (regression).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len() × example_len()` features.
    pub x: Vec<f32>,
    /// Classification: one label per example, each `< classes`. Empty for regression.
    pub y: Vec<u32>,
    /// Regression: one target value per example. Empty for classification.
    pub values: Vec<f32>,
    /// Shape of one example: height, width, channels (`[1, 1, d]` for vectors).
    pub dims: [usize; 3],
    /// Number of classes; 0 for regression.
    pub classes: usize,
}

/// The targets of a set or a batch, borrowed: class indices or values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Targets<'a> {
    /// Class indices (classification).
    Classes(&'a [u32]),
    /// Target values (regression).
    Values(&'a [f32]),
}

impl Targets<'_> {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Dataset {
    /// A classification set.
    pub fn classification(x: Vec<f32>, y: Vec<u32>, dims: [usize; 3], classes: usize) -> Self {
        Dataset { x, y, values: Vec::new(), dims, classes }
    }
    /// A regression set (one value per example).
    pub fn regression(x: Vec<f32>, values: Vec<f32>, dims: [usize; 3]) -> Self {
        Dataset { x, y: Vec::new(), values, dims, classes: 0 }
    }
    /// Whether the targets are values rather than classes.
    pub fn is_regression(&self) -> bool {
        self.classes == 0
    }
    /// Number of examples.
    pub fn len(&self) -> usize {
        if self.is_regression() { self.values.len() } else { self.y.len() }
    }
    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values per example.
    pub fn example_len(&self) -> usize {
        self.dims.iter().product()
    }
    /// The targets of every example.
    pub fn targets(&self) -> Targets<'_> {
        if self.is_regression() { Targets::Values(&self.values) } else { Targets::Classes(&self.y) }
    }
    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let d = self.example_len();
        let mut x = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
        }
        let y = if self.is_regression() { Vec::new() } else { indices.iter().map(|&i| self.y[i]).collect() };
        let values = if self.is_regression() { indices.iter().map(|&i| self.values[i]).collect() } else { Vec::new() };
        Dataset { x, y, values, dims: self.dims, classes: self.classes }
    }
    /// Copies the examples at `indices` into the front of `batch` (of at least
    /// `indices.len()` examples) and returns how many were copied.
    pub fn gather(&self, indices: &[usize], batch: &mut Batch) -> usize {
        let d = self.example_len();
        let regression = self.is_regression();
        for (j, &i) in indices.iter().enumerate() {
            batch.x[j * d..(j + 1) * d].copy_from_slice(&self.x[i * d..(i + 1) * d]);
            if regression {
                batch.values[j] = self.values[i];
            } else {
                batch.y[j] = self.y[i];
            }
        }
        batch.regression = regression;
        indices.len()
    }
    /// How many examples of each class (empty for regression).
    pub fn label_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.y {
            c[l as usize] += 1;
        }
        c
    }
}

/// A reusable batch buffer for [`Dataset::gather`].
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Features, `capacity × example_len`.
    pub x: Vec<f32>,
    y: Vec<u32>,
    values: Vec<f32>,
    regression: bool,
}

impl Batch {
    /// A buffer for up to `capacity` examples of `data`'s shape.
    pub fn new(data: &Dataset, capacity: usize) -> Self {
        let regression = data.is_regression();
        Batch {
            x: vec![0.0; capacity * data.example_len()],
            y: if regression { Vec::new() } else { vec![0; capacity] },
            values: if regression { vec![0.0; capacity] } else { Vec::new() },
            regression,
        }
    }
    /// The first `n` examples' targets.
    pub fn targets(&self, n: usize) -> Targets<'_> {
        if self.regression { Targets::Values(&self.values[..n]) } else { Targets::Classes(&self.y[..n]) }
    }
}

/// A set a partition reads (its size and labels) and takes subsets of: a [`Dataset`], or
/// [`Images`] kept as bytes until a party's examples are taken.
pub trait Examples {
    /// Number of examples.
    fn count(&self) -> usize;
    /// Class labels (empty for regression).
    fn labels(&self) -> &[u32];
    /// Number of classes (0 for regression).
    fn class_count(&self) -> usize;
    /// The examples at `indices`, in that order, as a dataset.
    fn take(&self, indices: &[usize]) -> Dataset;
}

impl Examples for Dataset {
    fn count(&self) -> usize {
        self.len()
    }
    fn labels(&self) -> &[u32] {
        &self.y
    }
    fn class_count(&self) -> usize {
        self.classes
    }
    fn take(&self, indices: &[usize]) -> Dataset {
        self.subset(indices)
    }
}

/// Labelled images kept as their bytes (a quarter of the `f32` size): a split converts only
/// the examples each party takes, to [0, 1] exactly as [`images_and_labels`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// `len × h × w × c` pixels.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub y: Vec<u32>,
    /// Height, width, channels.
    pub dims: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

impl Images {
    /// Every image, as a dataset.
    pub fn to_dataset(&self) -> Dataset {
        Dataset::classification(
            self.pixels.iter().map(|&p| p as f32 / 255.0).collect(),
            self.y.clone(),
            self.dims,
            self.classes,
        )
    }
}

impl Examples for Images {
    fn count(&self) -> usize {
        self.y.len()
    }
    fn labels(&self) -> &[u32] {
        &self.y
    }
    fn class_count(&self) -> usize {
        self.classes
    }
    fn take(&self, indices: &[usize]) -> Dataset {
        let d: usize = self.dims.iter().product();
        let mut x = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            x.extend(self.pixels[i * d..(i + 1) * d].iter().map(|&p| p as f32 / 255.0));
        }
        Dataset::classification(x, indices.iter().map(|&i| self.y[i]).collect(), self.dims, self.classes)
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
    let (train, test) = load_images(name, opts)?;
    Ok(TrainTest { train: train.to_dataset(), test: test.to_dataset() })
}

/// [`load`] keeping the pixels as bytes: (train, test).
pub fn load_images(name: &str, opts: &FetchOptions) -> Result<(Images, Images), DataError> {
    let info = dataset_info(name)?;
    let dir = ensure(info, opts)?;
    let [tri, trl, tei, tel] = info.files.map(|(f, _)| dir.join(f));
    Ok((read_images(&tri, &trl, 10)?, read_images(&tei, &tel, 10)?))
}

/// Loads the four IDX files of `info` from `dir` (already verified).
pub fn load_idx_dir(dir: &Path, info: &DatasetInfo) -> Result<TrainTest, DataError> {
    let [tri, trl, tei, tel] = info.files.map(|(f, _)| dir.join(f));
    Ok(TrainTest { train: images_and_labels(&tri, &trl, 10)?, test: images_and_labels(&tei, &tel, 10)? })
}

/// Builds a dataset from an IDX image file (`n × h × w`) and an IDX label file (`n`).
pub fn images_and_labels(images: &Path, labels: &Path, classes: usize) -> Result<Dataset, DataError> {
    Ok(read_images(images, labels, classes)?.to_dataset())
}

/// [`images_and_labels`] keeping the pixels as bytes.
pub fn read_images(images: &Path, labels: &Path, classes: usize) -> Result<Images, DataError> {
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
    let y = lb.data.iter().map(|&l| l as u32).collect();
    Ok(Images { pixels: im.data, y, dims: [im.dims[1], im.dims[2], 1], classes })
}
