//! Checkpoints of a run (`federate run` and `federate serve`): the global model, the
//! strategy's state and the state of the parties the server holds, each vector in its own
//! file named with the round, plus `checkpoint.json` naming them with their SHA-256 (format
//! 2). Written by write-to-temporary and rename, so a crash leaves the old or the new
//! checkpoint; read back refusing anything that does not match, never loading garbage.

use std::path::Path;

use anyhow::{Context, Result, bail};
use federate_core::{AlgorithmState, Parameters, PartyState};
use federate_privacy::Ledger;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::report::atomic_write;

/// What a checkpoint holds besides the parameters.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    format: u32,
    round: u32,
    seed: u64,
    strategy: String,
    /// The strategy's scalar state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy_state: Option<String>,
    /// Lengths of the strategy's state vectors, stored one after another in `strategy_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    strategy_vectors: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy_file: Option<String>,
    num_values: usize,
    params_file: String,
    /// SHA-256 (hex) of every file the checkpoint names: a file that does not match is
    /// refused, never loaded as a model.
    files: std::collections::BTreeMap<String, String>,
    /// The state of parties the server holds (a simulation's), in `parties_file` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parties: Vec<PartyMeta>,
    /// Every party's algorithm-state vectors, each `num_values` long, party after party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parties_file: Option<String>,
}

/// One party's state in a checkpoint; its vectors are in the checkpoint's `parties_file`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PartyMeta {
    pub(crate) id: String,
    /// Every DP release of the party's data (its privacy ledger).
    #[serde(default, skip_serializing_if = "is_empty_ledger")]
    pub(crate) ledger: Ledger,
    /// What builds before the ledger recorded: a bare step count, without the q and σ it was
    /// taken at. Read only to refuse it (it cannot be composed soundly).
    #[serde(default, skip_serializing)]
    pub(crate) dp_steps: u64,
    /// The algorithm whose party-side state the party holds (its scalars here, its vectors in
    /// the vector file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) algorithm: Option<String>,
    /// That state's scalars (ADMM: ρ).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) scalars: Vec<f64>,
    /// How many vectors that state has.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) vectors: usize,
    /// Format 2 (read only): ADMM's ρ, when the party held a dual and a last solve.
    #[serde(default, skip_serializing)]
    pub(crate) admm_rho: Option<f32>,
    /// Format 2 (read only): whether the party held a SCAFFOLD control variate.
    #[serde(default, skip_serializing)]
    pub(crate) scaffold: bool,
    /// Whether the party holds an error-feedback residual (compressed updates): one more
    /// vector, after the algorithm's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) residual: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Most vectors one party's algorithm state may claim.
const MAX_STATE_VECTORS: usize = 16;

impl PartyMeta {
    /// The algorithm state this entry describes, as (name, scalars, vector count), from either
    /// format.
    fn algorithm(&self) -> Option<(String, Vec<f64>, usize)> {
        match (&self.algorithm, self.admm_rho, self.scaffold) {
            (Some(name), _, _) => Some((name.clone(), self.scalars.clone(), self.vectors)),
            (None, Some(rho), _) => Some(("admm".into(), vec![rho as f64], 2)),
            (None, None, true) => Some(("scaffold".into(), Vec::new(), 1)),
            (None, None, false) => None,
        }
    }
}

pub(crate) const CHECKPOINT: &str = "checkpoint.json";

/// The checkpoint format this build writes: 2 added checksums and moved the round records out
/// (they are in the run directory's rounds.jsonl, appended, never rewritten); 3 stores any
/// algorithm's party state (name, scalars, vectors) instead of ADMM's and SCAFFOLD's fields.
/// Format 2 is still read.
const FORMAT: u32 = 3;

/// Largest checkpoint.json read (it holds names, scalars and ledgers, not vectors).
const MAX_META_BYTES: u64 = 64 << 20;

fn is_empty_ledger(l: &Ledger) -> bool {
    l.entries.is_empty()
}

pub(crate) fn f32_bytes<'a>(vectors: impl IntoIterator<Item = &'a [f32]>) -> Vec<u8> {
    vectors.into_iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads `name` in `dir` (a plain file name from the checkpoint) as exactly `len` f32 values
/// whose SHA-256 is the one `sums` records for it.
pub(crate) fn read_f32s(
    dir: &Path,
    name: &str,
    len: usize,
    sums: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<f32>> {
    let meta = dir.join(CHECKPOINT);
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        bail!("{}: bad file name '{name}' in the checkpoint", meta.display());
    }
    let p = dir.join(name);
    let Some(want) = len.checked_mul(4) else {
        bail!("{}: {len} values for {name} is beyond any model", meta.display());
    };
    // The size is checked before reading, so a wrong or hostile file is never loaded whole.
    let size = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?.len();
    if size != want as u64 {
        bail!("{}: {size} bytes, the checkpoint says {want}", p.display());
    }
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    if bytes.len() != want {
        bail!("{}: {} bytes, the checkpoint says {want}", p.display(), bytes.len());
    }
    match sums.get(name) {
        None => {
            bail!("{}: names {name} without its checksum; the checkpoint is not one federate wrote", meta.display())
        }
        Some(sum) if *sum != federate_data::fetch::sha256_hex(&bytes) => bail!(
            "{}: its SHA-256 does not match the one in {} (corrupted or replaced): restore the checkpoint \
             directory from a backup, or start a new run",
            p.display(),
            meta.display()
        ),
        Some(_) => {}
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The parties' states as metadata plus their vectors, in the order a file stores them.
pub(crate) fn encode_parties<'a>(
    parties: impl IntoIterator<Item = (&'a str, &'a PartyState)>,
) -> (Vec<PartyMeta>, Vec<&'a [f32]>) {
    let mut metas = Vec::new();
    let mut vectors: Vec<&[f32]> = Vec::new();
    for (id, p) in parties {
        let a = p.algorithm.as_ref();
        vectors.extend(a.iter().flat_map(|a| a.vectors.iter().map(Vec::as_slice)));
        vectors.extend(p.residual.as_deref());
        metas.push(PartyMeta {
            id: id.to_string(),
            ledger: p.ledger.clone(),
            dp_steps: 0,
            algorithm: a.map(|a| a.name.clone()),
            scalars: a.map(|a| a.scalars.clone()).unwrap_or_default(),
            vectors: a.map_or(0, |a| a.vectors.len()),
            admm_rho: None,
            scaffold: false,
            residual: p.residual.is_some(),
        });
    }
    (metas, vectors)
}

/// Writes `vectors` (each `len` long) to `dir/name` when there are any; returns the file name.
pub(crate) fn write_vectors(
    dir: &Path,
    name: String,
    vectors: &[&[f32]],
    len: usize,
    sums: &mut std::collections::BTreeMap<String, String>,
) -> Result<Option<String>> {
    if let Some(v) = vectors.iter().find(|v| v.len() != len) {
        bail!("a party's state vector has {} values, the model {len}", v.len());
    }
    if vectors.is_empty() {
        return Ok(None);
    }
    write_summed(dir, &name, &f32_bytes(vectors.iter().copied()), sums)?;
    Ok(Some(name))
}

/// Writes `bytes` to `name` in `dir` atomically and records its SHA-256 in `sums`.
fn write_summed(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sums: &mut std::collections::BTreeMap<String, String>,
) -> Result<()> {
    atomic_write(&dir.join(name), bytes)?;
    sums.insert(name.to_string(), federate_data::fetch::sha256_hex(bytes));
    Ok(())
}

/// The inverse of [`encode_parties`]: reads the vectors `metas` claim (each `len` long) from
/// `file` in `dir`.
pub(crate) fn decode_parties(
    dir: &Path,
    metas: Vec<PartyMeta>,
    file: Option<&str>,
    len: usize,
    sums: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, PartyState)>> {
    if let Some(p) = metas.iter().find(|p| p.algorithm().is_some_and(|(_, _, n)| n > MAX_STATE_VECTORS)) {
        bail!("{}: party '{}' claims more than {MAX_STATE_VECTORS} state vectors", dir.display(), p.id);
    }
    let count: usize = metas.iter().map(|p| p.algorithm().map_or(0, |(_, _, n)| n) + usize::from(p.residual)).sum();
    let all = match (file, count) {
        (_, 0) => Vec::new(),
        (Some(f), _) => read_f32s(dir, f, count.saturating_mul(len), sums)?,
        (None, _) => bail!("{}: party state without its vector file", dir.display()),
    };
    let mut chunks = all.chunks_exact(len.max(1)).map(<[f32]>::to_vec);
    let mut parties = Vec::with_capacity(metas.len());
    for p in metas {
        if p.dp_steps > 0 && p.ledger.entries.is_empty() {
            bail!(
                "{}: party '{}' has a DP step count ({}) from an older federate, without the sampling rate and \
                 noise it was taken at, so its privacy spent cannot be accounted; finish that run with the build \
                 that made it, or start a new one",
                dir.display(),
                p.id,
                p.dp_steps
            );
        }
        // Exactly `count` vectors were read, as many as the parties claim.
        let mut next = || chunks.next().unwrap_or_default();
        let algorithm = p.algorithm().map(|(name, scalars, n)| AlgorithmState {
            name,
            scalars,
            vectors: (0..n).map(|_| next()).collect(),
        });
        let residual = p.residual.then(&mut next);
        parties.push((p.id, PartyState { ledger: p.ledger, algorithm, residual }));
    }
    Ok(parties)
}

/// What one checkpoint records: the round it follows, the global model, the strategy's and
/// the parties' state. The round records are not in it: they are appended to the run
/// directory's rounds.jsonl as rounds finish and read back from there on resume.
pub(crate) struct Checkpoint<'a> {
    pub(crate) round: u32,
    pub(crate) seed: u64,
    pub(crate) global: &'a Parameters,
    pub(crate) strategy: (&'a str, Option<federate_core::StrategyState>),
    pub(crate) parties: Vec<(String, PartyState)>,
}

/// Writes the checkpoint `c` into `dir`: the vectors to new files, then the metadata naming
/// them, each by write-to-temporary and rename, so a crash at any point leaves either the old
/// or the new checkpoint, never a torn one.
pub(crate) fn write_checkpoint(dir: &Path, c: Checkpoint<'_>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("checkpoint directory {}", dir.display()))?;
    let round = c.round;
    let mut files = std::collections::BTreeMap::new();
    let params_file = format!("params-{round:05}.f32");
    write_summed(dir, &params_file, &f32_bytes([c.global.values.as_slice()]), &mut files)?;
    let (state, lengths, strategy_file) = match c.strategy.1 {
        None => (None, Vec::new(), None),
        Some(s) => {
            let lengths: Vec<usize> = s.vectors.iter().map(Vec::len).collect();
            let file = (!lengths.is_empty()).then(|| format!("strategy-{round:05}.f32"));
            if let Some(f) = &file {
                write_summed(dir, f, &f32_bytes(s.vectors.iter().map(Vec::as_slice)), &mut files)?;
            }
            (Some(s.meta), lengths, file)
        }
    };
    let (parties, vectors) = encode_parties(c.parties.iter().map(|(id, p)| (id.as_str(), p)));
    let parties_file = write_vectors(dir, format!("parties-{round:05}.f32"), &vectors, c.global.len(), &mut files)?;
    let meta = CheckpointMeta {
        format: FORMAT,
        round,
        seed: c.seed,
        strategy: c.strategy.0.to_string(),
        strategy_state: state,
        strategy_vectors: lengths,
        strategy_file: strategy_file.clone(),
        num_values: c.global.len(),
        params_file: params_file.clone(),
        files,
        parties,
        parties_file: parties_file.clone(),
    };
    atomic_write(&dir.join(CHECKPOINT), &serde_json::to_vec_pretty(&meta)?)?;
    let current = [Some(&params_file), strategy_file.as_ref(), parties_file.as_ref()];
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = ["params-", "strategy-", "parties-"].iter().any(|p| name.starts_with(p));
        if ours && !current.contains(&Some(&name)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// What a checkpoint restores.
pub(crate) struct Restored {
    pub(crate) round: u32,
    pub(crate) values: Vec<f32>,
    pub(crate) strategy: String,
    pub(crate) strategy_state: Option<federate_core::StrategyState>,
    pub(crate) parties: Vec<(String, PartyState)>,
}

/// Reads the checkpoint in `dir` for a run with `seed` and a model of `layout_len` values.
/// Every file it names must match its recorded SHA-256; anything malformed (crafted JSON,
/// absurd sizes, truncated or random files) is an error naming the file, never a panic or a
/// model full of garbage.
pub(crate) fn read_checkpoint(dir: &Path, seed: u64, layout_len: usize) -> Result<Restored> {
    let meta_path = dir.join(CHECKPOINT);
    let size = std::fs::metadata(&meta_path)
        .with_context(|| {
            format!(
                "--resume: no checkpoint at {} (was the server ever run with this checkpoint_dir?)",
                meta_path.display()
            )
        })?
        .len();
    if size > MAX_META_BYTES {
        bail!(
            "{}: {size} bytes; a checkpoint's metadata is far smaller (not a federate checkpoint)",
            meta_path.display()
        );
    }
    let text = std::fs::read_to_string(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    let version: Version =
        serde_json::from_str(&text).with_context(|| format!("{}: not a federate checkpoint", meta_path.display()))?;
    if !(2..=FORMAT).contains(&version.format) {
        bail!(
            "{}: checkpoint format {} is not one this build reads (2 or 3, with checksums): finish that run \
             with the build that wrote it, or start a new one",
            meta_path.display(),
            version.format
        );
    }
    let meta: CheckpointMeta =
        serde_json::from_str(&text).with_context(|| format!("{}: not a federate checkpoint", meta_path.display()))?;
    if meta.seed != seed {
        bail!("{}: the checkpoint was made with seed {}, the config says {seed}", meta_path.display(), meta.seed);
    }
    if meta.num_values != layout_len {
        bail!(
            "{}: the checkpoint's model has {} values, the configured model {layout_len}: same model and config needed",
            meta_path.display(),
            meta.num_values
        );
    }
    let values = read_f32s(dir, &meta.params_file, layout_len, &meta.files)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{}: value {i} of the model is {} (not finite)", dir.join(&meta.params_file).display(), values[i]);
    }
    let strategy_state = match meta.strategy_state {
        None => None,
        Some(text) => {
            let mut vectors = Vec::new();
            if let Some(f) = &meta.strategy_file {
                let total = meta.strategy_vectors.iter().try_fold(0usize, |a, &n| a.checked_add(n));
                let Some(total) = total else {
                    bail!("{}: the strategy's vector lengths overflow", meta_path.display());
                };
                let all = read_f32s(dir, f, total, &meta.files)?;
                let mut at = 0;
                for &n in &meta.strategy_vectors {
                    vectors.push(all[at..at + n].to_vec());
                    at += n;
                }
            }
            Some(federate_core::StrategyState { meta: text, vectors })
        }
    };
    let parties = decode_parties(dir, meta.parties, meta.parties_file.as_deref(), layout_len, &meta.files)?;
    Ok(Restored { round: meta.round, values, strategy: meta.strategy, strategy_state, parties })
}

/// Whether `federate serve` would find a checkpoint to resume from.
pub fn has_checkpoint(cfg: &Config, out: &Path) -> bool {
    cfg.server.checkpoint_dir.clone().unwrap_or_else(|| out.join("checkpoint")).join(CHECKPOINT).exists()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use federate_core::{Layout, StrategyState, TensorSpec};
    use std::sync::Arc;

    fn checkpoint<'a>(
        round: u32,
        global: &'a Parameters,
        strategy: (&'a str, Option<StrategyState>),
        parties: Vec<(String, PartyState)>,
    ) -> Checkpoint<'a> {
        Checkpoint { round, seed: 7, global, strategy, parties }
    }

    #[test]
    fn checkpoints_carry_the_strategy_state() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![3], offset: 0 }]));
        let global = Parameters::new(vec![1.0, 2.0, 3.0], layout).unwrap();
        let state = StrategyState { meta: "fedadam".into(), vectors: vec![vec![0.5; 3], vec![0.25; 3]] };
        write_checkpoint(dir.path(), checkpoint(4, &global, ("fedadam", Some(state.clone())), vec![])).unwrap();
        let r = read_checkpoint(dir.path(), 7, 3).unwrap();
        assert_eq!((r.round, r.values, r.strategy.as_str()), (4, vec![1.0, 2.0, 3.0], "fedadam"));
        assert_eq!(r.strategy_state, Some(state));
        // The next checkpoint replaces the state file; a stateless strategy writes none.
        write_checkpoint(dir.path(), checkpoint(5, &global, ("fedavg", None), vec![])).unwrap();
        let r = read_checkpoint(dir.path(), 7, 3).unwrap();
        assert_eq!(r.strategy_state, None);
        let files: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(!files.iter().any(|f| f.starts_with("strategy-")), "{files:?}");
        // A truncated state file is an error that names it, not a silent reset.
        let state = StrategyState { meta: "fedadam".into(), vectors: vec![vec![0.5; 3]] };
        write_checkpoint(dir.path(), checkpoint(6, &global, ("fedadam", Some(state)), vec![])).unwrap();
        std::fs::write(dir.path().join("strategy-00006.f32"), [0u8; 4]).unwrap();
        let e = read_checkpoint(dir.path(), 7, 3).err().unwrap().to_string();
        assert!(e.contains("strategy-00006.f32"), "{e}");
    }

    #[test]
    fn corrupted_checkpoints_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![64], offset: 0 }]));
        let global = Parameters::new((0..64).map(|i| i as f32).collect(), layout).unwrap();
        let state = StrategyState { meta: "fedadam".into(), vectors: vec![vec![0.5; 64]] };
        write_checkpoint(dir.path(), checkpoint(2, &global, ("fedadam", Some(state)), vec![])).unwrap();
        read_checkpoint(dir.path(), 7, 64).unwrap();
        let params = dir.path().join("params-00002.f32");
        let good = std::fs::read(&params).unwrap();
        // Random bytes of the right size: refused by the checksum, never resumed into a model.
        let mut x = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..good.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&params, &random).unwrap();
        let e = format!("{:#}", read_checkpoint(dir.path(), 7, 64).err().unwrap());
        assert!(e.contains("params-00002.f32") && e.contains("SHA-256 does not match"), "{e}");
        // Truncated.
        std::fs::write(&params, &good[..100]).unwrap();
        let e = format!("{:#}", read_checkpoint(dir.path(), 7, 64).err().unwrap());
        assert!(e.contains("params-00002.f32") && e.contains("100 bytes"), "{e}");
        std::fs::write(&params, &good).unwrap();
        read_checkpoint(dir.path(), 7, 64).unwrap();
        // Crafted metadata: every field replaced by hostile values, each an error, never a panic.
        let meta_path = dir.path().join(CHECKPOINT);
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        let crafted: Vec<(&str, serde_json::Value)> = vec![
            ("format", serde_json::json!(1)),
            ("format", serde_json::json!("two")),
            ("strategy_vectors", serde_json::json!([u64::MAX, 2])),
            ("strategy_vectors", serde_json::json!([usize::MAX / 4 + 1])),
            ("strategy_vectors", serde_json::json!([10, 55])),
            ("params_file", serde_json::json!("../../etc/passwd")),
            ("params_file", serde_json::json!("missing.f32")),
            ("num_values", serde_json::json!(u64::MAX)),
            ("files", serde_json::json!({})),
            ("parties", serde_json::json!([{"id": "p", "admm_rho": 1.0, "scaffold": true}])),
            ("round", serde_json::json!(-1)),
        ];
        for (field, value) in crafted {
            let mut m = meta.clone();
            m[field] = value.clone();
            std::fs::write(&meta_path, serde_json::to_vec(&m).unwrap()).unwrap();
            let r = std::panic::catch_unwind(|| read_checkpoint(dir.path(), 7, 64).err().map(|e| format!("{e:#}")));
            let e = r.unwrap_or_else(|_| panic!("{field} = {value} panicked"));
            let e = e.unwrap_or_else(|| panic!("{field} = {value} was accepted"));
            assert!(e.contains(dir.path().to_str().unwrap()), "{field} = {value}: {e}");
        }
        std::fs::write(&meta_path, b"{\"format\": 2, \"round\": [").unwrap();
        assert!(read_checkpoint(dir.path(), 7, 64).is_err());
    }

    pub(crate) fn ledger(steps: u64) -> Ledger {
        let e = federate_privacy::Entry {
            noise: federate_privacy::Noise::Gaussian { sigma: 1.0 },
            draw: federate_privacy::Draw::Poisson,
            q: 0.01,
            steps,
        };
        Ledger { entries: vec![e] }
    }

    #[test]
    fn checkpoints_carry_every_partys_state() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![2], offset: 0 }]));
        let global = Parameters::new(vec![1.0, 2.0], layout).unwrap();
        let state = |name: &str, scalars: Vec<f64>, vectors: Vec<Vec<f32>>| {
            Some(AlgorithmState { name: name.into(), scalars, vectors })
        };
        let parties = vec![
            ("a".to_string(), PartyState { ledger: ledger(12), ..Default::default() }),
            (
                "b".to_string(),
                PartyState {
                    ledger: ledger(3),
                    algorithm: state("admm", vec![0.1f32 as f64], vec![vec![0.5, -0.5], vec![1.5, 2.5]]),
                    residual: None,
                },
            ),
            (
                "c".to_string(),
                PartyState { algorithm: state("scaffold", vec![], vec![vec![-1.0, 1e-7]]), ..Default::default() },
            ),
            (
                "d".to_string(),
                PartyState { algorithm: state("feddyn", vec![], vec![vec![3.0, -3.0]]), ..Default::default() },
            ),
            ("e".to_string(), PartyState { residual: Some(vec![1e-9, f32::MIN_POSITIVE]), ..Default::default() }),
            (
                "f".to_string(),
                PartyState {
                    ledger: ledger(1),
                    algorithm: state("scaffold", vec![], vec![vec![0.25, 0.5]]),
                    residual: Some(vec![-0.125, 7.0]),
                },
            ),
        ];
        write_checkpoint(dir.path(), checkpoint(3, &global, ("admm", None), parties.clone())).unwrap();
        assert_eq!(read_checkpoint(dir.path(), 7, 2).unwrap().parties, parties);
        // The next checkpoint replaces the parties' file.
        let fewer = parties[..1].to_vec();
        write_checkpoint(dir.path(), checkpoint(4, &global, ("admm", None), fewer.clone())).unwrap();
        assert_eq!(read_checkpoint(dir.path(), 7, 2).unwrap().parties, fewer);
        assert!(!dir.path().join("parties-00003.f32").exists());
        // A party file that lost values is an error naming it.
        write_checkpoint(dir.path(), checkpoint(5, &global, ("admm", None), parties.clone())).unwrap();
        std::fs::write(dir.path().join("parties-00005.f32"), [0u8; 12]).unwrap();
        let e = read_checkpoint(dir.path(), 7, 2).err().unwrap().to_string();
        assert!(e.contains("parties-00005.f32"), "{e}");
        // Format 2 (ADMM's and SCAFFOLD's own fields) is still read, into the same states.
        let old = parties[1..3].to_vec();
        write_checkpoint(dir.path(), checkpoint(6, &global, ("admm", None), old.clone())).unwrap();
        let meta_path = dir.path().join(CHECKPOINT);
        let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        meta["format"] = serde_json::json!(2);
        meta["parties"] = serde_json::json!([
            {"id": "b", "ledger": meta["parties"][0]["ledger"].clone(), "admm_rho": 0.1f32},
            {"id": "c", "scaffold": true},
        ]);
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        assert_eq!(read_checkpoint(dir.path(), 7, 2).unwrap().parties, old);
        // A party claiming absurdly many state vectors is refused before any read.
        meta["format"] = serde_json::json!(3);
        meta["parties"] = serde_json::json!([{"id": "b", "algorithm": "admm", "vectors": 1u64 << 40}]);
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = read_checkpoint(dir.path(), 7, 2).err().unwrap().to_string();
        assert!(e.contains("more than 16 state vectors"), "{e}");
    }
}
