//! Run outputs: the run directory (resolved `config.toml`, `rounds.jsonl` written as rounds
//! finish, `model.safetensors`, `summary.json`) and the final table.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use federate_core::{Parameters, RoundRecord};
use safetensors::{Dtype, tensor::TensorView};

use federate_core::metrics::{EvalStats, MetricInfo};
use federate_data::table::Preprocessing;

use crate::config::Config;
use crate::sim::SimResult;

/// The directory a run writes into.
pub struct RunDir {
    path: PathBuf,
    rounds: BufWriter<File>,
}

/// Makes `path` free for a new run: nothing to do if it does not exist or is empty. One that
/// holds anything (an earlier run's records, checkpoint, model) is never overwritten: with
/// `force` it is moved aside to `<path>.old-<unix time>` (returned), without it this is an
/// error that names the ways out.
pub fn claim_out(path: &Path, force: bool) -> Result<Option<PathBuf>> {
    let occupied = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading the run directory {}", path.display())),
    };
    if !occupied {
        return Ok(None);
    }
    if !force {
        anyhow::bail!(
            "{} already holds a run (its records, checkpoint and model would be overwritten): pass --resume to \
             continue it, --force to move it aside, or choose another --out",
            path.display()
        );
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut aside = PathBuf::from(format!("{}.old-{t}", path.display()));
    let mut n = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{}.old-{t}-{n}", path.display()));
        n += 1;
    }
    std::fs::rename(path, &aside)
        .with_context(|| format!("moving the earlier run {} aside to {}", path.display(), aside.display()))?;
    Ok(Some(aside))
}

impl RunDir {
    /// Creates the directory (if needed) and writes the resolved config and `rounds.jsonl`
    /// holding `kept`: nothing for a new run; for a resumed one the records of the rounds
    /// before the checkpoint (those after it will be run again), written via a temporary
    /// file and a rename, so a crash leaves the old file whole.
    pub fn open(path: &Path, cfg: &Config, kept: &[RoundRecord]) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("cannot create run directory {}", path.display()))?;
        let text = toml::to_string_pretty(cfg).context("serialising the config")?;
        std::fs::write(path.join("config.toml"), text).with_context(|| format!("writing {}", path.display()))?;
        let target = path.join("rounds.jsonl");
        let mut lines = Vec::new();
        for r in kept {
            serde_json::to_writer(&mut lines, r)?;
            lines.push(b'\n');
        }
        atomic_write(&target, &lines)?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .with_context(|| format!("appending to {}", target.display()))?;
        Ok(RunDir { path: path.to_path_buf(), rounds: BufWriter::new(f) })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one round's record as a JSON line, flushed at once.
    pub fn record(&mut self, r: &RoundRecord) -> Result<()> {
        serde_json::to_writer(&mut self.rounds, r)?;
        self.rounds.write_all(b"\n")?;
        self.rounds.flush()?;
        Ok(())
    }

    /// Writes the final model and the summary.
    pub fn finish(&mut self, cfg: &Config, result: &SimResult) -> Result<()> {
        let pre = result.preprocessing.as_ref();
        write_safetensors(&self.path.join("model.safetensors"), &result.global, cfg, pre)?;
        if let Some(p) = pre {
            atomic_write(&self.path.join("preprocessing.json"), serde_json::to_string_pretty(p)?.as_bytes())?;
        }
        let fed = merged(result.parties.iter().map(|p| Some(&p.federated_stats)));
        let alone = merged(result.parties.iter().map(|p| p.alone_stats.as_ref()));
        let summary = serde_json::json!({
            "rounds": result.records.len(),
            "accuracy": result.records.last().and_then(|r| r.accuracy),
            "metrics": result.records.last().map(|r| r.metrics.clone()).unwrap_or_default(),
            "parties": result.parties,
            "federated": fed.map(|s| s.metrics()),
            "alone": alone.map(|s| s.metrics()),
            "pooled": result.pooled.as_ref().map(|s| s.metrics()),
            "seconds": result.records.iter().map(|r| r.seconds).sum::<f64>(),
            "bytes_down": result.records.iter().map(|r| r.bytes_down).sum::<u64>(),
            "bytes_up": result.records.iter().map(|r| r.bytes_up).sum::<u64>(),
        });
        std::fs::write(self.path.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        Ok(())
    }
}

/// Writes `bytes` to `path` by write-to-temporary, sync and rename, so a crash leaves either
/// the old or the new file, never a torn one.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The records of rounds 1..=`through` from a run's `rounds.jsonl` (later lines, including a
/// line cut short by a crash, are left out).
pub fn read_rounds(path: &Path, through: u32) -> Result<Vec<RoundRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--resume: reading {}", path.display()))?;
    let mut out = Vec::with_capacity((through as usize).min(1 << 16));
    for (i, line) in text.lines().enumerate() {
        if out.len() == through as usize {
            break;
        }
        let r: RoundRecord = serde_json::from_str(line)
            .with_context(|| format!("--resume: {} line {} is not a round record", path.display(), i + 1))?;
        if r.round as usize != out.len() + 1 {
            anyhow::bail!(
                "--resume: {} line {} is round {}, expected {}",
                path.display(),
                i + 1,
                r.round,
                out.len() + 1
            );
        }
        out.push(r);
    }
    if out.len() < through as usize {
        anyhow::bail!(
            "--resume: {} holds {} rounds, the checkpoint is after round {through}; the run directory is incomplete",
            path.display(),
            out.len()
        );
    }
    Ok(out)
}

/// Statistics of several parties added up (`None` when any is missing or they do not add up).
fn merged<'a>(stats: impl Iterator<Item = Option<&'a EvalStats>>) -> Option<EvalStats> {
    let mut out = EvalStats::default();
    for s in stats {
        out.merge(s?).ok()?;
    }
    Some(out)
}

/// Saves parameters as safetensors, one named tensor per layer weight and bias; a table's
/// model carries its preprocessing (features and scaling) in the metadata.
pub fn write_safetensors(path: &Path, params: &Parameters, cfg: &Config, pre: Option<&Preprocessing>) -> Result<()> {
    let bytes: Vec<u8> = params.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut views = Vec::new();
    for t in params.layout.tensors() {
        let len: usize = t.shape.iter().product();
        let view = TensorView::new(Dtype::F32, t.shape.clone(), &bytes[t.offset * 4..(t.offset + len) * 4])
            .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
        views.push((t.name.clone(), view));
    }
    // One metadata entry: a map of several would serialise in random order, and the file
    // must be byte-identical for the same seed.
    let mut meta = HashMap::new();
    let mut text =
        format!("model={}; activations NHWC; conv weights [kh, kw, in, out]; linear weights [in, out]", cfg.model.name);
    if let Some(p) = pre {
        text.push_str(&format!("; preprocessing={}", serde_json::to_string(p)?));
    }
    meta.insert("federate".to_string(), text);
    let data = safetensors::tensor::serialize(views, Some(meta)).map_err(|e| anyhow::anyhow!("safetensors: {e}"))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// The final line's measure: `accuracy 96.48 %`, or the chosen metric with the accuracy of a
/// classification beside it (`auc 98.88 % (accuracy 96.48 %)`), or `rmse 55.6445`.
pub fn final_measure(last: Option<&RoundRecord>, metric: &MetricInfo) -> String {
    let acc = last.and_then(|r| r.accuracy).map(|a| format!("{:.2} %", 100.0 * a)).unwrap_or_else(|| "-".into());
    match metric.name {
        "accuracy" => format!("accuracy {acc}"),
        name if last.is_some_and(|r| r.metrics.contains_key("accuracy")) => {
            format!("{name} {} (accuracy {acc})", show(metric, last.and_then(|r| r.metric(name))))
        }
        name => format!("{name} {}", show(metric, last.and_then(|r| r.metric(name)))),
    }
}

/// A metric's value as the table shows it: a percentage for fractions, else four decimals.
fn show(metric: &MetricInfo, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if matches!(metric.name, "accuracy" | "balanced_accuracy" | "f1" | "auc") => {
            format!("{:.2} %", 100.0 * x)
        }
        Some(x) => format!("{x:.4}"),
    }
}

/// The final table: per party, the chosen metric alone and of the federated model on its
/// test set; then the pooled line (every party's test set as one, the metric read off their
/// summed statistics) and, when trained, the model trained on the pooled rows.
pub fn table(result: &SimResult, metric: &MetricInfo) -> String {
    let mut s = String::new();
    let dp = result.parties.iter().any(|p| p.epsilon.is_some());
    let eps = |e: Option<f64>| {
        if dp { format!(" {:>8}", e.map(|e| format!("{e:.3}")).unwrap_or_else(|| "-".into())) } else { String::new() }
    };
    let head = if dp { format!(" {:>8}", "ε") } else { String::new() };
    let m = |stats: Option<&EvalStats>| stats.and_then(|s| s.metrics().get(metric.name).copied());
    let w = result.parties.iter().map(|p| p.id.chars().count()).max().unwrap_or(0).max(10);
    s.push_str(&format!(
        "{:<w$} {:>7} {:>6} {:>12} {:>12}{head}   ({})\n",
        "party", "train", "test", "alone", "federated", metric.name
    ));
    for p in &result.parties {
        s.push_str(&format!(
            "{:<w$} {:>7} {:>6} {:>12} {:>12}{}\n",
            p.id,
            p.train_examples,
            p.test_examples,
            show(metric, m(p.alone_stats.as_ref())),
            show(metric, m(Some(&p.federated_stats))),
            eps(p.epsilon)
        ));
    }
    let train: usize = result.parties.iter().map(|p| p.train_examples).sum();
    let test: usize = result.parties.iter().map(|p| p.test_examples).sum();
    let alone = merged(result.parties.iter().map(|p| p.alone_stats.as_ref()));
    let fed = merged(result.parties.iter().map(|p| Some(&p.federated_stats)));
    s.push_str(&format!(
        "{:<w$} {:>7} {:>6} {:>12} {:>12}{}\n",
        "all",
        train,
        test,
        show(metric, m(alone.as_ref())),
        show(metric, m(fed.as_ref())),
        eps(result.parties.iter().filter_map(|p| p.epsilon).reduce(f64::max))
    ));
    if let Some(pooled) = &result.pooled {
        s.push_str(&format!(
            "{:<w$} {:>7} {:>6} {:>12} {:>12}\n",
            "pooled",
            train,
            test,
            "",
            show(metric, m(Some(pooled))),
        ));
    }
    s
}
