//! federate-data: the data side of a federation.
//!
//! IDX files (raw or gzip) with bounded parsing; datasets fetched once into a cache and
//! verified by SHA-256 from whatever source is reachable; and partitioners that decide which
//! examples each party holds. It knows nothing about models or the network.

mod dataset;
mod error;
pub mod fetch;
pub mod idx;
pub mod images;
pub mod partition;
pub mod stats;
pub mod synthetic;
pub mod table;
pub mod tables;

pub use dataset::{
    Batch, DATASETS, Dataset, Examples, Images, Targets, TrainTest, dataset_info, images_and_labels, load,
    load_idx_dir, load_images, read_images,
};
pub use error::DataError;
pub use fetch::{FASHION_MNIST, FetchOptions, MNIST, default_cache_dir, ensure};
