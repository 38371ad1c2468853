//! Canary versions of a plugin (`plugins = ["testbed@v2:10%"]`): a route sends its
//! percentage of requests through the second version, the same version answers both phases
//! of a request, and each version's calls show on the admin API and in metrics.

use std::net::SocketAddr;

use crate::harness::*;
use crate::services::metric;

/// An upstream that answers with the `x-tag` the plugin set on the request (which version
/// of the testbed ran).
async fn tag_echo() -> Upstream {
    Upstream::recording(|seen| {
        let tag = seen
            .headers
            .get("x-tag")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        hyper::Response::new(full(tag))
    })
    .await
}

/// A plugin directory with the testbed twice: `testbed` (tag v1) and `testbed@v2` (tag v2,
/// from `[plugin."testbed@v2"]` on top of `[plugin.testbed]`), and three routes with canaries
/// of 10 %, 0 % and 100 %.
fn canary_config(dir: &std::path::Path, up: SocketAddr) -> String {
    for name in ["testbed", "testbed@v2"] {
        std::fs::copy(fixture("testbed"), dir.join(format!("{name}.wasm"))).unwrap();
    }
    let mut text = format!(
        "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n[plugin.testbed]\ntag = \"v1\"\n\
         [plugin.\"testbed@v2\"]\ntag = \"v2\"\n[services.s]\ninstances = [\"{up}\"]\n",
        dir.display(),
        plugin_cache_dir().display(),
    );
    for (path, percent) in [("/ten", "10%"), ("/none", "0%"), ("/all", "100%")] {
        text.push_str(&format!(
            "[[routes]]\npath = \"{path}\"\nservice = \"s\"\nplugins = [\"testbed@v2:{percent}\"]\n"
        ));
    }
    text
}

/// How many of `n` requests to `path` ran v2 (the others must have run v1).
async fn count_v2(gw: SocketAddr, path: &str, n: usize) -> usize {
    let mut v2 = 0;
    for chunk in 0..n.div_ceil(20) {
        let batch = (chunk * 20..n.min(chunk * 20 + 20)).map(|_| get(gw, path));
        for (status, _, body) in futures_util::future::join_all(batch).await {
            assert_eq!(status, 200, "{body}");
            match body.as_str() {
                "v2" => v2 += 1,
                "v1" => {}
                other => panic!("neither version ran: {other}"),
            }
        }
    }
    v2
}

#[tokio::test]
async fn a_canary_routes_its_percentage_of_requests_to_the_second_version() {
    let up = tag_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&canary_config(dir.path(), up.addr)).await;

    // 2000 draws at p = 0.1: sd ≈ 13.4, so 8–12 % is ± 3 sd.
    let ten = count_v2(gw.listen_addr, "/ten/ok", 2000).await;
    eprintln!("10 % canary: {ten} of 2000 requests ran v2");
    assert!((160..=240).contains(&ten), "{ten} of 2000 ran v2");
    assert_eq!(count_v2(gw.listen_addr, "/none/ok", 200).await, 0);
    assert_eq!(count_v2(gw.listen_addr, "/all/ok", 200).await, 200);
    let v2 = (ten + 200) as u64;
    let v1 = (2000 - ten + 200) as u64;

    // Per version, in metrics: the draws, and each version's calls. `on-response` ran as
    // often as `on-request` for each version: a request keeps the version it drew.
    let admin = gw.admin_addr;
    let draws = |version: &str| {
        format!("sluice_plugin_canary_requests_total{{plugin=\"testbed\",version=\"{version}\"}}")
    };
    assert_eq!(metric(admin, &draws("testbed@v2")).await, v2);
    assert_eq!(metric(admin, &draws("testbed")).await, v1);
    for (plugin, n) in [("testbed@v2", v2), ("testbed", v1)] {
        for phase in ["on_request", "on_response"] {
            let series = format!(
                "sluice_plugin_calls_total{{plugin=\"{plugin}\",phase=\"{phase}\",outcome=\"ok\"}}"
            );
            assert_eq!(metric(admin, &series).await, n, "{series}");
        }
    }

    // And on the admin API: each version is a plugin with its calls, failures and draws.
    let (_, _, body) = get(admin, "/admin/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
    let find = |name: &str| plugin_view(&plugins, name);
    let version = find("testbed@v2");
    assert_eq!(version["status"], "active");
    assert_eq!(version["calls"], 2 * v2, "{version}");
    assert_eq!(version["failures"], 0, "{version}");
    assert_eq!(version["canary"]["plugin"], "testbed", "{version}");
    assert_eq!(version["canary"]["requests"], v2, "{version}");
    let current = find("testbed");
    assert_eq!(current["calls"], 2 * v1, "{current}");
    assert_eq!(current["canary"]["requests"], v1, "{current}");
    assert_eq!(
        current["canary"]["entries"],
        serde_json::json!(["testbed@v2:0%", "testbed@v2:10%", "testbed@v2:100%"])
    );
    gw.shutdown().await;
}

/// A version that cannot be loaded is not drawn: its route keeps running the current
/// version, and the admin API says why the version is missing.
#[tokio::test]
async fn a_version_that_fails_to_load_leaves_the_current_one_serving() {
    let up = tag_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let text =
        canary_config(dir.path(), up.addr).replace("tag = \"v2\"", "tag = \"v2\"\nreject = true");
    let gw = gateway(&text).await;
    assert_eq!(count_v2(gw.listen_addr, "/all/ok", 50).await, 0);
    let (_, _, body) = get(gw.admin_addr, "/admin/plugins").await;
    assert!(body.contains("rejected by config"), "{body}");
    gw.shutdown().await;
}

/// Canary entries are checked at load: the route and the entry are named.
#[test]
fn a_bad_canary_is_a_config_error_naming_the_route_and_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("auth@v3.wasm"), b"").unwrap();
    let text = |entry: &str| {
        format!(
            "[plugins]\ndir = \"{}\"\n[services.s]\ninstances = [\"127.0.0.1:1\"]\n\
             [[routes]]\nname = \"users\"\npath = \"/users\"\nservice = \"s\"\nplugins = [\"{entry}\"]\n",
            dir.path().display()
        )
    };
    let error = |entry: &str| {
        sluice::config::Config::parse(&text(entry), "t.toml")
            .unwrap_err()
            .to_string()
    };
    // A version in the plugin directory is known.
    sluice::config::Config::parse(&text("auth@v3:5%"), "t.toml").unwrap();
    assert_eq!(
        error("auth@v2:10%"),
        "t.toml:9:12: routes[0].plugins: `auth@v2:10%` (route `users`): plugin `auth` has no \
         version `v2`: declare [plugins.sources.\"auth@v2\"] or put auth@v2.wasm in the plugin directory"
    );
    let e = error("auth@v3:101%");
    assert!(
        e.contains(
            "routes[0].plugins: `auth@v3:101%` (route `users`): `101%` is outside 0..=100 %"
        ),
        "{e}"
    );
    let e = error("auth@v3:ten%");
    assert!(e.contains("`ten%` is not a percentage"), "{e}");
    let e = error("auth:10%");
    assert!(e.contains("`auth` names no version"), "{e}");
}
