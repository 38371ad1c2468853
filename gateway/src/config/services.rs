//! `[services.NAME]`: upstream services, their instances, balancing, retries, health checks
//! and upstream TLS; the typed values of those tables (`retry.on`, `retry.methods`, `hash_on`)
//! and the checks across their keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use http::header::HeaderName;
use http::uri::PathAndQuery;
use serde::Deserialize;
use toml::Spanned;

use super::{FromText, Parsed, Problems};

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
    pub hash_on: Option<Parsed<HashOn>>,
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

    /// The TLS client settings, as `crate::tls::upstream_connector` takes them.
    pub fn upstream_tls(&self) -> crate::tls::UpstreamTls<'_> {
        crate::tls::UpstreamTls {
            tls_ca: self.tls_ca.as_deref(),
            tls_client_cert: self.tls_client_cert.as_deref(),
            tls_client_key: self.tls_client_key.as_deref(),
            tls_server_name: self.tls_server_name.as_deref(),
            h2: self.protocol == UpstreamProtocol::H2,
        }
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
    pub on: Vec<Parsed<RetryOn>>,
    /// `methods = [...]`: methods that may be retried (default: the idempotent ones).
    pub methods: Vec<Parsed<http::Method>>,
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
            on: vec![Parsed::new(RetryOn::Connect)],
            methods: [
                http::Method::GET,
                http::Method::HEAD,
                http::Method::OPTIONS,
                http::Method::PUT,
                http::Method::DELETE,
                http::Method::TRACE,
            ]
            .into_iter()
            .map(Parsed::new)
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
    pub path: Parsed<PathAndQuery>,
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

/// One entry of `retry.on`: which failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// `"connect"`: no connection could be made.
    Connect,
    /// `"reset"`: the connection failed before any response byte.
    Reset,
    /// `"timeout"`: a try ran out of `per_try_timeout`.
    Timeout,
    /// `"502"`: the upstream answered with this 5xx status.
    Status(StatusCode),
}

impl FromText for RetryOn {
    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "connect" => Ok(Self::Connect),
            "reset" => Ok(Self::Reset),
            "timeout" => Ok(Self::Timeout),
            _ => text
                .parse::<u16>()
                .ok()
                .filter(|s| (500..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .map(Self::Status)
                .ok_or_else(|| {
                    format!("`{text}` is not one of connect, reset, timeout or a 5xx status")
                }),
        }
    }
}

/// `hash_on`: where the `hash` balancer takes its key from (read from a request by the
/// balancer, `upstream/balancer.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// `"header:NAME"`: a request header's value.
    Header(HeaderName),
    /// `"cookie:NAME"`: a cookie's value.
    Cookie(String),
}

impl FromText for HashOn {
    fn from_text(text: &str) -> Result<Self, String> {
        let parsed = text.split_once(':').and_then(|(kind, name)| {
            let name = name.trim();
            match kind.trim() {
                _ if name.is_empty() => None,
                "header" => HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(Self::Header),
                "cookie" => Some(Self::Cookie(name.to_owned())),
                _ => None,
            }
        });
        parsed.ok_or_else(|| format!("`{text}` must be `header:NAME` or `cookie:NAME`"))
    }
}

/// `active_health.path`: what the probe sends as `GET PATH` (a query is allowed). Parsed as
/// the probe's request parses it, so a path the probe could never send fails the load instead
/// of every probe.
impl FromText for PathAndQuery {
    fn from_text(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        text.parse()
            .map_err(|_| format!("`{text}` is not a valid request path (like /health)"))
    }
}

/// A service name: what fits in a URL segment, a metric label and an etcd key without
/// escaping (the registry API takes the same names).
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1 to 128 of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// The problems of `[services]`, service by service.
pub(super) fn check(services: &BTreeMap<String, ServiceConfig>, p: &mut Problems) {
    for (name, service) in services {
        if let Err(why) = check_service_name(name) {
            p.add(format!("services.{name}: {why}"));
        }
        for (i, spanned) in service.instances.iter().enumerate() {
            let instance = spanned.get_ref();
            if let Err(why) = check_authority(instance.address()) {
                p.at(
                    spanned.span(),
                    format!("services.{name}.instances[{i}]: {why}"),
                );
            }
            if !(1..=1000).contains(&instance.weight()) {
                p.at(
                    spanned.span(),
                    format!(
                        "services.{name}.instances[{i}].weight: {} is outside 1..=1000",
                        instance.weight()
                    ),
                );
            }
        }
        service.check(name, p);
    }
}

impl ServiceConfig {
    fn check(&self, name: &str, p: &mut Problems) {
        p.parsed(&format!("services.{name}.retry.on"), &self.retry.on);
        p.parsed(
            &format!("services.{name}.retry.methods"),
            &self.retry.methods,
        );
        if self.retry.budget_percent > 100 {
            p.add(format!(
                "services.{name}.retry.budget_percent: must be at most 100"
            ));
        }
        if self.passive_health.max_ejected_percent > 100 {
            p.add(format!(
                "services.{name}.passive_health.max_ejected_percent: must be at most 100"
            ));
        }
        match (&self.hash_on, self.balancer) {
            (None, BalancerKind::Hash) => p.add(format!(
                "services.{name}.hash_on: the hash balancer needs `hash_on = \"header:NAME\"` or `\"cookie:NAME\"`"
            )),
            (Some(on), _) => p.parsed(&format!("services.{name}.hash_on"), [on]),
            (None, _) => {}
        }
        if self.protocol == UpstreamProtocol::H2c && self.tls {
            p.add(format!(
                "services.{name}.protocol: `h2c` is cleartext HTTP/2; with `tls = true` use `protocol = \"h2\"`"
            ));
        }
        let tls_keys = self.tls_server_name.is_some()
            || self.tls_ca.is_some()
            || self.tls_client_cert.is_some()
            || self.tls_client_key.is_some();
        if tls_keys && !self.uses_tls() {
            p.add(format!(
                "services.{name}: tls_server_name, tls_ca and tls_client_* need `tls = true` or `protocol = \"h2\"`"
            ));
        } else if self.uses_tls()
            && let Err(e) = crate::tls::upstream_connector(&self.upstream_tls())
        {
            p.add(format!("services.{name}: {e}"));
        }
        if let Some(active) = &self.active_health {
            p.parsed(
                &format!("services.{name}.active_health.path"),
                [&active.path],
            );
            if active.interval.is_zero()
                || active.healthy_threshold == 0
                || active.unhealthy_threshold == 0
            {
                p.add(format!(
                    "services.{name}.active_health: interval and thresholds must be above 0"
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn service(keys: &str) -> Result<ServiceConfig, String> {
        let text = format!("[services.s]\ninstances = [\"127.0.0.1:1\"]\n{keys}\n");
        Config::parse(&text, "t.toml")
            .map(|c| c.services["s"].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_retry_on_spelling_is_typed() {
        let s = service(
            "[services.s.retry]\non = [\"connect\", \"reset\", \"timeout\", \"500\", \"599\"]",
        )
        .unwrap();
        let on: Vec<RetryOn> = s.retry.on.iter().map(|o| *o.get()).collect();
        assert_eq!(
            on,
            [
                RetryOn::Connect,
                RetryOn::Reset,
                RetryOn::Timeout,
                RetryOn::Status(StatusCode::INTERNAL_SERVER_ERROR),
                RetryOn::Status(StatusCode::from_u16(599).unwrap()),
            ]
        );
    }

    #[test]
    fn a_bad_retry_on_entry_is_named_with_its_key_path_and_position() {
        for bad in ["Connect", "499", "600", "5xx", "", " 502", "connect,reset"] {
            let e =
                service(&format!("[services.s.retry]\non = [\"reset\", \"{bad}\"]")).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "t.toml:4:16: services.s.retry.on: `{bad}` is not one of connect, reset, timeout or a 5xx status"
                )
            );
        }
        // Not a string at all: a type error, which stops deserialisation.
        let e = service("[services.s.retry]\non = [502]").unwrap_err();
        assert_eq!(
            e,
            "t.toml:4:7: services.s.retry.on[0]: invalid type: integer `502`, expected a string"
        );
    }

    #[test]
    fn retry_methods_are_typed_and_a_bad_one_is_named() {
        let s = service("[services.s.retry]\nmethods = [\"POST\", \"PURGE\"]").unwrap();
        let methods: Vec<&str> = s.retry.methods.iter().map(|m| m.get().as_str()).collect();
        assert_eq!(methods, ["POST", "PURGE"]);
        let e = service("[services.s.retry]\nmethods = [\"GET\",\n  \"P(ST\"]").unwrap_err();
        assert_eq!(
            e,
            "t.toml:5:3: services.s.retry.methods: `P(ST` is not an HTTP method"
        );
    }

    #[test]
    fn hash_on_is_typed_and_a_bad_one_is_named() {
        let s = service("balancer = \"hash\"\nhash_on = \"header:X-User\"").unwrap();
        assert_eq!(
            s.hash_on.as_ref().map(Parsed::get),
            Some(&HashOn::Header(HeaderName::from_static("x-user")))
        );
        let s = service("hash_on = \" cookie : session \"").unwrap();
        assert_eq!(
            s.hash_on.as_ref().map(Parsed::get),
            Some(&HashOn::Cookie("session".into()))
        );
        for bad in [
            "query:id",
            "header:",
            "cookie",
            "header:bad name",
            "header:x\u{e9}",
        ] {
            let e = service(&format!("hash_on = \"{bad}\"")).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "t.toml:3:11: services.s.hash_on: `{bad}` must be `header:NAME` or `cookie:NAME`"
                )
            );
        }
    }

    #[test]
    fn the_probe_path_is_typed_and_one_the_probe_could_not_send_is_refused() {
        let s = service("[services.s.active_health]\npath = \"/health?deep=1\"").unwrap();
        let path = s.active_health.expect("set").path;
        assert_eq!(path.get().as_str(), "/health?deep=1");
        for (bad, why) in [
            ("health", "must start with `/`"),
            ("/a b", "is not a valid request path (like /health)"),
            ("/a\\u0007", "is not a valid request path (like /health)"),
        ] {
            let e = service(&format!("[services.s.active_health]\npath = \"{bad}\"")).unwrap_err();
            let shown = bad.replace("\\u0007", "\u{7}");
            assert_eq!(
                e,
                format!("t.toml:4:8: services.s.active_health.path: `{shown}` {why}")
            );
        }
    }
}
