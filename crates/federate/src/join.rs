//! `federate join`: a party of a deployment, with its state kept in `--state-dir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use federate_core::{Client, ClientError, FitReply, FitTask, Learner, LocalClient, NnLearner, Parameters};
use federate_net::codec::Limits;
use federate_net::party::{PartyOptions, run_party};
use federate_net::tls::TlsFiles;
use tracing::info;

use crate::assemble::{self, dataset_shape, spec_for};
use crate::config::Config;
use crate::table_data::TableLayout;
use federate_data::Dataset;

use crate::party_store::{PartyStore, Persisted};
use crate::serve::secs;

/// Where a joining party's data comes from.
pub enum PartyData {
    /// Partition `index` (1-based) of the configured dataset and split.
    Partition(usize),
    /// Its own IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz).
    IdxDir(PathBuf),
    /// Its own table file, read under the config's schema (`data.test_fraction` of its rows
    /// held out for evaluation).
    File(PathBuf),
}

fn idx_file(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("{}: no {name} (or {name}.gz)", dir.display())
}

/// A `federate join` party that logs, on its own console, what its local training computed
/// — including what a DP party does not send (exact training loss and accuracy).
struct LocalLog<L: Learner> {
    inner: LocalClient<L>,
    id: String,
}

impl<L: Learner> Client for LocalLog<L> {
    fn fit(&mut self, global: &Parameters, task: &FitTask) -> Result<FitReply, ClientError> {
        let reply = self.inner.fit(global, task);
        if reply.is_ok()
            && let Some(s) = self.inner.last_summary()
        {
            let eps = s.epsilon.map(|e| format!(", ε spent {e:.4}")).unwrap_or_default();
            info!(
                party = %self.id,
                "round {}: trained locally, {} steps, loss {:.4}, accuracy {:.2} % in {:.1} s (kept on this party){eps}",
                task.round,
                s.steps,
                s.train_loss,
                100.0 * s.train_accuracy,
                s.train_seconds
            );
        }
        reply
    }
    delegate_to_inner_client!();
}

/// `federate join`.
pub fn join(
    cfg: &Config,
    server: &str,
    id: &str,
    data: PartyData,
    tls: Option<TlsFiles>,
    server_name: Option<String>,
    state_dir: &Path,
) -> Result<()> {
    if !federate_net::tls::valid_identity(id) {
        bail!("--id '{id}' is not a valid identity (letters, digits, '-', '.')");
    }
    // The settings the server checks against the federation's: all of the split when this
    // party takes its data from it, only the dataset and model when it brings its own files.
    let federation = crate::config::federation_keys(cfg, matches!(data, PartyData::Partition(_)));
    let (train, test, table) = rows(cfg, id, data)?;
    let spec = spec_for(cfg)?;
    let layout = NnLearner::new(spec.clone(), 1, 1)?.layout();
    println!("federate join: {id} with {} training and {} test examples → {server}", train.len(), test.len());
    // A party's own DP randomness: secure unless its config asks for seeded noise.
    let noise = cfg.privacy.noise.unwrap_or(federate_core::NoiseSource::Secure);
    // What this party agreed to in its own config: a server asking for less is refused.
    let floor = assemble::privacy_floor(cfg, train.len())?;
    let mut client = assemble::party(cfg, &spec, train, test, noise, floor, None)?;
    if let Some(t) = table {
        client = client.with_table(t.features, t.numeric, t.scaling);
    }
    let client = LocalLog { inner: client, id: id.to_string() };
    let client = Persisted::new(client, PartyStore::new(state_dir, id, cfg.seed, layout.len()))?;
    let sv = &cfg.server;
    let opts = PartyOptions {
        server: server.to_string(),
        id: id.to_string(),
        tls,
        server_name,
        limits: Limits { max_values: sv.max_values, max_chunk_bytes: sv.chunk_bytes.max(1024) },
        max_message_bytes: sv.max_message_bytes,
        chunk_bytes: sv.chunk_bytes,
        zstd: sv.zstd,
        heartbeat: secs(sv.heartbeat_s),
        max_backoff: Duration::from_secs(10),
        give_up_after: secs(sv.start_wait_s.max(sv.rejoin_wait_s) * 2.0),
        federation,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let reason = rt.block_on(run_party(opts, Box::new(client), layout))?;
    println!("{id}: done ({reason})");
    Ok(())
}

/// This party's training and test rows, and for a table the features it shares.
fn rows(cfg: &Config, id: &str, data: PartyData) -> Result<(Dataset, Dataset, Option<TableLayout>)> {
    let in_range = |i: usize| {
        if i == 0 || i > cfg.data.parties {
            bail!(
                "--partition {i} is out of range: the config has {} parties (1..={})",
                cfg.data.parties,
                cfg.data.parties
            );
        }
        Ok(())
    };
    let mut table = None;
    let (train, test) = match data {
        PartyData::File(path) if cfg.data.dataset == "images" => {
            // The held-out share comes from the seed and the identity, as for a table.
            let tt = assemble::image_folder(cfg, &path, federate_data::table::fnv1a(id))?;
            (tt.train, tt.test)
        }
        PartyData::File(path) => {
            if !cfg.data.is_table() {
                bail!(
                    "--data reads a table or an image folder, and data.dataset = \"{}\" is neither: set data.dataset \
                     = \"table\" or \"images\", or use --idx-dir for IDX files",
                    cfg.data.dataset
                );
            }
            let (p, layout) = crate::table_data::own_file(cfg, &path, id)?;
            table = Some(layout);
            (owned(p.train), owned(p.test))
        }
        PartyData::Partition(i) if cfg.data.is_table() => {
            in_range(i)?;
            let (mut parts, layout) = crate::table_data::prepare(cfg, &assemble::fetch_options(cfg))?;
            table = Some(layout);
            let p = parts.swap_remove(i - 1);
            (owned(p.train), owned(p.test))
        }
        PartyData::Partition(i) => {
            in_range(i)?;
            let mut parts = assemble::federation_data(cfg)?.0;
            let p = parts.swap_remove(i - 1);
            (owned(p.train), owned(p.test))
        }
        PartyData::IdxDir(dir) => {
            let (_, classes) = dataset_shape(&cfg.data.dataset)?;
            let train = federate_data::images_and_labels(
                &idx_file(&dir, "train-images-idx3-ubyte")?,
                &idx_file(&dir, "train-labels-idx1-ubyte")?,
                classes,
            )?;
            let test = federate_data::images_and_labels(
                &idx_file(&dir, "t10k-images-idx3-ubyte")?,
                &idx_file(&dir, "t10k-labels-idx1-ubyte")?,
                classes,
            )?;
            (train, test)
        }
    };
    Ok((train, test, table))
}

/// The rows out of their `Arc` (a joining party holds the only handle).
fn owned(d: std::sync::Arc<Dataset>) -> Dataset {
    std::sync::Arc::try_unwrap(d).unwrap_or_else(|shared| (*shared).clone())
}
