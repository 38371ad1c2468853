//! The configuration file: serde structs that mirror the TOML, defaults, and validation that
//! reports every problem as `FILE:LINE:COLUMN: key: what is wrong`.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`): a typo in a production config must
//! fail at load, not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The config used by `sluice run` with no `--config`: a gateway in front of the built-in demo
/// upstream, so a newcomer can try it with curl at once.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// The name shown in errors for the embedded default config.
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, workers and HTTP edge limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[log]`: log format and the access log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[plugins]`: where plugin files are loaded from, and how plugins run.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[services.NAME]`: upstream services and their instances.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[[routes]]`: how requests are matched to services, in any order (longest prefix wins).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[plugin.NAME]`: configuration handed to the plugin named NAME.
    #[serde(default)]
    pub plugin: BTreeMap<String, toml::Table>,
    /// `[kv]`: the watched key-value store plugins read (`kv` in the WIT).
    #[serde(default)]
    pub kv: KvConfig,
    /// `[demo_upstream]`: an optional built-in upstream that echoes what it receives.
    #[serde(default)]
    pub demo_upstream: Option<DemoUpstreamConfig>,
    /// `[registry]`: where registered instances are kept (embedded or etcd).
    #[serde(default)]
    pub registry: RegistryConfig,
    /// `[resolver]`: routing `/{service}/...` to a service by name.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// `[telemetry]`: OpenTelemetry (OTLP) trace export; absent = no spans at all.
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    /// `[admin]`: the admin API's token(s).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[cluster]`: routes, services and plugin settings come from one document on etcd
    /// (see `cluster`); absent = they come from this file.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `listen = "127.0.0.1:8080"`: the data-plane address.
    pub listen: SocketAddr,
    /// `admin = "127.0.0.1:9901"`: the admin listener (health, metrics, admin API).
    pub admin: SocketAddr,
    /// `workers = 1`: data-plane threads, each with its own event loop and listener
    /// (SO_REUSEPORT); 0 = one per core.
    pub workers: usize,
    /// `max_header_count = 100`: more request headers than this answer 431.
    pub max_header_count: usize,
    /// `max_header_bytes = 16384`: a request head (request line + headers) larger than this
    /// answers 431.
    pub max_header_bytes: usize,
    /// `max_body_bytes = 10485760`: a request body larger than this answers 413.
    pub max_body_bytes: u64,
    /// `header_read_timeout = "10s"`: a client that started a request must finish sending its
    /// head within this time, or the connection is dropped (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// `idle_timeout = "60s"`: a keep-alive connection with no request is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `shutdown_timeout = "30s"`: on SIGTERM/SIGINT, how long in-flight requests may take to
    /// finish before their connections are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `hystrix_stream_max_clients = 5`: concurrent `GET /hystrix.stream` clients on the admin
    /// listener; more are answered 503 (Hystrix's `maxConcurrentConnections`).
    pub hystrix_stream_max_clients: usize,
    /// `merge_slashes = true`: `//` in a request path becomes `/` (see `path.rs`).
    pub merge_slashes: bool,
    /// `escaped_slashes = "reject"`: `%2F`, `%5C` and `\` in a path answer 400; `"keep"`
    /// leaves them, `"decode"` turns them into `/`.
    pub escaped_slashes: crate::path::EscapedSlashes,
    /// `trusted_proxies = ["10.0.0.0/8"]`: peers whose `X-Forwarded-For` is kept (the peer is
    /// appended); from anyone else it is replaced by the peer's address.
    pub trusted_proxies: Vec<Cidr>,
    /// `body_read_timeout = "60s"`: a request body must have arrived in full within this time
    /// of the request head, or the request is answered 408 (and the upstream request cut).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// `write_timeout = "30s"`: a connection whose client does not take response bytes for
    /// this long is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// `max_connections = 10000`: open client connections (all workers together); more are
    /// accepted and closed at once. 0 = no limit.
    pub max_connections: usize,
    /// `[server.tls]`: a TLS listener beside the plain one (absent = no TLS).
    pub tls: Option<TlsConfig>,
    /// `[server.http2]`: HTTP/2 from clients (over TLS with ALPN, and h2c on `listen`).
    pub http2: Http2Config,
    /// `[server.websocket]`: limits of WebSocket connections relayed to upstreams.
    pub websocket: WebSocketConfig,
}

/// `[server.websocket]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// `idle_timeout = "5m"`: a WebSocket with no bytes in either direction for this long is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `max_duration = "24h"`: a WebSocket is closed after this long, busy or not.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_duration: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `listen = "127.0.0.1:8443"`: the TLS listener.
    pub listen: SocketAddr,
    /// `cert = "certs/api.pem"`: the certificate chain (PEM), leaf first. Served when the
    /// client sends no SNI or one no certificate names.
    pub cert: PathBuf,
    /// `key = "certs/api.key"`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `[[server.tls.certificates]]`: more certificates, chosen by SNI from their subject
    /// alternative names (DNS names, `*.` wildcards included).
    #[serde(default)]
    pub certificates: Vec<TlsCertificate>,
    /// `min_version = "1.2"` or `"1.3"`: the oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsMinVersion,
    /// `client_ca = "certs/clients.pem"`: require a client certificate signed by one of these
    /// CAs (mTLS); absent = no client certificates asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `watch = true`: reload the certificates when their files change.
    #[serde(default = "default_true")]
    pub watch: bool,
}

/// `[[server.tls.certificates]]`: one more certificate and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// `min_version`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

fn default_true() -> bool {
    true
}

/// `[server.http2]`: HTTP/2 limits. HTTP/2 is offered over TLS (ALPN `h2`) and, with `h2c`,
/// as cleartext with prior knowledge on `server.listen` (what gRPC clients send without TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// `enabled = true`: offer HTTP/2 at all (ALPN `h2`, and h2c when `h2c` is on).
    pub enabled: bool,
    /// `h2c = true`: accept cleartext HTTP/2 with prior knowledge on `server.listen`.
    pub h2c: bool,
    /// `max_concurrent_streams = 128`: streams a client may have open on one connection.
    pub max_concurrent_streams: u32,
    /// `max_header_list_size = 16384`: the largest decoded header list of one request
    /// (also bounds CONTINUATION floods: headers past it are refused).
    pub max_header_list_size: u32,
    /// `initial_stream_window_size = 1048576`: per-stream flow-control window (bytes).
    pub initial_stream_window_size: u32,
    /// `initial_connection_window_size = 2097152`: per-connection flow-control window.
    pub initial_connection_window_size: u32,
    /// `max_pending_accept_reset_streams = 20`: streams reset by the client before the
    /// gateway accepted them; past it the connection is closed (rapid reset, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// `max_local_error_reset_streams = 1024`: streams the gateway had to reset because the
    /// client misbehaved; past it the connection is closed.
    pub max_local_error_reset_streams: usize,
    /// `keep_alive_interval = "30s"`: PING an idle client this often (0 = never); a client
    /// that does not answer within `keep_alive_timeout` is disconnected.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// `keep_alive_timeout = "10s"`.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            h2c: true,
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            initial_stream_window_size: 1024 * 1024,
            initial_connection_window_size: 2 * 1024 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            workers: 1,
            max_header_count: 100,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            hystrix_stream_max_clients: crate::hystrix::DEFAULT_MAX_CLIENTS,
            merge_slashes: true,
            escaped_slashes: crate::path::EscapedSlashes::Reject,
            trusted_proxies: Vec::new(),
            body_read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            tls: None,
            http2: Http2Config::default(),
            websocket: WebSocketConfig::default(),
        }
    }
}

impl ServerConfig {
    /// How request paths are made canonical.
    pub fn path_policy(&self) -> crate::path::PathPolicy {
        crate::path::PathPolicy {
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.escaped_slashes,
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`) or one address (`10.1.2.3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Cidr)
            .map_err(|_| format!("`{s}` is not an IP address or network (like 10.0.0.0/8)"))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[admin]`: who may use the admin API.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `token = "..."`: writes and secret-bearing reads need `Authorization: Bearer TOKEN`.
    /// `SLUICE_ADMIN_TOKEN` in the environment is used when neither this nor `token_file`
    /// is set.
    pub token: Option<String>,
    /// `token_file = "/run/secrets/sluice-admin"`: the token, read from a file at start
    /// (surrounding whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// `registration_token = "..."`: a second token that may only register and deregister
    /// instances (`PUT`/`DELETE /registry/...`), for the services themselves.
    pub registration_token: Option<String>,
    /// `hosts = ["gateway.internal"]`: Host names (besides loopback ones and the admin bind
    /// address) accepted on the admin listener when no token is set.
    pub hosts: Vec<String>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `format = "text"` or `"json"`.
    pub format: LogFormat,
    /// `access = true`: one log line per request (target `sluice::access`).
    pub access: bool,
    /// `level = "info"`: a tracing filter (`RUST_LOG` overrides it).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            access: true,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

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
    pub sources: BTreeMap<String, crate::plugin::digest::DigestSource>,
    /// `trusted_keys = ["ed25519:BASE64"]`: when set, a digest source must carry a
    /// `signature` by one of these keys (per node: never from the cluster document).
    pub trusted_keys: Vec<String>,
    /// `sources_ca = "ca.pem"`: CA certificates trusted for `https://` digest sources
    /// (default: the system's roots).
    pub sources_ca: Option<PathBuf>,
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
            files: Vec::new(),
        }
    }
}

impl PluginsConfig {
    /// The settings of one plugin: the defaults with its override applied. A version
    /// (`NAME@VERSION`, see `plugin::canary`) takes `NAME`'s override, then its own.
    pub fn settings_for(&self, name: &str) -> PluginSettings {
        let mut s = self.defaults.clone();
        let base = crate::plugin::canary::base(name);
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
    /// A fresh instance for every request (no state survives; ~10x the cost).
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

/// `[services.NAME]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `instances = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]`: static
    /// instances. May be empty: the registry API (or etcd) fills it.
    #[serde(default)]
    pub instances: Vec<Spanned<InstanceConfig>>,
    /// `connect_timeout = "2s"`: a TCP connect slower than this fails the attempt.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `request_timeout = "30s"`: the overall time from sending the request to the upstream's
    /// response head, every retry included; past it the client gets 504.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `per_try_timeout = "10s"`: the same limit for one attempt (default: `request_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// `balancer = "round_robin"` (weighted), `"random"`, `"least_request"` (power of two
    /// choices on outstanding requests) or `"hash"` (consistent hash on `hash_on`).
    #[serde(default)]
    pub balancer: BalancerKind,
    /// `hash_on = "header:x-user-id"` or `"cookie:session"`: the key of the `hash` balancer.
    /// Requests without it are balanced round robin.
    #[serde(default)]
    pub hash_on: Option<Spanned<String>>,
    /// `retries = 1`: how many times a failed attempt is retried (on another instance when
    /// there is one). 0 disables retries.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `[services.NAME.retry]`: which failures are retried, backoff and budget.
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[services.NAME.passive_health]`: eject instances that keep failing.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    /// `[services.NAME.active_health]`: probe instances with an HTTP GET.
    #[serde(default)]
    pub active_health: Option<ActiveHealthConfig>,
    /// `protocol = "http1"` (default), `"h2"` (HTTP/2 over TLS, ALPN `h2`) or `"h2c"`
    /// (cleartext HTTP/2 with prior knowledge, what gRPC servers without TLS speak).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `tls = true`: connect to the instances over TLS (implied by `protocol = "h2"`).
    #[serde(default)]
    pub tls: bool,
    /// `tls_server_name = "api.internal"`: the name the instances' certificate must carry
    /// (default: the host part of each instance address).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// `tls_ca = "certs/internal-ca.pem"`: CA certificates (PEM) that sign the instances'
    /// certificates (default: the system's trusted roots).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// `tls_client_cert = "certs/gw.pem"`: a client certificate to present (mTLS upstream),
    /// with `tls_client_key`.
    #[serde(default)]
    pub tls_client_cert: Option<PathBuf>,
    /// `tls_client_key = "certs/gw.key"`: the client certificate's private key.
    #[serde(default)]
    pub tls_client_key: Option<PathBuf>,
}

impl ServiceConfig {
    /// Whether instances are reached over TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.protocol == UpstreamProtocol::H2
    }
}

/// `protocol` of a service.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS when `tls = true`).
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over cleartext TCP, prior knowledge.
    H2c,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            instances: Vec::new(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            per_try_timeout: None,
            balancer: BalancerKind::default(),
            hash_on: None,
            retries: default_retries(),
            retry: RetryConfig::default(),
            passive_health: PassiveHealthConfig::default(),
            active_health: None,
            protocol: UpstreamProtocol::default(),
            tls: false,
            tls_server_name: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
        }
    }
}

/// One static instance: `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = r#"expected an instance, "host:port" or { address = "host:port", weight = 1..=1000 }"#
)]
pub enum InstanceConfig {
    /// Just the address (weight 1).
    Address(String),
    /// Address and weight.
    Weighted {
        /// `host:port`.
        address: String,
        /// Relative share of traffic (1..=1000).
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

impl InstanceConfig {
    /// `host:port`.
    pub fn address(&self) -> &str {
        match self {
            Self::Address(a) | Self::Weighted { address: a, .. } => a,
        }
    }

    /// Its weight.
    pub fn weight(&self) -> u32 {
        match self {
            Self::Address(_) => 1,
            Self::Weighted { weight, .. } => *weight,
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_retries() -> u32 {
    1
}

/// How a service picks an instance.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on outstanding requests (divided by weight).
    LeastRequest,
    /// Consistent hash (a ring with virtual nodes) on a header or cookie.
    Hash,
}

/// `[services.NAME.retry]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// `on = ["connect"]`: which failures retry: `connect` (no connection could be made),
    /// `reset` (the connection failed before any response byte), `timeout` (a try ran out of
    /// `per_try_timeout`), and status codes as strings (`"502"`, `"503"`, `"504"`).
    pub on: Vec<Spanned<String>>,
    /// `methods = [...]`: methods that may be retried (default: the idempotent ones).
    pub methods: Vec<Spanned<String>>,
    /// `backoff = "25ms"`: the first backoff; each next one doubles, with full jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// `max_backoff = "250ms"`: the largest backoff.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// `budget_percent = 20`: retries may add at most this share of the service's requests
    /// over the last 10 s, so retries never amplify an outage.
    pub budget_percent: u32,
    /// `min_retries_per_second = 5`: retries always allowed regardless of the budget (so a
    /// quiet service can still retry).
    pub min_retries_per_second: u32,
    /// `max_replay_body_bytes = 65536`: a request body is kept for replay only up to this
    /// size; larger bodies are retried only when they never left (connect failures).
    pub max_replay_body_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            on: vec![Spanned::new(0..0, "connect".to_string())],
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
                .into_iter()
                .map(|m| Spanned::new(0..0, m.to_string()))
                .collect(),
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget_percent: 20,
            min_retries_per_second: 5,
            max_replay_body_bytes: 64 * 1024,
        }
    }
}

/// `[services.NAME.passive_health]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// `consecutive_failures = 5`: connect failures, resets or 5xx in a row that eject an
    /// instance. 0 disables ejection.
    pub consecutive_failures: u32,
    /// `ejection_time = "10s"`: the first ejection; each next one of the same instance
    /// doubles, up to `max_ejection_time`.
    #[serde(with = "humantime_serde")]
    pub ejection_time: Duration,
    /// `max_ejection_time = "5m"`.
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// `max_ejected_percent = 50`: never eject more than this share of the service's
    /// instances.
    pub max_ejected_percent: u32,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `[services.NAME.active_health]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthConfig {
    /// `path = "/health"`: probed with GET; 2xx is healthy.
    pub path: Spanned<String>,
    /// `interval = "5s"`.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// `timeout = "1s"`.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `healthy_threshold = 2`: passes in a row that bring an instance back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// `unhealthy_threshold = 3`: failures in a row that take it out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

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

/// `[resolver]`: routing by service name, as `micro api` did.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// `enabled = false`: when no route matches, `PREFIX/{service}/rest` goes to service
    /// `NAMESPACE{service}`, if such a service exists.
    pub enabled: bool,
    /// `prefix = "/"`: where service names start in the path.
    pub prefix: String,
    /// `namespace = ""`: prepended to the path segment to make the service name (e.g.
    /// `"go.micro.api."`).
    pub namespace: String,
    /// `strip = false`: remove `PREFIX/{service}` from the path sent upstream.
    pub strip: bool,
    /// `plugins = []`: plugins run on resolved requests.
    pub plugins: Vec<String>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "/".into(),
            namespace: String::new(),
            strip: false,
            plugins: Vec::new(),
        }
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `name = "users"`: shown in logs and metrics; defaults to the path.
    #[serde(default)]
    pub name: Option<String>,
    /// `path = "/users"`: a path prefix matched on segment boundaries (`/users` matches
    /// `/users` and `/users/1`, not `/usersx`). The longest matching prefix wins.
    pub path: Spanned<String>,
    /// `host = "api.example.com"` or `"*.example.com"`: match only this Host.
    #[serde(default)]
    pub host: Option<String>,
    /// `methods = ["GET", "POST"]`: match only these methods.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// `service = "users"`: where matched requests go; must be defined under `[services]`.
    pub service: Spanned<String>,
    /// `strip_prefix = false`: remove the matched prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// `plugins = ["auth"]`: plugins run on this route, in this order (responses in reverse).
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    /// `retries = 2`: overrides the service's `retries` for requests on this route (the rest
    /// of the service's retry policy applies).
    #[serde(default)]
    pub retries: Option<u32>,
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

/// `[demo_upstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoUpstreamConfig {
    /// `listen = "127.0.0.1:9000"`: where the built-in echo upstream listens.
    pub listen: SocketAddr,
}

/// A config problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, starting with the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All the problems found in one file, one per line when displayed.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: name.clone(),
                position: None,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Self::parse(&text, &name)
    }

    /// The embedded default config.
    pub fn embedded_default() -> Self {
        Self::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME).expect("the embedded default config is valid")
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigErrors> {
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let e = e.into_inner();
                ConfigErrors(vec![ConfigError {
                    file: file.to_string(),
                    position: e.span().map(|s| line_col(text, s.start)),
                    message: describe_toml_error(&path, &e),
                }])
            })?;
        config.validate(text, file)?;
        Ok(config)
    }

    /// Checks what serde cannot: references between tables and value ranges.
    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |span: Option<std::ops::Range<usize>>, message: String| {
            errors.push(ConfigError {
                file: file.to_string(),
                position: span.map(|s| line_col(text, s.start)),
                message,
            })
        };
        if self.server.max_header_bytes < 1024 {
            err(
                None,
                "server.max_header_bytes: must be at least 1024".into(),
            );
        }
        if self.server.max_header_count == 0 {
            err(None, "server.max_header_count: must be at least 1".into());
        }
        for (key, value) in [
            ("body_read_timeout", self.server.body_read_timeout),
            ("write_timeout", self.server.write_timeout),
        ] {
            if value.is_zero() {
                err(None, format!("server.{key}: must be above 0"));
            }
        }
        if self.admin.token.is_some() && self.admin.token_file.is_some() {
            err(
                None,
                "admin.token_file: set either token or token_file, not both".into(),
            );
        }
        for (key, value) in [
            ("token", &self.admin.token),
            ("registration_token", &self.admin.registration_token),
        ] {
            if value.as_ref().is_some_and(|t| t.trim().len() < 16) {
                err(
                    None,
                    format!("admin.{key}: must be at least 16 characters (use a random string)"),
                );
            }
        }
        if let Some(tls) = &self.server.tls {
            // The files are read here so that `sluice check-config` catches a missing or bad
            // certificate too, named with its path.
            for problem in crate::tls::check(tls) {
                err(None, problem);
            }
        }
        for (name, service) in &self.services {
            if let Err(why) = crate::registry::check_service_name(name) {
                err(None, format!("services.{name}: {why}"));
            }
            for (i, spanned) in service.instances.iter().enumerate() {
                let instance = spanned.get_ref();
                if let Err(why) = check_authority(instance.address()) {
                    err(
                        Some(spanned.span()),
                        format!("services.{name}.instances[{i}]: {why}"),
                    );
                }
                if !(1..=1000).contains(&instance.weight()) {
                    err(
                        Some(spanned.span()),
                        format!(
                            "services.{name}.instances[{i}].weight: {} is outside 1..=1000",
                            instance.weight()
                        ),
                    );
                }
            }
            self.validate_service(name, service, &mut err);
        }
        if self.registry.backend == RegistryBackend::Etcd && self.registry.endpoints.is_empty() {
            err(
                None,
                "registry.endpoints: etcd needs at least one endpoint".into(),
            );
        }
        if !self.registry.prefix.ends_with('/') {
            err(
                None,
                format!(
                    "registry.prefix: `{}` must end with `/`",
                    self.registry.prefix
                ),
            );
        }
        if self.registry.default_ttl.is_zero() || self.registry.default_ttl > self.registry.max_ttl
        {
            err(
                None,
                "registry.default_ttl: must be above 0 and at most max_ttl".into(),
            );
        }
        if self.kv.backend == KvBackend::Etcd && self.kv.file.is_some() {
            err(
                None,
                "kv.file: only the local backend uses a file; etcd keeps the values".into(),
            );
        }
        if self.kv.backend == KvBackend::Etcd && !self.kv.prefix.ends_with('/') {
            err(
                None,
                format!("kv.prefix: `{}` must end with `/`", self.kv.prefix),
            );
        }
        for message in self.plugin_policy_problems() {
            err(None, message);
        }
        if !self.resolver.prefix.starts_with('/') {
            err(
                None,
                format!(
                    "resolver.prefix: `{}` must start with `/`",
                    self.resolver.prefix
                ),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let path = route.path.get_ref();
            if !path.starts_with('/') {
                err(
                    Some(route.path.span()),
                    format!("routes[{i}].path: `{path}` must start with `/`"),
                );
            }
            let service = route.service.get_ref();
            if !self.services.contains_key(service) {
                let known: Vec<&str> = self.services.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "no services are defined".to_string()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                err(
                    Some(route.service.span()),
                    format!("routes[{i}].service: no service named `{service}` ({known})"),
                );
            }
            for method in &route.methods {
                if http::Method::from_bytes(method.get_ref().as_bytes()).is_err() {
                    err(
                        Some(method.span()),
                        format!(
                            "routes[{i}].methods: `{}` is not an HTTP method",
                            method.get_ref()
                        ),
                    );
                }
            }
        }
        if let Some(telemetry) = &self.telemetry {
            for (span, message) in telemetry.problems() {
                err(span, message);
            }
        }
        for (name, source) in &self.plugins.sources {
            for message in source.problems(name) {
                err(None, message);
            }
        }
        for message in crate::plugin::digest::key_problems(&self.plugins.trusted_keys) {
            err(None, message);
        }
        if let Some(ca) = &self.plugins.sources_ca
            && let Err(e) = crate::tls::load_roots(ca)
        {
            err(None, format!("plugins.sources_ca: {e}"));
        }
        for (span, message) in crate::plugin::canary::problems(self) {
            err(span, message);
        }
        if let Some(cluster) = &self.cluster {
            for message in cluster.problems(text) {
                err(None, message);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// Plugin settings that would weaken the sandbox: an authenticating plugin that fails
    /// open (a failure would let the request through without identity), bad `kv_read`
    /// patterns.
    fn plugin_policy_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let auth_used = self.plugin.contains_key("auth")
            || self.plugins.overrides.contains_key("auth")
            || self.routes.iter().any(|r| {
                r.plugins
                    .iter()
                    .any(|p| crate::plugin::canary::base(p.get_ref()) == "auth")
            });
        if auth_used && self.plugins.settings_for("auth").on_failure == FailurePolicy::FailOpen {
            let key = match self.plugins.overrides.get("auth") {
                Some(o) if o.on_failure.is_some() => "plugins.override.auth.on_failure",
                _ => "plugins.defaults.on_failure",
            };
            problems.push(format!(
                "{key}: the auth plugin authenticates requests and must be fail-closed \
                 (a fail-open auth would let a request through unauthenticated); \
                 set `[plugins.override.auth] on_failure = \"fail-closed\"`"
            ));
        }
        let patches = self.plugins.overrides.iter().filter_map(|(name, o)| {
            Some((format!("plugins.override.{name}"), o.kv_read.as_ref()?))
        });
        for (table, patterns) in std::iter::once((
            "plugins.defaults".to_owned(),
            &self.plugins.defaults.kv_read,
        ))
        .chain(patches)
        {
            for pattern in patterns {
                if let Err(why) = crate::plugin::sandbox::check_kv_pattern(pattern) {
                    problems.push(format!("{table}.kv_read: {why}"));
                }
            }
        }
        problems
    }

    fn validate_service(
        &self,
        name: &str,
        service: &ServiceConfig,
        err: &mut impl FnMut(Option<std::ops::Range<usize>>, String),
    ) {
        for on in &service.retry.on {
            let what = on.get_ref().as_str();
            let known = matches!(what, "connect" | "reset" | "timeout")
                || what.parse::<u16>().is_ok_and(|s| (500..=599).contains(&s));
            if !known {
                err(
                    Some(on.span()),
                    format!(
                        "services.{name}.retry.on: `{what}` is not one of connect, reset, timeout or a 5xx status"
                    ),
                );
            }
        }
        for method in &service.retry.methods {
            if http::Method::from_bytes(method.get_ref().as_bytes()).is_err() {
                err(
                    Some(method.span()),
                    format!(
                        "services.{name}.retry.methods: `{}` is not an HTTP method",
                        method.get_ref()
                    ),
                );
            }
        }
        if service.retry.budget_percent > 100 {
            err(
                None,
                format!("services.{name}.retry.budget_percent: must be at most 100"),
            );
        }
        if service.passive_health.max_ejected_percent > 100 {
            err(
                None,
                format!("services.{name}.passive_health.max_ejected_percent: must be at most 100"),
            );
        }
        match (&service.hash_on, service.balancer) {
            (None, BalancerKind::Hash) => err(
                None,
                format!(
                    "services.{name}.hash_on: the hash balancer needs `hash_on = \"header:NAME\"` or `\"cookie:NAME\"`"
                ),
            ),
            (Some(on), _) => {
                if crate::upstream::balancer::HashOn::parse(on.get_ref()).is_none() {
                    err(
                        Some(on.span()),
                        format!(
                            "services.{name}.hash_on: `{}` must be `header:NAME` or `cookie:NAME`",
                            on.get_ref()
                        ),
                    );
                }
            }
            (None, _) => {}
        }
        if service.protocol == UpstreamProtocol::H2c && service.tls {
            err(
                None,
                format!(
                    "services.{name}.protocol: `h2c` is cleartext HTTP/2; with `tls = true` use `protocol = \"h2\"`"
                ),
            );
        }
        let tls_keys = service.tls_server_name.is_some()
            || service.tls_ca.is_some()
            || service.tls_client_cert.is_some()
            || service.tls_client_key.is_some();
        if tls_keys && !service.uses_tls() {
            err(
                None,
                format!(
                    "services.{name}: tls_server_name, tls_ca and tls_client_* need `tls = true` or `protocol = \"h2\"`"
                ),
            );
        } else if service.uses_tls()
            && let Err(e) = crate::tls::upstream_connector(service)
        {
            err(None, format!("services.{name}: {e}"));
        }
        if let Some(active) = &service.active_health {
            if !active.path.get_ref().starts_with('/') {
                err(
                    Some(active.path.span()),
                    format!(
                        "services.{name}.active_health.path: `{}` must start with `/`",
                        active.path.get_ref()
                    ),
                );
            }
            if active.interval.is_zero()
                || active.healthy_threshold == 0
                || active.unhealthy_threshold == 0
            {
                err(
                    None,
                    format!(
                        "services.{name}.active_health: interval and thresholds must be above 0"
                    ),
                );
            }
        }
    }
}

/// `host:port`, where host is an IP or a DNS name.
pub(crate) fn check_authority(value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            match value.parse::<http::uri::Authority>() {
                Ok(_) => Ok(()),
                Err(_) => Err(format!("`{value}` is not a valid host:port")),
            }
        }
        _ => Err(format!(
            "`{value}` must be host:port (for example 127.0.0.1:9001)"
        )),
    }
}

/// toml's message, prefixed with the path of the key it is about (`routes[1].plugins[0]`),
/// taken from the deserializer rather than from the text: inline tables and multi-line
/// arrays put the key on another line than the value. toml's message already names the
/// key of an unknown or missing field; the path then names the table it is in.
fn describe_toml_error(path: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    // Spanned values add a private segment of toml's own to the path.
    let path = path.replace(".$__serde_spanned_private_value", "");
    let path = path.as_str();
    // For an unknown field the path ends with that field, which the message names already.
    let path = match message.starts_with("unknown field") {
        true => path.rsplit_once('.').map_or("", |(table, _)| table),
        false => path,
    };
    match path {
        "" | "." => message,
        path => format!("{path}: {message}"),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_valid_and_routes_to_the_demo() {
        let config = Config::embedded_default();
        assert!(config.demo_upstream.is_some());
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 5), (3, 1));
    }

    #[test]
    fn unknown_key_names_file_line_table_and_key() {
        let e = errors("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
        assert!(
            e.starts_with("t.toml:3:1: server: unknown field `lisen`"),
            "{e}"
        );
    }

    #[test]
    fn missing_service_is_an_error_at_load() {
        let e = errors(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\nservice = \"b\"\n",
        );
        assert_eq!(
            e,
            "t.toml:5:11: routes[0].service: no service named `b` (defined: a)"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errors(
            "[services.a]\ninstances = [\"nope\"]\n[[routes]]\npath = \"x\"\nservice = \"a\"\nmethods = [\"G T\"]\n",
        );
        assert_eq!(e.lines().count(), 3, "{e}");
        assert!(e.contains("t.toml:2:14: services.a.instances[0]: `nope` must be host:port"));
        assert!(e.contains("t.toml:4:8: routes[0].path: `x` must start with `/`"));
        assert!(e.contains("routes[0].methods: `G T` is not an HTTP method"));
    }

    #[test]
    fn bad_duration_names_the_line() {
        let e = errors("[server]\nidle_timeout = \"soon\"\n");
        assert!(e.starts_with("t.toml:2:16: server.idle_timeout: "), "{e}");
    }
}
