//! Plugins that cannot hurt their neighbours (issue 15 §3): a plugin spinning to its CPU
//! deadline does not stall its worker, framing headers stay the gateway's, added headers are
//! capped, kv secrets stay with their plugin, outbound HTTP checks resolved addresses, client
//! copies of identity headers never pass, the plugin and cache directories are checked, and
//! trap text stays in the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use sluice::Gateway;
use sluice::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test]
async fn a_plugin_spinning_to_its_cpu_deadline_does_not_stall_its_worker() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    // One worker (the default): the looping plugin and the plain route share its event loop.
    let gw = gateway_with_testbed(
        dir.path(),
        up.addr,
        "quarantine_after = 0\ncpu_timeout = \"300ms\"\ntimeout = \"10s\"",
    )
    .await;
    let addr = gw.listen_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let loopers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut calls = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (status, _, body) = get(addr, "/p/loop").await;
                    assert_eq!(status.as_u16(), 500, "{body}");
                    assert_eq!(
                        body, "plugin testbed failed: used more than its CPU time limit (300ms)\n",
                        "the CPU deadline still traps"
                    );
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While two clients keep the plugin spinning, count the plain requests answered in a
    // window. A worker blocked for each 300 ms loop answers a handful (one per loop at
    // best); one that yields between epoch ticks answers hundreds.
    let window = Duration::from_secs(3);
    let started = tokio::time::Instant::now();
    let mut plain = 0;
    while started.elapsed() < window {
        assert_eq!(get(addr, "/plain").await.0, 200);
        plain += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for looper in loopers {
        let calls = looper.await.unwrap();
        assert!(calls >= 1, "the looping route was driven");
    }
    assert!(
        plain >= 60,
        "only {plain} plain requests in {window:?} beside a looping plugin: the worker stalled"
    );
    gw.shutdown().await;
}

/// Reads one HTTP/1.1 response (framed by Content-Length) from a keep-alive connection.
async fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        (raw_status(&head), head, body)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

#[tokio::test]
async fn plugins_cannot_set_framing_headers_and_the_client_connection_stays_in_sync() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "quarantine_after = 0").await;

    // An answer with `content-length: 0` and a body: refused, and the next request on the
    // same connection gets its own answer (not the rest of the plugin's body).
    let mut conn = TcpStream::connect(gw.listen_addr).await.unwrap();
    conn.write_all(b"GET /p/answer-framing HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut conn).await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("header `content-length` is managed by the gateway"),
        "{body}"
    );
    conn.write_all(b"GET /plain HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut conn).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "upstream"),
        "second answer on the connection: {head}"
    );

    // set-header / append-header of framing headers and `host` return an error.
    let (status, _, _) = get(gw.listen_addr, "/p/set-framing").await;
    assert_eq!(status.as_u16(), 200);
    let seen = up.last();
    let framing = seen.headers["x-framing"].to_str().unwrap();
    assert!(
        framing.starts_with("refused: header `content-length` is managed")
            && framing.contains("| refused: header `host` is managed"),
        "{framing}"
    );
    assert!(!seen.headers.contains_key("content-length"));
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn headers_a_plugin_adds_are_capped_in_count_and_bytes() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    // x-tag (set on every call) counts too.
    let gw = gateway_with_testbed(dir.path(), up.addr, "max_added_headers = 8").await;
    assert_eq!(get(gw.listen_addr, "/p/many?7").await.0, 200);
    let (status, _, body) = get(gw.listen_addr, "/p/many?20").await;
    assert_eq!(status.as_u16(), 500, "{body}");
    assert!(
        body.contains("more than max_added_headers (8) headers added in one call"),
        "{body}"
    );
    gw.shutdown().await;

    let dir = plugin_dir(None);
    // x-tag: 5 + 4 bytes; each x-many-I: 8 + 1.
    let gw = gateway_with_testbed(dir.path(), up.addr, "max_added_header_bytes = 40").await;
    assert_eq!(get(gw.listen_addr, "/p/many?3").await.0, 200);
    let (status, _, body) = get(gw.listen_addr, "/p/many?4").await;
    assert_eq!(status.as_u16(), 500, "{body}");
    assert!(
        body.contains("exceed max_added_header_bytes (40)"),
        "{body}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn kv_keys_are_readable_only_by_their_owner_and_by_grants() {
    let up = Upstream::named("upstream").await;
    let put = |key: &str, value: &'static str| {
        Request::put(format!("/admin/kv/{key}"))
            .body(full(value))
            .unwrap()
    };
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    assert_eq!(send(gw.admin_addr, put("auth/keys", "secret")).await.0, 200);
    assert_eq!(send(gw.admin_addr, put("testbed/mine", "ok")).await.0, 200);
    get(gw.listen_addr, "/p/kv?auth/keys").await;
    assert_eq!(
        up.last().headers["x-kv"],
        "none",
        "auth's secret stays with auth"
    );
    get(gw.listen_addr, "/p/kv?testbed/mine").await;
    assert_eq!(up.last().headers["x-kv"], "ok@2", "its own keys");
    gw.shutdown().await;

    let dir = plugin_dir(None);
    let granted = gateway_with_testbed(dir.path(), up.addr, "kv_read = [\"auth/*\"]").await;
    send(granted.admin_addr, put("auth/keys", "secret")).await;
    get(granted.listen_addr, "/p/kv?auth/keys").await;
    assert_eq!(up.last().headers["x-kv"], "secret@1", "granted by kv_read");
    granted.shutdown().await;
}

#[tokio::test]
async fn outbound_http_checks_the_resolved_address_and_keeps_host() {
    let target = Upstream::named("target").await;
    let up = Upstream::named("upstream").await;
    let port = target.addr.port();

    // A name (any port) that resolves to loopback: refused.
    let dir = plugin_dir(None);
    let by_name =
        gateway_with_testbed(dir.path(), up.addr, "allowed_hosts = [\"localhost\"]").await;
    get(
        by_name.listen_addr,
        &format!("/p/fetch?http://localhost:{port}/"),
    )
    .await;
    let fetch = up.last().headers["x-fetch"].to_str().unwrap().to_owned();
    assert!(
        fetch.starts_with(&format!("not allowed: localhost:{port} resolves to "))
            && fetch.contains("a loopback address"),
        "{fetch}"
    );
    by_name.shutdown().await;

    // The admin port, even on a host-only entry for loopback.
    let dir = plugin_dir(None);
    let admin = gateway_with_testbed(dir.path(), up.addr, "allowed_hosts = [\"127.0.0.1\"]").await;
    get(
        admin.listen_addr,
        &format!(
            "/p/fetch?http://127.0.0.1:{}/healthz",
            admin.admin_addr.port()
        ),
    )
    .await;
    let fetch = up.last().headers["x-fetch"].to_str().unwrap().to_owned();
    assert!(
        fetch.starts_with("not allowed:") && fetch.contains("the gateway's admin port"),
        "{fetch}"
    );
    admin.shutdown().await;
    assert_eq!(target.hits(), 0);

    // Named with its port: reachable, with the URL's authority as Host; a plugin's own
    // `host` header is refused.
    let dir = plugin_dir(None);
    let pinned = gateway_with_testbed(
        dir.path(),
        up.addr,
        &format!("allowed_hosts = [\"{}\"]", target.addr),
    )
    .await;
    let url = format!("http://{}/x", target.addr);
    get(pinned.listen_addr, &format!("/p/fetch?{url}")).await;
    assert_eq!(up.last().headers["x-fetch"], "status 200");
    assert_eq!(target.last().headers["host"], target.addr.to_string());
    get(pinned.listen_addr, &format!("/p/fetch-host?{url}")).await;
    let fetch = up.last().headers["x-fetch"].to_str().unwrap().to_owned();
    assert!(
        fetch.starts_with("invalid: header `host` is managed by the gateway"),
        "{fetch}"
    );
    assert_eq!(
        target.hits(),
        1,
        "the request with a plugin-set Host was not sent"
    );
    pinned.shutdown().await;
}

#[tokio::test]
async fn client_copies_of_the_headers_auth_forwards_never_reach_the_chain() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    // `testbed` runs before `auth` and reports the x-user-id it sees.
    let gw = gateway(&format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[services.s]
instances = ["{}"]
[[routes]]
path = "/p"
service = "s"
plugins = ["testbed", "auth"]
[plugin.auth]
public_paths = ["/p/"]
forward_claims = {{ sub = "x-user-id" }}
[[plugin.auth.keys]]
kid = "k1"
alg = "HS256"
secret = "a-test-secret-that-is-long-enough"
"#,
        dir.path().display(),
        plugin_cache_dir().display(),
        up.addr
    ))
    .await;
    let req = Request::get("/p/whoami")
        .header("x-user-id", "admin")
        .body(full(""))
        .unwrap();
    assert_eq!(send(gw.listen_addr, req).await.0, 200);
    let seen = up.last().headers;
    assert_eq!(seen["x-seen-user"], "none", "stripped before the chain");
    assert!(!seen.contains_key("x-user-id"));
    gw.shutdown().await;
}

#[test]
fn auth_cannot_be_fail_open() {
    for (settings, key) in [
        (
            "[plugins.override.auth]\non_failure = \"fail-open\"",
            "plugins.override.auth.on_failure",
        ),
        (
            "[plugins.defaults]\non_failure = \"fail-open\"",
            "plugins.defaults.on_failure",
        ),
    ] {
        let text = format!(
            "{settings}\n[services.s]\ninstances = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\nplugins = [\"auth\"]\n"
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains(&format!("{key}: the auth plugin")), "{e}");
    }
    // Fail-open defaults are fine where auth is not used.
    let text = "[plugins.defaults]\non_failure = \"fail-open\"\n";
    assert!(Config::parse(text, "t.toml").is_ok());
}

#[tokio::test]
async fn links_and_non_regular_files_in_the_plugin_directory_are_refused() {
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixture("testbed"), dir.path().join("testbed.wasm")).unwrap();
    std::fs::create_dir(dir.path().join("noop.wasm")).unwrap();
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    let (status, _, body) = get(gw.listen_addr, "/p/ok").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "plugin testbed is not loaded\n")
    );
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    let testbed = plugin_view(&plugins, "testbed");
    assert_eq!(testbed["status"], "failed");
    let reason = testbed["last_error"]["reason"].as_str().unwrap();
    assert!(reason.contains("is a symbolic link"), "{reason}");

    let (status, _, body) = send(
        gw.admin_addr,
        Request::post("/admin/plugins/reload")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let failed = &report["failed"];
    assert!(
        failed["testbed"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{body}"
    );
    assert!(
        failed["noop"]
            .as_str()
            .unwrap()
            .contains("is not a regular file"),
        "{body}"
    );
    gw.shutdown().await;
}

async fn start_with_cache(dir: &std::path::Path) -> anyhow::Result<Gateway> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[plugins]\ncache_dir = \"{}\"\n",
        dir.display()
    );
    let mut config = Config::parse(&text, "t.toml").unwrap();
    config.log.access = false;
    Gateway::start(config).await
}

#[tokio::test]
async fn the_compile_cache_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let fresh = root.path().join("new").join("cache");
    let gw = start_with_cache(&fresh).await.expect("starts");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "created with mode {mode:o}");
    gw.shutdown().await;

    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = match start_with_cache(&shared).await {
        Ok(gw) => {
            gw.shutdown().await;
            panic!("a world-writable cache directory was accepted");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("plugins.cache_dir") && e.contains("writable by group or others (mode 777)"),
        "{e}"
    );
}

#[tokio::test]
async fn trap_text_is_logged_not_sent_to_the_client() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "quarantine_after = 0").await;
    let (status, _, body) = get(gw.listen_addr, "/p/trap").await;
    assert_eq!(status.as_u16(), 500);
    assert_eq!(
        body,
        "plugin testbed failed: trapped (details in the gateway log)\n"
    );
    assert!(
        !body.contains("asked to trap") && !body.contains("wasm"),
        "{body}"
    );
    gw.shutdown().await;
}
