//! Instance modes through a running gateway: with `instance = "per-request"` one fresh
//! instance serves both hooks of its request (held in the request from `on-request` to
//! `on-response`), at most `[plugins] max_held_instances` at once; pooled instances are never
//! held across the upstream call. (Pooled reuse and `max_uses`: plugins.rs.)

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use sluice::Gateway;

use crate::harness::*;

/// `instance = "per-request"`: one fresh instance serves both hooks of a request, so the guest
/// state `on-request` left is there in `on-response` of the same request, and the next request
/// starts from nothing. The instance is held only while its request is in flight.
#[tokio::test]
async fn a_per_request_instance_serves_both_hooks_of_its_request() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "instance = \"per-request\"").await;
    for _ in 0..3 {
        let (status, headers, _) = get(gw.listen_addr, "/p/global").await;
        assert_eq!(status.as_u16(), 200);
        // Fresh for each request: its `on-request` counted once ...
        assert_eq!(up.last().headers["x-instance-uses"], "1");
        // ... and its `on-response` ran on that same instance (a second fresh one says 0).
        assert_eq!(headers["x-instance-uses-response"], "1");
    }
    assert_eq!(held_instances(&gw).await, 0);
    gw.shutdown().await;
}

/// The testbed on `/p` (per-request instances) in front of `upstream`, with
/// `[plugins] max_held_instances = cap` and `plugins` as the route's chain.
async fn gateway_holding(
    dir: &Path,
    upstream: std::net::SocketAddr,
    cap: usize,
    plugins: &str,
) -> Gateway {
    gateway(&format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
max_held_instances = {cap}
[plugins.defaults]
instance = "per-request"
[services.s]
instances = ["{upstream}"]
[[routes]]
path = "/p"
service = "s"
strip_prefix = true
plugins = {plugins}
"#,
        dir.display(),
        plugin_cache_dir().display()
    ))
    .await
}

/// `sluice_plugin_held_instances`.
async fn held_instances(gw: &Gateway) -> u64 {
    crate::services::metric(gw.admin_addr, "sluice_plugin_held_instances").await
}

/// An upstream that answers 200 at once, except requests with the query `slow`, which wait
/// until the returned semaphore gets a permit for each.
async fn upstream_with_slow_requests() -> (Upstream, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = gate.clone();
    let up = Upstream::with_handler(Arc::new(move |req: Request<hyper::body::Incoming>| {
        let gate = waiting.clone();
        Box::pin(async move {
            if req.uri().query() == Some("slow") {
                gate.acquire().await.unwrap().forget();
            }
            Response::new(full("upstream"))
        })
    }))
    .await;
    (up, gate)
}

/// Past `max_held_instances`, a request's instance is dropped after `on-request` and its
/// `on-response` runs on a second fresh instance: the request still succeeds, and the
/// fallback is counted.
#[tokio::test]
async fn past_max_held_instances_on_response_runs_on_a_fresh_instance() {
    let (up, gate) = upstream_with_slow_requests().await;
    let dir = plugin_dir(None);
    let gw = gateway_holding(dir.path(), up.addr, 1, r#"["testbed"]"#).await;
    // One request waits upstream, holding the only slot.
    let addr = gw.listen_addr;
    let slow = tokio::spawn(async move { get(addr, "/p/global?slow").await });
    wait_for(
        Duration::from_secs(10),
        "the slow request holds its instance",
        || {
            let gw = &gw;
            async move { held_instances(gw).await == 1 }
        },
    )
    .await;
    let (status, headers, body) = get(gw.listen_addr, "/p/global").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    assert_eq!(headers["x-instance-uses-response"], "0", "a fresh instance");
    let fallbacks = crate::services::metric(
        gw.admin_addr,
        r#"sluice_plugin_held_instance_fallbacks_total{plugin="testbed"}"#,
    )
    .await;
    assert_eq!(fallbacks, 1);
    gate.add_permits(1);
    let (status, headers, _) = slow.await.unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        headers["x-instance-uses-response"], "1",
        "the held instance"
    );
    assert_eq!(held_instances(&gw).await, 0);
    gw.shutdown().await;

    // 0: never held, each hook gets its own fresh instance.
    let dir = plugin_dir(None);
    let gw = gateway_holding(dir.path(), up.addr, 0, r#"["testbed"]"#).await;
    let (status, headers, _) = get(gw.listen_addr, "/p/global").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(headers["x-instance-uses-response"], "0");
    gw.shutdown().await;
}

/// Pooled instances are never held across the upstream call: the instance is back in the
/// pool while its request waits upstream.
#[tokio::test]
async fn pooled_instances_go_back_to_the_pool_before_the_upstream_call() {
    let (up, gate) = upstream_with_slow_requests().await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    let addr = gw.listen_addr;
    let slow = tokio::spawn(async move { get(addr, "/p/global?slow").await });
    assert_eventually!(up.hits() == 1, "the request is upstream");
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    assert_eq!(plugins["plugins"][0]["idle_instances"], 1, "{plugins}");
    assert_eq!(held_instances(&gw).await, 0);
    gate.add_permits(1);
    let (status, headers, _) = slow.await.unwrap();
    assert_eq!(status.as_u16(), 200);
    // `on-response` took the pooled instance again (the only one).
    assert_eq!(headers["x-instance-uses-response"], "1");
    gw.shutdown().await;
}

/// Only a plugin with an `on-response` keeps its per-request instance while the upstream
/// answers: a 0.2.0 plugin that declared only `on-request` gives it up at once.
#[tokio::test]
async fn only_plugins_with_an_on_response_hold_their_instance() {
    let (up, gate) = upstream_with_slow_requests().await;
    for (hooks, held) in [("request", 0), ("both", 1)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("v02"), dir.path().join("v02.wasm")).unwrap();
        std::fs::write(
            dir.path().join("v02.toml"),
            format!("hooks = \"{hooks}\"\n"),
        )
        .unwrap();
        let gw = gateway(&format!(
            r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[plugins.defaults]
instance = "per-request"
[services.s]
instances = ["{}"]
[[routes]]
path = "/v"
service = "s"
plugins = ["v02"]
"#,
            dir.path().display(),
            plugin_cache_dir().display(),
            up.addr
        ))
        .await;
        let hits = up.hits();
        let addr = gw.listen_addr;
        let slow = tokio::spawn(async move { get(addr, "/v/x?slow").await });
        assert_eventually!(up.hits() == hits + 1, "the request is upstream");
        assert_eq!(held_instances(&gw).await, held, "hooks = {hooks}");
        gate.add_permits(1);
        assert_eq!(slow.await.unwrap().0.as_u16(), 200);
        assert_eq!(held_instances(&gw).await, 0);
        gw.shutdown().await;
    }
}

/// A held instance is freed however its request ends: a later plugin failing (the chain
/// answers, `on-response` runs on the held instance), the plugin answering itself (nothing
/// held), the client going away while the upstream answers (the request is dropped).
#[tokio::test]
async fn held_instances_are_freed_when_a_request_ends_early() {
    let (up, gate) = upstream_with_slow_requests().await;
    let dir = plugin_dir(None);
    let gw = gateway_holding(dir.path(), up.addr, 10, r#"["testbed", "missing"]"#).await;
    let (status, headers, _) = get(gw.listen_addr, "/p/global").await;
    assert_eq!(
        status.as_u16(),
        503,
        "`missing` is not loaded (fail-closed)"
    );
    assert_eq!(headers["x-instance-uses-response"], "1");
    assert_eq!(up.hits(), 0);
    assert_eq!(held_instances(&gw).await, 0);
    gw.shutdown().await;

    let dir = plugin_dir(None);
    let gw = gateway_holding(dir.path(), up.addr, 10, r#"["testbed"]"#).await;
    assert_eq!(get(gw.listen_addr, "/p/answer").await.0.as_u16(), 418);
    assert_eq!(held_instances(&gw).await, 0);
    // A client that leaves while its request waits upstream.
    let mut client = tokio::net::TcpStream::connect(gw.listen_addr)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut client,
        b"GET /p/global?slow HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the request holds its instance",
        || {
            let gw = &gw;
            async move { held_instances(gw).await == 1 }
        },
    )
    .await;
    drop(client);
    wait_for(Duration::from_secs(10), "the slot is freed", || {
        let gw = &gw;
        async move { held_instances(gw).await == 0 }
    })
    .await;
    gate.add_permits(1);
    gw.shutdown().await;
}

/// Many requests waiting upstream at once (a slow upstream, or a client flooding a slow
/// path) hold at most `max_held_instances`; every one of them still gets its `on-response`
/// and succeeds, and the count goes back to zero.
#[tokio::test]
async fn a_burst_of_slow_requests_holds_at_most_the_cap() {
    let (up, gate) = upstream_with_slow_requests().await;
    let dir = plugin_dir(None);
    let gw = gateway_holding(dir.path(), up.addr, 4, r#"["testbed"]"#).await;
    let addr = gw.listen_addr;
    let requests: Vec<_> = (0..12)
        .map(|_| tokio::spawn(async move { get(addr, "/p/global?slow").await }))
        .collect();
    assert_eventually!(up.hits() == 12, "all twelve are upstream");
    assert_eq!(held_instances(&gw).await, 4);
    let fallbacks = crate::services::metric(
        gw.admin_addr,
        r#"sluice_plugin_held_instance_fallbacks_total{plugin="testbed"}"#,
    )
    .await;
    assert_eq!(fallbacks, 8);
    gate.add_permits(12);
    let mut on_response_saw = Vec::new();
    for request in requests {
        let (status, headers, _) = request.await.unwrap();
        assert_eq!(status.as_u16(), 200);
        on_response_saw.push(
            headers["x-instance-uses-response"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    on_response_saw.sort();
    assert_eq!(on_response_saw, [["0"; 8].as_slice(), &["1"; 4]].concat());
    assert_eq!(held_instances(&gw).await, 0);
    gw.shutdown().await;
}
