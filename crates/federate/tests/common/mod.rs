//! What the binary's option-matrix tests share: running `federate` and a small MNIST run.
// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary with `args`.
pub fn federate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_federate")).args(args).output().expect("run federate")
}

/// 3 parties × 300 MNIST examples, logistic regression, `rounds` rounds of one epoch at batch
/// 32, into `out`, with `sets` on top.
pub fn run_small(out: &Path, rounds: u32, sets: &[&str]) -> Output {
    let rounds = rounds.to_string();
    let mut args = vec!["run", "--rounds", rounds.as_str(), "--quiet", "--out", out.to_str().unwrap()];
    for s in [
        "data.train_per_party=300",
        "data.test_per_party=100",
        "model.name=logreg",
        "train.epochs=1",
        "train.batch_size=32",
        "train.lr=0.1",
        "evaluation.baseline=false",
    ]
    .iter()
    .chain(sets)
    {
        args.extend(["--set", s]);
    }
    federate(&args)
}
