//! `federate serve` and `federate join`: flags to settings (the server is `crate::serve`,
//! the party `crate::join`).

use anyhow::Result;

use crate::cli::*;
use crate::commands::run::quote;
use crate::{checkpoint, config, join, report, serve};
use crate::{init_logging, init_threads};

pub(crate) fn serve(a: ServeArgs) -> Result<()> {
    init_logging();
    let cfg = config::load(a.config.as_deref(), &a.sets)?;
    init_threads(cfg.threads)?;
    let resume = a.resume || (a.resume_if_present && checkpoint::has_checkpoint(&cfg, &a.out));
    if !resume {
        // A supervisor's restart before the first checkpoint starts afresh, keeping the
        // attempt it replaces.
        if let Some(aside) = report::claim_out(&a.out, a.force || a.resume_if_present)? {
            println!("federate serve: the earlier run in {} was moved to {}", a.out.display(), aside.display());
        }
    }
    serve::serve(&cfg, &a.out, resume, serve::Security::from_flags(a.insecure, a.insecure_non_loopback))
}

pub(crate) fn join(a: JoinArgs) -> Result<()> {
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
        _ if a.data.is_some() => join::PartyData::File(a.data.clone().unwrap_or_default()),
        (Some(d), _) => join::PartyData::IdxDir(d.clone()),
        (None, Some(n)) => join::PartyData::Partition(n),
        (None, None) => match a.id.strip_prefix("party-").and_then(|n| n.parse().ok()) {
            Some(n) => join::PartyData::Partition(n),
            None => anyhow::bail!(
                "give --partition N, --idx-dir DIR or --data FILE (the id '{}' is not of the form party-N)",
                a.id
            ),
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
    join::join(&cfg, &a.server, &a.id, data, tls, a.server_name.clone(), &a.state_dir)
}
