//! The plugin's configuration: `[plugin.breaker]` with Hystrix's defaults, and per-route
//! overrides under `[plugin.breaker.routes.ROUTE]`. Parsed and validated once in `init`, with
//! errors naming the offending key. Plain Rust (no host calls), so it is unit-tested natively.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Default `request_volume_threshold` (Hystrix `circuitBreaker.requestVolumeThreshold`).
pub const DEFAULT_REQUEST_VOLUME_THRESHOLD: u64 = 20;
/// Default `error_threshold_percent` (Hystrix `circuitBreaker.errorThresholdPercentage`).
pub const DEFAULT_ERROR_THRESHOLD_PERCENT: u64 = 50;
/// Default `sleep_window` (Hystrix `circuitBreaker.sleepWindowInMilliseconds`).
pub const DEFAULT_SLEEP_WINDOW_MS: u64 = 5000;
/// Default `rolling_window` (Hystrix `metrics.rollingStats.timeInMilliseconds`).
pub const DEFAULT_ROLLING_WINDOW_MS: u64 = 10_000;
/// Default `rolling_buckets` (Hystrix `metrics.rollingStats.numBuckets`).
pub const DEFAULT_ROLLING_BUCKETS: u64 = 10;
/// Default `timeout` (Hystrix `execution.isolation.thread.timeoutInMilliseconds`).
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default `max_concurrent_requests`: Envoy's default for a cluster's concurrent requests.
/// (Hystrix's semaphore default, 10, is sized for one client thread pool; a gateway route
/// carries many clients, and 10 turned a 64-connection load into 85 % rejections.)
pub const DEFAULT_MAX_CONCURRENT: u64 = 1024;
/// Default `half_open_requests` (Hystrix lets exactly one trial through).
pub const DEFAULT_HALF_OPEN_REQUESTS: u64 = 1;
/// Default `health_snapshot_interval` (Hystrix `metrics.healthSnapshot.intervalInMilliseconds`).
pub const DEFAULT_HEALTH_SNAPSHOT_MS: u64 = 500;
/// How long a bulkhead slot or a half-open trial is held when `timeout` is off and the
/// request never reports back (its client went away).
pub const LEASE_WITHOUT_TIMEOUT_MS: u64 = 60_000;
/// Added to `timeout` for the lease of a bulkhead slot or trial.
pub const LEASE_MARGIN_MS: u64 = 1000;

/// How a request is mapped to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKey {
    /// `ROUTE METHOD` (default): one circuit per route and method.
    RouteMethod,
    /// `ROUTE`: one circuit per route.
    Route,
}

/// The response sent instead of the built-in 503 when the circuit is open or the bulkhead is
/// full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Status code, 100..=599.
    pub status: u16,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// The settings of one route (the defaults with its overrides applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Requests the rolling window must hold before the error percentage is considered.
    pub request_volume_threshold: u64,
    /// Error percentage (0..=100) at or above which the circuit opens.
    pub error_threshold_percent: u64,
    /// How long an open circuit short-circuits before a trial request goes through.
    pub sleep_window_ms: u64,
    /// Length of the rolling window.
    pub rolling_window_ms: u64,
    /// Buckets in the rolling window.
    pub rolling_buckets: u64,
    /// Upstream timeout per request; 0 = none.
    pub timeout_ms: u64,
    /// Requests in flight per command; 0 = no bulkhead.
    pub max_concurrent_requests: u64,
    /// Trial requests let through per half-open period.
    pub half_open_requests: u64,
    /// Statuses counted as failures (from the upstream).
    pub error_statuses: StatusSet,
    /// Sent instead of the built-in 503.
    pub fallback: Option<Fallback>,
    /// Always short-circuit.
    pub force_open: bool,
    /// Never short-circuit (still counts).
    pub force_closed: bool,
    /// How often a pooled instance recomputes the health counts from the shared buckets.
    pub health_snapshot_interval_ms: u64,
    /// How requests map to commands.
    pub command_key: CommandKey,
    /// The Hystrix group shown on the dashboard (default: the route's name).
    pub group: Option<String>,
}

impl Settings {
    /// Length of one bucket of the rolling window.
    pub fn bucket_ms(&self) -> u64 {
        self.rolling_window_ms / self.rolling_buckets
    }

    /// How long a bulkhead slot or half-open trial is held if the request never reports back.
    pub fn lease_ms(&self) -> u64 {
        if self.timeout_ms == 0 {
            LEASE_WITHOUT_TIMEOUT_MS
        } else {
            self.timeout_ms.saturating_add(LEASE_MARGIN_MS)
        }
    }
}

/// Status codes counted as failures: a 600-bit set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    fn empty() -> Self {
        Self([0; 10])
    }

    fn insert(&mut self, status: u16) {
        let s = usize::from(status);
        self.0[s / 64] |= 1 << (s % 64);
    }

    /// Whether the status is in the set.
    pub fn contains(&self, status: u16) -> bool {
        let s = usize::from(status);
        s < 640 && self.0[s / 64] & (1 << (s % 64)) != 0
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Settings of routes without an override.
    pub defaults: Rc<Settings>,
    /// Settings by route name.
    pub routes: BTreeMap<String, Rc<Settings>>,
}

impl BreakerConfig {
    /// The settings for a route.
    pub fn for_route(&self, route: &str) -> &Rc<Settings> {
        self.routes.get(route).unwrap_or(&self.defaults)
    }

    /// Parses and validates the configuration JSON.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let mut object = match value {
            Value::Object(o) => o.clone(),
            Value::Null => Map::new(),
            _ => return Err("invalid config: expected a table".into()),
        };
        let routes = object.remove("routes");
        let base = RawSettings::from_value(Value::Object(object), "")?;
        let defaults = Rc::new(base.resolve("")?);
        let mut by_route = BTreeMap::new();
        match routes {
            None => {}
            Some(Value::Object(routes)) => {
                for (route, value) in routes {
                    let prefix = format!("routes.{route}.");
                    let raw = RawSettings::from_value(value, &prefix)?;
                    let settings = raw.over(&base).resolve(&prefix)?;
                    by_route.insert(route, Rc::new(settings));
                }
            }
            Some(_) => {
                return Err("invalid config: routes: expected a table of route names".into());
            }
        }
        Ok(Self {
            defaults,
            routes: by_route,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    request_volume_threshold: Option<u64>,
    error_threshold_percent: Option<u64>,
    sleep_window: Option<Value>,
    rolling_window: Option<Value>,
    rolling_buckets: Option<u64>,
    timeout: Option<Value>,
    max_concurrent_requests: Option<u64>,
    half_open_requests: Option<u64>,
    error_statuses: Option<Vec<Value>>,
    fallback: Option<RawFallback>,
    force_open: Option<bool>,
    force_closed: Option<bool>,
    health_snapshot_interval: Option<Value>,
    command_key: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    status: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

impl RawSettings {
    fn from_value(value: Value, prefix: &str) -> Result<Self, String> {
        Self::deserialize(value).map_err(|e| {
            let at = if prefix.is_empty() {
                String::new()
            } else {
                format!("{} ", prefix.trim_end_matches('.'))
            };
            format!("invalid config: {at}{e}")
        })
    }

    /// These overrides on top of `base`.
    fn over(self, base: &Self) -> Self {
        let b = base.clone();
        Self {
            request_volume_threshold: self.request_volume_threshold.or(b.request_volume_threshold),
            error_threshold_percent: self.error_threshold_percent.or(b.error_threshold_percent),
            sleep_window: self.sleep_window.or(b.sleep_window),
            rolling_window: self.rolling_window.or(b.rolling_window),
            rolling_buckets: self.rolling_buckets.or(b.rolling_buckets),
            timeout: self.timeout.or(b.timeout),
            max_concurrent_requests: self.max_concurrent_requests.or(b.max_concurrent_requests),
            half_open_requests: self.half_open_requests.or(b.half_open_requests),
            error_statuses: self.error_statuses.or(b.error_statuses),
            fallback: self.fallback.or(b.fallback),
            force_open: self.force_open.or(b.force_open),
            force_closed: self.force_closed.or(b.force_closed),
            health_snapshot_interval: self.health_snapshot_interval.or(b.health_snapshot_interval),
            command_key: self.command_key.or(b.command_key),
            group: self.group.or(b.group),
        }
    }

    fn resolve(&self, p: &str) -> Result<Settings, String> {
        let err = |key: &str, msg: String| format!("invalid config: {p}{key}: {msg}");
        let duration = |key: &str, v: &Option<Value>, default: u64| match v {
            None => Ok(default),
            Some(v) => parse_duration_value(v).map_err(|e| err(key, e)),
        };
        let request_volume_threshold = self
            .request_volume_threshold
            .unwrap_or(DEFAULT_REQUEST_VOLUME_THRESHOLD);
        if request_volume_threshold == 0 {
            return Err(err("request_volume_threshold", "must be at least 1".into()));
        }
        let error_threshold_percent = self
            .error_threshold_percent
            .unwrap_or(DEFAULT_ERROR_THRESHOLD_PERCENT);
        if error_threshold_percent > 100 {
            return Err(err(
                "error_threshold_percent",
                format!("{error_threshold_percent} is not a percentage (0..=100)"),
            ));
        }
        let sleep_window_ms =
            duration("sleep_window", &self.sleep_window, DEFAULT_SLEEP_WINDOW_MS)?;
        if sleep_window_ms == 0 {
            return Err(err("sleep_window", "must be longer than 0".into()));
        }
        let rolling_window_ms = duration(
            "rolling_window",
            &self.rolling_window,
            DEFAULT_ROLLING_WINDOW_MS,
        )?;
        let rolling_buckets = self.rolling_buckets.unwrap_or(DEFAULT_ROLLING_BUCKETS);
        if rolling_buckets == 0 || rolling_buckets > 1000 {
            return Err(err("rolling_buckets", "must be between 1 and 1000".into()));
        }
        if rolling_window_ms == 0 || rolling_window_ms % rolling_buckets != 0 {
            return Err(err(
                "rolling_window",
                format!(
                    "{rolling_window_ms} ms must be a positive multiple of rolling_buckets ({rolling_buckets})"
                ),
            ));
        }
        let timeout_ms = duration("timeout", &self.timeout, DEFAULT_TIMEOUT_MS)?;
        let max_concurrent_requests = self
            .max_concurrent_requests
            .unwrap_or(DEFAULT_MAX_CONCURRENT);
        if max_concurrent_requests > 10_000 {
            return Err(err(
                "max_concurrent_requests",
                "must be at most 10000 (0 turns the bulkhead off)".into(),
            ));
        }
        let half_open_requests = self
            .half_open_requests
            .unwrap_or(DEFAULT_HALF_OPEN_REQUESTS);
        if half_open_requests == 0 {
            return Err(err("half_open_requests", "must be at least 1".into()));
        }
        let error_statuses = match &self.error_statuses {
            None => parse_statuses(&[Value::from("5xx")]),
            Some(list) => parse_statuses(list),
        }
        .map_err(|e| err("error_statuses", e))?;
        let fallback = match &self.fallback {
            None => None,
            Some(f) => {
                Some(resolve_fallback(f).map_err(|(key, e)| err(&format!("fallback.{key}"), e))?)
            }
        };
        let health_snapshot_interval_ms = duration(
            "health_snapshot_interval",
            &self.health_snapshot_interval,
            DEFAULT_HEALTH_SNAPSHOT_MS,
        )?;
        let command_key = match self.command_key.as_deref() {
            None | Some("route+method") => CommandKey::RouteMethod,
            Some("route") => CommandKey::Route,
            Some(other) => {
                return Err(err(
                    "command_key",
                    format!("`{other}` is not one of \"route+method\", \"route\""),
                ));
            }
        };
        if let Some(group) = &self.group
            && (group.is_empty() || group.len() > 200)
        {
            return Err(err("group", "must be 1 to 200 characters".into()));
        }
        Ok(Settings {
            request_volume_threshold,
            error_threshold_percent,
            sleep_window_ms,
            rolling_window_ms,
            rolling_buckets,
            timeout_ms,
            max_concurrent_requests,
            half_open_requests,
            error_statuses,
            fallback,
            force_open: self.force_open.unwrap_or(false),
            force_closed: self.force_closed.unwrap_or(false),
            health_snapshot_interval_ms,
            command_key,
            group: self.group.clone(),
        })
    }
}

fn resolve_fallback(raw: &RawFallback) -> Result<Fallback, (&'static str, String)> {
    let status = raw
        .status
        .ok_or(("status", "is required (100..=599)".to_owned()))?;
    if !(100..=599).contains(&status) {
        return Err(("status", format!("{status} is not in 100..=599")));
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        if name.is_empty() || !name.bytes().all(token) {
            return Err(("headers", format!("`{name}` is not a valid header name")));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err((
                "headers",
                format!("the value of `{name}` has CR, LF or NUL"),
            ));
        }
        headers.push((name.to_ascii_lowercase(), value.clone()));
    }
    Ok(Fallback {
        status: status as u16,
        headers,
        body: raw.body.clone(),
    })
}

/// `[500, 503, "5xx", "429"]`: codes, or `Nxx` for a whole class.
fn parse_statuses(list: &[Value]) -> Result<StatusSet, String> {
    let mut set = StatusSet::empty();
    for item in list {
        match item {
            Value::Number(n) => match n.as_u64() {
                Some(code @ 100..=599) => set.insert(code as u16),
                _ => return Err(format!("{n} is not a status code (100..=599)")),
            },
            Value::String(s) => {
                let bytes = s.as_bytes();
                if bytes.len() == 3 && (b'1'..=b'5').contains(&bytes[0]) && &s[1..] == "xx" {
                    let class = u16::from(bytes[0] - b'0') * 100;
                    (class..class + 100).for_each(|c| set.insert(c));
                } else {
                    match s.parse::<u16>() {
                        Ok(code @ 100..=599) => set.insert(code),
                        _ => {
                            return Err(format!(
                                "`{s}` is not a status code or class like \"5xx\""
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "{other} is not a status code or class like \"5xx\""
                ));
            }
        }
    }
    Ok(set)
}

/// A duration: `"500ms"`, `"5s"`, `"1m"`, or `0` / `"0"` / integer milliseconds.
fn parse_duration_value(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a whole number of milliseconds")),
        Value::String(s) => parse_duration(s),
        other => Err(format!(
            "{other} is not a duration like \"500ms\", \"5s\", \"1m\""
        )),
    }
}

/// Durations as configs write them (the SDK's parser).
pub use sluice_plugin_sdk::parse_duration_ms as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_hystrix_defaults() {
        let c = BreakerConfig::parse(&json!({})).unwrap();
        let s = &c.defaults;
        assert_eq!(s.request_volume_threshold, 20);
        assert_eq!(s.error_threshold_percent, 50);
        assert_eq!(s.sleep_window_ms, 5000);
        assert_eq!(
            (s.rolling_window_ms, s.rolling_buckets, s.bucket_ms()),
            (10_000, 10, 1000)
        );
        assert_eq!(s.timeout_ms, 1000);
        assert_eq!(s.max_concurrent_requests, 1024);
        assert_eq!(s.half_open_requests, 1);
        assert_eq!(s.health_snapshot_interval_ms, 500);
        assert!(s.error_statuses.contains(500) && s.error_statuses.contains(599));
        assert!(!s.error_statuses.contains(404) && !s.error_statuses.contains(499));
        assert_eq!(s.command_key, CommandKey::RouteMethod);
        assert!(!s.force_open && !s.force_closed && s.fallback.is_none());
    }

    #[test]
    fn route_overrides_inherit_the_rest() {
        let c = BreakerConfig::parse(&json!({
            "timeout": "250ms",
            "routes": {"users": {"sleep_window": "2s", "error_statuses": [502, "429"]}}
        }))
        .unwrap();
        let users = c.for_route("users");
        assert_eq!((users.sleep_window_ms, users.timeout_ms), (2000, 250));
        assert!(users.error_statuses.contains(429) && users.error_statuses.contains(502));
        assert!(!users.error_statuses.contains(500));
        assert_eq!(c.for_route("other").sleep_window_ms, 5000);
        assert_eq!(c.for_route("other").timeout_ms, 250);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                json!({"request_volume_threshold": 0}),
                "request_volume_threshold",
            ),
            (
                json!({"error_threshold_percent": 101}),
                "error_threshold_percent",
            ),
            (json!({"sleep_window": "soon"}), "sleep_window"),
            (json!({"sleep_window": "0"}), "sleep_window"),
            (
                json!({"rolling_window": "10s", "rolling_buckets": 3}),
                "rolling_window",
            ),
            (json!({"rolling_buckets": 0}), "rolling_buckets"),
            (json!({"half_open_requests": 0}), "half_open_requests"),
            (json!({"error_statuses": ["6xx"]}), "error_statuses"),
            (json!({"error_statuses": [99]}), "error_statuses"),
            (json!({"fallback": {"body": "x"}}), "fallback.status"),
            (
                json!({"fallback": {"status": 200, "headers": {"bad name": "x"}}}),
                "fallback.headers",
            ),
            (json!({"command_key": "uri"}), "command_key"),
            (
                json!({"max_concurrent_requests": 100_000}),
                "max_concurrent_requests",
            ),
            (
                json!({"routes": {"users": {"timeout": "1 fortnight"}}}),
                "routes.users.timeout",
            ),
            (
                json!({"routes": {"users": {"timout": "1s"}}}),
                "routes.users",
            ),
            (json!({"sleepwindow": "1s"}), "sleepwindow"),
            (json!({"routes": 3}), "routes"),
        ];
        for (config, key) in cases {
            let e = BreakerConfig::parse(&config).unwrap_err();
            assert!(e.contains(key), "{config}: `{e}` should name `{key}`");
        }
    }

    #[test]
    fn timeout_zero_turns_it_off() {
        for v in [json!(0), json!("0"), json!("0ms")] {
            let c = BreakerConfig::parse(&json!({ "timeout": v })).unwrap();
            assert_eq!(c.defaults.timeout_ms, 0);
            assert_eq!(c.defaults.lease_ms(), LEASE_WITHOUT_TIMEOUT_MS);
        }
    }
}
