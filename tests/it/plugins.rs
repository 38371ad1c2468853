//! The plugin runtime through a running gateway: what plugins can do, every limit, failure
//! policies, quarantine, shared state, outbound HTTP, kv, bodies, instance modes.

use std::time::Duration;

use http::{Request, Response};

use crate::harness::*;

#[tokio::test]
async fn a_plugin_changes_the_request_and_response_or_answers_itself() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(Some("tag = \"v1\"\n"));
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;

    let req = Request::get("/p/headers")
        .header("x-remove-me", "1")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(gw.listen_addr, req).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    let seen = up.last().headers;
    assert_eq!(seen["x-plugin"], "testbed");
    assert_eq!(seen["x-tag"], "v1", "init got the config from testbed.toml");
    assert!(!seen.contains_key("x-remove-me"));
    assert_eq!(headers["x-plugin-response"], "testbed", "on-response ran");

    let hits = up.hits();
    let (status, headers, body) = get(gw.listen_addr, "/p/answer").await;
    assert_eq!(status.as_u16(), 418);
    assert_eq!(body, "answered by the plugin\n");
    assert_eq!(headers["x-answered-by"], "testbed");
    assert_eq!(up.hits(), hits, "the upstream was skipped");
    gw.shutdown().await;
}

#[tokio::test]
async fn each_limit_fires_and_the_gateway_keeps_serving() {
    // A slow server reachable by the plugin: its answer comes after the plugin's timeout.
    let slow = Upstream::slow(Duration::from_secs(3), "late").await;
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(
        dir.path(),
        up.addr,
        &format!(
            "quarantine_after = 0\ncpu_timeout = \"200ms\"\ntimeout = \"400ms\"\nmax_memory_bytes = 33554432\nallowed_hosts = [\"{}\"]",
            slow.addr
        ),
    )
    .await;
    let cases = [
        (
            "/p/loop",
            "plugin testbed failed: used more than its CPU time limit (200ms)\n",
        ),
        (
            "/p/trap",
            "plugin testbed failed: trapped (details in the gateway log)\n",
        ),
        (
            "/p/alloc",
            "plugin testbed failed: trapped (details in the gateway log)\n",
        ),
        (
            "/p/error",
            "plugin testbed failed: returned an error: the plugin said no\n",
        ),
    ];
    for (path, want) in cases {
        let (status, _, body) = get(gw.listen_addr, path).await;
        assert_eq!(status.as_u16(), 500, "{path}: {body}");
        assert!(body.starts_with(want), "{path}: {body}");
        assert_eq!(get(gw.listen_addr, "/plain").await.0, 200, "after {path}");
        assert_eq!(get(gw.listen_addr, "/p/ok").await.0, 200, "after {path}");
    }
    // Wall clock: a host call that takes too long (the CPU deadline does not count it).
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(gw.listen_addr, &format!("/p/fetch?http://{}/", slow.addr)).await;
    assert_eq!(status.as_u16(), 500, "{body}");
    assert_eq!(
        body,
        "plugin testbed failed: did not finish within its time limit (400ms)\n"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(get(gw.listen_addr, "/p/ok").await.0, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_thousand_alternating_trap_and_ok_requests_get_exactly_the_expected_answers() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "quarantine_after = 0").await;
    let client = client();
    let mut wrong = Vec::new();
    for i in 0..1000 {
        let (path, want) = if i % 2 == 0 {
            ("/p/trap", 500)
        } else {
            ("/p/ok", 200)
        };
        let uri = format!("http://{}{path}", gw.listen_addr);
        let resp = client
            .request(Request::get(uri).body(full("")).unwrap())
            .await
            .unwrap();
        if resp.status().as_u16() != want {
            wrong.push((i, resp.status()));
        }
        drop(resp);
    }
    assert!(wrong.is_empty(), "unexpected answers: {wrong:?}");
    assert_eq!(up.hits(), 500);
    gw.shutdown().await;
}

#[tokio::test]
async fn fail_open_skips_a_failing_plugin_and_counts_the_skip() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(
        dir.path(),
        up.addr,
        "on_failure = \"fail-open\"\nquarantine_after = 0",
    )
    .await;
    for path in ["/p/error", "/p/trap"] {
        let (status, _, body) = get(gw.listen_addr, path).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "upstream"),
            "{path}"
        );
    }
    let metrics = get(gw.admin_addr, "/metrics").await.2;
    let line =
        r#"sluice_plugin_calls_total{plugin="testbed",phase="on_request",outcome="skipped"} 2"#;
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_keeps_failing_is_quarantined_then_tried_again() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    // Long enough never to end by itself during the test: the test moves the gateway's
    // plugin clock instead of waiting for it.
    let gw = gateway_with_testbed(
        dir.path(),
        up.addr,
        "quarantine_after = 3\nquarantine_for = \"4m\"",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(gw.listen_addr, "/p/trap").await.0, 500);
    }
    let (status, _, body) = get(gw.listen_addr, "/p/ok").await;
    assert_eq!(status.as_u16(), 503);
    assert_eq!(
        body,
        "plugin testbed is quarantined after repeated failures\n"
    );
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    assert_eq!(plugins["plugins"][0]["status"], "quarantined");
    // The quarantine lasts its time, on the clock the runtime reads (its admin view too)...
    let clock = gw.proxy.plugins.clock();
    clock.advance(Duration::from_secs(3 * 60 + 50));
    assert_eq!(
        get(gw.listen_addr, "/p/ok").await.0,
        503,
        "ten seconds left"
    );
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    let left = plugins["plugins"][0]["quarantined_for_s"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 10.0, "{plugins}");
    // ...and then the plugin is tried again.
    clock.advance(Duration::from_secs(11));
    assert_eq!(get(gw.listen_addr, "/p/ok").await.0, 200, "tried again");
    gw.shutdown().await;
}

#[tokio::test]
async fn shared_state_is_atomic_across_concurrent_instances() {
    let up = Upstream::recording(|s| {
        Response::new(full(
            s.headers
                .get("x-count")
                .map_or("", |v| v.to_str().unwrap())
                .to_owned(),
        ))
    })
    .await;
    let dir = plugin_dir(None);
    // Four workers: instances run on several threads at once.
    let gw = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 4\n[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n{}",
        dir.path().display(),
        plugin_cache_dir().display(),
        one_route_with_plugin(up.addr)
    ))
    .await;
    let addr = gw.listen_addr;
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { get(addr, "/p/count").await.2 }))
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap().parse::<i64>().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=200).collect::<Vec<_>>(),
        "every increment is seen once"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn outbound_http_reaches_only_allowed_hosts() {
    let target = Upstream::named("target").await;
    let up = Upstream::named("upstream").await;
    let allowed_dir = plugin_dir(None);
    let allowed = gateway_with_testbed(
        allowed_dir.path(),
        up.addr,
        &format!("allowed_hosts = [\"{}\"]", target.addr),
    )
    .await;
    get(
        allowed.listen_addr,
        &format!("/p/fetch?http://{}/", target.addr),
    )
    .await;
    assert_eq!(up.last().headers["x-fetch"], "status 200");
    assert_eq!(target.hits(), 1);

    let other = Upstream::named("not allowed").await;
    get(
        allowed.listen_addr,
        &format!("/p/fetch?http://{}/", other.addr),
    )
    .await;
    let seen = up.last().headers["x-fetch"].to_str().unwrap().to_owned();
    assert_eq!(
        seen,
        format!(
            "not allowed: {} is not in allowed_hosts of plugin testbed",
            other.addr
        )
    );
    assert_eq!(other.hits(), 0, "the refused host saw nothing");
    allowed.shutdown().await;
}

#[tokio::test]
async fn pooled_instances_are_reused_and_per_request_instances_are_fresh() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let pooled = gateway_with_testbed(dir.path(), up.addr, "").await;
    for want in ["1", "2", "3"] {
        get(pooled.listen_addr, "/p/global").await;
        assert_eq!(up.last().headers["x-instance-uses"], want);
    }
    pooled.shutdown().await;

    let dir = plugin_dir(None);
    let fresh = gateway_with_testbed(dir.path(), up.addr, "instance = \"per-request\"").await;
    for _ in 0..3 {
        get(fresh.listen_addr, "/p/global").await;
        assert_eq!(up.last().headers["x-instance-uses"], "1");
    }
    fresh.shutdown().await;
}

#[tokio::test]
async fn pooled_instances_are_replaced_after_max_uses() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "max_uses = 2").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        get(gw.listen_addr, "/p/global").await;
        seen.push(
            up.last().headers["x-instance-uses"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen, ["1", "2", "1", "2"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn plugins_read_watched_kv_values_with_versions() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    // `greeting` is not under `testbed/`: readable through a grant.
    let gw = gateway_with_testbed(dir.path(), up.addr, "kv_read = [\"greeting\"]").await;
    get(gw.listen_addr, "/p/kv").await;
    assert_eq!(up.last().headers["x-kv"], "none");
    let put = |value: &'static str| {
        Request::put("/admin/kv/greeting")
            .body(full(value))
            .unwrap()
    };
    assert_eq!(send(gw.admin_addr, put("hello")).await.0, 200);
    get(gw.listen_addr, "/p/kv").await;
    assert_eq!(up.last().headers["x-kv"], "hello@1");
    send(gw.admin_addr, put("bonjour")).await;
    get(gw.listen_addr, "/p/kv").await;
    assert_eq!(up.last().headers["x-kv"], "bonjour@2");
    gw.shutdown().await;
}

#[tokio::test]
async fn only_plugins_that_opt_in_see_and_replace_the_body() {
    let up = Upstream::recording(|s| Response::new(full(s.body.clone()))).await;
    let dir = plugin_dir(None);
    let opted = gateway_with_testbed(
        dir.path(),
        up.addr,
        "request_body = true\nmax_body_bytes = 16",
    )
    .await;
    let post = |body: &'static str| Request::post("/p/body").body(full(body)).unwrap();
    assert_eq!(send(opted.listen_addr, post("shout")).await.2, "SHOUT");
    let (status, _, body) = send(opted.listen_addr, post("this body is too long")).await;
    assert_eq!(status.as_u16(), 413, "{body}");
    opted.shutdown().await;

    let dir = plugin_dir(None);
    let not = gateway_with_testbed(dir.path(), up.addr, "").await;
    assert_eq!(send(not.listen_addr, post("quiet")).await.2, "quiet");
    not.shutdown().await;
}

#[tokio::test]
async fn a_plugin_whose_config_is_rejected_is_not_activated() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(Some("reject = true\n"));
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    let (status, _, body) = get(gw.listen_addr, "/p/ok").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "plugin testbed is not loaded\n")
    );
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    let p = &plugins["plugins"][0];
    assert_eq!(p["status"], "failed");
    assert_eq!(
        p["last_error"]["reason"],
        "rejected its configuration: rejected by config: reject = true"
    );
    gw.shutdown().await;
}

fn one_route_with_plugin(upstream: std::net::SocketAddr) -> String {
    format!(
        "[services.s]\ninstances = [\"{upstream}\"]\n[[routes]]\nname = \"with-plugin\"\npath = \"/p\"\nservice = \"s\"\nplugins = [\"testbed\"]\n"
    )
}

#[tokio::test]
async fn only_plugins_that_opt_in_see_and_replace_the_response_body() {
    let up = Upstream::named("from the upstream").await;
    let dir = plugin_dir(None);
    let opted = gateway_with_testbed(
        dir.path(),
        up.addr,
        "response_body = true\nmax_body_bytes = 64",
    )
    .await;
    let (status, headers, body) = get(opted.listen_addr, "/p/resp-body").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "FROM THE UPSTREAM"));
    assert_eq!(headers["content-length"], "17");
    opted.shutdown().await;

    let big = Upstream::named("a response body longer than the sixteen bytes allowed").await;
    let dir = plugin_dir(None);
    let small = gateway_with_testbed(
        dir.path(),
        big.addr,
        "response_body = true\nmax_body_bytes = 16",
    )
    .await;
    let (status, _, body) = get(small.listen_addr, "/p/resp-body").await;
    assert_eq!(status.as_u16(), 500, "{body}");
    assert_eq!(
        body,
        "plugin testbed failed: response body larger than max_body_bytes (16)\n"
    );
    small.shutdown().await;

    let dir = plugin_dir(None);
    let not = gateway_with_testbed(dir.path(), up.addr, "").await;
    assert_eq!(
        get(not.listen_addr, "/p/resp-body").await.2,
        "from the upstream"
    );
    not.shutdown().await;
}

#[tokio::test]
async fn contract_0_1_component_built_from_source_still_serves() {
    // The testbed fixture is built from source against the frozen wit/0.1.0 (see its lib.rs).
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;

    let (status, headers, body) = get(gw.listen_addr, "/p/headers").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    assert_eq!(up.last().headers["x-plugin"], "testbed", "on-request ran");
    assert_eq!(
        headers["x-plugin-response"], "testbed",
        "a 0.1.0 plugin declares no hooks: both run"
    );
    get(gw.listen_addr, "/p/count").await;
    assert_eq!(up.last().headers["x-count"], "1", "0.1.0 state calls work");

    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    let testbed = plugin_view(&plugins, "testbed");
    assert_eq!(testbed["contract"], "0.1.0");
    assert_eq!(testbed["world"], "sluice:plugin/plugin@0.1.0");
    assert_eq!(
        testbed["hooks"],
        serde_json::json!({"on_request": true, "on_response": true})
    );
    gw.shutdown().await;
}
