//! What `run` and `serve` do after every round, in one place: the record appended to
//! rounds.jsonl, a checkpoint when one is due, the console line.

use std::path::PathBuf;

use federate_core::{Parameters, RoundRecord};

use crate::report::RunDir;

/// What `run` and `serve` do after every round: append the record to rounds.jsonl, write a
/// checkpoint when one is due, and give the console line. A write error is kept (the first
/// one) and the run goes on; the command fails with it at the end.
pub(crate) struct RoundLog {
    /// Where checkpoints go.
    pub(crate) ckpt_dir: PathBuf,
    /// A checkpoint after every this many rounds (0: none).
    pub(crate) every: u32,
    /// The run's seed (recorded in checkpoints).
    pub(crate) seed: u64,
    /// Rounds in the run (for the line).
    pub(crate) rounds: u32,
    /// Appended to every line (`serve --insecure` says so on each).
    pub(crate) note: &'static str,
    /// The metric shown first on each line (`evaluation.metric`).
    pub(crate) metric: &'static str,
    /// The first write that failed.
    pub(crate) error: Option<anyhow::Error>,
}

impl RoundLog {
    /// Records round `r`, whose result is `global`, and returns its console line.
    pub(crate) fn finished(
        &mut self,
        dir: &mut RunDir,
        r: &RoundRecord,
        global: &Parameters,
        strategy: (&str, Option<federate_core::StrategyState>),
        parties: federate_core::Parties<'_>,
    ) -> String {
        let mut res = dir.record(r);
        if res.is_ok() && self.every > 0 && r.round.is_multiple_of(self.every) {
            let c = crate::checkpoint::Checkpoint {
                round: r.round,
                seed: self.seed,
                global,
                strategy,
                parties: parties.states(),
            };
            res = crate::checkpoint::write_checkpoint(&self.ckpt_dir, c);
        }
        if let Err(e) = res {
            self.error.get_or_insert(e);
        }
        round_line(r, self.rounds, self.note, self.metric)
    }
}

/// Bytes as megabytes (10^6) with three significant digits.
fn megabytes(b: u64) -> String {
    let mb = b as f64 / 1e6;
    if mb >= 100.0 {
        format!("{mb:.0}")
    } else if mb >= 10.0 {
        format!("{mb:.1}")
    } else {
        format!("{mb:.3}")
    }
}

/// The console line of a finished round: accuracy, training loss, ε (sample-level, and
/// client-level with its clip), who trained, who failed and why, parameter bytes each way,
/// time.
pub(crate) fn round_line(r: &RoundRecord, rounds: u32, note: &str, metric: &str) -> String {
    let failures = if r.failures.is_empty() {
        "0".to_string()
    } else {
        let each: Vec<String> = r.failures.iter().map(|f| format!("{} {} ({})", f.id, f.stage, f.reason)).collect();
        format!("{} [{}]", r.failures.len(), each.join("; "))
    };
    let pct = |a: f64| format!("{:.2} %", a * 100.0);
    let shown = match metric {
        "accuracy" => format!("accuracy {}", r.accuracy.map(pct).unwrap_or_else(|| "-".into())),
        "balanced_accuracy" | "f1" | "auc" => format!(
            "{metric} {}  accuracy {}",
            r.metric(metric).map(pct).unwrap_or_else(|| "-".into()),
            r.accuracy.map(pct).unwrap_or_else(|| "-".into())
        ),
        _ => format!("{metric} {}", r.metric(metric).map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())),
    };
    format!(
        "round {:>3}/{rounds}  {shown}  train loss {}{}{}  parties {}  failures {failures}  sent {} MB  received {} \
         MB  {:.1} s{note}",
        r.round,
        r.train_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        r.epsilon.map(|e| format!("  ε {e:.3}")).unwrap_or_default(),
        match (r.strategy.get("client_epsilon"), r.strategy.get("clip_norm")) {
            (Some(e), Some(c)) => format!("  client ε {e:.3}  clip {c:.3}"),
            _ => String::new(),
        },
        r.fit.len(),
        megabytes(r.bytes_down),
        megabytes(r.bytes_up),
        r.seconds
    )
}
