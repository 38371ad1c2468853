//! Prometheus metrics served at `GET /metrics` on the admin listener.
//!
//! Label values are `Arc<str>` newtypes so that recording a request clones a pointer, not a
//! string.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::cluster::Source;

/// A route name used as a label value (cheap to clone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    /// Wraps a name.
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    /// The label used for requests that matched no route.
    pub fn unmatched() -> Self {
        Self::new("")
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (what the plugin runtime keeps of a request's route).
    pub fn to_arc(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// A shared string label value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: RouteName,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
    tls: &'static str,
}

/// How a request came: the `protocol` label of `sluice_requests_by_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2, not gRPC.
    H2,
    /// gRPC (over HTTP/2).
    Grpc,
    /// A WebSocket upgrade.
    Ws,
}

impl Protocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::Grpc => "grpc",
            Self::Ws => "ws",
        }
    }
}

/// The `tls` label values: none, then the versions.
const TLS_LABELS: [&str; 3] = ["", "TLSv1.2", "TLSv1.3"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: RouteName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabels {
    service: Label,
}

/// One service's metric handles, resolved when the service is created.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics {
    /// Retries sent.
    pub retries: Counter,
    /// Retries refused by the retry budget.
    pub budget_exhausted: Counter,
    /// Instances ejected by passive health.
    pub ejections: Counter,
    /// Instances known (static and registered).
    pub instances: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamErrorLabels {
    service: Label,
    kind: &'static str,
}

/// One route's request metrics, resolved once when the route is built so that recording a
/// request takes no lock and hashes nothing: the histogram handle is kept, and the counter
/// of each status code is looked up in the family once, then cached.
#[derive(Debug)]
pub struct RouteMetrics {
    route: RouteName,
    duration: Histogram,
    requests: Family<RequestLabels, Counter>,
    by_status: Box<[std::sync::OnceLock<Counter>]>,
}

impl RouteMetrics {
    /// Records one answered request.
    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let counter = match self.by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot.get_or_init(|| self.counter(status)),
            None => &self.counter(status),
        };
        counter.inc();
    }

    fn counter(&self, status: u16) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                status,
            })
            .clone()
    }
}

/// Every metric the gateway records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    connections: Gauge,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    instances: Family<ServiceLabels, Gauge>,
    /// 1 while the registry backend (etcd) is reachable; always 1 for the embedded one.
    pub registry_connected: Gauge,
    /// Plugin calls and plugin-defined metrics.
    pub plugins: Arc<crate::plugin::metrics::PluginMetrics>,
    /// The breaker plugin's shared state, read by the breaker metrics on each scrape (set
    /// once the plugin runtime exists).
    pub breaker_state: Arc<std::sync::OnceLock<Arc<crate::plugin::state::SharedState>>>,
    /// Trace export (`sluice_telemetry_*`).
    pub telemetry: TelemetryMetrics,
    /// The configuration in force (`sluice_config_*`).
    pub config: ConfigMetrics,
    /// TLS handshakes that failed or timed out.
    tls_handshake_errors: Counter,
    websockets_open: Gauge,
    websockets: Counter,
    /// `sluice_requests_by_protocol`, one cached handle per (protocol, tls) pair.
    by_protocol: [[Counter; 3]; 4],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route (empty when no route matched) and status",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~52 s
            Histogram::new(exponential_buckets(0.0001, 2.0, 20))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request head received to response head sent, by route",
            duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream attempts, by service and kind (connect, timeout, reset, no_instance)",
            upstream_errors.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "downstream_connections",
            "Client connections currently open",
            connections.clone(),
        );
        let retries = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retries sent to a service (attempts after the first)",
            retries.clone(),
        );
        let budget_exhausted = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not sent because the service's retry budget was used up",
            budget_exhausted.clone(),
        );
        let ejections = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Instances ejected by passive health checking",
            ejections.clone(),
        );
        let instances = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "registry_instances",
            "Instances of a service (static and registered)",
            instances.clone(),
        );
        let registry_connected = Gauge::default();
        registry.register(
            "registry_backend_connected",
            "1 while the registry backend is reachable (etcd); 0 while the gateway routes on its last view",
            registry_connected.clone(),
        );
        let plugins = crate::plugin::metrics::PluginMetrics::register(&mut registry);
        let breaker = crate::hystrix::BreakerCollector::default();
        let breaker_state = breaker.state.clone();
        registry.register_collector(Box::new(breaker));
        let telemetry = TelemetryMetrics::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        let tls_handshake_errors = Counter::default();
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes from clients that failed or timed out",
            tls_handshake_errors.clone(),
        );
        let websockets_open = Gauge::default();
        registry.register(
            "websocket_connections",
            "WebSocket connections being relayed now",
            websockets_open.clone(),
        );
        let websockets = Counter::default();
        registry.register(
            "websocket_upgrades",
            "WebSocket connections relayed (upgrades the upstream accepted)",
            websockets.clone(),
        );
        let protocols = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "requests_by_protocol",
            "Requests answered, by protocol (http1, h2, grpc, ws) and TLS version (empty: no TLS)",
            protocols.clone(),
        );
        let by_protocol = [Protocol::Http1, Protocol::H2, Protocol::Grpc, Protocol::Ws].map(|p| {
            TLS_LABELS.map(|tls| {
                protocols
                    .get_or_create(&ProtocolLabels {
                        protocol: p.as_str(),
                        tls,
                    })
                    .clone()
            })
        });
        Self {
            config,
            by_protocol,
            tls_handshake_errors,
            websockets_open,
            websockets,
            breaker_state,
            telemetry,
            registry,
            requests,
            duration,
            upstream_errors,
            connections,
            retries,
            budget_exhausted,
            ejections,
            instances,
            registry_connected,
            plugins,
        }
    }

    /// The metrics handles of one route.
    pub fn route(&self, route: &RouteName) -> RouteMetrics {
        RouteMetrics {
            route: route.clone(),
            duration: self
                .duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .clone(),
            requests: self.requests.clone(),
            by_status: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// The metric handles of one service.
    pub fn service(&self, name: &Arc<str>) -> ServiceMetrics {
        let labels = ServiceLabels {
            service: Label(name.clone()),
        };
        ServiceMetrics {
            retries: self.retries.get_or_create(&labels).clone(),
            budget_exhausted: self.budget_exhausted.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            instances: self.instances.get_or_create(&labels).clone(),
        }
    }

    /// Records one failed upstream attempt.
    pub fn record_upstream_error(&self, service: &Arc<str>, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                service: Label(service.clone()),
                kind,
            })
            .inc();
    }

    /// Counts a request by how it came; `tls` is `""`, `"TLSv1.2"` or `"TLSv1.3"`.
    pub fn record_protocol(&self, protocol: Protocol, tls: &str) {
        let tls = TLS_LABELS.iter().position(|l| *l == tls).unwrap_or(0);
        self.by_protocol[protocol as usize][tls].inc();
    }

    /// A WebSocket started being relayed.
    pub fn websocket_opened(&self) {
        self.websockets.inc();
        self.websockets_open.inc();
    }

    /// A relayed WebSocket ended.
    pub fn websocket_closed(&self) {
        self.websockets_open.dec();
    }

    /// Counts a failed client TLS handshake.
    pub fn record_tls_handshake_error(&self) {
        self.tls_handshake_errors.inc();
    }

    /// The open-connections gauge.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Everything in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: Source,
}

/// `sluice_config_*`.
#[derive(Debug, Clone, Default)]
pub struct ConfigMetrics {
    revision: Gauge,
    pub(crate) reload_failures: Counter,
    source: Family<SourceLabels, Gauge>,
}

impl ConfigMetrics {
    /// Registers the metrics.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "config_revision",
            "The etcd revision of the cluster configuration this node serves (0: its own file)",
            metrics.revision.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Cluster configurations refused (invalid, or deleted); the previous one kept serving",
            metrics.reload_failures.clone(),
        );
        registry.register(
            "config_source",
            "1 for where the configuration in force came from (etcd, snapshot or file)",
            metrics.source.clone(),
        );
        metrics
    }

    pub(crate) fn set(&self, source: Source, revision: i64) {
        self.revision.set(revision);
        for s in [Source::Etcd, Source::Snapshot, Source::File] {
            self.source
                .get_or_create(&SourceLabels { source: s })
                .set(i64::from(s == source));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// `sluice_telemetry_*` metrics (registered whether or not telemetry is on).
#[derive(Debug, Clone, Default)]
pub struct TelemetryMetrics {
    dropped: Family<DropLabels, Counter>,
    pub(crate) exported: Counter,
    pub(crate) export_failures: Counter,
    pub(crate) queued: Gauge,
}

impl TelemetryMetrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "telemetry_spans_dropped",
            "Spans not exported, by reason (queue_full: the export queue was full; \
             export_failed: the collector refused or did not answer; shutdown: still queued \
             when the shutdown flush ran out of time)",
            metrics.dropped.clone(),
        );
        registry.register(
            "telemetry_spans_exported",
            "Spans the collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "telemetry_export_failures",
            "Export requests that failed or timed out",
            metrics.export_failures.clone(),
        );
        registry.register(
            "telemetry_queue_spans",
            "Spans waiting in the export queue",
            metrics.queued.clone(),
        );
        metrics
    }

    /// Counts dropped spans.
    pub fn dropped(&self, reason: &'static str, spans: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(spans as u64);
    }
}
