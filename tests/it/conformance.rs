//! Contracts checked on both sides of the WebAssembly boundary with one table each:
//! `tests/conformance/host.json` (what the host's request calls do) against the gateway's real
//! host, through the testbed plugin's `conform` command (the SDK's TestHost runs the same table
//! in plugin-sdk/src/testing.rs); `tests/conformance/durations.json` (the duration grammar)
//! against the gateway's config parser (the SDK's `parse_duration` runs it in
//! plugin-sdk/src/config.rs).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use serde_json::{Value, json};
use sluice::config::Config;

use crate::harness::*;

fn table(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/conformance")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A case's input: a string, `null`, or `{"repeat": "a", "times": N}`.
fn input(case: &Value) -> Value {
    match &case["input"] {
        Value::Object(o) => Value::from(
            o["repeat"]
                .as_str()
                .unwrap()
                .repeat(o["times"].as_u64().unwrap() as usize),
        ),
        v => v.clone(),
    }
}

fn conform(target: &str, body: &Value) -> Request<BoxBody> {
    Request::post(target).body(full(body.to_string())).unwrap()
}

#[tokio::test]
async fn the_real_host_follows_the_conformance_table() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "request_body = true").await;
    let table = table("host.json");
    assert_eq!(table["request"]["method"], "POST");
    let target = table["request"]["target"].as_str().unwrap();
    let mut checked = 0;
    for op in ["set_method", "set_query"] {
        for case in table[op].as_array().unwrap() {
            let arg = input(case);
            let (status, _, body) = send(
                gw.listen_addr,
                conform(target, &json!({"op": op, "input": arg})),
            )
            .await;
            let what = format!(
                "{op}({})",
                arg.to_string().chars().take(60).collect::<String>()
            );
            assert_eq!(status, 200, "{what}: {body}");
            let got: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(got["ok"], case["ok"], "{what}: {got}");
            assert_eq!(got["method"], case["method"], "{what}");
            assert_eq!(got["query"], case["query"], "{what}");
            if got["ok"] == false {
                assert!(!got["error"].as_str().unwrap().is_empty(), "{what}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
    assert_eq!(up.hits(), 0, "the plugin answered every case itself");
    gw.shutdown().await;
}

/// The timeout a plugin sets is seen through the upstream: one that answers after 600 ms is
/// cut (504) exactly when the timeout in force is shorter.
#[tokio::test]
async fn the_real_host_caps_the_upstream_timeout_as_the_table_says() {
    const UPSTREAM_MS: u64 = 600;
    let up = Upstream::with_handler(Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(UPSTREAM_MS)).await;
            Response::new(full("slow"))
        })
    }))
    .await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "request_body = true").await;
    let table = table("host.json");
    let cases = table["set_upstream_timeout"].as_array().unwrap();
    let at = gw.listen_addr;
    let runs = cases.iter().map(|case| async move {
        let body = json!({"op": "set_upstream_timeout", "calls": case["calls"]});
        (case, send(at, conform("/p/conform", &body)).await.0)
    });
    for (case, status) in futures_util::future::join_all(runs).await {
        let cut = case["effective_ms"]
            .as_u64()
            .is_some_and(|ms| ms < UPSTREAM_MS);
        assert_eq!(status, if cut { 504 } else { 200 }, "{case}");
    }
    gw.shutdown().await;
}

#[test]
fn durations_parse_in_the_gateway_as_in_the_sdk() {
    let table = table("durations.json");
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() > 20);
    for case in cases {
        let input = case["input"].as_str().unwrap();
        let text = format!("[server]\nshutdown_timeout = {}\n", Value::from(input));
        let got = Config::parse(&text, "t.toml");
        if case["error"] == true {
            let e = got.expect_err(input).to_string();
            assert!(
                e.contains("t.toml:2:") && e.contains("shutdown_timeout"),
                "{input:?}: {e}"
            );
        } else {
            let want = Duration::new(
                case["secs"].as_u64().unwrap(),
                case["nanos"].as_u64().unwrap() as u32,
            );
            let config = got.unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(config.server.shutdown_timeout, want, "{input:?}");
        }
    }
}
