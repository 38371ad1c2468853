//! `[registry]` and `[kv]`: the two stores that live in this gateway or on etcd (the kv
//! store on etcd uses `[registry]`'s endpoints).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Cidr, Problems};

/// `[registry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `backend = "embedded"` (in-process) or `"etcd"` (shared by every gateway on it).
    pub backend: RegistryBackend,
    /// `endpoints = ["127.0.0.1:2379"]`: etcd client endpoints.
    pub endpoints: Vec<String>,
    /// `prefix = "/sluice/registry/"`: where instances live in etcd
    /// (`PREFIX{service}/{id}`).
    pub prefix: String,
    /// `default_ttl = "15s"`: the TTL of a registration that names none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// `max_ttl = "1h"`: the longest TTL accepted.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// `dial_timeout = "2s"`: connecting to etcd, and each etcd call.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// `allow_addresses = ["127.0.0.0/8"]`: networks a registered instance may be in even
    /// though the address policy refuses them by default (loopback unless the admin listener
    /// is loopback-only, link-local, unspecified, multicast, the gateway's own listeners).
    pub allow_addresses: Vec<Cidr>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            backend: RegistryBackend::Embedded,
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: "/sluice/registry/".into(),
            default_ttl: Duration::from_secs(15),
            max_ttl: Duration::from_secs(3600),
            dial_timeout: Duration::from_secs(2),
            allow_addresses: Vec::new(),
        }
    }
}

/// Where registrations are kept.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryBackend {
    /// In this process only.
    Embedded,
    /// In etcd, under leases.
    Etcd,
}

/// `[kv]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// `backend = "local"` (this gateway, optionally persisted to `file`) or `"etcd"` (shared
    /// by every gateway on the same etcd and prefix; uses `[registry]`'s `endpoints` and
    /// `dial_timeout`).
    pub backend: KvBackend,
    /// `file = "sluice-kv.json"`: where values set with `PUT /admin/kv/{key}` are persisted,
    /// so a restart keeps them. Without it they live in memory only. Local backend only.
    pub file: Option<PathBuf>,
    /// `prefix = "/sluice/kv/"`: where keys live in etcd.
    pub prefix: String,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            backend: KvBackend::Local,
            file: None,
            prefix: "/sluice/kv/".into(),
        }
    }
}

/// Where the plugins' key-value store lives.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KvBackend {
    /// In this gateway.
    #[default]
    Local,
    /// In etcd.
    Etcd,
}

impl RegistryConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.backend == RegistryBackend::Etcd && self.endpoints.is_empty() {
            p.add("registry.endpoints: etcd needs at least one endpoint".into());
        }
        if !self.prefix.ends_with('/') {
            p.add(format!(
                "registry.prefix: `{}` must end with `/`",
                self.prefix
            ));
        }
        if self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            p.add("registry.default_ttl: must be above 0 and at most max_ttl".into());
        }
    }
}

impl KvConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.backend == KvBackend::Etcd && self.file.is_some() {
            p.add("kv.file: only the local backend uses a file; etcd keeps the values".into());
        }
        if self.backend == KvBackend::Etcd && !self.prefix.ends_with('/') {
            p.add(format!("kv.prefix: `{}` must end with `/`", self.prefix));
        }
    }
}
