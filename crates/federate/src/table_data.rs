//! Tables in a federation: the rows (a built-in table, one file split across the parties, or
//! one file per party) and each party's held-out test rows, as read. Scaling them is round
//! 0's job (`Server::round_zero`): every party sends counts, sums and sums of squares of its
//! own training rows, the server adds them up (no row is pooled), and each party scales its
//! rows with the sum.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use federate_core::seed;
use federate_data::table::{Preprocessing, Scaling, Table, source_for};
use federate_data::{Dataset, FetchOptions, TrainTest, stats::Moments};
use rand::seq::SliceRandom;

use crate::config::{Config, PartitionKind};
use crate::split::PartyData;

/// What every party of a table federation shares: its encoded features, which of them are
/// numeric, and how they are scaled.
#[derive(Debug, Clone)]
pub struct TableLayout {
    /// Encoded feature names.
    pub features: Vec<String>,
    /// Which are numeric (scaled in round 0).
    pub numeric: Vec<bool>,
    /// The schema's scaling.
    pub scaling: Scaling,
}

impl TableLayout {
    /// The preprocessing round 0 agreed on with `moments`.
    pub fn with(&self, moments: Moments) -> Preprocessing {
        Preprocessing { features: self.features.clone(), numeric: self.numeric.clone(), scaling: self.scaling, moments }
    }
}

/// Where a built-in or configured table is.
pub fn table_path(cfg: &Config, opts: &FetchOptions) -> Result<PathBuf> {
    match (&cfg.data.path, cfg.data.dataset.as_str()) {
        (Some(p), _) => Ok(p.clone()),
        (None, "table") => anyhow::bail!(
            "data.dataset = \"table\" needs data.path (one file split across the parties) or [[data.sources]] (one \
             file per party)"
        ),
        (None, name) => Ok(federate_data::tables::ensure_table(name, opts)?),
    }
}

/// Reads the table at `path` under the config's schema (with `key`, that column's values too).
pub fn read(cfg: &Config, path: &std::path::Path, key: Option<&str>) -> Result<Table> {
    let schema = cfg.data.table_schema().context("data.schema: a table needs a schema")?;
    Ok(source_for(path)?.read(&schema, key)?)
}

/// A held-out split of `data`: `fraction` of the rows (of each class, for classification;
/// at least one row each side), drawn with `rng`. Returns (train, test) indices.
pub fn holdout<R: rand::Rng>(data: &Dataset, fraction: f64, rng: &mut R) -> (Vec<usize>, Vec<usize>) {
    let groups: Vec<Vec<usize>> = if data.is_regression() {
        vec![(0..data.len()).collect()]
    } else {
        let mut g = vec![Vec::new(); data.classes];
        for (i, &c) in data.y.iter().enumerate() {
            g[c as usize].push(i);
        }
        g
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut g in groups {
        g.shuffle(rng);
        let t = ((g.len() as f64 * fraction).round() as usize).min(g.len().saturating_sub(1));
        let t = if g.len() >= 2 { t.max(1) } else { t };
        test.extend_from_slice(&g[..t]);
        train.extend_from_slice(&g[t..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The parties' rows from the config's table(s), split as configured and not yet scaled.
pub fn prepare(cfg: &Config, opts: &FetchOptions) -> Result<(Vec<PartyData>, TableLayout)> {
    let (parties, features, numeric) =
        if cfg.data.sources.is_empty() { from_one_table(cfg, opts)? } else { from_sources(cfg)? };
    let scaling = cfg.data.table_schema().map(|s| s.scaling).unwrap_or_default();
    Ok((parties, TableLayout { features, numeric, scaling }))
}

/// The generator of the held-out split of party `id`'s own file: from the run's seed and the
/// identity (FNV-1a of it), so `federate join --data` and a simulation's `[[data.sources]]`
/// hold out the same rows.
fn own_rng(cfg: &Config, id: &str) -> impl rand::Rng {
    seed::stream(cfg.seed, seed::Stream::Partition, &[2, federate_data::table::fnv1a(id)])
}

/// One party's rows from its own file (`federate join --data`), with a held-out test split.
pub fn own_file(cfg: &Config, path: &std::path::Path, id: &str) -> Result<(PartyData, TableLayout)> {
    let table = read(cfg, path, None)?;
    let (tr, te) = holdout(&table.data, cfg.data.test_fraction(), &mut own_rng(cfg, id));
    let scaling = cfg.data.table_schema().map(|s| s.scaling).unwrap_or_default();
    let party = PartyData {
        id: id.to_string(),
        train: Arc::new(table.data.subset(&tr)),
        test: Arc::new(table.data.subset(&te)),
    };
    Ok((party, TableLayout { features: table.features, numeric: table.numeric, scaling }))
}

type Split = (Vec<PartyData>, Vec<String>, Vec<bool>);

/// One table: a held-out test split, then the rows dealt to the parties by the partition;
/// or, partitioned by a column, each party's rows with its own held-out split.
fn from_one_table(cfg: &Config, opts: &FetchOptions) -> Result<Split> {
    let path = table_path(cfg, opts)?;
    let natural = cfg.data.partition == PartitionKind::Natural;
    let key = if natural { cfg.data.partition_column.as_deref() } else { None };
    let table = read(cfg, &path, key)?;
    let mut rng = seed::stream(cfg.seed, seed::Stream::Partition, &[1]);
    let parties = match (&table.keys, key) {
        (Some(keys), Some(column)) => by_column(cfg, &table.data, keys, column, &mut rng)?,
        _ => {
            let (tr, te) = holdout(&table.data, cfg.data.test_fraction(), &mut rng);
            let data = TrainTest { train: table.data.subset(&tr), test: table.data.subset(&te) };
            crate::split::split(cfg, &data)?
        }
    };
    Ok((parties, table.features, table.numeric))
}

/// One party per value of the partition column, named by it, each with a held-out share of
/// its own rows.
fn by_column<R: rand::Rng>(
    cfg: &Config,
    data: &Dataset,
    keys: &[String],
    column: &str,
    rng: &mut R,
) -> Result<Vec<PartyData>> {
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(k.as_str()).or_default().push(i);
    }
    if groups.len() != cfg.data.parties {
        anyhow::bail!(
            "data.partition_column = \"{column}\" has {} distinct values ({}), and data.parties = {}: set data.parties \
             = {}",
            groups.len(),
            groups.keys().take(8).copied().collect::<Vec<_>>().join(", "),
            cfg.data.parties,
            groups.len()
        );
    }
    let mut out: Vec<PartyData> = Vec::new();
    for (n, (name, rows)) in groups.iter().enumerate() {
        let own = data.subset(rows);
        let (tr, te) = holdout(&own, cfg.data.test_fraction(), rng);
        // The value names the party, spelled as an identity (letters, digits, '.', '_', '-').
        let spelled: String = name
            .chars()
            .take(48)
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
            .collect();
        let taken = out.iter().any(|p| p.id == spelled);
        let id = if spelled.is_empty() || taken { format!("party-{}", n + 1) } else { spelled };
        out.push(PartyData { id, train: Arc::new(own.subset(&tr)), test: Arc::new(own.subset(&te)) });
    }
    Ok(out)
}

/// One file per party (`[[data.sources]]`), each with its own or a held-out test split.
fn from_sources(cfg: &Config) -> Result<Split> {
    let mut out = Vec::new();
    let mut layout: Option<(Vec<String>, Vec<bool>, PathBuf)> = None;
    for (i, s) in cfg.data.sources.iter().enumerate() {
        let id = s.id.clone().unwrap_or_else(|| format!("party-{}", i + 1));
        let table = read(cfg, &s.path, None).with_context(|| format!("data.sources[{i}] ({id})"))?;
        let (train, test) = match &s.test {
            Some(t) => (table.data, read(cfg, t, None).with_context(|| format!("data.sources[{i}].test ({id})"))?.data),
            None => {
                let (tr, te) = holdout(&table.data, cfg.data.test_fraction(), &mut own_rng(cfg, &id));
                (table.data.subset(&tr), table.data.subset(&te))
            }
        };
        match &layout {
            None => layout = Some((table.features.clone(), table.numeric.clone(), s.path.clone())),
            Some((f, _, first)) if *f != table.features => anyhow::bail!(
                "data.sources[{i}] ({id}): {} has the features [{}] but {} has [{}]: every party's table must give \
                 the same columns",
                s.path.display(),
                table.features.join(", "),
                first.display(),
                f.join(", ")
            ),
            _ => {}
        }
        out.push(PartyData { id, train: Arc::new(train), test: Arc::new(test) });
    }
    let (features, numeric, _) = layout.context("[[data.sources]] is empty")?;
    Ok((out, features, numeric))
}
