//! `[plugins]`: where plugins come from and how they run (`[plugins.defaults]`,
//! `[plugins.override.NAME]`, digest sources), and the checks that keep the sandbox tight.
//! The plugin runtime reads these types by these names (`crate::config::PluginSettings` ...).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, Problems};

/// `[plugins]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// `dir = "plugins"`: every `*.wasm` here is a plugin named after its file.
    pub dir: Option<PathBuf>,
    /// `watch = true`: reload plugins when files in `dir` change.
    pub watch: bool,
    /// `cache_dir = "..."`: where compiled plugins are cached (default: the user's cache
    /// directory, `~/.cache/sluice`); `""` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// `[plugins.defaults]`: how every plugin runs unless overridden.
    pub defaults: PluginSettings,
    /// `[plugins.override.NAME]`: settings for one plugin, on top of the defaults.
    #[serde(rename = "override")]
    pub overrides: BTreeMap<String, PluginSettingsPatch>,
    /// `[plugins.sources.NAME]`: plugins named by SHA-256 digest, fetched from a URL or a
    /// shared path, verified, and cached by digest.
    pub sources: BTreeMap<String, sluice_plugin_host::digest::DigestSource>,
    /// `trusted_keys = ["ed25519:BASE64"]`: when set, a digest source must carry a
    /// `signature` by one of these keys (per node: never from the cluster document).
    pub trusted_keys: Vec<String>,
    /// `sources_ca = "ca.pem"`: CA certificates trusted for `https://` digest sources
    /// (default: the system's roots).
    pub sources_ca: Option<PathBuf>,
    /// `max_held_instances = 500`: per-request instances (all plugins together) kept from a
    /// request's `on-request` for its `on-response` at once, each holding one of the instance
    /// pool's slots while the upstream answers; past it, `on-response` runs on a second fresh
    /// instance. 0 = never kept. Per node.
    pub max_held_instances: usize,
    /// Plugin files loaded beside those in `dir`, each named after its file: set from the
    /// `SLUICE_PLUGINS` environment variable (`sluice run`), never from the file.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            cache_dir: None,
            defaults: PluginSettings::default(),
            overrides: BTreeMap::new(),
            sources: BTreeMap::new(),
            trusted_keys: Vec::new(),
            sources_ca: None,
            max_held_instances: sluice_plugin_host::engine::DEFAULT_MAX_HELD_INSTANCES,
            files: Vec::new(),
        }
    }
}

impl PluginsConfig {
    /// The settings of one plugin: the defaults with its override applied. A version
    /// (`NAME@VERSION`, see `plugin::canary`) takes `NAME`'s override, then its own.
    pub fn settings_for(&self, name: &str) -> PluginSettings {
        let mut s = self.defaults.clone();
        let base = sluice_plugin_host::canary::base(name);
        if base != name
            && let Some(p) = self.overrides.get(base)
        {
            p.apply(&mut s);
        }
        if let Some(p) = self.overrides.get(name) {
            p.apply(&mut s);
        }
        s
    }
}

/// How a plugin instance is managed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Instances are reused, one request at a time each (fast; plugin globals persist).
    Pooled,
    /// A fresh instance for every request, serving both its hooks (no state survives the
    /// request; ~4x the cost of a pooled call).
    PerRequest,
}

/// What happens to a request when a plugin fails (trap, timeout, error, not loaded).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The request is answered 500 (503 when the plugin is not loaded), naming the plugin.
    FailClosed,
    /// The plugin is skipped and the skip is counted.
    FailOpen,
}

/// `[plugins.defaults]` and the result of applying `[plugins.override.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// `instance = "pooled"` or `"per-request"`.
    pub instance: InstanceMode,
    /// `max_idle_instances = 64`: pooled instances kept ready.
    pub max_idle_instances: usize,
    /// `max_uses = 10000`: a pooled instance is replaced after this many requests.
    pub max_uses: u64,
    /// `max_memory_bytes = 67108864`: linear memory cap per instance; past it a memory.grow
    /// fails (and most guests then trap).
    pub max_memory_bytes: usize,
    /// `cpu_timeout = "100ms"`: CPU time a single call may use before it is interrupted.
    #[serde(with = "humantime_serde")]
    pub cpu_timeout: Duration,
    /// `timeout = "1s"`: wall-clock limit for a call, host calls (outbound HTTP) included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `on_failure = "fail-closed"` or `"fail-open"`.
    pub on_failure: FailurePolicy,
    /// `quarantine_after = 5`: consecutive failures that quarantine the plugin.
    pub quarantine_after: u32,
    /// `quarantine_for = "10s"`: the first quarantine; each next one doubles, up to 5 min.
    #[serde(with = "humantime_serde")]
    pub quarantine_for: Duration,
    /// `request_body = false`: buffer the request body (up to `max_body_bytes`) for this
    /// plugin to read and replace.
    pub request_body: bool,
    /// `response_body = false`: buffer the upstream's response body (up to `max_body_bytes`)
    /// for this plugin's `on-response` to read and replace.
    pub response_body: bool,
    /// `max_body_bytes = 1048576`: the largest body handed to the plugin; a larger request
    /// body answers 413, a larger response body 502.
    pub max_body_bytes: usize,
    /// `allowed_hosts = ["auth.internal:8080"]`: hosts (`host` or `host:port`) the plugin may
    /// reach with outbound HTTP. Empty = none. Loopback, link-local and unspecified
    /// addresses, and the admin port, are reachable only through a `host:port` entry.
    pub allowed_hosts: Vec<String>,
    /// `kv_read = ["shared/*"]`: kv keys the plugin may read besides its own `NAME/...`
    /// keys: exact keys, or prefixes ending in `*`. Empty = only its own.
    pub kv_read: Vec<String>,
    /// `max_added_headers = 64`: headers one call may set or append (request, response or
    /// `respond` answer); past it the call gets an error.
    pub max_added_headers: usize,
    /// `max_added_header_bytes = 16384`: bytes (names + values) of the headers one call may
    /// set or append.
    pub max_added_header_bytes: usize,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            instance: InstanceMode::Pooled,
            max_idle_instances: 64,
            max_uses: 10_000,
            max_memory_bytes: 64 * 1024 * 1024,
            cpu_timeout: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            on_failure: FailurePolicy::FailClosed,
            quarantine_after: 5,
            quarantine_for: Duration::from_secs(10),
            request_body: false,
            response_body: false,
            max_body_bytes: 1024 * 1024,
            allowed_hosts: Vec::new(),
            kv_read: Vec::new(),
            max_added_headers: 64,
            max_added_header_bytes: 16 * 1024,
        }
    }
}

/// `[plugins.override.NAME]`: any subset of the settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettingsPatch {
    instance: Option<InstanceMode>,
    max_idle_instances: Option<usize>,
    max_uses: Option<u64>,
    max_memory_bytes: Option<usize>,
    #[serde(with = "humantime_serde")]
    cpu_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    on_failure: Option<FailurePolicy>,
    quarantine_after: Option<u32>,
    #[serde(with = "humantime_serde")]
    quarantine_for: Option<Duration>,
    request_body: Option<bool>,
    response_body: Option<bool>,
    max_body_bytes: Option<usize>,
    allowed_hosts: Option<Vec<String>>,
    kv_read: Option<Vec<String>>,
    max_added_headers: Option<usize>,
    max_added_header_bytes: Option<usize>,
}

impl PluginSettingsPatch {
    fn apply(&self, s: &mut PluginSettings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { s.$f = v.clone(); } )* };
        }
        take!(
            instance,
            max_idle_instances,
            max_uses,
            max_memory_bytes,
            cpu_timeout,
            timeout,
            on_failure,
            quarantine_after,
            quarantine_for,
            request_body,
            response_body,
            max_body_bytes,
            allowed_hosts,
            kv_read,
            max_added_headers,
            max_added_header_bytes
        );
    }
}

/// Plugin settings that would weaken the sandbox: an authenticating plugin that fails open
/// (a failure would let the request through without identity), bad `kv_read` patterns. Looks
/// at `[plugin.NAME]` and the routes too, hence the whole config.
pub(super) fn check_policy(config: &Config, p: &mut Problems) {
    let auth_used = config.plugin.contains_key("auth")
        || config.plugins.overrides.contains_key("auth")
        || config.routes.iter().any(|r| {
            r.plugins
                .iter()
                .any(|plugin| sluice_plugin_host::canary::base(plugin.get_ref()) == "auth")
        });
    if auth_used && config.plugins.settings_for("auth").on_failure == FailurePolicy::FailOpen {
        let key = match config.plugins.overrides.get("auth") {
            Some(o) if o.on_failure.is_some() => "plugins.override.auth.on_failure",
            _ => "plugins.defaults.on_failure",
        };
        p.add(format!(
            "{key}: the auth plugin authenticates requests and must be fail-closed \
             (a fail-open auth would let a request through unauthenticated); \
             set `[plugins.override.auth] on_failure = \"fail-closed\"`"
        ));
    }
    let patches =
        config.plugins.overrides.iter().filter_map(|(name, o)| {
            Some((format!("plugins.override.{name}"), o.kv_read.as_ref()?))
        });
    for (table, patterns) in std::iter::once((
        "plugins.defaults".to_owned(),
        &config.plugins.defaults.kv_read,
    ))
    .chain(patches)
    {
        for pattern in patterns {
            if let Err(why) = sluice_plugin_host::sandbox::check_kv_pattern(pattern) {
                p.add(format!("{table}.kv_read: {why}"));
            }
        }
    }
}

impl PluginsConfig {
    /// Digest sources, trusted keys, the CA for `https://` sources, and the cap on held
    /// per-request instances.
    pub(super) fn check_sources(&self, p: &mut Problems) {
        for (name, source) in &self.sources {
            for message in source.problems(name) {
                p.add(message);
            }
        }
        for message in sluice_plugin_host::digest::key_problems(&self.trusted_keys) {
            p.add(message);
        }
        if let Some(ca) = &self.sources_ca
            && let Err(e) = crate::tls::load_roots(ca)
        {
            p.add(format!("plugins.sources_ca: {e}"));
        }
        let slots = sluice_plugin_host::engine::POOL_COMPONENT_INSTANCES as usize;
        if self.max_held_instances > slots {
            p.add(format!(
                "plugins.max_held_instances: {} is more than the plugin instance pool's {slots} \
                 slots (held instances would leave none for other requests); at most {slots}, \
                 default {}",
                self.max_held_instances,
                sluice_plugin_host::engine::DEFAULT_MAX_HELD_INSTANCES
            ));
        }
    }
}
