//! The admin listener: health, metrics after traffic, routes and services.

use crate::harness::*;

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_upstream_errors() {
    let up = Upstream::named("ok").await;
    let dead = closed_port().await;
    let gw = gateway(&format!(
        "[services.s]\ninstances = [\"{}\"]\n[services.dead]\ninstances = [\"{dead}\"]\n[[routes]]\nname = \"ok\"\npath = \"/ok\"\nservice = \"s\"\n[[routes]]\nname = \"down\"\npath = \"/down\"\nservice = \"dead\"\n",
        up.addr
    ))
    .await;
    for _ in 0..3 {
        get(gw.listen_addr, "/ok").await;
    }
    get(gw.listen_addr, "/down").await;
    get(gw.listen_addr, "/nowhere").await;
    let (status, headers, text) = get(gw.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for line in [
        r#"sluice_requests_total{route="ok",status="200"} 3"#,
        r#"sluice_requests_total{route="down",status="502"} 1"#,
        r#"sluice_requests_total{route="",status="404"} 1"#,
        r#"sluice_request_duration_seconds_count{route="ok"} 3"#,
        // One retry by default, on connect failure: two failed attempts, one request.
        r#"sluice_upstream_errors_total{service="dead",kind="connect"} 2"#,
        r#"sluice_upstream_retries_total{service="dead"} 1"#,
        r#"sluice_registry_instances{service="dead"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn health_routes_and_services_are_served() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&one_route(up.addr, "/api")).await;
    assert_eq!(get(gw.admin_addr, "/healthz").await.2, "ok\n");
    let routes: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/routes").await.2).unwrap();
    assert_eq!(routes["routes"][0]["name"], "r");
    assert_eq!(routes["routes"][0]["path"], "/api");
    assert_eq!(routes["routes"][0]["service"], "s");
    let services: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/services").await.2).unwrap();
    assert_eq!(services["services"][0]["name"], "s");
    let instance = &services["services"][0]["instances"][0];
    assert_eq!(instance["address"], up.addr.to_string());
    assert_eq!(instance["source"], "static");
    assert_eq!(instance["health"]["available"], true);
    assert_eq!(services["registry"]["backend"], "embedded");
    gw.shutdown().await;
}
