//! `federate`: federated learning from one command.
//!
//! `federate run` simulates a federation in this process (with no config: the design
//! document's worked example — MNIST, 3 parties, the CNN, FedAvg); `federate bench train`
//! measures the training engine; `federate data fetch` fills the dataset cache.
//!
//! Past the ~600-line guideline: the clap types, the run loop, the privacy planner and bench
//! dispatch are here until the redesign issue moves each command into its own module (main.rs
//! under 150 lines).

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
    };
}

mod bench;
mod config;
mod deploy;
mod report;
mod sim;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use federate_core::Event;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "federate", version, about = "Federated learning: simulate, deploy, measure")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum PrivacyCommand {
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
        mechanism: MechanismArg,
        /// poisson (add/remove neighbours) or fixed-size (without replacement, replace-one
        /// neighbours, gaussian with rdp only).
        #[arg(long, value_enum, default_value = "poisson")]
        sampling: SamplingArg,
        /// rdp (fast, slightly loose) or pld (tight).
        #[arg(long, value_enum, default_value = "rdp")]
        accountant: AccountantArg,
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
        mechanism: MechanismArg,
        /// rdp or pld.
        #[arg(long, value_enum, default_value = "rdp")]
        accountant: AccountantArg,
    },
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum MechanismArg {
    Gaussian,
    Laplace,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum SamplingArg {
    Poisson,
    FixedSize,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum AccountantArg {
    Rdp,
    Pld,
}

impl From<AccountantArg> for federate_privacy::Accountant {
    fn from(a: AccountantArg) -> Self {
        match a {
            AccountantArg::Rdp => federate_privacy::Accountant::Rdp,
            AccountantArg::Pld => federate_privacy::Accountant::Pld,
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The config (the same file `run` takes, with a [server] section).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run directory (rounds.jsonl, checkpoint/, model.safetensors).
    #[arg(long, default_value = "runs/serve")]
    out: PathBuf,
    /// Continue from the last checkpoint (an error if there is none).
    #[arg(long)]
    resume: bool,
    /// Continue from the last checkpoint if there is one, else start afresh (for restarts
    /// by a supervisor such as Kubernetes).
    #[arg(long, conflicts_with = "resume")]
    resume_if_present: bool,
    /// Start afresh in an --out that already holds a run, moving that run aside to
    /// <out>.old-<unix time> (never deleting it).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Plaintext without authentication (local tests only; loopback addresses only unless
    /// --insecure-non-loopback).
    #[arg(long)]
    insecure: bool,
    /// With --insecure, also listen on an address outside loopback: anyone who can reach it
    /// can take any party's seat and read every model.
    #[arg(long, requires = "insecure")]
    insecure_non_loopback: bool,
}

#[derive(clap::Args)]
struct JoinArgs {
    /// Server URL, e.g. https://server.example:7000.
    #[arg(long)]
    server: String,
    /// This party's identity (its certificate's name).
    #[arg(long)]
    id: String,
    /// The federation's config (data split, model, seed).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Use partition N (1-based) of the configured dataset (default: N from an id "party-N").
    #[arg(long)]
    partition: Option<usize>,
    /// Use this party's own IDX files instead of a partition.
    #[arg(long, conflicts_with = "partition")]
    idx_dir: Option<PathBuf>,
    /// Directory made by `federate keys` (uses ca.pem and parties/<id>.pem/.key).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Name on the server's certificate, if not the URL's host.
    #[arg(long)]
    server_name: Option<String>,
    /// Plaintext without authentication (local tests only).
    #[arg(long)]
    insecure: bool,
    /// Worker threads.
    #[arg(long)]
    threads: Option<usize>,
    /// A directory already holding the dataset's IDX files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where this party keeps its state between rounds (`<id>.json`, `<id>.f32`), so that
    /// after a restart it continues with its privacy ledger, control variate or dual.
    #[arg(long, default_value = "party-state")]
    state_dir: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A TOML config; every key is optional and defaults to the worked example.
    config: Option<PathBuf>,
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Run directory (default: runs/run-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a config key, e.g. --set train.lr=0.01 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// A directory already holding the dataset's IDX files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Dataset cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// No progress bar, only the final table.
    #[arg(long, short)]
    quiet: bool,
    /// Continue the run in --out from its last checkpoint (written every `checkpoint_every`
    /// rounds); without CONFIG, the run directory's config.toml is used. --rounds may raise
    /// the total. The result equals an uninterrupted run.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Start afresh in an --out that already holds a run, moving that run aside to
    /// <out>.old-<unix time> (never deleting it).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
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
        dp_noise: Option<crate::config::NoiseName>,
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
enum DataCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Bench { what: BenchCommand::Train { model, batches, threads, seconds, dp_clip, dp_noise } } => {
            if dp_noise.is_some() && dp_clip.is_none() {
                Err(anyhow::anyhow!("--dp-noise needs --dp-clip C"))
            } else {
                bench_train(&model, &batches, threads, seconds, dp_clip.map(|c| (c, dp_noise.map(|n| n.source()))))
            }
        }
        Command::Data { what: DataCommand::Fetch { dataset, data_dir, cache_dir } } => {
            fetch(&dataset, data_dir, cache_dir)
        }
        Command::Bench { what: BenchCommand::Net { parties, rounds, model, zstd } } => {
            bench_net(parties, rounds, &model, zstd)
        }
        Command::Bench { what: BenchCommand::NetParties { parties, rounds, model, zstd, server } } => init_threads(2)
            .and_then(|_| bench_net_config(parties, rounds, &model))
            .and_then(|cfg| bench::net_parties(&cfg, &server, zstd)),
        Command::Bench { what: BenchCommand::Aggregate { model, parties, reps } } => {
            bench_aggregate(&model, parties, reps)
        }
        Command::Privacy { what } => privacy(what),
        Command::Keys { out, parties, server_names, add, days, csr, sign } => {
            let how = match (csr, sign) {
                (true, _) => deploy::KeysMode::Request,
                (false, Some(path)) => deploy::KeysMode::Sign(path),
                (false, None) if add => deploy::KeysMode::Add,
                (false, None) => deploy::KeysMode::New,
            };
            deploy::keys(&out, &parties, &server_names, how, days)
        }
        Command::Serve(a) => serve(a),
        Command::Join(a) => join(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn bench_aggregate(model: &str, parties: usize, reps: usize) -> Result<()> {
    if parties < 4 {
        anyhow::bail!("--parties {parties}: Krum needs at least 4 models to compare");
    }
    let (len, rows) = bench::aggregate(model, parties, reps)?;
    let mean = rows.first().map(|r| r.ms).unwrap_or(f64::NAN);
    let gb = (parties * len * 4) as f64 / 1e9;
    println!(
        "{parties} models of {len} values ({model}), {} threads (the mean uses one), median of {reps}:",
        rayon::current_num_threads()
    );
    println!("{:<22} {:>10} {:>10} {:>12}", "rule", "ms", "GB/s read", "× the mean");
    for r in &rows {
        println!("{:<22} {:>10.1} {:>10.2} {:>12.1}", r.rule, r.ms, gb / (r.ms / 1e3), r.ms / mean);
    }
    Ok(())
}

fn init_threads(n: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")
}

fn quote(p: &std::path::Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

fn run(args: RunArgs) -> Result<()> {
    let mut sets = args.sets.clone();
    if let Some(s) = args.seed {
        sets.push(format!("seed={s}"));
    }
    if let Some(r) = args.rounds {
        sets.push(format!("rounds={r}"));
    }
    if let Some(t) = args.threads {
        sets.push(format!("threads={t}"));
    }
    if let Some(d) = &args.data_dir {
        sets.push(format!("data.data_dir={}", quote(d)));
    }
    if let Some(d) = &args.cache_dir {
        sets.push(format!("data.cache_dir={}", quote(d)));
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from(format!("runs/run-{t}"))
    });
    let config_path = args.config.clone().or_else(|| args.resume.then(|| out.join("config.toml")));
    let cfg = config::load(config_path.as_deref(), &sets)?;
    init_threads(cfg.threads)?;
    let ckpt_dir = out.join("checkpoint");
    let (mut dir, start) = if args.resume {
        let start = resume_point(&cfg, &out, &ckpt_dir)?;
        (report::RunDir::open(&out, &cfg, &start.records)?, Some(start))
    } else {
        if let Some(aside) = report::claim_out(&out, args.force)? {
            eprintln!("the earlier run in {} was moved to {}", out.display(), aside.display());
        }
        (report::RunDir::open(&out, &cfg, &[])?, None)
    };
    let tty = std::io::stderr().is_terminal() && !args.quiet;
    let bar = if tty {
        let b = ProgressBar::new(cfg.rounds as u64 * cfg.data.parties as u64 * cfg.train.epochs as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} round {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    if !args.quiet {
        println!(
            "federate: {} on {} ({} parties, {:?} partition), {} rounds, seed {}, {} threads → {}",
            cfg.model.name,
            cfg.data.dataset,
            cfg.data.parties,
            cfg.data.partition,
            cfg.rounds,
            cfg.seed,
            rayon::current_num_threads(),
            out.display()
        );
    }
    let started = Instant::now();
    let mut write_err: Option<anyhow::Error> = None;
    let rounds = cfg.rounds;
    let mut observer = |e: Event<'_>| match e {
        Event::RoundStarted { round, parties } => {
            if let Some(b) = &bar {
                b.set_message(format!("{round}/{rounds}: {parties} parties training"));
            }
        }
        Event::FitDone { round, id } => {
            if let Some(b) = &bar {
                b.set_message(format!("{round}/{rounds}: {id} done"));
            }
        }
        Event::RoundFinished { record: r, global, strategy, parties } => {
            let mut res = dir.record(r);
            if res.is_ok() && cfg.checkpoint_every > 0 && r.round % cfg.checkpoint_every == 0 {
                let parties = parties.states();
                let c = deploy::Checkpoint { round: r.round, seed: cfg.seed, global, strategy, parties };
                res = deploy::write_checkpoint(&ckpt_dir, c);
            }
            if let Err(e) = res {
                write_err.get_or_insert(e);
            }
            let line = format!(
                "round {:>3}/{rounds}  accuracy {}  train loss {}{}{}  failures {}  {:.1} s",
                r.round,
                r.accuracy.map(|a| format!("{:.2} %", a * 100.0)).unwrap_or_else(|| "-".into()),
                r.train_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
                r.epsilon.map(|e| format!("  ε {e:.3}")).unwrap_or_default(),
                match (r.strategy.get("client_epsilon"), r.strategy.get("clip_norm")) {
                    (Some(e), Some(c)) => format!("  client ε {e:.3}  clip {c:.3}"),
                    _ => String::new(),
                },
                r.failures.len(),
                r.seconds
            );
            match (&bar, args.quiet) {
                (Some(b), _) => b.println(line),
                (None, false) => println!("{line}"),
                _ => {}
            }
        }
    };
    let on_epoch: Option<sim::PartyEpochHook> = bar.clone().map(|b| {
        Arc::new(move |id: &str, round: u32, done: usize, all: usize| {
            b.inc(1);
            b.set_message(format!("{round}/{rounds}: {id} finished local epoch {done}/{all}"));
        }) as sim::PartyEpochHook
    });
    let result = sim::simulate(&cfg, &mut observer, on_epoch, start)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(e) = write_err {
        return Err(e.context("writing rounds.jsonl or the checkpoint"));
    }
    dir.finish(&cfg, &result)?;
    println!("\n{}", report::table(&result));
    println!(
        "final global accuracy {:.2} % after {} rounds in {:.1} s; run directory {}",
        result.records.last().and_then(|r| r.accuracy).unwrap_or(0.0) * 100.0,
        result.records.len(),
        started.elapsed().as_secs_f64(),
        dir.path().display()
    );
    Ok(())
}

/// Where `federate run --resume` continues: the checkpoint in `ckpt_dir` and the records of
/// the rounds before it, after checking that `cfg` is the configuration of the run in `out`.
fn resume_point(cfg: &config::Config, out: &std::path::Path, ckpt_dir: &std::path::Path) -> Result<sim::Start> {
    let saved = out.join("config.toml");
    let before = config::load(Some(&saved), &[]).with_context(|| format!("--resume: {}", saved.display()))?;
    let differ = config::differences(&before, cfg);
    if !differ.is_empty() {
        anyhow::bail!(
            "--resume: the config differs from the run's ({}) in {}; only rounds, threads, checkpoint_every \
             and the data directories may change",
            saved.display(),
            differ.join(", ")
        );
    }
    let spec = deploy::spec_for(cfg)?;
    let layout_len = federate_core::Learner::layout(&federate_core::NnLearner::new(spec, 1, 1)?).len();
    let r = deploy::read_checkpoint(ckpt_dir, cfg.seed, layout_len)?;
    if r.round >= cfg.rounds {
        anyhow::bail!(
            "--resume: the checkpoint is after round {} and the run is for {} rounds; pass --rounds with a larger total",
            r.round,
            cfg.rounds
        );
    }
    let records = report::read_rounds(&out.join("rounds.jsonl"), r.round)?;
    Ok(sim::Start {
        completed: r.round,
        values: r.values,
        records,
        strategy: (r.strategy, r.strategy_state),
        parties: r.parties,
    })
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn serve(a: ServeArgs) -> Result<()> {
    init_logging();
    let cfg = config::load(a.config.as_deref(), &a.sets)?;
    init_threads(cfg.threads)?;
    let resume = a.resume || (a.resume_if_present && deploy::has_checkpoint(&cfg, &a.out));
    if !resume {
        // A supervisor's restart before the first checkpoint starts afresh, keeping the
        // attempt it replaces.
        if let Some(aside) = report::claim_out(&a.out, a.force || a.resume_if_present)? {
            println!("federate serve: the earlier run in {} was moved to {}", a.out.display(), aside.display());
        }
    }
    deploy::serve(&cfg, &a.out, resume, deploy::Security::from_flags(a.insecure, a.insecure_non_loopback))
}

fn join(a: JoinArgs) -> Result<()> {
    init_logging();
    let mut sets = a.sets.clone();
    if let Some(t) = a.threads {
        sets.push(format!("threads={t}"));
    }
    if let Some(d) = &a.data_dir {
        sets.push(format!("data.data_dir={}", quote(d)));
    }
    let cfg = config::load(a.config.as_deref(), &sets)?;
    init_threads(cfg.threads)?;
    let data = match (&a.idx_dir, a.partition) {
        (Some(d), _) => deploy::PartyData::IdxDir(d.clone()),
        (None, Some(n)) => deploy::PartyData::Partition(n),
        (None, None) => match a.id.strip_prefix("party-").and_then(|n| n.parse().ok()) {
            Some(n) => deploy::PartyData::Partition(n),
            None => anyhow::bail!("give --partition N or --idx-dir DIR (the id '{}' is not of the form party-N)", a.id),
        },
    };
    let tls = match (&a.tls_dir, a.insecure) {
        (Some(d), false) => Some(federate_net::tls::TlsFiles {
            ca: d.join("ca.pem"),
            cert: d.join("parties").join(format!("{}.pem", a.id)),
            key: d.join("parties").join(format!("{}.key", a.id)),
        }),
        (None, true) => {
            tracing::warn!("--insecure: PLAINTEXT, the server is not authenticated; local tests only");
            None
        }
        (Some(_), true) => anyhow::bail!("--tls-dir and --insecure exclude each other"),
        (None, false) => anyhow::bail!("give --tls-dir DIR (from `federate keys`), or --insecure for a local test"),
    };
    deploy::join(&cfg, &a.server, &a.id, data, tls, a.server_name.clone(), &a.state_dir)
}

fn bench_train(
    model: &str,
    batches: &[usize],
    threads: usize,
    seconds: f64,
    dp_clip: Option<(f32, Option<federate_core::NoiseSource>)>,
) -> Result<()> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(!matches!(dp_clip, Some((c, _)) if c <= 0.0), "--dp-clip must be > 0");
    anyhow::ensure!(!batches.is_empty() && batches.iter().all(|&b| b >= 1), "--batches must list sizes ≥ 1");
    init_threads(threads)?;
    let (peak, flops, rows) = bench::train(model, batches, seconds, threads, dp_clip)?;
    println!(
        "model={model} mode={} threads={threads} train_mflop_per_example={:.1} gemm_peak_gflops={peak:.1} floor_samples_per_s={:.0}",
        match dp_clip {
            None => "sgd",
            Some((_, None)) => "dp-sgd-clip",
            Some((_, Some(federate_core::NoiseSource::Seeded))) => "dp-sgd-seeded-noise",
            Some((_, Some(federate_core::NoiseSource::Secure))) => "dp-sgd-secure-noise",
        },
        flops / 1e6,
        peak * 1e9 / flops
    );
    for r in rows {
        println!(
            "batch={} samples_per_s={:.0} ms_per_step={:.2} gflops={:.1} fraction_of_floor={:.2}",
            r.batch,
            r.samples_per_s,
            r.ms_per_step,
            r.gflops,
            r.gflops / peak
        );
    }
    Ok(())
}

fn bench_net_config(parties: usize, rounds: u32, model: &str) -> Result<config::Config> {
    config::load(
        None,
        &[
            format!("data.parties={parties}"),
            "data.partition=\"iid\"".into(),
            format!("rounds={rounds}"),
            format!("model.name=\"{model}\""),
            "train.epochs=1".into(),
        ],
    )
}

fn bench_net(parties: usize, rounds: u32, model: &str, zstd: bool) -> Result<()> {
    init_threads(2)?;
    let cfg = bench_net_config(parties, rounds, model)?;
    let mut child = vec![
        "bench".to_string(),
        "net-parties".into(),
        "--parties".into(),
        parties.to_string(),
        "--rounds".into(),
        rounds.to_string(),
        "--model".into(),
        model.into(),
    ];
    if zstd {
        child.push("--zstd".into());
    }
    let b = bench::net(&cfg, zstd, &child)?;
    println!("parties={parties} model={model} model_bytes={} zstd={zstd}", b.model_bytes);
    println!(
        "server_rss_idle_mb={:.1} server_rss_connected_mb={:.1} server_kb_per_connected_party={:.1} \
         server_rss_peak_mb={:.1} all_joined_seconds={:.1}",
        b.rss_idle_mb,
        b.rss_connected_mb,
        (b.rss_connected_mb - b.rss_idle_mb) * 1024.0 / parties.max(1) as f64,
        b.rss_peak_mb,
        b.join_seconds
    );
    for r in &b.rounds {
        println!(
            "round={} seconds={:.3} max_train_seconds={:.3} overhead_seconds={:.3} parties={} accuracy={:.4}",
            r.round,
            r.seconds,
            r.max_train_seconds,
            r.seconds - r.max_train_seconds,
            r.parties,
            r.accuracy
        );
    }
    let per_round = (b.sent + b.received) as f64 / b.rounds.len().max(1) as f64;
    println!(
        "bytes_per_round={per_round:.0} sent={} received={} ratio_to_model_x_parties={:.3}",
        b.sent,
        b.received,
        per_round / (b.model_bytes as f64 * parties as f64)
    );
    Ok(())
}

fn privacy(what: PrivacyCommand) -> Result<()> {
    use anyhow::bail;
    use federate_privacy::{Accountant, laplace};
    let name = |a: AccountantArg| match a {
        AccountantArg::Rdp => "rdp",
        AccountantArg::Pld => "pld",
    };
    match what {
        PrivacyCommand::Epsilon {
            sampling_rate: q,
            noise_multiplier,
            epsilon_per_step,
            steps,
            delta,
            mechanism,
            sampling,
            accountant,
        } => {
            let acc: Accountant = accountant.into();
            let eps = match mechanism {
                MechanismArg::Gaussian => {
                    let Some(sigma) = noise_multiplier else {
                        bail!("the gaussian mechanism needs --noise-multiplier σ");
                    };
                    if sampling == SamplingArg::FixedSize {
                        if accountant == AccountantArg::Pld {
                            bail!("fixed-size sampling is accounted by RDP: use --accountant rdp");
                        }
                        federate_privacy::rdp::epsilon_fixed_size(q, sigma, steps, delta)?
                    } else {
                        federate_privacy::epsilon(acc, q, sigma, steps, delta)?
                    }
                }
                MechanismArg::Laplace => {
                    let Some(e0) = epsilon_per_step else {
                        bail!("the laplace mechanism needs --epsilon-per-step ε₀");
                    };
                    if sampling == SamplingArg::FixedSize {
                        bail!(
                            "fixed-size sampling is accounted for the gaussian mechanism only: use --sampling poisson"
                        );
                    }
                    laplace::epsilon(acc, q, e0, steps, delta)?
                }
            };
            let noise = match mechanism {
                MechanismArg::Gaussian => {
                    format!("mechanism=gaussian noise_multiplier={}", noise_multiplier.unwrap_or(0.0))
                }
                MechanismArg::Laplace => {
                    format!("mechanism=laplace epsilon_per_step={}", epsilon_per_step.unwrap_or(0.0))
                }
            };
            let sampling = if sampling == SamplingArg::FixedSize { "fixed-size" } else { "poisson" };
            println!(
                "{noise} accountant={} sampling={sampling} sampling_rate={q} steps={steps} delta={delta}",
                name(accountant)
            );
            println!("epsilon={}", up6(eps));
        }
        PrivacyCommand::Noise { target_epsilon, sampling_rate: q, steps, delta, mechanism, accountant } => {
            let acc: Accountant = accountant.into();
            match mechanism {
                MechanismArg::Gaussian => {
                    let sigma = federate_privacy::noise_multiplier_for_epsilon(acc, target_epsilon, q, steps, delta)?;
                    let eps = |s: f64| federate_privacy::epsilon(acc, q, s, steps, delta);
                    // σ printed rounded up, so the printed value is on the safe side.
                    let (sigma, text) = safe_decimal(sigma, true, |s| Ok(eps(s)? <= target_epsilon))?;
                    println!("epsilon={} at noise_multiplier={text} ({})", up6(eps(sigma)?), name(accountant));
                    println!("noise_multiplier={text}");
                }
                MechanismArg::Laplace => {
                    let e0 = laplace::epsilon_per_step_for_epsilon(acc, target_epsilon, q, steps, delta)?;
                    let eps = |e: f64| laplace::epsilon(acc, q, e, steps, delta);
                    // ε₀ printed rounded down, so the printed value is on the safe side.
                    let (e0, text) = safe_decimal(e0, false, |e| Ok(eps(e)? <= target_epsilon))?;
                    println!("epsilon={} at epsilon_per_step={text} ({})", up6(eps(e0)?), name(accountant));
                    println!("epsilon_per_step={text}");
                }
            }
        }
    }
    Ok(())
}

/// `x` written with 6 decimals, rounded up (a printed ε is never below the computed one).
fn up6(x: f64) -> String {
    let mut v = (x * 1e6).ceil() / 1e6;
    let mut text = format!("{v:.6}");
    while text.parse::<f64>().is_ok_and(|p| p < x) {
        v += 1e-6;
        text = format!("{v:.6}");
    }
    text
}

/// The shortest decimal (4 to 12 places) for the calibrated `x`, rounded up (`up`) or down,
/// whose parsed value still satisfies `ok`; `x`'s exact shortest form if none does. What is
/// printed is then safe to copy into a config.
fn safe_decimal(x: f64, up: bool, ok: impl Fn(f64) -> Result<bool>) -> Result<(f64, String)> {
    for places in 4..=12usize {
        let scale = 10f64.powi(places as i32);
        let v = if up { (x * scale).ceil() / scale } else { (x * scale).floor() / scale };
        let text = format!("{v:.places$}");
        if let Ok(parsed) = text.parse::<f64>()
            && parsed > 0.0
            && ok(parsed)?
        {
            return Ok((parsed, text));
        }
    }
    Ok((x, format!("{x}")))
}

fn fetch(dataset: &str, data_dir: Option<PathBuf>, cache_dir: Option<PathBuf>) -> Result<()> {
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
