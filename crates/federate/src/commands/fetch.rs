//! `federate data fetch`: fill the dataset cache.

use std::path::PathBuf;

use anyhow::Result;

pub(crate) fn fetch(dataset: &str, data_dir: Option<PathBuf>, cache_dir: Option<PathBuf>) -> Result<()> {
    let info = federate_data::dataset_info(dataset)?;
    let opts = federate_data::FetchOptions {
        cache_dir: cache_dir.unwrap_or_else(federate_data::default_cache_dir),
        data_dir,
        ..Default::default()
    };
    let dir = federate_data::ensure(info, &opts)?;
    println!("{dataset}: verified in {}", dir.display());
    Ok(())
}
