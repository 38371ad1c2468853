//! The built-in `breaker` plugin through a running gateway, with a real upstream that fails on
//! demand: the circuit opens and answers 503 with a body and `Retry-After` (never 200 empty),
//! recovers after the upstream does, 4xx do not open it, connection failures do, the timeout
//! answers 504 and the bulkhead 503 at once; half-open lets exactly N of 100 concurrent clients
//! through; `/hystrix.stream` carries every field hystrix-dashboard reads; the dashboard page
//! turns a tile open in headless Chromium.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::harness::*;

/// An upstream whose status and delay the test changes while it runs.
struct Flaky {
    up: Upstream,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

impl Flaky {
    async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (s, d) = (status.clone(), delay_ms.clone());
        let up = Upstream::with_handler(Arc::new(move |_req| {
            let (s, d) = (s.clone(), d.clone());
            Box::pin(async move {
                let delay = d.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let mut r = Response::new(full("from upstream\n"));
                *r.status_mut() = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                r
            })
        }))
        .await;
        Self {
            up,
            status,
            delay_ms,
        }
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// A gateway with route `api` on `/api` (service at `upstream`) guarded by the breaker, and
/// route `down` on `/down` whose only instance refuses connections.
async fn gateway_with(upstream: SocketAddr, breaker: &str, workers: usize) -> sluice::Gateway {
    let down = closed_port().await;
    gateway(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = {workers}
[plugins]
cache_dir = "{cache}"
[services.s]
instances = ["{upstream}"]
[services.gone]
instances = ["{down}"]
[[routes]]
name = "api"
path = "/api"
service = "s"
plugins = ["breaker"]
[[routes]]
name = "down"
path = "/down"
service = "gone"
plugins = ["breaker"]
[plugin.breaker]
health_snapshot_interval = "0ms"
{breaker}
"#,
        cache = plugin_cache_dir().display()
    ))
    .await
}

fn assert_short_circuit(status: StatusCode, headers: &http::HeaderMap, body: &str, cmd: &str) {
    assert_eq!(
        status, 503,
        "an open circuit answers 503, never 200: {body}"
    );
    assert_eq!(headers["x-sluice-breaker"], "open");
    assert_eq!(headers["content-type"], "application/json");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    let json: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(json["error"], "circuit_open");
    assert_eq!(json["command"], cmd);
}

async fn metrics(gw: &sluice::Gateway) -> String {
    get(gw.admin_addr, "/metrics").await.2
}

#[tokio::test]
async fn circuit_opens_with_503_body_and_retry_after_then_recovers() {
    let flaky = Flaky::start().await;
    // Long enough never to end by itself: the test moves the gateway's plugin clock past it
    // instead of waiting.
    let gw = gateway_with(flaky.up.addr, r#"sleep_window = "1h""#, 1).await;
    let at = gw.listen_addr;

    for _ in 0..5 {
        assert_eq!(get(at, "/api/users?page=1").await.0, 200);
    }
    flaky.set(500);
    // 5 successes + 15 failures = 20 requests, 75 % errors: the next request opens it.
    for _ in 0..15 {
        assert_eq!(get(at, "/api/users?x=2").await.0, 500);
    }
    let hits = flaky.up.hits();
    let (status, headers, body) = get(at, "/api/anything/else?q=3").await;
    assert_short_circuit(status, &headers, &body, "api GET");
    for _ in 0..10 {
        let (status, headers, body) = get(at, "/api/users").await;
        assert_short_circuit(status, &headers, &body, "api GET");
    }
    assert_eq!(
        flaky.up.hits(),
        hits,
        "short-circuited requests never reach the upstream"
    );
    // Another method is another command, still closed.
    let post = Request::post("/api/users").body(full("x")).unwrap();
    assert_eq!(send(at, post).await.0, 500);

    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"sluice_breaker_circuit_state{command="api GET",state="open"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"sluice_breaker_transitions_total{command="api GET",to="open"} 1"#));

    // The upstream recovers; after the sleep window one trial closes the circuit.
    flaky.set(200);
    let clock = gw.proxy.plugins.clock();
    clock.advance(Duration::from_secs(3599));
    let hits = flaky.up.hits();
    let (status, headers, body) = get(at, "/api/users").await;
    assert_short_circuit(status, &headers, &body, "api GET");
    assert_eq!(
        flaky.up.hits(),
        hits,
        "still open a second before the window ends"
    );
    clock.advance(Duration::from_secs(2));
    let (status, _, body) = get(at, "/api/users").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "from upstream\n"));
    for _ in 0..20 {
        assert_eq!(get(at, "/api/users").await.0, 200);
    }
    let m = metrics(&gw).await;
    assert!(m.contains(r#"sluice_breaker_circuit_state{command="api GET",state="closed"} 1"#));
    assert!(m.contains(r#"sluice_breaker_transitions_total{command="api GET",to="half_open"} 1"#));
    assert!(m.contains(r#"sluice_breaker_transitions_total{command="api GET",to="closed"} 1"#));
    gw.shutdown().await;
}

#[tokio::test]
async fn four_xx_do_not_open_it_and_refused_connections_do() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(flaky.up.addr, "", 1).await;
    let at = gw.listen_addr;
    for status in [400u16, 401, 403, 404, 429].repeat(8) {
        flaky.set(status);
        assert_eq!(get(at, "/api/x").await.0, status);
    }
    assert_eq!(
        get(at, "/api/x").await.0,
        429,
        "40 4xx answers: still closed"
    );

    for _ in 0..20 {
        let status = get(at, "/down").await.0;
        assert!(status == 502 || status == 503, "{status}");
    }
    let (status, headers, body) = get(at, "/down").await;
    assert_short_circuit(status, &headers, &body, "down GET");
    gw.shutdown().await;
}

#[tokio::test]
async fn timeout_answers_504_and_counts_as_timeout() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(flaky.up.addr, r#"timeout = "200ms""#, 1).await;
    flaky.delay(2000);
    let started = Instant::now();
    let (status, _, _) = get(gw.listen_addr, "/api/slow").await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    let state = gw.proxy.plugins.shared_state("breaker");
    let snapshot = sluice::hystrix::snapshot(&state);
    let api = snapshot
        .iter()
        .find(|c| c.record.name == "api GET")
        .unwrap();
    assert_eq!((api.counts.timeout, api.counts.failure), (1, 0));
    gw.shutdown().await;
}

#[tokio::test]
async fn bulkhead_rejects_over_max_concurrent_at_once() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(
        flaky.up.addr,
        "max_concurrent_requests = 3\ntimeout = \"5s\"",
        2,
    )
    .await;
    flaky.delay(800);
    let at = gw.listen_addr;
    let calls = (0..10).map(|_| {
        tokio::spawn(async move {
            let started = Instant::now();
            let (status, headers, body) = get(at, "/api/x").await;
            (status, headers, body, started.elapsed())
        })
    });
    let calls: Vec<_> = calls.collect();
    // While the three admitted requests wait on the upstream, the stream reports them.
    let in_flight = async {
        loop {
            let snapshot = sluice::hystrix::snapshot(&gw.proxy.plugins.shared_state("breaker"));
            if snapshot
                .iter()
                .any(|c| c.record.name == "api GET" && c.concurrent == 3)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(700), in_flight)
        .await
        .expect("3 requests reported in flight while the upstream holds them");
    let mut ok = 0;
    let mut rejected = 0;
    for call in calls {
        let (status, headers, body, took) = call.await.unwrap();
        match status.as_u16() {
            200 => ok += 1,
            503 => {
                rejected += 1;
                assert_eq!(headers["x-sluice-breaker"], "rejected");
                let json: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"], "bulkhead_full");
                assert!(
                    took < Duration::from_millis(500),
                    "rejected at once, took {took:?}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, rejected), (3, 7));
    // The places were given back: 3 more go through.
    flaky.delay(0);
    for _ in 0..3 {
        assert_eq!(get(at, "/api/x").await.0, 200);
    }
    let snapshot = sluice::hystrix::snapshot(&gw.proxy.plugins.shared_state("breaker"));
    let api = snapshot
        .iter()
        .find(|c| c.record.name == "api GET")
        .unwrap();
    assert_eq!(api.counts.rejected, 7);
    assert_eq!(api.concurrent, 0, "no place leaked");
    gw.shutdown().await;
}

#[tokio::test]
async fn half_open_lets_exactly_n_of_100_concurrent_clients_through() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(
        flaky.up.addr,
        "sleep_window = \"1h\"\nhalf_open_requests = 2\nmax_concurrent_requests = 0",
        2,
    )
    .await;
    let at = gw.listen_addr;
    flaky.set(500);
    for _ in 0..20 {
        get(at, "/api/x").await;
    }
    assert_eq!(get(at, "/api/x").await.0, 503);
    flaky.set(200);
    flaky.delay(500); // trials stay in flight while the others arrive
    // Past the sleep window without waiting for it.
    gw.proxy.plugins.clock().advance(Duration::from_secs(3601));
    let hits = flaky.up.hits();
    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { get(at, "/api/x").await.0.as_u16() }))
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    let through = statuses.iter().filter(|s| **s == 200).count();
    let short = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!((through, short), (2, 98), "{statuses:?}");
    assert_eq!(flaky.up.hits() - hits, 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_breaker_config_is_refused_naming_the_key() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(
        flaky.up.addr,
        "[plugin.breaker.routes.api]\nerror_threshold_percent = 150",
        1,
    )
    .await;
    let (_, _, body) = get(gw.admin_addr, "/admin/plugins").await;
    let plugins: Value = serde_json::from_str(&body).unwrap();
    let breaker = plugin_view(&plugins, "breaker");
    assert_eq!(breaker["status"], "failed", "{breaker}");
    let reason = breaker["last_error"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("routes.api.error_threshold_percent") && reason.contains("150"),
        "{reason}"
    );
    // Its routes fail closed (the plugin is not loaded) rather than run unprotected.
    assert_eq!(get(gw.listen_addr, "/api/x").await.0, 503);
    gw.shutdown().await;
}

/// Every field of a `HystrixCommand` object that hystrix-dashboard reads.
const NUMBER_FIELDS: &[&str] = &[
    "currentTime",
    "errorPercentage",
    "errorCount",
    "requestCount",
    "rollingCountBadRequests",
    "rollingCountCollapsedRequests",
    "rollingCountEmit",
    "rollingCountExceptionsThrown",
    "rollingCountFailure",
    "rollingCountFallbackEmit",
    "rollingCountFallbackFailure",
    "rollingCountFallbackMissing",
    "rollingCountFallbackRejection",
    "rollingCountFallbackSuccess",
    "rollingCountResponsesFromCache",
    "rollingCountSemaphoreRejected",
    "rollingCountShortCircuited",
    "rollingCountSuccess",
    "rollingCountThreadPoolRejected",
    "rollingCountTimeout",
    "currentConcurrentExecutionCount",
    "rollingMaxConcurrentExecutionCount",
    "latencyExecute_mean",
    "latencyTotal_mean",
    "propertyValue_circuitBreakerRequestVolumeThreshold",
    "propertyValue_circuitBreakerSleepWindowInMilliseconds",
    "propertyValue_circuitBreakerErrorThresholdPercentage",
    "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
    "propertyValue_executionTimeoutInMilliseconds",
    "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
    "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests",
    "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
    "reportingHosts",
];
const BOOL_FIELDS: &[&str] = &[
    "isCircuitBreakerOpen",
    "propertyValue_circuitBreakerForceOpen",
    "propertyValue_circuitBreakerForceClosed",
    "propertyValue_circuitBreakerEnabled",
    "propertyValue_executionIsolationThreadInterruptOnTimeout",
    "propertyValue_requestCacheEnabled",
    "propertyValue_requestLogEnabled",
];
const PERCENTILE_KEYS: &[&str] = &["0", "25", "50", "75", "90", "95", "99", "99.5", "100"];

/// Reads `/hystrix.stream` until it has seen `pings` keep-alives; returns the commands of the
/// last sample in which `want` appeared, and the response headers.
async fn read_stream(admin: SocketAddr, query: &str, want: &str) -> (http::HeaderMap, Vec<Value>) {
    let req = Request::get(format!("http://{admin}/hystrix.stream{query}"))
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), body.frame())
            .await
            .expect("a sample within 10 s")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        // A whole sample: events, then the ping that ends it.
        while let Some(end) = text.find("ping: \n\n") {
            let sample: String = text.drain(..end + "ping: \n\n".len()).collect();
            let events: Vec<Value> = sample
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .map(|json| serde_json::from_str(json).expect("each data: line is JSON"))
                .collect();
            if events.iter().any(|e| e["name"] == want) {
                return (headers, events);
            }
        }
    }
}

#[tokio::test]
async fn hystrix_stream_carries_every_field_the_dashboard_reads() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(flaky.up.addr, "", 1).await;
    let at = gw.listen_addr;
    for _ in 0..6 {
        get(at, "/api/x").await;
    }
    flaky.set(503);
    for _ in 0..4 {
        get(at, "/api/x").await;
    }
    let (headers, events) = read_stream(gw.admin_addr, "?delay=100", "api GET").await;
    assert_eq!(headers["content-type"], "text/event-stream;charset=UTF-8");
    let api = events.iter().find(|e| e["name"] == "api GET").unwrap();
    assert_eq!(api["type"], "HystrixCommand");
    assert_eq!(api["group"], "api");
    assert!(api["threadPool"].is_string());
    for field in NUMBER_FIELDS {
        assert!(
            api[field].is_u64(),
            "{field} should be a number: {}",
            api[field]
        );
    }
    for field in BOOL_FIELDS {
        assert!(
            api[field].is_boolean(),
            "{field} should be a boolean: {}",
            api[field]
        );
    }
    assert!(api["propertyValue_executionIsolationStrategy"].is_string());
    for object in ["latencyExecute", "latencyTotal"] {
        for key in PERCENTILE_KEYS {
            assert!(
                api[object][key].is_u64(),
                "{object}[{key}]: {}",
                api[object]
            );
        }
    }
    assert_eq!(api["requestCount"], 10);
    assert_eq!(api["rollingCountSuccess"], 6);
    assert_eq!(api["rollingCountFailure"], 4);
    assert_eq!(api["errorCount"], 4);
    assert_eq!(api["errorPercentage"], 40);
    assert_eq!(api["isCircuitBreakerOpen"], false);
    assert_eq!(api["reportingHosts"], 1);
    assert_eq!(
        api["propertyValue_circuitBreakerRequestVolumeThreshold"],
        20
    );
    assert_eq!(api["propertyValue_executionTimeoutInMilliseconds"], 1000);
    assert!(
        api["latencyExecute"]["100"].as_u64().unwrap()
            >= api["latencyExecute"]["0"].as_u64().unwrap()
    );
    gw.shutdown().await;
}

/// `n` clients that ask for `/hystrix.stream` every 10 ms and read nothing past the response
/// head. Each returns once the gateway answered 200, so its place is taken: a caller's next
/// request races no client still on its way in.
async fn stalled_stream_clients(admin: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stalled = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /hystrix.stream?delay=10 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(EVENTUALLY, s.read(&mut byte)).await;
            assert_eq!(read.expect("a response head").unwrap(), 1, "stream closed");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        stalled.push(s);
    }
    stalled
}

/// The status of `GET path` (the body, an endless stream here, is not read).
async fn get_head(admin: SocketAddr, path: &str) -> StatusCode {
    let req = Request::get(format!("http://{admin}{path}"))
        .body(full(""))
        .unwrap();
    client().request(req).await.unwrap().status()
}

#[tokio::test]
async fn hystrix_stream_caps_clients_and_a_stalled_client_slows_nothing() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(flaky.up.addr, "", 1).await;
    get(gw.listen_addr, "/api/x").await;
    let admin = gw.admin_addr;
    // Five clients that connect and read nothing past the head.
    let stalled = stalled_stream_clients(admin, 5).await;
    let (status, headers, body) = get(admin, "/hystrix.stream").await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("MaxConcurrentConnections"));
    let (status, _, _) = get(admin, "/hystrix.stream?delay=abc").await;
    assert_eq!(status, 400, "a bad delay is refused");
    // Requests are not slowed by the stalled clients.
    let started = Instant::now();
    for _ in 0..50 {
        let (status, _, body) = get(gw.listen_addr, "/api/x").await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Closing them frees their places.
    drop(stalled);
    assert_eventually!(
        get_head(admin, "/hystrix.stream?delay=50").await == 200,
        "places freed when their clients went away"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn hystrix_stream_drops_a_client_that_stops_reading() {
    let flaky = Flaky::start().await;
    let gw = gateway_with(flaky.up.addr, "", 1).await;
    get(gw.listen_addr, "/api/x").await;
    // Many commands make each sample large (about 250 KB), so a client that reads nothing fills
    // the socket buffers within a second or two and its 8-sample buffer right after.
    let state = gw.proxy.plugins.shared_state("breaker");
    let record = state
        .get("cmd|api GET")
        .expect("the plugin announced its command");
    let record: Value = serde_json::from_slice(&record).unwrap();
    for i in 0..100 {
        let mut r = record.clone();
        r["name"] = Value::from(format!("filler {i}"));
        state.set(format!("cmd|filler {i}"), r.to_string().into(), None);
    }
    let admin = gw.admin_addr;
    let stalled = stalled_stream_clients(admin, 5).await;
    assert_eq!(
        get(admin, "/hystrix.stream").await.0,
        503,
        "five clients hold every place"
    );
    // Their sockets stay open, but they lag: the stream drops them and frees their places.
    assert_eventually!(
        within: Duration::from_secs(30),
        get_head(admin, "/hystrix.stream?delay=1000").await == 200,
        "lagging clients dropped"
    );
    // Requests were answered all along.
    assert_eq!(get(gw.listen_addr, "/api/x").await.0, 200);
    drop(stalled);
    gw.shutdown().await;
}

#[tokio::test]
async fn dashboard_tile_turns_open_in_chromium() {
    let chromium = which("chromium").expect(
        "chromium is required for this test: run scripts/setup-chromium.sh (apt-get install chromium)",
    );
    let flaky = Flaky::start().await;
    let gw = gateway_with(flaky.up.addr, r#"sleep_window = "60s""#, 1).await;
    let at = gw.listen_addr;
    get(at, "/api/x").await;

    let browser = Browser::launch(&chromium).await;
    let mut page = browser.page().await;
    page = page
        .call(
            "Page.navigate",
            serde_json::json!({ "url": format!("http://{}/", gw.admin_addr) }),
        )
        .await
        .0;
    let (page, state) = page.wait_for_tile("api GET", "closed").await;
    assert_eq!(state.as_deref(), Some("closed"));
    let (page, plugins) = page
        .eval("[...document.querySelectorAll('tr[data-plugin]')].map(r => r.dataset.plugin).join(',')")
        .await;
    assert_eq!(plugins, "breaker", "the plugin list from /admin/plugins");

    // The page stays open; the upstream fails and the tile must turn open from the stream.
    flaky.set(500);
    for _ in 0..20 {
        get(at, "/api/x").await;
    }
    assert_eq!(get(at, "/api/x").await.0, 503);
    let (page, state) = page.wait_for_tile("api GET", "open").await;
    assert_eq!(state.as_deref(), Some("open"), "the tile turned open live");
    let (page, shot) = page
        .call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        )
        .await;
    drop(page);
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let path = artifacts.canonicalize().unwrap().join("dashboard-open.png");
    std::fs::write(&path, &png).unwrap();
    println!("dashboard screenshot: {}", path.display());
    drop(browser);
    gw.shutdown().await;
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Headless Chromium driven over the DevTools protocol (a page's WebSocket), so a test can
/// keep one page open and watch it change.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    async fn launch(chromium: &std::path::Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it chose to DevToolsActivePort in the profile.
        let file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Self {
            _child: child,
            _profile: profile,
            port,
        }
    }

    /// The first page target.
    async fn page(&self) -> Page {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let (_, _, body) = get(addr, "/json/list").await;
        let targets: Value = serde_json::from_str(&body).unwrap();
        let ws = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        tokio::task::spawn_blocking(move || {
            let (socket, _) = tungstenite::connect(ws.as_str()).expect("DevTools WebSocket");
            Page { socket, next: 0 }
        })
        .await
        .unwrap()
    }
}

struct Page {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
}

impl Page {
    /// One DevTools call (off the test's runtime, which serves the admin listener).
    async fn call(self, method: &'static str, params: Value) -> (Self, Value) {
        tokio::task::spawn_blocking(move || {
            let mut page = self;
            page.next += 1;
            let id = page.next;
            let msg = serde_json::json!({ "id": id, "method": method, "params": params });
            page.socket
                .send(tungstenite::Message::text(msg.to_string()))
                .unwrap();
            loop {
                let reply = page.socket.read().expect("DevTools reply");
                let Ok(text) = reply.to_text() else { continue };
                let value: Value = serde_json::from_str(text).unwrap();
                if value["id"] == id {
                    assert!(value.get("error").is_none(), "{method}: {value}");
                    return (page, value["result"].clone());
                }
            }
        })
        .await
        .unwrap()
    }

    async fn eval(self, expression: &str) -> (Self, Value) {
        let (page, result) = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        (page, result["result"]["value"].clone())
    }

    /// Polls the tile's `data-state` until it is `want` (10 s at most); returns the last seen.
    async fn wait_for_tile(self, command: &str, want: &str) -> (Self, Option<String>) {
        let expression = format!(
            "(() => {{ const t = document.querySelector('[data-command=\"{command}\"]'); return t ? t.dataset.state : null; }})()"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut page = self;
        loop {
            let (p, value) = page.eval(&expression).await;
            page = p;
            let state = value.as_str().map(str::to_owned);
            if state.as_deref() == Some(want) || Instant::now() > deadline {
                return (page, state);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A plugin after the breaker fails its `on-response` (fail-closed): the client gets that 500,
/// and the breaker's own `on-response` still runs, so its bulkhead slot is released (with a
/// limit of 1 a leaked slot would reject every next request with 503).
#[tokio::test]
async fn a_later_plugin_failing_on_response_does_not_leak_the_bulkhead_slot() {
    let up = Upstream::named("up").await;
    let gw = gateway(&format!(
        "[plugins]\ndir = \"{dir}\"\ncache_dir = \"{cache}\"\nwatch = false\n\
         [services.s]\ninstances = [\"{up}\"]\n\
         [[routes]]\nname = \"api\"\npath = \"/api\"\nservice = \"s\"\nplugins = [\"breaker\", \"testbed\"]\n\
         [plugin.breaker]\nmax_concurrent_requests = 1\ntimeout = \"0ms\"\n",
        dir = fixture("testbed").parent().unwrap().display(),
        cache = plugin_cache_dir().display(),
        up = up.addr
    ))
    .await;
    for _ in 0..5 {
        let (status, _, body) = get(gw.listen_addr, "/api/resp-error").await;
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("testbed"), "{body}");
    }
    assert_eq!(get(gw.listen_addr, "/api/ok").await.0, 200);
    gw.shutdown().await;
}
