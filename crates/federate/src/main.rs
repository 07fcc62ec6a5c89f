//! `federate`: federated learning from one command.
//!
//! `federate run` simulates a federation in this process (with no config: the design
//! document's worked example — MNIST, 3 parties, the CNN, FedAvg); `federate bench train`
//! measures the training engine; `federate data fetch` fills the dataset cache.
//!
//! The command line is in `cli`, each command in `commands/`, the work in `sim` (the
//! simulation and the assembly of data, model and parties), `serve`, `join`, `keys`,
//! `checkpoint`, `party_store`, `report` and `bench`.

/// For a `Client` that wraps another in its field `inner` and changes only `fit`: the other
/// methods, delegated.
macro_rules! delegate_to_inner_client {
    () => {
        fn evaluate(
            &mut self,
            params: &federate_core::Parameters,
            task: &federate_core::EvaluateTask,
        ) -> Result<federate_core::EvaluateReply, federate_core::ClientError> {
            self.inner.evaluate(params, task)
        }
        fn state(&self) -> Option<federate_core::PartyState> {
            self.inner.state()
        }
        fn restore(&mut self, state: federate_core::PartyState) -> Result<(), federate_core::ClientError> {
            self.inner.restore(state)
        }
        fn statistics(&mut self) -> Result<Option<federate_core::messages::Moments>, federate_core::ClientError> {
            self.inner.statistics()
        }
    };
}

mod assemble;
mod bench;
mod checkpoint;
mod cli;
mod commands;
mod config;
mod join;
mod keys;
mod party_store;
mod report;
mod round_log;
mod serve;
mod sim;
mod split;
mod table_data;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use cli::{BenchCommand, Cli, Command, DataCommand};
use commands::{bench as bench_cmd, deploy, fetch, privacy, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        one_malloc_arena();
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Bench { what: BenchCommand::Train { model, batches, threads, seconds, dp_clip, dp_noise } } => {
            if dp_noise.is_some() && dp_clip.is_none() {
                Err(anyhow::anyhow!("--dp-noise needs --dp-clip C"))
            } else {
                bench_cmd::bench_train(&model, &batches, threads, seconds, dp_clip.map(|c| (c, dp_noise)))
            }
        }
        Command::Data { what: DataCommand::Fetch { dataset, data_dir, cache_dir } } => {
            fetch::fetch(&dataset, data_dir, cache_dir)
        }
        Command::Bench { what: BenchCommand::Net { parties, rounds, model, zstd } } => {
            bench_cmd::bench_net(parties, rounds, &model, zstd)
        }
        Command::Bench { what: BenchCommand::NetParties { parties, rounds, model, zstd, server } } => init_threads(2)
            .and_then(|_| bench_cmd::bench_net_config(parties, rounds, &model))
            .and_then(|cfg| bench::net_parties(&cfg, &server, zstd)),
        Command::Bench { what: BenchCommand::Compression { config, set, rounds } } => {
            bench_cmd::bench_compression(config.as_deref(), &set, rounds)
        }
        Command::Bench { what: BenchCommand::Parties { parties, per_round, rounds, set } } => {
            bench_cmd::bench_parties(parties, per_round, rounds, &set)
        }
        Command::Bench { what: BenchCommand::Aggregate { model, parties, reps } } => {
            bench_cmd::bench_aggregate(&model, parties, reps)
        }
        Command::Privacy { what } => privacy::privacy(what),
        Command::Keys { out, parties, server_names, add, days, csr, sign } => {
            let how = match (csr, sign) {
                (true, _) => keys::KeysMode::Request,
                (false, Some(path)) => keys::KeysMode::Sign(path),
                (false, None) if add => keys::KeysMode::Add,
                (false, None) => keys::KeysMode::New,
            };
            keys::keys(&out, &parties, &server_names, how, days)
        }
        Command::Serve(a) => deploy::serve(a),
        Command::Join(a) => deploy::join(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Training allocates its large buffers (parameters, gradients, optimiser state: several MB
/// each, per task) on rayon's workers, and glibc gives each thread its own arena, where what
/// that thread freed stays for that thread: the worked example peaked 25 % higher (243 vs
/// 195 MB) once training ran on the workers. One arena shares the freed buffers (198 MB, no
/// slower: training allocates per task, not per step). Not for `serve`, whose connection
/// tasks allocate at once on tokio's threads.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a tuning parameter of glibc's allocator; it is called first
    // thing in `main`, before this process has started any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub(crate) fn init_threads(n: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")
}

pub(crate) fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
