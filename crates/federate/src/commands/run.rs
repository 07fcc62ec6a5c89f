//! `federate run`: a simulated federation in this process, with progress, records,
//! checkpoints and `--resume`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use federate_core::Event;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::*;
use crate::init_threads;
use crate::{assemble, checkpoint, config, report, round_log, sim};

pub(crate) fn quote(p: &std::path::Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// The flags that override config keys, as `--set` lines after the user's own.
fn flag_sets(args: &RunArgs) -> Vec<String> {
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
    sets
}

/// A progress bar over every party's local epochs when stderr is a terminal.
fn progress(cfg: &config::Config, quiet: bool) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || quiet {
        return None;
    }
    let b = ProgressBar::new(cfg.rounds as u64 * cfg.data.parties as u64 * cfg.train.epochs as u64);
    b.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} round {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(b)
}

/// The run's first line: what, where, how many.
fn announce(cfg: &config::Config, out: &std::path::Path) {
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

/// The run directory, and where a resumed run starts.
fn open_run(
    args: &RunArgs,
    cfg: &config::Config,
    out: &std::path::Path,
    ckpt_dir: &std::path::Path,
) -> Result<(report::RunDir, Option<sim::Start>)> {
    if args.resume {
        let start = resume_point(cfg, out, ckpt_dir)?;
        return Ok((report::RunDir::open(out, cfg, &start.records)?, Some(start)));
    }
    if let Some(aside) = report::claim_out(out, args.force)? {
        eprintln!("the earlier run in {} was moved to {}", out.display(), aside.display());
    }
    Ok((report::RunDir::open(out, cfg, &[])?, None))
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    let sets = flag_sets(&args);
    let out = args.out.clone().unwrap_or_else(|| {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from(format!("runs/run-{t}"))
    });
    let config_path = args.config.clone().or_else(|| args.resume.then(|| out.join("config.toml")));
    let cfg = config::load(config_path.as_deref(), &sets)?;
    init_threads(cfg.threads)?;
    // The data first: a file that cannot be read leaves no run directory behind.
    let data = assemble::federation_data(&cfg)?;
    let ckpt_dir = out.join("checkpoint");
    let (mut dir, start) = open_run(&args, &cfg, &out, &ckpt_dir)?;
    let bar = progress(&cfg, args.quiet);
    if !args.quiet {
        announce(&cfg, &out);
    }
    let started = Instant::now();
    let rounds = cfg.rounds;
    let mut log = round_log::RoundLog {
        ckpt_dir: ckpt_dir.clone(),
        every: cfg.checkpoint_every,
        seed: cfg.seed,
        rounds,
        note: "",
        metric: cfg.metric()?.name,
        error: None,
    };
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
        Event::RoundFinished { record, global, strategy, parties } => {
            let line = log.finished(&mut dir, record, global, strategy, parties);
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
    let result = sim::simulate(&cfg, data, &mut observer, on_epoch, start)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(e) = log.error {
        return Err(e.context("writing rounds.jsonl or the checkpoint"));
    }
    dir.finish(&cfg, &result)?;
    let metric = cfg.metric()?;
    println!("\n{}", report::table(&result, &metric));
    println!(
        "final global {} after {} rounds in {:.1} s; run directory {}",
        report::final_measure(result.records.last(), &metric),
        result.records.len(),
        started.elapsed().as_secs_f64(),
        dir.path().display()
    );
    Ok(())
}

/// Where `federate run --resume` continues: the checkpoint in `ckpt_dir` and the records of
/// the rounds before it, after checking that `cfg` is the configuration of the run in `out`.
pub(crate) fn resume_point(
    cfg: &config::Config,
    out: &std::path::Path,
    ckpt_dir: &std::path::Path,
) -> Result<sim::Start> {
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
    let spec = assemble::spec_for(cfg)?;
    let layout_len = federate_core::Learner::layout(&federate_core::NnLearner::new(spec, 1, 1)?).len();
    let r = checkpoint::read_checkpoint(ckpt_dir, cfg.seed, layout_len)?;
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
