//! OpenTelemetry export and the built-in `tracing` plugin, checked by decoding what the
//! gateway sends to a test OTLP receiver (HTTP and gRPC) with the official protobuf types.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;

use crate::harness::*;
use crate::otlp::{Blackhole, Received, Receiver};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// A gateway config: one service at `upstream`, route `r` on `/` with `plugins`, telemetry
/// sending to `endpoint` with `telemetry` lines added, and `[plugin.tracing]` lines.
fn config(
    upstream: SocketAddr,
    endpoint: &str,
    protocol: &str,
    telemetry: &str,
    plugins: &str,
    tracing: &str,
) -> String {
    format!(
        r#"
[plugins]
cache_dir = "{cache}"
[services.s]
instances = ["{upstream}"]
[[routes]]
name = "r"
path = "/"
service = "s"
plugins = [{plugins}]
[telemetry]
endpoint = "{endpoint}"
protocol = "{protocol}"
batch_delay = "20ms"
{telemetry}
[plugin.tracing]
{tracing}
"#,
        cache = plugin_cache_dir().display()
    )
}

/// An upstream answering `up`, and a gateway in front of it (see [`config`]) exporting to
/// `receiver`.
async fn traced_gateway(
    receiver: &Receiver,
    protocol: &str,
    telemetry: &str,
    plugins: &str,
    tracing: &str,
) -> (Upstream, sluice::Gateway) {
    let upstream = Upstream::named("up").await;
    let endpoint = format!("http://{}", receiver.addr);
    let text = config(
        upstream.addr,
        &endpoint,
        protocol,
        telemetry,
        plugins,
        tracing,
    );
    let gw = gateway(&text).await;
    (upstream, gw)
}

fn by_trace(spans: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut map: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for s in spans {
        map.entry(s.trace_id()).or_default().push(s.clone());
    }
    map
}

fn one(spans: &[Received], kind: i32) -> &Received {
    let found: Vec<&Received> = spans.iter().filter(|s| s.kind() == kind).collect();
    assert_eq!(found.len(), 1, "one span of kind {kind} in {spans:#?}");
    found[0]
}

async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap) {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, headers, _) = send(addr, req.body(full("")).unwrap()).await;
    (status.as_u16(), headers)
}

/// `traceparent` → (trace id, parent span id, flags).
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn metric(gw: &sluice::Gateway, name: &str) -> f64 {
    let (_, _, text) = get(gw.admin_addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_one_trace_per_request_with_linked_spans() {
    let receiver = Receiver::http().await;
    let (upstream, gw) = traced_gateway(&receiver, "http", "service_name = \"edge\"\nheaders = { x-api-key = \"k1\" }\nresource = { \"deployment.environment\" = \"test\" }", "\"tracing\"", "request_headers = [\"user-agent\"]\nresponse_headers = [\"content-length\"]").await;

    let mut request_ids = Vec::new();
    for _ in 0..3 {
        let (status, headers) =
            get_with(gw.listen_addr, "/users/1?x=1", &[("user-agent", "it/1")]).await;
        assert_eq!(status, 200);
        request_ids.push(headers["x-request-id"].to_str().unwrap().to_owned());
    }
    // Per request: the server span, tracing's on_request and on_response (it has a response
    // header to record), one attempt.
    let spans = receiver.wait_for(12).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans_now = receiver.spans();
    assert_eq!(spans_now.len(), 12, "no extra spans: {spans_now:#?}");
    let traces = by_trace(&spans);
    assert_eq!(traces.len(), 3, "one trace per request");

    let seen = upstream.seen.lock().unwrap().clone();
    for (trace_id, spans) in &traces {
        assert_eq!(spans.len(), 4);
        let server = one(spans, SERVER);
        assert_eq!(server.parent_id(), "", "a root span");
        assert_eq!(
            server.span.name, "GET r",
            "named by the tracing plugin from the route"
        );
        assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(server.attr("url.path").as_deref(), Some("/users/1"));
        assert_eq!(server.attr("http.route").as_deref(), Some("/"));
        assert_eq!(
            server.attr("http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            server.attr("http.request.header.user-agent").as_deref(),
            Some("it/1")
        );
        assert_eq!(
            server
                .attr("http.response.header.content-length")
                .as_deref(),
            Some("2")
        );
        let rid = server.attr("sluice.request_id").unwrap();
        assert!(request_ids.contains(&rid));
        assert_eq!(server.resource["service.name"], "edge");
        assert_eq!(server.resource["deployment.environment"], "test");
        assert!(server.span.end_time_unix_nano >= server.span.start_time_unix_nano);

        let plugin_spans: Vec<&Received> = spans.iter().filter(|s| s.kind() == INTERNAL).collect();
        assert_eq!(plugin_spans.len(), 2);
        let mut phases = Vec::new();
        for p in &plugin_spans {
            assert_eq!(
                p.parent_id(),
                server.span_id(),
                "plugin span under the server span"
            );
            assert_eq!(p.attr("sluice.plugin.name").as_deref(), Some("tracing"));
            assert_eq!(p.attr("sluice.plugin.outcome").as_deref(), Some("ok"));
            phases.push(p.attr("sluice.plugin.phase").unwrap());
            assert_eq!(
                p.span.name,
                format!("plugin tracing {}", p.attr("sluice.plugin.phase").unwrap())
            );
            assert!(p.span.start_time_unix_nano >= server.span.start_time_unix_nano);
            assert!(p.span.end_time_unix_nano <= server.span.end_time_unix_nano);
        }
        phases.sort();
        assert_eq!(phases, ["on_request", "on_response"]);

        let attempt = one(spans, CLIENT);
        assert_eq!(
            attempt.parent_id(),
            server.span_id(),
            "attempt under the server span"
        );
        assert_eq!(attempt.attr("sluice.upstream.try").as_deref(), Some("1"));
        assert_eq!(
            attempt.attr("sluice.upstream.instance").as_deref(),
            Some(upstream.addr.to_string().as_str())
        );
        assert_eq!(
            attempt.attr("server.port").as_deref(),
            Some(upstream.addr.port().to_string().as_str())
        );
        assert_eq!(
            attempt.attr("http.response.status_code").as_deref(),
            Some("200")
        );

        // The upstream saw this trace with the attempt span as its parent.
        let tp: Vec<(String, String, String)> = seen
            .iter()
            .map(|s| parse_traceparent(s.headers["traceparent"].to_str().unwrap()))
            .filter(|(t, _, _)| t == trace_id)
            .collect();
        assert_eq!(tp.len(), 1);
        assert_eq!(tp[0].1, attempt.span_id());
        assert_eq!(tp[0].2, "01");
    }
    // The configured headers go with each export.
    assert!(
        receiver
            .export_headers()
            .iter()
            .all(|h| h["x-api-key"] == "k1")
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_and_no_plugin_defaults() {
    let receiver = Receiver::grpc().await;
    let upstream = Upstream::named("up").await;
    // No plugin on the route: the host still makes the server and attempt spans, named
    // `METHOD route`, sampled by default.
    let gw = gateway(&config(
        upstream.addr,
        &format!("http://{}", receiver.addr),
        "grpc",
        "headers = { authorization = \"Bearer t\" }",
        "",
        "",
    ))
    .await;
    let (status, _) = get_with(gw.listen_addr, "/a", &[]).await;
    assert_eq!(status, 200);
    let spans = receiver.wait_for(2).await;
    assert_eq!(spans.len(), 2);
    let server = one(&spans, SERVER);
    let attempt = one(&spans, CLIENT);
    assert_eq!(server.span.name, "GET /");
    assert_eq!(server.resource["service.name"], "sluice");
    assert_eq!(attempt.parent_id(), server.span_id());
    assert_eq!(attempt.trace_id(), server.trace_id());
    assert_eq!(receiver.export_headers()[0]["authorization"], "Bearer t");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_continued() {
    let receiver = Receiver::http().await;
    let (upstream, gw) = traced_gateway(&receiver, "http", "", "\"tracing\"", "").await;
    let (status, _) = get_with(
        gw.listen_addr,
        "/",
        &[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // The server span, tracing's on_request (its defaults need no on_response), the attempt.
    let spans = receiver.wait_for(3).await;
    assert!(spans.iter().all(|s| s.trace_id() == TRACE), "same trace id");
    let server = one(&spans, SERVER);
    assert_eq!(server.parent_id(), SPAN, "the caller's span is the parent");
    assert_eq!(server.span.trace_state, "congo=t61rcWkgMzE");
    let attempt = one(&spans, CLIENT);
    let seen = upstream.last();
    let (trace, parent, flags) = parse_traceparent(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(
        parent,
        attempt.span_id(),
        "upstream's parent is the attempt span"
    );
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(seen.headers.get_all("traceparent").iter().count(), 1);

    // An unsampled caller (parent-based): nothing exported, the decision goes upstream.
    let before = receiver.spans().len();
    get_with(
        gw.listen_addr,
        "/",
        &[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))],
    )
    .await;
    let (_, parent, flags) =
        parse_traceparent(upstream.last().headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");
    assert_ne!(parent, SPAN, "still re-parented to the gateway's attempt");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.spans().len(),
        before,
        "unsampled traces are not exported"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_input_is_continued() {
    let receiver = Receiver::http().await;
    let (upstream, gw) = traced_gateway(&receiver, "http", "", "\"tracing\"", "").await;
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3_span = "e457b5a2e4d86bd1";
    get_with(
        gw.listen_addr,
        "/",
        &[("b3", &format!("{b3_trace}-{b3_span}-1-05e3ac9a4f6e3b90"))],
    )
    .await;
    let spans = receiver.wait_for(3).await;
    let server = one(&spans, SERVER);
    assert_eq!(server.trace_id(), b3_trace);
    assert_eq!(server.parent_id(), b3_span);
    let seen = upstream.last();
    let attempt = one(&spans, CLIENT);
    assert_eq!(
        seen.headers["b3"],
        format!("{b3_trace}-{}-1", attempt.span_id()),
        "B3 is rewritten with the gateway's attempt span as the parent"
    );
    assert!(
        seen.headers["traceparent"]
            .to_str()
            .unwrap()
            .contains(b3_trace)
    );

    // Multi-header B3 with a 64-bit trace id.
    get_with(
        gw.listen_addr,
        "/",
        &[
            ("X-B3-TraceId", "a3ce929d0e0e4736"),
            ("X-B3-SpanId", "00f067aa0ba902b7"),
            ("X-B3-Sampled", "1"),
        ],
    )
    .await;
    let spans = receiver.wait_for(6).await;
    let traces = by_trace(&spans);
    let multi = &traces["0000000000000000a3ce929d0e0e4736"];
    assert_eq!(one(multi, SERVER).parent_id(), "00f067aa0ba902b7");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_ratio_holds_over_many_requests() {
    let receiver = Receiver::http().await;
    let (upstream, gw) = traced_gateway(
        &receiver,
        "http",
        "queue_size = 100000\nshutdown_timeout = \"10s\"",
        "\"tracing\"",
        "sampler = \"ratio\"\nratio = 0.25",
    )
    .await;
    let n = 2000usize;
    let client = client();
    for _ in 0..n {
        let req = Request::get(format!("http://{}/", gw.listen_addr))
            .body(full(""))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Shutdown flushes what is queued (bounded by shutdown_timeout, generous here: the machine
    // may be busy with other tests).
    gw.shutdown().await;
    let spans = receiver.spans();
    let traces = by_trace(&spans);
    let kept = traces.len();
    // Binomial(2000, 0.25): mean 500, sd 19.4; ±5 sd.
    assert!(
        (403..=597).contains(&kept),
        "{kept} of {n} traces kept at ratio 0.25"
    );
    // Server, tracing's on_request, attempt.
    assert!(traces.values().all(|t| t.len() == 3), "whole traces only");
    // Every hop agrees: the upstream saw `01` exactly for the exported traces.
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), n);
    let mut sampled_upstream = HashSet::new();
    for s in &seen {
        let (trace, _, flags) = parse_traceparent(s.headers["traceparent"].to_str().unwrap());
        if flags == "01" {
            sampled_upstream.insert(trace);
        }
    }
    let exported: HashSet<String> = traces.keys().cloned().collect();
    assert_eq!(sampled_upstream, exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_errors_exports_failed_requests_only() {
    let receiver = Receiver::http().await;
    let upstream = Upstream::recording(|seen| {
        let mut resp = http::Response::new(full(""));
        if seen.uri.path() == "/fail" {
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        resp
    })
    .await;
    let gw = gateway(&config(
        upstream.addr,
        &format!("http://{}", receiver.addr),
        "http",
        "",
        "\"tracing\"",
        "sampler = \"never\"\nkeep_errors = true",
    ))
    .await;
    assert_eq!(get_with(gw.listen_addr, "/ok", &[]).await.0, 200);
    assert_eq!(get_with(gw.listen_addr, "/fail", &[]).await.0, 503);
    let spans = receiver.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans_now = receiver.spans();
    assert_eq!(spans_now.len(), spans.len());
    let traces = by_trace(&spans_now);
    assert_eq!(traces.len(), 1, "only the failed request");
    let server = one(traces.values().next().unwrap(), SERVER);
    assert_eq!(server.attr("url.path").as_deref(), Some("/fail"));
    assert_eq!(
        server.span.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    // The upstream saw "not sampled": the decision in force when the request left.
    assert!(
        upstream.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    gw.shutdown().await;
}

/// A request whose first attempt is refused and whose retry (on the other instance) succeeds:
/// one client span per attempt under the server span, numbered, the failed one an error, and
/// the upstream sees the second attempt as its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_shows_one_span_per_attempt() {
    let receiver = Receiver::http().await;
    let dead = closed_port().await;
    let upstream = Upstream::named("up").await;
    let gw = gateway(&format!(
        "[services.s]\ninstances = [\"{dead}\", \"{}\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\n\
         [telemetry]\nendpoint = \"http://{}\"\nbatch_delay = \"20ms\"\n",
        upstream.addr, receiver.addr
    ))
    .await;
    // Round robin starts with the refusing instance; the retry goes to the other one.
    assert_eq!(get_with(gw.listen_addr, "/", &[]).await.0, 200);
    let spans = receiver.wait_for(3).await;
    let server = one(&spans, SERVER);
    let mut attempts: Vec<&Received> = spans.iter().filter(|s| s.kind() == CLIENT).collect();
    attempts.sort_by_key(|s| s.attr("sluice.upstream.try"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.trace_id(), server.trace_id());
        assert_eq!(attempt.parent_id(), server.span_id());
        assert_eq!(
            attempt.attr("sluice.upstream.try"),
            Some((i + 1).to_string())
        );
    }
    assert_ne!(attempts[0].span_id(), attempts[1].span_id());
    assert_eq!(attempts[0].attr("error.type").as_deref(), Some("connect"));
    assert_eq!(attempts[0].span.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        attempts[0].attr("sluice.upstream.instance"),
        Some(dead.to_string())
    );
    assert_eq!(
        attempts[1].attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let seen = upstream.last();
    let (trace, parent, flags) = parse_traceparent(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(
        (trace, parent, flags.as_str()),
        (server.trace_id(), attempts[1].span_id(), "01")
    );
    gw.shutdown().await;
}

/// Every attempt failed: each is an error span, and so is the server span (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_error_spans() {
    let receiver = Receiver::http().await;
    let dead = closed_port().await;
    let gw = gateway(&config(
        dead,
        &format!("http://{}", receiver.addr),
        "http",
        "",
        "",
        "",
    ))
    .await;
    assert_eq!(get_with(gw.listen_addr, "/", &[]).await.0, 502);
    // The default policy retries a refused connection once (on the same instance here).
    let spans = receiver.wait_for(3).await;
    let server = one(&spans, SERVER);
    let attempts: Vec<&Received> = spans.iter().filter(|s| s.kind() == CLIENT).collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for attempt in attempts {
        assert_eq!(attempt.attr("error.type").as_deref(), Some("connect"));
        assert_eq!(attempt.span.status.as_ref().map(|s| s.code), Some(2));
    }
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("502")
    );
    assert_eq!(server.span.status.as_ref().map(|s| s.code), Some(2));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_nothing_is_injected() {
    let upstream = Upstream::named("up").await;
    let gw = gateway(&one_route(upstream.addr, "/")).await;
    get_with(gw.listen_addr, "/", &[]).await;
    assert!(upstream.last().headers.get("traceparent").is_none());
    let incoming = format!("00-{TRACE}-{SPAN}-01");
    get_with(gw.listen_addr, "/", &[("traceparent", &incoming)]).await;
    assert_eq!(
        upstream.last().headers["traceparent"],
        incoming.as_str(),
        "passed through"
    );
    gw.shutdown().await;
}

/// The hooks `/admin/plugins` shows for `tracing`, and its calls per phase from `/metrics`.
async fn tracing_hooks_and_calls(gw: &sluice::Gateway) -> (serde_json::Value, f64, f64) {
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    let calls = |phase| format!("sluice_plugin_calls_total{{plugin=\"tracing\",phase=\"{phase}\"");
    (
        plugin_view(&plugins, "tracing")["hooks"].clone(),
        metric(gw, &calls("on_request")).await,
        metric(gw, &calls("on_response")).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracing_plugin_is_called_only_for_work_it_has() {
    // Without [telemetry] it declares no hooks: a route listing it costs no plugin call, and
    // an incoming context still passes through untouched.
    let upstream = Upstream::named("up").await;
    let text = format!(
        "[plugins]\ncache_dir = \"{}\"\n{}plugins = [\"tracing\"]\n",
        plugin_cache_dir().display(),
        one_route(upstream.addr, "/")
    );
    let gw = gateway(&text).await;
    let incoming = format!("00-{TRACE}-{SPAN}-01");
    for _ in 0..3 {
        let (status, _) = get_with(gw.listen_addr, "/", &[("traceparent", &incoming)]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.last().headers["traceparent"], incoming.as_str());
    let (hooks, on_request, on_response) = tracing_hooks_and_calls(&gw).await;
    assert_eq!(
        hooks,
        serde_json::json!({"on_request": false, "on_response": false})
    );
    assert_eq!((on_request, on_response), (0.0, 0.0));
    gw.shutdown().await;

    // Exporting, with the defaults: `on-request` only (nothing to do on the way back) ...
    let receiver = Receiver::http().await;
    let (_up, gw) = traced_gateway(&receiver, "http", "", "\"tracing\"", "").await;
    for _ in 0..3 {
        assert_eq!(get_with(gw.listen_addr, "/", &[]).await.0, 200);
    }
    let (hooks, on_request, on_response) = tracing_hooks_and_calls(&gw).await;
    assert_eq!(
        hooks,
        serde_json::json!({"on_request": true, "on_response": false})
    );
    assert_eq!((on_request, on_response), (3.0, 0.0));
    gw.shutdown().await;

    // ... and both hooks when `keep_errors` needs the response.
    let (_up, gw) =
        traced_gateway(&receiver, "http", "", "\"tracing\"", "keep_errors = true").await;
    assert_eq!(get_with(gw.listen_addr, "/", &[]).await.0, 200);
    let (hooks, on_request, on_response) = tracing_hooks_and_calls(&gw).await;
    assert_eq!(
        hooks,
        serde_json::json!({"on_request": true, "on_response": true})
    );
    assert_eq!((on_request, on_response), (1.0, 1.0));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_requests_succeed_and_drops_are_counted() {
    let dead = closed_port().await;
    let upstream = Upstream::named("up").await;
    let gw = gateway(&config(
        upstream.addr,
        &format!("http://{dead}"),
        "http",
        "batch_size = 4\nqueue_size = 8",
        "\"tracing\"",
        "",
    ))
    .await;
    let client = client();
    for _ in 0..200 {
        let req = Request::get(format!("http://{}/", gw.listen_addr))
            .body(full(""))
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200);
    }
    let dropped = metric(&gw, "sluice_telemetry_spans_dropped_total").await;
    assert!(dropped > 0.0, "drops are counted");
    // The exporter retries a refused connection with backoff before the batch fails.
    assert_eventually!(
        metric(&gw, "sluice_telemetry_export_failures_total").await > 0.0,
        "an export failure is counted"
    );
    assert_eq!(
        metric(&gw, "sluice_telemetry_spans_exported_total").await,
        0.0
    );
    let queued = metric(&gw, "sluice_telemetry_queue_spans").await;
    assert!(queued <= 8.0, "the queue stays within queue_size: {queued}");
    let started = Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_collector_keeps_latency_bounds_memory_and_shutdown() {
    let hole = Blackhole::start().await;
    let upstream = Upstream::named("up").await;
    let gw = gateway(&config(
        upstream.addr,
        &format!("http://{}", hole.addr),
        "http",
        "batch_size = 16\nqueue_size = 64\nexport_timeout = \"30s\"\nshutdown_timeout = \"500ms\"",
        "\"tracing\"",
        "",
    ))
    .await;
    let client = client();
    let n = 1000;
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let req = Request::get(format!("http://{}/", gw.listen_addr))
            .body(full(""))
            .unwrap();
        let t = Instant::now();
        assert_eq!(client.request(req).await.unwrap().status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    // The collector never answers: the first batch hangs in export, the queue fills, and
    // every later request drops its spans instead of waiting.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    let dropped = metric(&gw, "sluice_telemetry_spans_dropped_total").await;
    let queued = metric(&gw, "sluice_telemetry_queue_spans").await;
    assert!(queued <= 64.0, "queue bounded: {queued}");
    // 3 spans per request (server, tracing's on_request, attempt); at most queue_size + one
    // batch in flight + the buffer are held.
    assert!(dropped >= (3 * n - 64 - 2 * 16) as f64, "dropped {dropped}");
    let started = Instant::now();
    gw.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "shutdown took {took:?} with a blackholed collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_what_is_queued() {
    let receiver = Receiver::grpc().await;
    let upstream = Upstream::named("up").await;
    let text = config(
        upstream.addr,
        &format!("http://{}", receiver.addr),
        "grpc",
        "",
        "",
        "",
    )
    // Nothing would leave before shutdown on its own.
    .replace("batch_delay = \"20ms\"", "batch_delay = \"1h\"");
    let gw = gateway(&text).await;
    for _ in 0..3 {
        assert_eq!(get_with(gw.listen_addr, "/", &[]).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.spans().len(), 0, "still queued");
    gw.shutdown().await;
    assert_eq!(
        receiver.spans().len(),
        6,
        "server + attempt span of each request"
    );
}
