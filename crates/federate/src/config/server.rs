//! `[server]`: how `federate serve` listens, whom it admits, and its limits.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of `federate serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on.
    pub listen: String,
    /// Party identities allowed to join, in order (default: party-1 … party-N).
    pub parties: Vec<String>,
    /// Seconds a party has to answer a task (the round deadline).
    pub round_timeout_s: f64,
    /// Seconds a task waits for an absent party to (re)connect.
    pub rejoin_wait_s: f64,
    /// Seconds to wait at start for every party to connect.
    pub start_wait_s: f64,
    /// Seconds between heartbeats.
    pub heartbeat_s: f64,
    /// A party silent this many seconds is dropped.
    pub party_timeout_s: f64,
    /// Where checkpoints go (default: <run directory>/checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Compress parameters with zstd on the wire.
    pub zstd: bool,
    /// Raw bytes per parameter chunk.
    pub chunk_bytes: usize,
    /// Largest gRPC message, bytes.
    pub max_message_bytes: usize,
    /// Most values in a parameter vector received.
    pub max_values: u64,
    /// Mutual TLS: `ca`, `cert`, `key` (required unless --insecure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<federate_net::tls::TlsFiles>,
    /// Cap on any example count a party reports (training or test) unless `declared` gives
    /// its own; a reply above its cap is refused.
    pub max_examples: u64,
    /// The operator's counts per party (`party-1 = { train = 2000, test = 500 }`): each is
    /// that party's cap, and its weight under `weight_by = "declared"`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub declared: BTreeMap<String, federate_core::Declared>,
    /// Weight parties by the counts they report ("reported") or by `declared` ("declared").
    pub weight_by: federate_core::Weighting,
    /// Most open connections, joined or not (default: twice the parties plus 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Most concurrent HTTP/2 streams on one connection.
    pub max_streams_per_connection: u32,
    /// Seconds a new connection has to finish its handshake and join.
    pub join_timeout_s: f64,
    /// Revoked party identities, one per line, in a file that may be edited while the server
    /// runs: a listed party is refused at its next handshake and dropped before its next task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        // The hub's own defaults for the limits on peers (the connection cap depends on the
        // number of parties, so it stays unset here).
        let (_, max_handshakes, max_streams_per_connection, join_timeout) =
            federate_net::server::HubConfig::default_limits(0);
        ServerSection {
            listen: "0.0.0.0:7000".into(),
            parties: Vec::new(),
            round_timeout_s: 600.0,
            rejoin_wait_s: 30.0,
            start_wait_s: 300.0,
            heartbeat_s: 5.0,
            party_timeout_s: 30.0,
            checkpoint_dir: None,
            zstd: false,
            chunk_bytes: 4 << 20,
            max_message_bytes: 16 << 20,
            max_values: 1 << 28,
            tls: None,
            max_examples: federate_core::admission::DEFAULT_MAX_EXAMPLES,
            declared: BTreeMap::new(),
            weight_by: federate_core::Weighting::Reported,
            max_connections: None,
            max_handshakes,
            max_streams_per_connection,
            join_timeout_s: join_timeout.as_secs_f64(),
            deny_file: None,
        }
    }
}

impl ServerSection {
    /// The party identities: the configured list, or party-1 … party-N.
    pub fn party_ids(&self, n: usize) -> Vec<String> {
        if self.parties.is_empty() { (1..=n).map(|i| format!("party-{i}")).collect() } else { self.parties.clone() }
    }

    /// What the server accepts from the parties' replies.
    pub fn admission(&self) -> federate_core::Admission {
        federate_core::Admission {
            max_examples: self.max_examples,
            declared: self.declared.clone(),
            weight_by: self.weight_by,
        }
    }
}
