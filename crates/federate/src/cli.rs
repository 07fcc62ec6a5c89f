//! The command line: clap's types for every command and its flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "federate", version, about = "Federated learning: simulate, deploy, measure")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run a federated simulation (no CONFIG: the worked example, MNIST with 3 parties).
    Run(RunArgs),
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Manage datasets.
    Data {
        #[command(subcommand)]
        what: DataCommand,
    },
    /// Create a CA, a server certificate and one certificate per party.
    Keys {
        /// Output directory.
        #[arg(long, default_value = "keys")]
        out: PathBuf,
        /// Party identities, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "party-1,party-2,party-3")]
        parties: Vec<String>,
        /// Names (DNS or IP) the server certificate is valid for, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,federate-server")]
        server_names: Vec<String>,
        /// Issue certificates for --parties with the CA already in --out (ca.key), leaving
        /// every certificate it issued valid.
        #[arg(long)]
        add: bool,
        /// Days the server and party certificates are valid (the CA: ten times as long).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// On a party: make its key (kept here) and a certificate request `<out>/<id>.csr` for
        /// the one identity in --parties, to send to the CA's operator.
        #[arg(long, conflicts_with_all = ["add", "sign"])]
        csr: bool,
        /// On the CA: sign this request for the one identity in --parties with the CA in --out.
        #[arg(long, conflicts_with = "add")]
        sign: Option<PathBuf>,
    },
    /// Privacy planning: ε of a DP-SGD run, or the noise that reaches a target ε.
    Privacy {
        #[command(subcommand)]
        what: PrivacyCommand,
    },
    /// Run the server of a real federation: parties join over gRPC with mutual TLS.
    Serve(ServeArgs),
    /// Join a federation as a party.
    Join(JoinArgs),
}

#[derive(Subcommand)]
pub(crate) enum PrivacyCommand {
    /// ε(δ) of T steps of subsampled DP-SGD (Gaussian or Laplace).
    Epsilon {
        /// Sampling rate q (batch size ÷ examples).
        #[arg(long)]
        sampling_rate: f64,
        /// Gaussian: noise multiplier σ (noise std ÷ clipping norm).
        #[arg(long)]
        noise_multiplier: Option<f64>,
        /// Laplace: ε₀ of one unsampled step (noise scale = L1 clip ÷ ε₀).
        #[arg(long)]
        epsilon_per_step: Option<f64>,
        /// Number of steps T.
        #[arg(long)]
        steps: u64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// gaussian or laplace.
        #[arg(long, value_enum, default_value = "gaussian")]
        mechanism: federate_core::Mechanism,
        /// poisson (add/remove neighbours) or fixed-size (without replacement, replace-one
        /// neighbours, gaussian with rdp only).
        #[arg(long, value_enum, default_value = "poisson")]
        sampling: federate_core::Sampling,
        /// rdp (fast, slightly loose) or pld (tight).
        #[arg(long, value_enum, default_value = "rdp")]
        accountant: federate_privacy::Accountant,
    },
    /// The smallest noise (σ for Gaussian, the largest ε₀ for Laplace) that keeps T steps
    /// within a target ε.
    Noise {
        /// The target ε.
        #[arg(long)]
        target_epsilon: f64,
        /// Poisson sampling rate q.
        #[arg(long)]
        sampling_rate: f64,
        /// Number of steps T.
        #[arg(long)]
        steps: u64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// gaussian or laplace.
        #[arg(long, value_enum, default_value = "gaussian")]
        mechanism: federate_core::Mechanism,
        /// rdp or pld.
        #[arg(long, value_enum, default_value = "rdp")]
        accountant: federate_privacy::Accountant,
    },
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The config (the same file `run` takes, with a [server] section).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<String>,
    /// Run directory (rounds.jsonl, checkpoint/, model.safetensors).
    #[arg(long, default_value = "runs/serve")]
    pub(crate) out: PathBuf,
    /// Continue from the last checkpoint (an error if there is none).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Continue from the last checkpoint if there is one, else start afresh (for restarts
    /// by a supervisor such as Kubernetes).
    #[arg(long, conflicts_with = "resume")]
    pub(crate) resume_if_present: bool,
    /// Start afresh in an --out that already holds a run, moving that run aside to
    /// <out>.old-<unix time> (never deleting it).
    #[arg(long, conflicts_with = "resume")]
    pub(crate) force: bool,
    /// Plaintext without authentication (local tests only; loopback addresses only unless
    /// --insecure-non-loopback).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// With --insecure, also listen on an address outside loopback: anyone who can reach it
    /// can take any party's seat and read every model.
    #[arg(long, requires = "insecure")]
    pub(crate) insecure_non_loopback: bool,
}

#[derive(clap::Args)]
pub(crate) struct JoinArgs {
    /// Server URL, e.g. https://server.example:7000.
    #[arg(long)]
    pub(crate) server: String,
    /// This party's identity (its certificate's name).
    #[arg(long)]
    pub(crate) id: String,
    /// The federation's config (data split, model, seed).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<String>,
    /// Use partition N (1-based) of the configured dataset (default: N from an id "party-N").
    #[arg(long)]
    pub(crate) partition: Option<usize>,
    /// Use this party's own IDX files instead of a partition.
    #[arg(long, conflicts_with = "partition")]
    pub(crate) idx_dir: Option<PathBuf>,
    /// Use this party's own data: a table file (CSV, read under the config's `[data.schema]`)
    /// or an image folder (`data.dataset = "images"`).
    #[arg(long, conflicts_with_all = ["partition", "idx_dir"])]
    pub(crate) data: Option<PathBuf>,
    /// Directory made by `federate keys` (uses ca.pem and parties/<id>.pem/.key).
    #[arg(long)]
    pub(crate) tls_dir: Option<PathBuf>,
    /// Name on the server's certificate, if not the URL's host.
    #[arg(long)]
    pub(crate) server_name: Option<String>,
    /// Plaintext without authentication (local tests only).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Worker threads.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// A directory already holding the dataset's IDX files.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where this party keeps its state between rounds (`<id>.json`, `<id>.f32`), so that
    /// after a restart it continues with its privacy ledger, control variate or dual.
    #[arg(long, default_value = "party-state")]
    pub(crate) state_dir: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// A TOML config; every key is optional and defaults to the worked example.
    pub(crate) config: Option<PathBuf>,
    /// Seed of every random stream.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Number of rounds.
    #[arg(long)]
    pub(crate) rounds: Option<u32>,
    /// Run directory (default: runs/run-<unix time>).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Override a config key, e.g. --set train.lr=0.01 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// A directory already holding the dataset's IDX files.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Dataset cache directory.
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// No progress bar, only the final table.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Continue the run in --out from its last checkpoint (written every `checkpoint_every`
    /// rounds); without CONFIG, the run directory's config.toml is used. --rounds may raise
    /// the total. The result equals an uninterrupted run.
    #[arg(long, requires = "out")]
    pub(crate) resume: bool,
    /// Start afresh in an --out that already holds a run, moving that run aside to
    /// <out>.old-<unix time> (never deleting it).
    #[arg(long, conflicts_with = "resume")]
    pub(crate) force: bool,
}

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Training throughput per batch size, against the machine's GEMM peak.
    Train {
        /// Built-in model.
        #[arg(long, default_value = "cnn")]
        model: String,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,32,64")]
        batches: Vec<usize>,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Seconds per batch size.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Measure DP-SGD's clipped per-example gradient step with this clipping norm.
        #[arg(long)]
        dp_clip: Option<f32>,
        /// With --dp-clip, also add Gaussian noise (σ = 1) each step: `seeded` (floating
        /// point, simulations) or `secure` (OS entropy, exact discrete sampler, deployments).
        #[arg(long)]
        dp_noise: Option<federate_core::NoiseSource>,
    },
    /// Time of each aggregation rule (mean, median, trimmed mean, Krum) combining the
    /// parties' models, against the plain mean (one pass over the models).
    Aggregate {
        /// Built-in model whose size the models have.
        #[arg(long, default_value = "cnn")]
        model: String,
        /// Parties (models combined).
        #[arg(long, default_value_t = 10)]
        parties: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Many parties in this process against a server on loopback: per-round overhead beyond
    /// training, and bytes per round against the model size.
    Net {
        /// Parties.
        #[arg(long, default_value_t = 200)]
        parties: usize,
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Built-in model.
        #[arg(long, default_value = "logreg")]
        model: String,
        /// Compress parameters with zstd.
        #[arg(long)]
        zstd: bool,
    },
    /// The federation (default: the worked example) under each codec — updates none, q8, q4,
    /// q4 + zstd, top-1 % with error feedback, and q4 or top-1 % updates with the model
    /// broadcast as its q8 or q4 change: bytes per round each way and final accuracy.
    Compression {
        /// Config file (default: the worked example).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Overrides, as for `federate run --set`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Rounds.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
    },
    /// A cross-device simulation: many parties holding MNIST dealt IID, a few training each
    /// round; seconds per round and peak memory.
    Parties {
        /// Parties.
        #[arg(long, default_value_t = 10_000)]
        parties: usize,
        /// Parties training (and evaluating) each round.
        #[arg(long, default_value_t = 100)]
        per_round: usize,
        /// Rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Overrides, as for `federate run --set` (e.g. party_threads=1, model.name="logreg").
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// The parties of `bench net`, run in a child process (not for direct use).
    #[command(hide = true)]
    NetParties {
        /// Parties.
        #[arg(long)]
        parties: usize,
        /// Rounds.
        #[arg(long)]
        rounds: u32,
        /// Built-in model.
        #[arg(long)]
        model: String,
        /// Compress parameters with zstd.
        #[arg(long)]
        zstd: bool,
        /// The server's URL.
        #[arg(long)]
        server: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum DataCommand {
    /// Fetch and verify a dataset into the cache.
    Fetch {
        /// mnist or fashion-mnist.
        dataset: String,
        /// A directory already holding the IDX files.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Cache directory.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}
