//! What the runtime is told by whoever runs it (the gateway converts its configuration into
//! these at the crate's edge: `gateway/src/plugin/mod.rs`). Plain values, no parsing: the
//! configuration file, its defaults and its validation are the gateway's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a plugin instance is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Instances are reused, one request at a time each (fast; plugin globals persist).
    Pooled,
    /// A fresh instance for every request, serving both its hooks (nothing survives the
    /// request).
    PerRequest,
}

/// What happens to a request when a plugin fails (trap, timeout, error, not loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The request is answered with an error naming the plugin.
    FailClosed,
    /// The plugin is skipped and the skip is counted.
    FailOpen,
}

/// How one plugin runs (`[plugins.defaults]` with `[plugins.override.NAME]` applied; the
/// meaning of each field is documented with the configuration key of the same name).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSettings {
    /// Pooled or per-request instances.
    pub instance: InstanceMode,
    /// Pooled instances kept ready.
    pub max_idle_instances: usize,
    /// A pooled instance is replaced after this many requests.
    pub max_uses: u64,
    /// Linear memory cap per instance.
    pub max_memory_bytes: usize,
    /// CPU time a single call may use before it is interrupted.
    pub cpu_timeout: Duration,
    /// Wall-clock limit for a call, host calls included.
    pub timeout: Duration,
    /// What a failure does to the request.
    pub on_failure: FailurePolicy,
    /// Consecutive failures that quarantine the plugin.
    pub quarantine_after: u32,
    /// The first quarantine; each next one doubles, up to 5 min.
    pub quarantine_for: Duration,
    /// Buffer the request body for the plugin to read and replace.
    pub request_body: bool,
    /// Buffer the upstream's response body for the plugin's `on-response`.
    pub response_body: bool,
    /// The largest body handed to the plugin.
    pub max_body_bytes: usize,
    /// Hosts (`host` or `host:port`) the plugin may reach with outbound HTTP.
    pub allowed_hosts: Vec<String>,
    /// kv keys (exact, or prefixes ending in `*`) readable besides the plugin's own.
    pub kv_read: Vec<String>,
    /// Headers one call may set or append.
    pub max_added_headers: usize,
    /// Bytes (names + values) of the headers one call may set or append.
    pub max_added_header_bytes: usize,
}

/// The settings of every plugin: the defaults, and the full settings of each name that has
/// an override of its own.
#[derive(Debug, Clone)]
pub struct SettingsTable {
    /// For a plugin without an override.
    pub defaults: PluginSettings,
    /// By plugin name (`NAME` or `NAME@VERSION`), already merged with the defaults.
    pub by_name: BTreeMap<String, PluginSettings>,
}

impl SettingsTable {
    /// The settings of one plugin. A version (`NAME@VERSION`) without settings of its own
    /// runs with `NAME`'s.
    pub fn settings_for(&self, name: &str) -> PluginSettings {
        self.by_name
            .get(name)
            .or_else(|| self.by_name.get(crate::canary::base(name)))
            .unwrap_or(&self.defaults)
            .clone()
    }

    /// The largest memory cap of any plugin (the engine's pool is sized for it).
    pub fn max_memory_bytes(&self) -> usize {
        self.by_name
            .values()
            .map(|s| s.max_memory_bytes)
            .chain([self.defaults.max_memory_bytes])
            .max()
            .unwrap_or_default()
    }
}

/// The plugin settings a cluster configuration may replace at run time
/// ([`crate::PluginRuntime::reconfigure`]).
#[derive(Debug, Clone)]
pub struct Live {
    /// How each plugin runs.
    pub settings: SettingsTable,
    /// Plugins named by digest (`[plugins.sources.NAME]`).
    pub sources: BTreeMap<String, DigestSource>,
    /// Each plugin's configuration (`[plugin.NAME]`), handed to its `init` as JSON.
    pub plugin: BTreeMap<String, toml::Table>,
    /// Built-in plugins in use (the others are not loaded).
    pub wanted_builtins: Vec<String>,
    /// Headers `auth` forwards claims in: client-sent copies are removed before a chain
    /// with `auth` runs, so no failure of `auth` lets them through.
    pub identity_headers: Vec<http::HeaderName>,
}

/// Where the runtime's files are and what it is given, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Every `*.wasm` here is a plugin named after its file.
    pub dir: Option<PathBuf>,
    /// Plugin files loaded beside those in `dir`.
    pub files: Vec<PathBuf>,
    /// Where compiled plugins are cached: `None` for the default location, an empty path to
    /// disable the cache.
    pub cache_dir: Option<PathBuf>,
    /// ed25519 keys (`ed25519:BASE64`) one of which must have signed a digest source, when
    /// set.
    pub trusted_keys: Vec<String>,
    /// CA certificates (PEM) trusted for `https://` digest sources, instead of the system's.
    pub sources_ca: Option<PathBuf>,
    /// The file the kv store is kept in (in memory only without it).
    pub kv_file: Option<PathBuf>,
    /// The admin listener's address: outbound HTTP never reaches it.
    pub admin: SocketAddr,
    /// Data-plane worker threads (0: one per core): compiles run on the cores they leave.
    pub workers: usize,
    /// Per-request instances (all plugins together) kept from a request's `on-request` for
    /// its `on-response` at once; past it, `on-response` gets a second fresh instance.
    pub max_held_instances: usize,
    /// Whether the gateway exports traces (`[telemetry]` is set): what `exports-traces`
    /// answers. Per node and fixed for the process, like the exporter itself.
    pub exports_traces: bool,
    /// The built-in plugins' components, by name.
    pub builtins: &'static [(&'static str, &'static [u8])],
    /// Reads CA certificates (PEM) into a root store, with an error naming the file.
    pub load_roots: fn(&Path) -> Result<rustls::RootCertStore, String>,
}

/// `[plugins.sources.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSource {
    /// `sha256 = "…"`: the SHA-256 of the component, 64 lower-case hex digits.
    pub sha256: String,
    /// `url = "http://…/auth.wasm"`: where to fetch it.
    #[serde(default)]
    pub url: Option<String>,
    /// `path = "/shared/plugins/auth.wasm"`: or where to read it.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `signature = "BASE64"`: ed25519 signature over the `sha256` text, required when
    /// `[plugins] trusted_keys` is set.
    #[serde(default)]
    pub signature: Option<String>,
}
