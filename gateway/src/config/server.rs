//! `[server]` (listeners, HTTP edge limits, TLS, HTTP/2, WebSocket), `[log]` and
//! `[demo_upstream]`: what the data plane and the process are started with.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
/// `[server.tls]`'s types are tls.rs's (which reads them; it stays below `config`).
pub use crate::tls::{TlsCertificate, TlsConfig, TlsMinVersion};

/// Default `server.hystrix_stream_max_clients` (Hystrix's `maxConcurrentConnections`).
pub const DEFAULT_HYSTRIX_STREAM_MAX_CLIENTS: usize = 5;

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
            hystrix_stream_max_clients: DEFAULT_HYSTRIX_STREAM_MAX_CLIENTS,
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

/// `[demo_upstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoUpstreamConfig {
    /// `listen = "127.0.0.1:9000"`: where the built-in echo upstream listens.
    pub listen: SocketAddr,
}

impl ServerConfig {
    /// The HTTP edge limits.
    pub(super) fn check_limits(&self, p: &mut Problems) {
        if self.max_header_bytes < 1024 {
            p.add("server.max_header_bytes: must be at least 1024".into());
        }
        if self.max_header_count == 0 {
            p.add("server.max_header_count: must be at least 1".into());
        }
        for (key, value) in [
            ("body_read_timeout", self.body_read_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                p.add(format!("server.{key}: must be above 0"));
            }
        }
    }

    /// `[server.tls]`: the files are read here so that `sluice check-config` catches a
    /// missing or bad certificate too, named with its path.
    pub(super) fn check_tls(&self, p: &mut Problems) {
        if let Some(tls) = &self.tls {
            for problem in crate::tls::check(tls) {
                p.add(problem);
            }
        }
    }
}
