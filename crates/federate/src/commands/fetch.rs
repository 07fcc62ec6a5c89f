//! `federate data fetch`: fill the dataset cache.

use std::path::PathBuf;

use anyhow::Result;

pub(crate) fn fetch(dataset: &str, data_dir: Option<PathBuf>, cache_dir: Option<PathBuf>) -> Result<()> {
    let opts = federate_data::FetchOptions {
        cache_dir: cache_dir.unwrap_or_else(federate_data::default_cache_dir),
        data_dir,
        ..Default::default()
    };
    if federate_data::tables::TABLES.contains(&dataset) {
        let path = federate_data::tables::ensure_table(dataset, &opts)?;
        println!("{dataset}: verified, as a CSV file with a header: {}", path.display());
        return Ok(());
    }
    let info = federate_data::dataset_info(dataset)?;
    let dir = federate_data::ensure(info, &opts)?;
    println!("{dataset}: verified in {}", dir.display());
    Ok(())
}
