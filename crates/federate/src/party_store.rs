//! A `federate join` party's state on its own disk (`--state-dir`): its privacy ledger,
//! never reset, and each federation's algorithm state kept apart; and `Persisted`, the party
//! that saves it after every round it trains.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use federate_core::{Client, ClientError, FitReply, FitTask, Parameters, PartyState};
use federate_privacy::Ledger;
use serde::{Deserialize, Serialize};

use crate::report::atomic_write;

use crate::checkpoint::{PartyMeta, decode_parties, encode_parties, write_vectors};

/// Where a `federate join` party keeps what it needs between rounds, rewritten atomically
/// after every round it trains:
///
/// - `<dir>/<id>.ledger.json`: its privacy ledger — every DP release of its data, in any
///   federation. It is never reset: a party restarted with another seed, model or set of
///   privacy settings goes on composing onto it, so its ε covers everything its data was
///   used for.
/// - `<dir>/<id>.<seed>-<values>.json` (+ `.f32`): the algorithm's state for one federation
///   (SCAFFOLD's c_k, ADMM's dual). Each federation has its own files, kept apart: joining
///   another federation neither restores nor overwrites them.
///
/// A restarted party reads them back, so it continues instead of being refused for missing
/// state.
pub(crate) struct PartyStore {
    dir: PathBuf,
    id: String,
    seed: u64,
    num_values: usize,
}

/// A party's per-federation state file.
#[derive(Debug, Serialize, Deserialize)]
struct PartyFile {
    format: u32,
    /// The federation's seed.
    seed: u64,
    num_values: usize,
    party: PartyMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vectors_file: Option<String>,
    /// SHA-256 (hex) of the vectors file.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

/// A party's ledger file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    format: u32,
    id: String,
    ledger: Ledger,
}

/// Largest party metadata or ledger file read (a ledger merges identical rounds, so it
/// holds one entry per change of settings).
const MAX_PARTY_FILE: u64 = 16 << 20;

impl PartyStore {
    pub(crate) fn new(dir: &Path, id: &str, seed: u64, num_values: usize) -> Self {
        PartyStore { dir: dir.to_path_buf(), id: id.to_string(), seed, num_values }
    }

    fn stem(&self) -> String {
        format!("{}.{}-{}", self.id, self.seed, self.num_values)
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem()))
    }

    fn ledger_path(&self) -> PathBuf {
        self.dir.join(format!("{}.ledger.json", self.id))
    }

    /// Saves `state`: the ledger first (so a crash can only over-count), then the vectors,
    /// then the file naming them.
    pub(crate) fn save(&self, state: &PartyState) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("party state directory {}", self.dir.display()))?;
        let ledger = LedgerFile { format: 1, id: self.id.clone(), ledger: state.ledger.clone() };
        atomic_write(&self.ledger_path(), &serde_json::to_vec_pretty(&ledger)?)?;
        let (mut metas, vectors) = encode_parties([(self.id.as_str(), state)]);
        let mut files = std::collections::BTreeMap::new();
        let vectors_file =
            write_vectors(&self.dir, format!("{}.f32", self.stem()), &vectors, self.num_values, &mut files)?;
        let Some(mut party) = metas.pop() else { bail!("no party state to save") };
        // The ledger lives in its own file, across federations.
        party.ledger = Ledger::new();
        let file = PartyFile { format: 4, seed: self.seed, num_values: self.num_values, party, vectors_file, files };
        atomic_write(&self.meta_path(), &serde_json::to_vec_pretty(&file)?)
    }

    /// Reads `path` as text if it exists and is of a sane size.
    fn read_small(path: &Path) -> Result<Option<String>> {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if size > MAX_PARTY_FILE {
            bail!(
                "{}: {size} bytes is not a party state file; move it away to start this party afresh, or fix \
                 --state-dir",
                path.display()
            );
        }
        Ok(Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?))
    }

    /// The state saved by earlier runs of this party: its ledger (whatever federation it
    /// was spent in) and this federation's algorithm state. A file that cannot be read is an
    /// error, never a silent fresh start.
    pub(crate) fn load(&self) -> Result<Option<PartyState>> {
        let bad = |path: &Path, why: String| {
            anyhow::anyhow!(
                "{}: {why}; this party's saved state (its privacy ledger, control variate or dual) cannot be \
                 restored. Move the file away to start this party afresh (its privacy spent is then no longer \
                 counted), or fix --state-dir",
                path.display()
            )
        };
        let mut state = PartyState::default();
        let mut found = false;
        let lpath = self.ledger_path();
        if let Some(text) = Self::read_small(&lpath)? {
            let file: LedgerFile =
                serde_json::from_str(&text).map_err(|e| bad(&lpath, format!("not a ledger file ({e})")))?;
            if file.format != 1 || file.id != self.id {
                return Err(bad(&lpath, format!("format {} of party '{}' is not this party's", file.format, file.id)));
            }
            for e in &file.ledger.entries {
                e.check().map_err(|err| bad(&lpath, format!("an entry cannot be accounted ({err})")))?;
            }
            state.ledger = file.ledger;
            found = true;
        }
        let path = self.meta_path();
        if let Some(text) = Self::read_small(&path)? {
            let file: PartyFile =
                serde_json::from_str(&text).map_err(|e| bad(&path, format!("not a party state file ({e})")))?;
            // 4 stores any algorithm's state; 3 (ADMM's and SCAFFOLD's own fields) is still read.
            if !(3..=4).contains(&file.format) {
                return Err(bad(
                    &path,
                    format!("format {} is not supported by this build (3 or 4, with checksums)", file.format),
                ));
            }
            if file.party.id != self.id || file.seed != self.seed || file.num_values != self.num_values {
                return Err(bad(&path, format!("it belongs to party '{}' of another federation", file.party.id)));
            }
            let mut parties =
                decode_parties(&self.dir, vec![file.party], file.vectors_file.as_deref(), self.num_values, &file.files)
                    .map_err(|e| bad(&path, e.to_string()))?;
            if let Some((_, s)) = parties.pop() {
                state.algorithm = s.algorithm;
                state.residual = s.residual;
            }
            found = true;
        }
        Ok(found.then_some(state))
    }
}

/// A party that saves its state with a [`PartyStore`] after every round it trains. If the
/// save fails, the round's update is withheld and the state rolled back, so what is on disk
/// never falls behind what the server has seen; a round that fails half way also leaves the
/// state as it was.
pub(crate) struct Persisted<C> {
    inner: C,
    store: PartyStore,
}

impl<C: Client> Persisted<C> {
    /// `inner`, given back the state `store` holds (if any).
    pub(crate) fn new(mut inner: C, store: PartyStore) -> Result<Self> {
        if let Some(state) = store.load()? {
            println!(
                "{}: restored its saved state (privacy ledger: {} DP steps in {} entries; algorithm state: {}; \
                 error-feedback residual: {})",
                store.id,
                state.ledger.steps(),
                state.ledger.entries.len(),
                state.algorithm.as_ref().map_or("none", |a| a.name.as_str()),
                if state.residual.is_some() { "kept" } else { "none" },
            );
            inner.restore(state).map_err(|e| anyhow::anyhow!("{}: {e}", store.meta_path().display()))?;
        }
        Ok(Persisted { inner, store })
    }
}

impl<C: Client> Client for Persisted<C> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let before = self.inner.state();
        let reply = match self.inner.fit(global, task) {
            Ok(r) => r,
            Err(e) => {
                // A round that failed half way must not cost the party what it kept.
                if let Some(b) = before {
                    self.inner.restore(b)?;
                }
                return Err(e);
            }
        };
        if let Some(now) = self.inner.state().filter(|s| !s.is_empty())
            && let Err(e) = self.store.save(&now)
        {
            if let Some(b) = before {
                self.inner.restore(b)?;
            }
            return Err(ClientError::Model(format!(
                "could not save this party's state ({e:#}); its update is withheld this round"
            )));
        }
        Ok(reply)
    }
    delegate_to_inner_client!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::ledger;
    use federate_core::AlgorithmState;

    #[test]
    fn a_party_store_keeps_state_for_its_own_federation_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = PartyStore::new(dir.path(), "party-2", 7, 2);
        assert_eq!(store.load().unwrap(), None);
        let admm = AlgorithmState {
            name: "admm".into(),
            scalars: vec![0.2f32 as f64],
            vectors: vec![vec![0.25, -1.0], vec![3.0, 4.0]],
        };
        let state = PartyState { ledger: ledger(40), algorithm: Some(admm), residual: Some(vec![0.5, -0.0625]) };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state.clone()));
        // Another federation (other seed, other model) gets the ledger, never the algorithm
        // state; its own state is kept apart and does not replace this one's.
        let other = PartyStore::new(dir.path(), "party-2", 8, 2);
        let mut there = other.load().unwrap().unwrap();
        assert_eq!((there.ledger.clone(), there.algorithm.clone()), (ledger(40), None));
        there.ledger.record(ledger(5).entries[0]).unwrap();
        there.algorithm =
            Some(AlgorithmState { name: "scaffold".into(), scalars: vec![], vectors: vec![vec![1.0, 1.0]] });
        other.save(&there).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!((back.ledger, back.algorithm), (ledger(45), state.algorithm.clone()));
        assert_eq!(PartyStore::new(dir.path(), "party-2", 7, 3).load().unwrap().unwrap().ledger, ledger(45));
        // A damaged file is an error that names it and the way out, not a fresh start.
        std::fs::write(dir.path().join("party-2.7-2.f32"), [0u8; 6]).unwrap();
        let e = format!("{:#}", store.load().unwrap_err());
        assert!(e.contains("party-2") && e.contains("Move the file away"), "{e}");
        std::fs::write(dir.path().join("party-2.7-2.json"), "{").unwrap();
        let e = format!("{:#}", store.load().unwrap_err());
        assert!(e.contains("party-2.7-2.json") && e.contains("not a party state file"), "{e}");
        std::fs::write(dir.path().join("party-2.ledger.json"), "[]").unwrap();
        let e = format!("{:#}", other.load().unwrap_err());
        assert!(e.contains("party-2.ledger.json") && e.contains("not a ledger file"), "{e}");
    }
}
