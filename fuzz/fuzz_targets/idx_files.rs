//! IDX files (raw or gzip) from untrusted sources: parsing never panics and never allocates
//! beyond the bound.
#![no_main]
use std::path::Path;

use federate_data::idx::{maybe_gunzip, parse_idx};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz");
    if let Ok(raw) = maybe_gunzip(data.to_vec(), p) {
        if let Ok(a) = parse_idx(&raw, p) {
            assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
        }
    }
});
