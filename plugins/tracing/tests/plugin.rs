//! The plugin against the SDK's in-memory host: context extraction, sampling rules, span
//! name, header attributes, keep-errors.

use serde_json::{Value, json};
use sluice_plugin_sdk::testing::{TestHost, TestRequest, TestResponseHead};
use sluice_plugin_sdk::{Hooks, Plugin, UpstreamFailure};
use tracing_plugin::Tracing;

const OWN: &str = "11111111111111111111111111111111";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn host() -> TestHost {
    let host = TestHost::new();
    host.set_exports_traces(true);
    host.set_trace_id(Some(OWN));
    host
}

fn plugin(host: &TestHost, config: Value) -> Tracing {
    host.init(config).expect("valid config")
}

fn run(config: Value, request: &TestRequest) -> TestHost {
    let host = host();
    let p = plugin(&host, config);
    host.on_request(&p, request).unwrap();
    host
}

#[test]
fn w3c_parent_is_continued_and_followed() {
    let req = TestRequest::get("/users/7")
        .with_route("users")
        .with_header("traceparent", format!("00-{TRACE}-{SPAN}-00"))
        .with_header("tracestate", "vendor=x");
    let host = run(json!({}), &req);
    let parent = host.trace_parent().expect("continued");
    assert_eq!(parent.trace_id, TRACE);
    assert_eq!(parent.span_id, SPAN);
    assert_eq!(parent.sampled, Some(false));
    assert_eq!(parent.trace_state, "vendor=x");
    // parent_based (the default) follows the caller: not sampled.
    assert_eq!(host.trace_sampled(), Some(false));
    assert_eq!(host.span_name().as_deref(), Some("GET users"));
}

#[test]
fn b3_single_and_multi_are_continued() {
    let req = TestRequest::get("/").with_header("b3", format!("{TRACE}-{SPAN}-1"));
    let host = run(json!({}), &req);
    assert_eq!(host.trace_parent().unwrap().trace_id, TRACE);
    assert_eq!(host.trace_sampled(), Some(true));

    let req = TestRequest::get("/")
        .with_header("X-B3-TraceId", "a3ce929d0e0e4736")
        .with_header("X-B3-SpanId", SPAN)
        .with_header("X-B3-Sampled", "0");
    let host = run(json!({}), &req);
    let parent = host.trace_parent().unwrap();
    assert_eq!(parent.trace_id, "0000000000000000a3ce929d0e0e4736");
    assert_eq!(host.trace_sampled(), Some(false));

    // b3: 0 alone denies, with no parent.
    let host = run(json!({}), &TestRequest::get("/").with_header("b3", "0"));
    assert_eq!(host.trace_parent(), None);
    assert_eq!(host.trace_sampled(), Some(false));
}

#[test]
fn w3c_wins_over_b3_and_a_malformed_w3c_falls_back() {
    let other = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let req = TestRequest::get("/")
        .with_header("traceparent", format!("00-{TRACE}-{SPAN}-01"))
        .with_header("b3", format!("{other}-{SPAN}-1"));
    assert_eq!(run(json!({}), &req).trace_parent().unwrap().trace_id, TRACE);
    let req = TestRequest::get("/")
        .with_header("traceparent", "00-garbage")
        .with_header("b3", format!("{other}-{SPAN}-1"));
    assert_eq!(run(json!({}), &req).trace_parent().unwrap().trace_id, other);
}

#[test]
fn malformed_context_starts_a_new_trace() {
    let req = TestRequest::get("/")
        .with_header("traceparent", format!("00-{}-{SPAN}-01", "0".repeat(32)));
    let host = run(json!({}), &req);
    assert_eq!(host.trace_parent(), None);
    assert_eq!(host.trace_sampled(), Some(true), "root sampler: always");
}

#[test]
fn samplers() {
    let sampled_parent =
        TestRequest::get("/").with_header("traceparent", format!("00-{TRACE}-{SPAN}-01"));
    let root = TestRequest::get("/");
    assert_eq!(
        run(json!({"sampler": "never"}), &sampled_parent).trace_sampled(),
        Some(false)
    );
    assert_eq!(
        run(json!({"sampler": "always"}), &root).trace_sampled(),
        Some(true)
    );
    assert_eq!(
        run(json!({"root_sampler": "never"}), &root).trace_sampled(),
        Some(false)
    );
    assert_eq!(
        run(json!({"root_sampler": "never"}), &sampled_parent).trace_sampled(),
        Some(true)
    );
    // ratio decides from the trace id: our own id (low bits 0x1111...) against 0.5.
    let low = u64::from_str_radix(&OWN[16..], 16).unwrap() >> 1;
    let expect = low < (0.5 * (1u64 << 63) as f64) as u64;
    assert_eq!(
        run(json!({"sampler": "ratio", "ratio": 0.5}), &root).trace_sampled(),
        Some(expect)
    );
    assert_eq!(
        run(json!({"sampler": "ratio", "ratio": 0.0}), &sampled_parent).trace_sampled(),
        Some(false)
    );
}

#[test]
fn ratio_is_decided_from_the_trace_id_so_hops_agree() {
    // With a continued trace the decision uses the caller's id, the same at every hop.
    let config = json!({"sampler": "ratio", "ratio": 0.3});
    let mut kept = 0;
    for i in 0..400u32 {
        let id = format!(
            "{:032x}",
            u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        );
        if id.bytes().all(|b| b == b'0') {
            continue;
        }
        let req = TestRequest::get("/").with_header("traceparent", format!("00-{id}-{SPAN}-01"));
        let a = run(config.clone(), &req).trace_sampled().unwrap();
        let b = run(config.clone(), &req).trace_sampled().unwrap();
        assert_eq!(a, b);
        kept += u32::from(a);
    }
    assert!((60..=180).contains(&kept), "{kept} of 400 at 0.3");
}

#[test]
fn keep_errors_samples_failed_requests() {
    let host = host();
    let p = plugin(&host, json!({"sampler": "never", "keep_errors": true}));
    let req = TestRequest::get("/");
    host.on_request(&p, &req).unwrap();
    assert_eq!(host.trace_sampled(), Some(false));
    host.on_response(&p, &req, &TestResponseHead::new(200))
        .unwrap();
    assert_eq!(host.trace_sampled(), Some(false));
    host.on_response(&p, &req, &TestResponseHead::new(503))
        .unwrap();
    assert_eq!(host.trace_sampled(), Some(true));

    let host = self::host();
    let p = plugin(&host, json!({"sampler": "never", "keep_errors": true}));
    host.on_request(&p, &req).unwrap();
    let timed_out = TestResponseHead::new(200).with_upstream_failure(UpstreamFailure::TimedOut);
    host.on_response(&p, &req, &timed_out).unwrap();
    assert_eq!(host.trace_sampled(), Some(true));

    // Without keep_errors a 500 stays unsampled.
    let host = self::host();
    let p = plugin(&host, json!({"sampler": "never"}));
    host.on_request(&p, &req).unwrap();
    host.on_response(&p, &req, &TestResponseHead::new(500))
        .unwrap();
    assert_eq!(host.trace_sampled(), Some(false));
}

#[test]
fn configured_headers_become_attributes() {
    let host = host();
    let p = plugin(
        &host,
        json!({"request_headers": ["User-Agent", "x-tenant"], "response_headers": ["content-type"]}),
    );
    let req = TestRequest::get("/")
        .with_header("user-agent", "curl/8")
        .with_header("x-other", "no");
    host.on_request(&p, &req).unwrap();
    let resp = TestResponseHead::new(200).with_header("content-type", "application/json");
    host.on_response(&p, &req, &resp).unwrap();
    let attrs = host.span_attributes();
    assert_eq!(
        attrs,
        vec![
            (
                "http.request.header.user-agent".to_owned(),
                "curl/8".to_owned()
            ),
            (
                "http.response.header.content-type".to_owned(),
                "application/json".to_owned()
            ),
        ]
    );
}

#[test]
fn nothing_happens_when_the_gateway_exports_no_traces() {
    let host = TestHost::new();
    let p: Tracing = host.init(json!({})).unwrap();
    let req = TestRequest::get("/").with_header("traceparent", format!("00-{TRACE}-{SPAN}-01"));
    host.on_request(&p, &req).unwrap();
    assert_eq!(host.trace_parent(), None);
    assert_eq!(host.trace_sampled(), None);
    assert_eq!(host.span_name(), None);
}

#[test]
fn hooks_are_declared_only_for_work_there_is() {
    // A gateway without [telemetry]: no hooks, so the gateway never calls the plugin.
    let host = TestHost::new();
    assert_eq!(
        host.init::<Tracing>(json!({})).unwrap().hooks(),
        Hooks::NONE
    );
    let busy = json!({"keep_errors": true, "response_headers": ["content-type"]});
    assert_eq!(host.init::<Tracing>(busy).unwrap().hooks(), Hooks::NONE);

    // Exporting: `on-response` only when it has something to do.
    host.set_exports_traces(true);
    let hooks = |config: Value| host.init::<Tracing>(config).unwrap().hooks();
    assert_eq!(hooks(json!({})), Hooks::ON_REQUEST);
    assert_eq!(
        hooks(json!({"request_headers": ["x-a"]})),
        Hooks::ON_REQUEST
    );
    assert_eq!(hooks(json!({"keep_errors": true})), Hooks::ALL);
    assert_eq!(
        hooks(json!({"response_headers": ["content-type"]})),
        Hooks::ALL
    );
}

#[test]
fn bad_configs_are_refused_with_the_field() {
    let host = TestHost::new();
    let err = |c: Value| host.init::<Tracing>(c).unwrap_err().to_string();
    assert!(err(json!({"sampler": "ratio"})).contains("ratio: required"));
    assert!(err(json!({"sampler": "ratio", "ratio": 1.5})).contains("ratio: 1.5"));
    assert!(err(json!({"root_sampler": "parent_based"})).contains("root_sampler"));
    assert!(err(json!({"sampler": "sometimes"})).contains("sometimes"));
    assert!(err(json!({"request_headers": ["bad header"]})).contains("request_headers"));
    assert!(err(json!({"keep_error": true})).contains("keep_error"));
}
