//! `[cluster]` in a node's file: its keys and their checks (the etcd TLS files are loaded
//! with the etcd client's own setup, `crate::etcd`). What the node does with it (bootstrap,
//! following etcd, the snapshot) is `crate::cluster`'s, which re-exports these names.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default `[cluster] prefix`.
pub const DEFAULT_PREFIX: &str = "/sluice/cluster/";
/// The document's key under the prefix.
pub const DOCUMENT_KEY: &str = "config";

/// `[cluster]` in a node's file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `backend = "etcd"`.
    pub backend: ClusterBackend,
    /// `endpoints = ["127.0.0.1:2379"]`: etcd client endpoints.
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// `prefix = "/sluice/cluster/"`: the document lives at `PREFIX + "config"`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `snapshot = "/var/lib/sluice/config.snapshot"`: the last-known-good configuration
    /// (default: `cluster-config.snapshot` under the state directory, see
    /// `cluster::snapshot::default_path`). Nodes sharing a host need one each.
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    /// `username = "sluice"`: etcd user, when etcd has authentication on.
    #[serde(default)]
    pub username: Option<String>,
    /// `password = "..."`: that user's password.
    #[serde(default)]
    pub password: Option<String>,
    /// `dial_timeout = "2s"`: connecting to etcd, and each call.
    #[serde(default = "default_dial_timeout", with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// `tls_ca = "etcd-ca.pem"`: connect over TLS, verifying etcd's certificate against
    /// these CA certificates (PEM).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert = "node.pem"`: a client certificate, for etcd with `--client-cert-auth`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// `tls_key = "node.key"`: its private key.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// Where the cluster configuration is kept.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterBackend {
    /// etcd v3.
    Etcd,
}

fn default_endpoints() -> Vec<String> {
    vec!["127.0.0.1:2379".into()]
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.into()
}

fn default_dial_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The top-level tables a cluster document may hold (`plugins` only with `defaults` and
/// `override`).
pub(crate) const SHARED_KEYS: [&str; 5] = ["routes", "services", "resolver", "plugin", "plugins"];
pub(crate) const SHARED_PLUGINS_KEYS: [&str; 3] = ["defaults", "override", "sources"];

impl ClusterConfig {
    /// The document's etcd key.
    pub fn key(&self) -> String {
        format!("{}{DOCUMENT_KEY}", self.prefix)
    }

    /// The etcd user and password, if set.
    pub fn user(&self) -> Option<(String, String)> {
        Some((self.username.clone()?, self.password.clone()?))
    }

    /// TLS to etcd, if `tls_ca` is set.
    pub fn tls(&self) -> Option<crate::etcd::EtcdTls> {
        Some(crate::etcd::EtcdTls {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        })
    }

    /// What is wrong with `[cluster]` in a node's file whose text is `text`: one message per
    /// problem, naming the key.
    pub(crate) fn problems(&self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push("cluster.endpoints: etcd needs at least one endpoint".into());
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            problems.push(format!(
                "cluster.prefix: `{}` must start and end with `/`",
                self.prefix
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push("cluster.username: set both username and password, or neither".into());
        }
        match self.tls() {
            // The files are read now, so that a missing or bad one stops the start, named.
            Some(tls) => {
                if let Err(e) = tls.client_config("cluster.") {
                    problems.push(e);
                }
            }
            None if self.tls_cert.is_some() || self.tls_key.is_some() => problems
                .push("cluster.tls_cert: a client certificate needs `tls_ca` (TLS to etcd)".into()),
            None => {}
        }
        if let Ok(table) = text.parse::<toml::Table>() {
            for key in shared_keys_in(&table) {
                problems.push(format!(
                    "{key}: with [cluster], this comes from the cluster configuration on etcd; \
                     remove it from the node's file and push it with `sluice config push`"
                ));
            }
        }
        problems
    }
}

/// The shared (cluster-scoped) keys present in a parsed document.
fn shared_keys_in(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for key in SHARED_KEYS {
        match (key, table.get(key)) {
            (_, None) => {}
            ("plugins", Some(toml::Value::Table(plugins))) => keys.extend(
                SHARED_PLUGINS_KEYS
                    .iter()
                    .filter(|k| plugins.contains_key(**k))
                    .map(|k| format!("plugins.{k}")),
            ),
            (key, Some(_)) => keys.push(key.to_owned()),
        }
    }
    keys
}

/// Where the configuration in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// etcd, followed live.
    Etcd,
    /// The last-known-good snapshot (etcd was unreachable, or its document invalid, at start).
    Snapshot,
    /// The node's own file (no `[cluster]`).
    File,
}

impl Source {
    /// `etcd`, `snapshot` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Snapshot => "snapshot",
            Self::File => "file",
        }
    }
}
