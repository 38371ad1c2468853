//! The spans of one request, assembled when it ends.
//!
//! A plugin may re-parent the request's trace (`trace-continue`) or change the sampling
//! decision up to the last `on-response`, so nothing goes through an OpenTelemetry `Tracer`:
//! the request path records what happened ([`RequestTrace`]), and `finish` builds the
//! `SpanData` of the server span, one span per plugin call and one per upstream attempt, all
//! in the trace id in force at the end.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::Telemetry;
use super::w3c;
use crate::error::ProxyError;
use crate::plugin::trace::{PluginTrace, TraceParent};

/// One upstream attempt in flight (see [`RequestTrace::attempt_started`]).
#[derive(Debug)]
#[must_use = "pass it to RequestTrace::attempt_finished"]
pub struct Attempt {
    span_id: [u8; 8],
    instance: Arc<str>,
    try_number: u32,
    start: SystemTime,
    started: Instant,
}

impl Attempt {
    /// The attempt span's id: the parent the upstream sees in `traceparent`.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }
}

/// A finished child span, kept until the request ends.
#[derive(Debug)]
struct Child {
    span_id: [u8; 8],
    name: Cow<'static, str>,
    kind: SpanKind,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

/// The gateway's side of one request's trace while it is served. Exists only when
/// `[telemetry]` is set. What plugins decided about the trace (a caller's trace continued,
/// sampling, the span's name and attributes) is not copied here: it stays in the plugins'
/// [`PluginTrace`] in the request's context, which each step below is handed.
#[derive(Debug)]
pub struct RequestTrace {
    telemetry: Arc<Telemetry>,
    /// The trace id the gateway drew, in force unless a plugin continues a caller's trace.
    trace_id: [u8; 16],
    span_id: [u8; 8],
    start: SystemTime,
    started: Instant,
    tries: u32,
    children: Vec<Child>,
}

/// The trace id, the caller's context and the sampling decision in force: the plugins'
/// word where they had one, the gateway's otherwise.
struct InForce<'a> {
    trace_id: [u8; 16],
    parent: Option<&'a TraceParent>,
    sampled: bool,
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

impl RequestTrace {
    /// A new trace for a request that just arrived: random trace and server span ids.
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self {
            telemetry,
            trace_id: random_trace_id(),
            span_id: random_span_id(),
            start: SystemTime::now(),
            started: Instant::now(),
            tries: 0,
            children: Vec::new(),
        }
    }

    /// The gateway's trace id as hex: what `trace-id()` reports to plugins until one
    /// continues a caller's trace.
    pub fn trace_id_hex(&self) -> String {
        w3c::hex(&self.trace_id)
    }

    /// The server span's id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    fn in_force<'a>(&self, plugins: Option<&'a PluginTrace>) -> InForce<'a> {
        let parent = plugins.and_then(|p| p.parent.as_ref());
        InForce {
            trace_id: parent.map_or(self.trace_id, |p| p.trace_id),
            parent,
            sampled: plugins.and_then(|p| p.sampled).unwrap_or(true),
        }
    }

    /// An upstream attempt starts: a new client span, whose id goes upstream in
    /// `traceparent` (written into `headers` with `tracestate`, replacing the caller's), in
    /// the trace the plugins left the request in.
    pub fn attempt_started(
        &mut self,
        plugins: Option<&PluginTrace>,
        instance: &Arc<str>,
        headers: &mut http::HeaderMap,
    ) -> Attempt {
        self.tries += 1;
        let span_id = random_span_id();
        let in_force = self.in_force(plugins);
        let trace_state = in_force.parent.map_or("", |p| p.trace_state.as_str());
        w3c::inject(
            headers,
            &in_force.trace_id,
            &span_id,
            in_force.sampled,
            trace_state,
        );
        Attempt {
            span_id,
            instance: instance.clone(),
            try_number: self.tries,
            start: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// The attempt ended with the upstream's status, or an error.
    pub fn attempt_finished(&mut self, attempt: Attempt, result: Result<u16, &ProxyError>) {
        let end = attempt.start + attempt.started.elapsed();
        let mut attributes = Vec::with_capacity(5);
        match attempt.instance.rsplit_once(':') {
            Some((host, port)) if port.parse::<i64>().is_ok() => {
                attributes.push(KeyValue::new("server.address", host.to_owned()));
                attributes.push(KeyValue::new(
                    "server.port",
                    port.parse::<i64>().unwrap_or_default(),
                ));
            }
            _ => {}
        }
        attributes.push(KeyValue::new(
            "sluice.upstream.instance",
            Value::String(attempt.instance.to_string().into()),
        ));
        attributes.push(KeyValue::new(
            "sluice.upstream.try",
            i64::from(attempt.try_number),
        ));
        let status = match result {
            Ok(code) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                if code >= 500 {
                    Status::error("")
                } else {
                    Status::Unset
                }
            }
            Err(e) => {
                attributes.push(KeyValue::new("error.type", e.kind()));
                Status::error(e.to_string())
            }
        };
        self.children.push(Child {
            span_id: attempt.span_id,
            name: Cow::Borrowed("upstream attempt"),
            kind: SpanKind::Client,
            start: attempt.start,
            end,
            attributes,
            status,
        });
    }

    /// The request is answered: builds the spans (with what the plugins asked of them) and
    /// queues them for export, unless the trace is not sampled. Never waits: a full queue
    /// drops them, counted.
    pub fn finish(self, request: &FinishedRequest<'_>, plugins: Option<PluginTrace>) {
        if !self.in_force(plugins.as_ref()).sampled {
            return;
        }
        let calls = plugins.as_ref().map_or(0, |p| p.calls.len());
        let n = 1 + self.children.len() + calls;
        let telemetry = self.telemetry.clone();
        if telemetry.reserve(n) {
            let spans = self.build(request, plugins.unwrap_or_default());
            debug_assert_eq!(spans.len(), n);
            telemetry.send(spans);
        }
    }

    fn build(self, request: &FinishedRequest<'_>, plugin: PluginTrace) -> Vec<SpanData> {
        let end = self.start + self.started.elapsed();
        let telemetry = &self.telemetry;
        let in_force = self.in_force(Some(&plugin));
        let trace_id = TraceId::from_bytes(in_force.trace_id);
        let server_id = SpanId::from_bytes(self.span_id);
        let (parent_span_id, parent_span_is_remote) = match in_force.parent {
            Some(p) => (SpanId::from_bytes(p.span_id), true),
            None => (SpanId::INVALID, false),
        };
        let trace_state = in_force
            .parent
            .filter(|p| !p.trace_state.is_empty())
            .and_then(|p| p.trace_state.parse::<TraceState>().ok())
            .unwrap_or_default();
        let context = |span_id: [u8; 8]| {
            SpanContext::new(
                trace_id,
                SpanId::from_bytes(span_id),
                TraceFlags::SAMPLED,
                false,
                trace_state.clone(),
            )
        };
        let mut spans = Vec::with_capacity(1 + self.children.len() + plugin.calls.len());

        // The server span.
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method.as_str().to_owned()),
            KeyValue::new("url.path", request.path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(request.status)),
            KeyValue::new("client.address", request.client.ip().to_string()),
            KeyValue::new("client.port", i64::from(request.client.port())),
        ];
        if let Some(route) = request.route {
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        if let Some(id) = request.request_id.and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("sluice.request_id", id.to_owned()));
        }
        if let Some(e) = request.error {
            attributes.push(KeyValue::new("error.type", e.kind()));
        }
        attributes.extend(
            plugin
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v)),
        );
        let events = plugin
            .events
            .into_iter()
            .map(|e| {
                opentelemetry::trace::Event::new(
                    e.name,
                    SystemTime::UNIX_EPOCH + Duration::from_nanos(e.unix_ns),
                    e.attributes
                        .into_iter()
                        .map(|(k, v)| KeyValue::new(k, v))
                        .collect(),
                    0,
                )
            })
            .collect();
        let name = match (plugin.name, request.route) {
            (Some(name), _) => Cow::Owned(name),
            (None, Some(route)) => Cow::Owned(format!("{} {route}", request.method)),
            (None, None) => Cow::Owned(request.method.to_string()),
        };
        let status = if request.status >= 500 {
            Status::error(request.error.map(|e| e.to_string()).unwrap_or_default())
        } else {
            Status::Unset
        };
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        spans.push(SpanData {
            span_context: context(self.span_id),
            parent_span_id,
            parent_span_is_remote,
            span_kind: SpanKind::Server,
            name,
            start_time: self.start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: telemetry.scope.clone(),
        });

        // Plugin calls, then upstream attempts: children of the server span.
        let calls = plugin.calls.into_iter().map(|call| {
            let mut attributes = vec![
                KeyValue::new("sluice.plugin.name", call.plugin.to_string()),
                KeyValue::new("sluice.plugin.phase", call.phase),
                KeyValue::new("sluice.plugin.outcome", call.outcome),
            ];
            attributes.shrink_to_fit();
            let failed = !matches!(call.outcome, "ok" | "respond");
            Child {
                span_id: random_span_id(),
                name: Cow::Owned(format!("plugin {} {}", call.plugin, call.phase)),
                kind: SpanKind::Internal,
                start: call.start,
                end: call.start + call.duration,
                attributes,
                status: if failed {
                    Status::error(call.outcome)
                } else {
                    Status::Unset
                },
            }
        });
        let children: Vec<Child> = calls.chain(self.children).collect();
        for child in children {
            spans.push(SpanData {
                span_context: context(child.span_id),
                parent_span_id: server_id,
                parent_span_is_remote: false,
                span_kind: child.kind,
                name: child.name,
                start_time: child.start,
                end_time: child.end,
                attributes: child.attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: child.status,
                instrumentation_scope: telemetry.scope.clone(),
            });
        }
        spans
    }
}

/// What the server span says about the request, gathered by the proxy when it answered.
#[derive(Debug)]
pub struct FinishedRequest<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// Path as received.
    pub path: &'a str,
    /// The matched route's name (its path unless named).
    pub route: Option<&'a str>,
    /// The status sent.
    pub status: u16,
    /// The client's address.
    pub client: SocketAddr,
    /// `x-request-id`.
    pub request_id: Option<&'a http::HeaderValue>,
    /// Why the gateway answered with an error, if it did.
    pub error: Option<&'a ProxyError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TelemetryMetrics;

    fn telemetry(queue_size: usize) -> Arc<Telemetry> {
        Arc::new(Telemetry::new(queue_size, 1, TelemetryMetrics::default()))
    }

    fn finished(status: u16) -> FinishedRequest<'static> {
        FinishedRequest {
            method: &http::Method::GET,
            path: "/users/1",
            route: Some("/users"),
            status,
            client: "127.0.0.1:5000".parse().unwrap(),
            request_id: None,
            error: None,
        }
    }

    fn parent() -> TraceParent {
        TraceParent {
            trace_id: [7; 16],
            span_id: [9; 8],
            sampled: Some(true),
            trace_state: "k=v".into(),
        }
    }

    #[test]
    fn retried_request_has_one_client_span_per_attempt_under_the_server_span() {
        let t = telemetry(100);
        let mut trace = t.begin();
        let mut plugin = PluginTrace {
            trace_id: Some(trace.trace_id_hex()),
            ..PluginTrace::default()
        };
        plugin.parent = Some(parent());
        let instance: Arc<str> = Arc::from("10.0.0.1:80");
        let mut headers = http::HeaderMap::new();
        let first = trace.attempt_started(Some(&plugin), &instance, &mut headers);
        let first_id = first.span_id();
        assert_eq!(
            headers["traceparent"],
            format!("00-{}-{}-01", w3c::hex(&[7; 16]), w3c::hex(&first_id)).as_str()
        );
        assert_eq!(headers["tracestate"], "k=v");
        let failed = ProxyError::UpstreamConnect {
            service: Arc::from("s"),
            instance: instance.clone(),
        };
        trace.attempt_finished(first, Err(&failed));
        let second = trace.attempt_started(Some(&plugin), &instance, &mut headers);
        let second_id = second.span_id();
        assert_ne!(first_id, second_id);
        assert!(
            headers["traceparent"]
                .to_str()
                .unwrap()
                .contains(&w3c::hex(&second_id))
        );
        trace.attempt_finished(second, Ok(200));
        let server_id = trace.span_id();
        trace.finish(&finished(200), Some(plugin));

        let spans = t.take(usize::MAX);
        assert_eq!(spans.len(), 3);
        assert!(
            spans
                .iter()
                .all(|s| s.span_context.trace_id() == TraceId::from_bytes([7; 16]))
        );
        let server = &spans[0];
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(server.parent_span_id, SpanId::from_bytes([9; 8]));
        assert!(server.parent_span_is_remote);
        assert_eq!(server.name, "GET /users");
        let tries: Vec<(SpanId, String, bool)> = spans[1..]
            .iter()
            .map(|s| {
                assert_eq!(s.span_kind, SpanKind::Client);
                assert_eq!(s.parent_span_id, SpanId::from_bytes(server_id));
                let try_number = s
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "sluice.upstream.try")
                    .unwrap()
                    .value
                    .to_string();
                (
                    s.span_context.span_id(),
                    try_number,
                    matches!(s.status, Status::Error { .. }),
                )
            })
            .collect();
        assert_eq!(
            tries,
            vec![
                (SpanId::from_bytes(first_id), "1".to_owned(), true),
                (SpanId::from_bytes(second_id), "2".to_owned(), false),
            ]
        );
    }

    #[test]
    fn unsampled_traces_are_not_queued_and_a_full_queue_drops_whole_traces() {
        let t = telemetry(3);
        let trace = t.begin();
        let unsampled = PluginTrace {
            sampled: Some(false),
            ..PluginTrace::default()
        };
        trace.finish(&finished(200), Some(unsampled));
        assert!(t.take(usize::MAX).is_empty());

        // Two spans each (server + attempt); the queue holds 3: the second trace is
        // dropped whole.
        for _ in 0..2 {
            let mut trace = t.begin();
            let mut headers = http::HeaderMap::new();
            let a = trace.attempt_started(None, &Arc::from("h:1"), &mut headers);
            trace.attempt_finished(a, Ok(200));
            trace.finish(&finished(200), None);
        }
        assert_eq!(t.queued.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(t.take(usize::MAX).len(), 2);
        assert_eq!(t.queued.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn a_plugin_name_and_events_and_5xx_status_reach_the_server_span() {
        let t = telemetry(100);
        let trace = t.begin();
        let mut plugin = PluginTrace {
            name: Some("custom".into()),
            ..PluginTrace::default()
        };
        plugin.attributes.push(("tenant".into(), "a".into()));
        plugin.events.push(crate::plugin::trace::SpanEvent {
            name: "cache miss".into(),
            attributes: vec![("key".into(), "k".into())],
            unix_ns: 1_700_000_000_000_000_000,
        });
        plugin.calls.push(crate::plugin::trace::PluginCall {
            plugin: Arc::from("auth"),
            phase: "on_request",
            outcome: "trap",
            start: SystemTime::now(),
            duration: Duration::from_micros(5),
        });
        trace.finish(&finished(503), Some(plugin));
        let spans = t.take(usize::MAX);
        let server = &spans[0];
        assert_eq!(server.name, "custom");
        assert!(matches!(server.status, Status::Error { .. }));
        assert!(
            server
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "tenant")
        );
        assert_eq!(server.events.events[0].name, "cache miss");
        let call = &spans[1];
        assert_eq!(call.name, "plugin auth on_request");
        assert_eq!(call.span_kind, SpanKind::Internal);
        assert!(matches!(call.status, Status::Error { .. }));
    }
}
