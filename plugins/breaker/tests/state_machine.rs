//! The Hystrix state machine against the SDK's in-memory host with a controlled clock: every
//! transition at its exact boundary, half-open trials under many concurrent callers, the
//! bulkhead and its leases, what counts as an error.

use std::time::Duration;

use breaker::Breaker;
use breaker::keys;
use serde_json::{Value, json};
use sluice_plugin_sdk::testing::{TestHost, TestRequest, TestResponseHead};
use sluice_plugin_sdk::{Action, UpstreamFailure};

const CMD: &str = "test GET";

fn setup(config: Value) -> (TestHost, Breaker) {
    let host = TestHost::new();
    let mut config = config;
    // Recompute the health counts on every request unless a test says otherwise.
    if config.get("health_snapshot_interval").is_none() {
        config["health_snapshot_interval"] = json!(0);
    }
    let plugin = host.init::<Breaker>(config).expect("valid config");
    (host, plugin)
}

/// One request that reaches the upstream and gets `status` back; panics if it did not.
fn execute(host: &TestHost, plugin: &Breaker, status: u16) {
    let req = TestRequest::get("/x");
    match host.on_request(plugin, &req).unwrap() {
        Action::Continue => {}
        Action::Respond(r) => panic!("expected the request to go through, got {}", r.status),
    }
    host.on_response(plugin, &req, &TestResponseHead::new(status))
        .unwrap();
}

/// The circuit's state word in shared state (`open`, `closed`), without its timestamp.
fn circuit_state(host: &TestHost) -> String {
    let raw = host.state(&keys::circuit(CMD)).expect("a circuit record");
    let text = String::from_utf8(raw).expect("UTF-8");
    text.split(':').next().unwrap_or_default().to_owned()
}

/// Whether the next request is short-circuited (and checks the answer if so).
fn short_circuited(host: &TestHost, plugin: &Breaker) -> bool {
    let req = TestRequest::get("/x");
    match host.on_request(plugin, &req).unwrap() {
        Action::Continue => {
            host.on_response(plugin, &req, &TestResponseHead::new(200))
                .unwrap();
            false
        }
        Action::Respond(r) => {
            assert_eq!(r.status, 503, "an open circuit answers 503, never 200");
            assert_eq!(r.header_value("x-sluice-breaker"), Some(&b"open"[..]));
            let retry: u64 = std::str::from_utf8(r.header_value("retry-after").unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
            let body: Value = serde_json::from_slice(&r.body[..]).unwrap();
            assert_eq!(body["error"], "circuit_open");
            assert_eq!(body["command"], CMD);
            true
        }
    }
}

/// Fails 20 requests and sees the next one open the circuit; returns when it opened.
fn open_it(host: &TestHost, plugin: &Breaker) -> u64 {
    for _ in 0..20 {
        execute(host, plugin, 500);
    }
    assert!(short_circuited(host, plugin));
    host.now_ms()
}

fn counter(host: &TestHost, key: &str) -> u64 {
    host.state(key)
        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
        .unwrap_or(0)
}

fn window_count(host: &TestHost, kind: &str) -> u64 {
    let now = host.now_ms();
    (now / 1000 - 9..=now / 1000)
        .map(|b| counter(host, &keys::count(CMD, b, kind)))
        .sum()
}

#[test]
fn volume_19_never_opens_20_does() {
    let (host, plugin) = setup(json!({}));
    for _ in 0..19 {
        execute(&host, &plugin, 500);
    }
    assert!(
        !short_circuited(&host, &plugin),
        "19 failures of 19 must not open it"
    );
    // That probe succeeded: 19 failures + 1 success = 20 requests, 95 % errors.
    assert!(short_circuited(&host, &plugin));
    assert_eq!(counter(&host, &keys::transitions(CMD, "open")), 1);
    assert_eq!(circuit_state(&host), "open");
}

#[test]
fn error_percentage_49_stays_closed_50_opens() {
    let (host, plugin) = setup(json!({}));
    for _ in 0..51 {
        execute(&host, &plugin, 200);
    }
    for _ in 0..49 {
        execute(&host, &plugin, 503);
    }
    // 49 / 100 = 49 %: the next request goes through (and succeeds: 49 / 101).
    assert!(!short_circuited(&host, &plugin));
    execute(&host, &plugin, 500);
    execute(&host, &plugin, 500);
    execute(&host, &plugin, 500);
    // 52 / 104 = 50 %: opens.
    assert!(short_circuited(&host, &plugin));

    let (host, plugin) = setup(json!({"error_threshold_percent": 50}));
    for _ in 0..10 {
        execute(&host, &plugin, 200);
        execute(&host, &plugin, 500);
    }
    assert!(short_circuited(&host, &plugin), "10 of 20 = 50 % opens");
}

#[test]
fn sleep_window_edge_then_exactly_one_trial() {
    let (host, plugin) = setup(json!({}));
    for _ in 0..20 {
        execute(&host, &plugin, 500);
    }
    let opened_at = host.now_ms();
    assert!(short_circuited(&host, &plugin));
    host.set_now_ms(opened_at + 5000);
    assert!(
        short_circuited(&host, &plugin),
        "at exactly opened_at + sleep_window it is still open"
    );
    host.set_now_ms(opened_at + 5001);
    let trial = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &trial).unwrap(),
        Action::Continue
    ));
    assert_eq!(counter(&host, &keys::transitions(CMD, "half_open")), 1);
    // While the trial is in flight everyone else is short-circuited.
    for _ in 0..5 {
        assert!(short_circuited(&host, &plugin));
    }
    host.on_response(&plugin, &trial, &TestResponseHead::new(200))
        .unwrap();
    assert_eq!(counter(&host, &keys::transitions(CMD, "closed")), 1);
    assert!(!short_circuited(&host, &plugin));
}

#[test]
fn half_open_success_closes_and_resets_the_window() {
    let (host, plugin) = setup(json!({}));
    open_it(&host, &plugin);
    host.advance(Duration::from_millis(5001));
    execute(&host, &plugin, 200);
    assert_eq!(
        window_count(&host, keys::FAILURE),
        0,
        "counts reset on close"
    );
    assert_eq!(window_count(&host, keys::SUCCESS), 0);
    // A fresh window: 19 more failures do not open it.
    for _ in 0..19 {
        execute(&host, &plugin, 500);
    }
    assert!(!short_circuited(&host, &plugin));
    assert_eq!(circuit_state(&host), "closed");
}

#[test]
fn half_open_failure_reopens_for_a_full_sleep_window() {
    for failure in ["status", "timeout", "connect"] {
        let (host, plugin) = setup(json!({}));
        open_it(&host, &plugin);
        host.advance(Duration::from_millis(5001));
        let trial = TestRequest::get("/x");
        assert!(matches!(
            host.on_request(&plugin, &trial).unwrap(),
            Action::Continue
        ));
        host.advance(Duration::from_millis(700));
        let response = match failure {
            "status" => TestResponseHead::new(502),
            "timeout" => {
                TestResponseHead::new(504).with_upstream_failure(UpstreamFailure::TimedOut)
            }
            _ => TestResponseHead::new(502).with_upstream_failure(UpstreamFailure::ConnectFailed),
        };
        host.on_response(&plugin, &trial, &response).unwrap();
        let reopened_at = host.now_ms();
        assert_eq!(
            host.state(&keys::circuit(CMD)).unwrap(),
            format!("open:{reopened_at}").into_bytes(),
            "{failure}"
        );
        assert_eq!(counter(&host, &keys::transitions(CMD, "open")), 2);
        host.set_now_ms(reopened_at + 5000);
        assert!(short_circuited(&host, &plugin), "{failure}");
        host.set_now_ms(reopened_at + 5001);
        assert!(!short_circuited(&host, &plugin), "{failure}: next trial");
    }
}

#[test]
fn n_trials_with_100_concurrent_callers() {
    for n in [1, 3] {
        let (host, plugin) = setup(json!({"half_open_requests": n, "max_concurrent_requests": 0}));
        open_it(&host, &plugin);
        host.advance(Duration::from_millis(5001));
        // 100 callers arrive before any of them finishes.
        let requests: Vec<TestRequest> = (0..100).map(|_| TestRequest::get("/x")).collect();
        let through: Vec<&TestRequest> = requests
            .iter()
            .filter(|r| matches!(host.on_request(&plugin, r).unwrap(), Action::Continue))
            .collect();
        assert_eq!(through.len(), n, "exactly {n} trial(s) of 100 callers");
        // The 99 or 97 others, plus the request that opened it.
        assert_eq!(window_count(&host, keys::SHORT_CIRCUITED), 101 - n as u64);
        for r in through {
            host.on_response(&plugin, r, &TestResponseHead::new(200))
                .unwrap();
        }
        assert_eq!(counter(&host, &keys::transitions(CMD, "closed")), 1);
    }
}

#[test]
fn a_trial_that_never_reports_back_is_granted_again_after_its_lease() {
    let (host, plugin) = setup(json!({"timeout": "1s"}));
    open_it(&host, &plugin);
    host.advance(Duration::from_millis(5001));
    let lost = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &lost).unwrap(),
        Action::Continue
    ));
    // Its client went away: on_response never runs. Lease = timeout + 1 s.
    host.advance(Duration::from_millis(1999));
    assert!(short_circuited(&host, &plugin));
    host.advance(Duration::from_millis(1));
    assert!(
        !short_circuited(&host, &plugin),
        "a new trial after the lease"
    );
}

#[test]
fn four_xx_are_successes_unless_configured() {
    let (host, plugin) = setup(json!({}));
    for status in [400, 401, 403, 404, 409, 429].repeat(10) {
        execute(&host, &plugin, status);
    }
    assert!(!short_circuited(&host, &plugin));
    assert_eq!(window_count(&host, keys::SUCCESS), 61);

    let (host, plugin) = setup(json!({"error_statuses": ["5xx", 429]}));
    for _ in 0..20 {
        execute(&host, &plugin, 429);
    }
    assert!(short_circuited(&host, &plugin));
}

#[test]
fn timeouts_and_connect_failures_are_errors_and_the_timeout_is_set() {
    let (host, plugin) = setup(json!({"timeout": "250ms"}));
    for i in 0..20 {
        let req = TestRequest::get("/x");
        assert!(matches!(
            host.on_request(&plugin, &req).unwrap(),
            Action::Continue
        ));
        assert_eq!(req.upstream_timeout_ms(), Some(250));
        let failure = if i % 2 == 0 {
            UpstreamFailure::TimedOut
        } else {
            UpstreamFailure::ConnectFailed
        };
        let status = if i % 2 == 0 { 504 } else { 502 };
        host.on_response(
            &plugin,
            &req,
            &TestResponseHead::new(status).with_upstream_failure(failure),
        )
        .unwrap();
    }
    assert_eq!(window_count(&host, keys::TIMEOUT), 10);
    assert_eq!(window_count(&host, keys::FAILURE), 10);
    assert!(short_circuited(&host, &plugin));

    let (host, plugin) = setup(json!({"timeout": 0}));
    let req = TestRequest::get("/x");
    host.on_request(&plugin, &req).unwrap();
    assert_eq!(req.upstream_timeout_ms(), None, "timeout 0 = off");
}

#[test]
fn short_circuited_requests_are_not_counted_in_health() {
    let (host, plugin) = setup(json!({"sleep_window": "60s", "rolling_window": "100s"}));
    for _ in 0..20 {
        execute(&host, &plugin, 500);
    }
    for _ in 0..50 {
        assert!(short_circuited(&host, &plugin));
    }
    let health = breaker::read_health(
        CMD,
        &breaker::config::BreakerConfig::parse(&json!({"rolling_window": "100s"}))
            .unwrap()
            .defaults,
        host.now_ms(),
    );
    assert_eq!((health.total, health.errors), (20, 20));
}

#[test]
fn old_buckets_leave_the_rolling_window() {
    let (host, plugin) = setup(json!({}));
    for _ in 0..19 {
        execute(&host, &plugin, 500);
    }
    // The window is the current 1 s bucket and the 9 before: 10 s later those 19 are gone.
    host.advance(Duration::from_millis(10_000));
    execute(&host, &plugin, 500);
    assert!(!short_circuited(&host, &plugin));
}

#[test]
fn health_snapshot_interval_delays_opening_like_hystrix() {
    let (host, plugin) = setup(json!({"health_snapshot_interval": "500ms"}));
    execute(&host, &plugin, 200); // snapshot taken: nothing yet
    for _ in 0..30 {
        execute(&host, &plugin, 500);
    }
    host.advance(Duration::from_millis(499));
    assert!(
        !short_circuited(&host, &plugin),
        "the cached snapshot is 499 ms old"
    );
    host.advance(Duration::from_millis(1));
    assert!(short_circuited(&host, &plugin));
}

#[test]
fn bulkhead_rejects_at_once_and_releases_slots() {
    let (host, plugin) = setup(json!({"max_concurrent_requests": 2, "timeout": "1s"}));
    let a = TestRequest::get("/x");
    let b = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &a).unwrap(),
        Action::Continue
    ));
    assert!(matches!(
        host.on_request(&plugin, &b).unwrap(),
        Action::Continue
    ));
    let c = TestRequest::get("/x");
    match host.on_request(&plugin, &c).unwrap() {
        Action::Respond(r) => {
            assert_eq!(r.status, 503);
            assert_eq!(r.header_value("x-sluice-breaker"), Some(&b"rejected"[..]));
            let body: Value = serde_json::from_slice(&r.body[..]).unwrap();
            assert_eq!(body["error"], "bulkhead_full");
            assert_eq!(body["max_concurrent_requests"], 2);
        }
        Action::Continue => panic!("a third concurrent request must be rejected"),
    }
    assert_eq!(window_count(&host, keys::REJECTED), 1);
    host.on_response(&plugin, &a, &TestResponseHead::new(200))
        .unwrap();
    let d = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &d).unwrap(),
        Action::Continue
    ));
    // b and d never report back (clients gone): their places are held for at least the
    // lease (2 s) and at most two leases.
    host.advance(Duration::from_millis(1999));
    assert!(matches!(
        host.on_request(&plugin, &TestRequest::get("/x")).unwrap(),
        Action::Respond(_)
    ));
    host.advance(Duration::from_millis(2001));
    let e = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &e).unwrap(),
        Action::Continue
    ));
    // A request that reports back after its place stopped counting gives nothing back twice.
    host.on_response(&plugin, &b, &TestResponseHead::new(200))
        .unwrap();
    let f = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &f).unwrap(),
        Action::Continue
    ));
    match host.on_request(&plugin, &TestRequest::get("/x")).unwrap() {
        Action::Respond(r) => assert_eq!(r.status, 503, "e and f hold both places"),
        Action::Continue => panic!("a late report-back must not free a place it no longer held"),
    }
}

#[test]
fn bulkhead_is_one_counter_however_large() {
    let (host, plugin) = setup(json!({"max_concurrent_requests": 10_000, "timeout": "1s"}));
    let held: Vec<TestRequest> = (0..50).map(|_| TestRequest::get("/x")).collect();
    for r in &held {
        assert!(matches!(
            host.on_request(&plugin, r).unwrap(),
            Action::Continue
        ));
    }
    // Every admitted request is one count in one key, not one key per place.
    // The test host's monotonic clock reads the same as its wall clock.
    let period = host.now_ms() / 2000;
    assert_eq!(
        host.state(&keys::inflight(CMD, period)).as_deref(),
        Some(&b"50"[..])
    );
    for r in &held {
        host.on_response(&plugin, r, &TestResponseHead::new(200))
            .unwrap();
    }
    assert_eq!(
        host.state(&keys::inflight(CMD, period)).as_deref(),
        Some(&b"0"[..])
    );
}

#[test]
fn bulkhead_rejections_count_as_errors() {
    let (host, plugin) = setup(json!({"max_concurrent_requests": 1}));
    let held = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &held).unwrap(),
        Action::Continue
    ));
    for _ in 0..20 {
        assert!(matches!(
            host.on_request(&plugin, &TestRequest::get("/x")).unwrap(),
            Action::Respond(_)
        ));
    }
    host.on_response(&plugin, &held, &TestResponseHead::new(200))
        .unwrap();
    // 20 rejected + 1 success = 21 requests, 95 % errors.
    assert!(short_circuited(&host, &plugin));
}

#[test]
fn force_open_and_force_closed() {
    let (host, plugin) = setup(json!({"force_open": true, "force_closed": true}));
    assert!(short_circuited(&host, &plugin), "force_open wins");
    let (host, plugin) = setup(json!({"force_closed": true}));
    for _ in 0..40 {
        execute(&host, &plugin, 500);
    }
    assert_eq!(window_count(&host, keys::FAILURE), 40, "still counted");
}

#[test]
fn fallback_replaces_the_503() {
    let (host, plugin) = setup(json!({
        "force_open": true,
        "fallback": {"status": 200, "headers": {"content-type": "application/json"}, "body": "{\"items\":[]}"}
    }));
    match host.on_request(&plugin, &TestRequest::get("/x")).unwrap() {
        Action::Respond(r) => {
            assert_eq!(r.status, 200);
            assert_eq!(r.body, b"{\"items\":[]}");
            assert_eq!(r.header_value("x-sluice-breaker"), Some(&b"open"[..]));
        }
        Action::Continue => panic!("forced open"),
    }
    assert_eq!(window_count(&host, keys::FALLBACK), 1);
}

#[test]
fn commands_are_route_and_method_never_the_uri() {
    let (host, plugin) = setup(json!({"routes": {"orders": {"command_key": "route"}}}));
    for target in ["/x?a=1", "/y?b=2", "/z/zz"] {
        execute(&host, &plugin, 200);
        let req = TestRequest::new("BREW", target).with_route("users");
        host.on_request(&plugin, &req).unwrap();
        let req = TestRequest::new("POST", target).with_route("orders");
        host.on_request(&plugin, &req).unwrap();
    }
    assert!(host.state(&keys::command("test GET")).is_some());
    assert!(host.state(&keys::command("users OTHER")).is_some());
    assert!(host.state(&keys::command("orders")).is_some());
    let record: Value =
        serde_json::from_slice(&host.state(&keys::command("test GET")).unwrap()).unwrap();
    assert_eq!(record["group"], "test");
    assert_eq!(record["request_volume_threshold"], 20);
    assert_eq!(record["timeout_ms"], 1000);
}

#[test]
fn init_rejects_bad_config_naming_the_key() {
    let host = TestHost::new();
    let e = host
        .init::<Breaker>(json!({"routes": {"users": {"error_threshold_percent": 150}}}))
        .unwrap_err();
    assert!(
        e.message().contains("routes.users.error_threshold_percent"),
        "{e}"
    );
}

#[test]
fn with_several_trials_the_first_outcome_decides() {
    let (host, plugin) = setup(json!({"half_open_requests": 2}));
    open_it(&host, &plugin);
    host.advance(Duration::from_millis(5001));
    let (a, b) = (TestRequest::get("/x"), TestRequest::get("/x"));
    assert!(matches!(
        host.on_request(&plugin, &a).unwrap(),
        Action::Continue
    ));
    assert!(matches!(
        host.on_request(&plugin, &b).unwrap(),
        Action::Continue
    ));
    host.on_response(&plugin, &a, &TestResponseHead::new(200))
        .unwrap();
    // The circuit closed on a's success; b's failure is an ordinary failure in a fresh window.
    host.on_response(&plugin, &b, &TestResponseHead::new(500))
        .unwrap();
    assert_eq!(circuit_state(&host), "closed");
    assert_eq!(counter(&host, &keys::transitions(CMD, "open")), 1);
    assert_eq!(window_count(&host, keys::FAILURE), 1);
    assert!(!short_circuited(&host, &plugin));
}

#[test]
fn answers_the_upstream_never_saw_neither_count_nor_decide_a_trial() {
    let (host, plugin) = setup(json!({}));
    open_it(&host, &plugin);
    host.advance(Duration::from_millis(5001));
    // The trial is let through, but a later plugin answers it (the upstream never sees it).
    let trial = TestRequest::get("/x");
    assert!(matches!(
        host.on_request(&plugin, &trial).unwrap(),
        Action::Continue
    ));
    host.on_response(
        &plugin,
        &trial,
        &TestResponseHead::new(401).not_from_upstream(),
    )
    .unwrap();
    assert_eq!(
        counter(&host, &keys::transitions(CMD, "closed")),
        0,
        "a plugin's answer does not close the circuit"
    );
    assert!(
        short_circuited(&host, &plugin),
        "still half-open, trial undecided"
    );
}

/// Each instance keeps the commands it met (by route, then method): methods of one route stay
/// apart, `command_key = "route"` folds them, and `on-response` finds its command from the
/// ticket alone, whichever instance runs it (pooled instances: not the one that ran
/// `on-request`).
#[test]
fn commands_kept_per_instance_stay_apart_and_any_instance_finishes_a_request() {
    let config = json!({
        "health_snapshot_interval": 0,
        "routes": {"orders": {"command_key": "route"}},
    });
    let host = TestHost::new();
    let first = host.init::<Breaker>(config.clone()).unwrap();
    let second = host.init::<Breaker>(config).unwrap();
    let bucket = host.now_ms() / 1000;
    let count = |cmd: &str, kind: &str| counter(&host, &keys::count(cmd, bucket, kind));
    let inflight = |cmd: &str| counter(&host, &keys::inflight(cmd, host.now_ms() / 1000));

    // Twice each, so the second round runs on the commands the instance kept.
    for _ in 0..2 {
        for (method, status) in [("GET", 200), ("POST", 500), ("BREW", 503)] {
            let req = TestRequest::new(method, "/x").with_route("test");
            assert!(matches!(
                host.on_request(&first, &req).unwrap(),
                Action::Continue
            ));
            host.on_response(&second, &req, &TestResponseHead::new(status))
                .unwrap();
        }
        for method in ["GET", "DELETE"] {
            let req = TestRequest::new(method, "/y").with_route("orders");
            host.on_request(&second, &req).unwrap();
            host.on_response(&first, &req, &TestResponseHead::new(200))
                .unwrap();
        }
    }
    assert_eq!(count("test GET", keys::SUCCESS), 2);
    assert_eq!(count("test GET", keys::FAILURE), 0);
    assert_eq!(count("test POST", keys::FAILURE), 2);
    assert_eq!(count("test OTHER", keys::FAILURE), 2);
    assert_eq!(count("orders", keys::SUCCESS), 4);
    for cmd in ["test GET", "test POST", "test OTHER", "orders"] {
        assert_eq!(inflight(cmd), 0, "{cmd}: every bulkhead place given back");
    }
    let record: Value =
        serde_json::from_slice(&host.state(&keys::command("orders")).unwrap()).unwrap();
    assert_eq!(record["method"], "*");
    let record: Value =
        serde_json::from_slice(&host.state(&keys::command("test OTHER")).unwrap()).unwrap();
    assert_eq!(record["method"], "OTHER");
}
