//! One module per command: each turns its parsed flags into a config and calls the part of
//! the crate that does the work (`sim`, `serve`, `join`, `keys`, `bench`), then prints.

pub(crate) mod bench;
pub(crate) mod deploy;
pub(crate) mod fetch;
pub(crate) mod privacy;
pub(crate) mod run;
