//! Reading a config: the file, `--set key=value` overrides, validation; and the keys in
//! which two configs differ (for `--resume`).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::*;

/// Reads a config file (or the defaults), applies `key=value` overrides, and validates.
pub fn load(path: Option<&Path>, sets: &[String]) -> Result<Config> {
    let mut table: toml::Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {}", p.display(), one_line(&e.to_string())))?
        }
        None => toml::Table::new(),
    };
    for s in sets {
        apply_set(&mut table, s)?;
    }
    let what = path.map(|p| p.display().to_string()).unwrap_or_else(|| "--set".into());
    let cfg: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("config {what}: {}", one_line(&e.to_string())))?;
    validate(&cfg)?;
    Ok(cfg)
}

/// The keys (dotted) whose values differ between `a` and `b`, leaving out those a resumed
/// run may change: `rounds`, `threads`, `checkpoint_every`, the data directories and the
/// `[server]` section (which `federate run` ignores).
pub fn differences(a: &Config, b: &Config) -> Vec<String> {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.rounds = 0;
        c.threads = 0;
        c.checkpoint_every = 0;
        c.data.data_dir = None;
        c.data.cache_dir = None;
        c.server = ServerSection::default();
        toml::Value::try_from(&c).unwrap_or(toml::Value::Boolean(false))
    };
    let mut out = Vec::new();
    diff_values("", &strip(a), &strip(b), &mut out);
    out
}

/// The settings a party must share with its federation, flattened to `key → value` text:
/// the model, the dataset and, when the party takes its data from the config's split
/// (`split`), the seed and every key of the split. Local paths and switches are left out.
pub fn federation_keys(cfg: &Config, split: bool) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut data = cfg.data.clone();
    data.data_dir = None;
    data.cache_dir = None;
    data.offline = false;
    // Where a party's rows are on its own machine is its business; what they hold is checked
    // against the schema and the model before it joins.
    data.path = None;
    data.sources = Vec::new();
    let sections = [("model", toml::Value::try_from(&cfg.model)), ("data", toml::Value::try_from(&data))];
    for (name, value) in sections {
        if let Ok(v) = value {
            flatten(name, &v, &mut out);
        }
    }
    if split {
        out.insert("seed".into(), cfg.seed.to_string());
    } else {
        out.retain(|k, _| k.starts_with("model.") || k == "data.dataset" || k.starts_with("data.schema."));
    }
    // Long values (a schema's feature list) travel as their digest: equal values, equal digests.
    for v in out.values_mut() {
        if v.len() > 200 {
            *v = format!("sha256:{}", federate_data::fetch::sha256_hex(v.as_bytes()));
        }
    }
    out
}

fn flatten(at: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{at}.{k}"), v, out);
            }
        }
        other => {
            out.insert(at.to_string(), other.to_string());
        }
    }
}

fn diff_values(at: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_values(&key, u, v, out),
                    _ => out.push(key),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

fn one_line(s: &str) -> String {
    let lines: Vec<&str> =
        s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^')).collect();
    lines.join(" ")
}

/// Applies one `a.b.c=value` override; the value is read as TOML (number, bool, array,
/// quoted string) and otherwise taken as a bare string.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let Some((key, raw)) = set.split_once('=') else {
        bail!("--set {set}: expected key=value, e.g. --set train.lr=0.01");
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("--set {set}: the key is empty; write e.g. --set data.parties=5");
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.trim().into())),
        Err(_) => toml::Value::String(raw.trim().into()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {set}: '{p}' is a value, not a section"),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
