//! Edge security (issue #15): one canonical path, one Host, trusted X-Forwarded-For, slow
//! clients, a plugin's set-path, and the admin API's token and registration policy.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// The embedded default (what `sluice run` serves) on free ports, with `up` as its demo
/// upstream.
fn embedded_default(up: SocketAddr) -> String {
    sluice::config::EMBEDDED_DEFAULT
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("admin = \"127.0.0.1:9901\"", "admin = \"127.0.0.1:0\"")
        .replace("[demo_upstream]\nlisten = \"127.0.0.1:9000\"\n", "")
        .replace(
            "instances = [\"127.0.0.1:9000\"]",
            &format!("instances = [\"{up}\"]"),
        )
}

/// One raw request (`Connection: close`) with the given target and extra header lines; the
/// status answered.
async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> u16 {
    let request = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n");
    raw_status(&raw(addr, request.as_bytes(), Duration::from_secs(5)).await)
}

#[tokio::test]
async fn the_embedded_default_cannot_be_talked_past_by_path_spelling() {
    let up = Upstream::recording(|_| http::Response::new(full("echo"))).await;
    let gw = gateway(&embedded_default(up.addr)).await;
    let spoof = "x-user-id: admin\r\n";
    // The issue's four bypasses now meet `auth` on the private route.
    for target in [
        "/demo/private/",
        "/demo/%70rivate/",
        "/demo/x/../private/",
        "/demo//private/",
        "/demo/./private/",
        "/demo/%2e/private/",
        "/demo/x/%2E%2E/private/",
        "//demo/private",
    ] {
        assert_eq!(
            raw_get(gw.listen_addr, target, spoof).await,
            401,
            "{target}"
        );
    }
    // Spellings with no one meaning across upstreams are refused outright.
    for target in [
        "/demo/x%2f..%2fprivate/",
        "/demo/x%2F..%2Fprivate/",
        "/demo/x%5c..%5cprivate/",
        "/demo/x/..;/private/",
        "/demo/x\\..\\private/",
        "/demo/%zz",
    ] {
        assert_eq!(
            raw_get(gw.listen_addr, target, spoof).await,
            400,
            "{target}"
        );
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream without auth");

    // What does pass goes upstream in the canonical form (after strip_prefix).
    assert_eq!(
        raw_get(gw.listen_addr, "/demo/%70ublic/./a//b/../c?x=%2F..", "").await,
        200
    );
    assert_eq!(up.last().uri, "/public/a/c?x=%2F..");
    gw.shutdown().await;
}

#[tokio::test]
async fn escaped_slashes_can_be_kept_or_decoded_by_config() {
    let up = Upstream::named("up").await;
    let keep = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nescaped_slashes = \"keep\"\nmerge_slashes = false\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    assert_eq!(raw_get(keep.listen_addr, "/a%2fb//c", "").await, 200);
    assert_eq!(up.last().uri, "/a%2Fb//c");
    keep.shutdown().await;
    let decode = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nescaped_slashes = \"decode\"\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    assert_eq!(
        raw_get(decode.listen_addr, "/a/b%2f..%2f..%5cc", "").await,
        200
    );
    assert_eq!(up.last().uri, "/c");
    decode.shutdown().await;
}

/// `public_paths` of the auth plugin sees the canonical path: no `..;` (or other) spelling of
/// a private path passes as public.
#[tokio::test]
async fn auth_public_paths_cannot_be_climbed_out_of() {
    let up = Upstream::named("up").await;
    let config = |extra: &str| {
        format!(
            r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
{extra}
[services.s]
instances = ["{}"]
[[routes]]
path = "/"
service = "s"
plugins = ["auth"]
[plugin.auth]
public_paths = ["/pub"]
[[plugin.auth.keys]]
kid = "k"
alg = "HS256"
secret = "a-test-secret-that-is-long-enough"
"#,
            up.addr
        )
    };
    let gw = gateway(&config("")).await;
    assert_eq!(raw_get(gw.listen_addr, "/pub/x", "").await, 200);
    assert_eq!(raw_get(gw.listen_addr, "/pub/../secret", "").await, 401);
    assert_eq!(raw_get(gw.listen_addr, "/pub/%2e%2e/secret", "").await, 401);
    assert_eq!(raw_get(gw.listen_addr, "/pub/..;/secret", "").await, 400);
    assert_eq!(raw_get(gw.listen_addr, "/pub/..%2fsecret", "").await, 400);
    assert_eq!(raw_get(gw.listen_addr, "/pub\\..\\secret", "").await, 400);
    let hits = up.hits();
    gw.shutdown().await;
    // Even when the operator keeps escaped slashes, the plugin does not count them public.
    let gw = gateway(&config("escaped_slashes = \"keep\"")).await;
    assert_eq!(raw_get(gw.listen_addr, "/pub/..%2fsecret", "").await, 401);
    assert_eq!(raw_get(gw.listen_addr, "/pub/..%5Csecret", "").await, 401);
    assert_eq!(up.hits(), hits, "only /pub/x got through");
    gw.shutdown().await;
}

#[tokio::test]
async fn one_host_per_request_and_the_absolute_target_wins() {
    let good = Upstream::named("good").await;
    let other = Upstream::named("other").await;
    let gw = gateway(&format!(
        r#"[services.good]
instances = ["{}"]
[services.other]
instances = ["{}"]
[[routes]]
path = "/"
host = "good.example"
service = "good"
[[routes]]
path = "/"
service = "other"
"#,
        good.addr, other.addr
    ))
    .await;
    let two =
        "GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_status(&raw(gw.listen_addr, two.as_bytes(), Duration::from_secs(5)).await),
        400
    );
    // RFC 9112 §3.2.2: the absolute-form target's authority is the host; the upstream sees
    // that one Host.
    let absolute = "GET http://good.example/x/../y HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_status(&raw(gw.listen_addr, absolute.as_bytes(), Duration::from_secs(5)).await),
        200
    );
    assert_eq!(good.last().uri, "/y");
    assert_eq!(good.last().headers["host"], "good.example");
    assert_eq!(other.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_is_kept_only_from_trusted_proxies() {
    let up = Upstream::named("up").await;
    let spoofed = "X-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\n";
    let untrusted = gateway(&one_route(up.addr, "/")).await;
    assert_eq!(raw_get(untrusted.listen_addr, "/", spoofed).await, 200);
    assert_eq!(up.last().headers["x-forwarded-for"], "127.0.0.1");
    assert!(!up.last().headers.contains_key("x-real-ip"));
    untrusted.shutdown().await;
    let trusted = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    assert_eq!(raw_get(trusted.listen_addr, "/", spoofed).await, 200);
    assert_eq!(
        up.last().headers["x-forwarded-for"],
        "203.0.113.9, 127.0.0.1"
    );
    trusted.shutdown().await;
}

#[tokio::test]
async fn a_trickling_request_body_is_cut_with_408_and_the_upstream_request_aborted() {
    let up = Upstream::named("up").await;
    let gw = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nbody_read_timeout = \"300ms\"\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    let stream = TcpStream::connect(gw.listen_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    // One more byte now and then: never idle long, never done.
    let trickle = async {
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"c").await.is_err() {
                break;
            }
        }
    };
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = async {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut out)).await;
    };
    tokio::join!(trickle, read);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&text), 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        up.seen.lock().unwrap().iter().all(|s| s.body.len() < 10),
        "the upstream never got a whole body"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_response_is_dropped() {
    let big = bytes::Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
    let up = Upstream::recording(move |_| http::Response::new(full(big.clone()))).await;
    let gw = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nwrite_timeout = \"300ms\"\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.listen_addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    // Never read. The gateway's connection must go away on its own.
    let connections = gw.proxy.metrics.connections().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections.get(), 1, "the response is being written");
    while connections.get() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once() {
    let up = Upstream::named("up").await;
    let gw = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nmax_connections = 2\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    let connections = gw.proxy.metrics.connections().clone();
    let mut first = TcpStream::connect(gw.listen_addr).await.unwrap();
    let _second = TcpStream::connect(gw.listen_addr).await.unwrap();
    while connections.get() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The third is accepted and closed: EOF without an answer.
    let mut third = TcpStream::connect(gw.listen_addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "closed at once, not held");
    assert!(
        out.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&out)
    );
    // The two within the limit are served.
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut out)).await;
    assert_eq!(raw_status(&String::from_utf8_lossy(&out)), 200);
    // Places free up as connections close.
    while connections.get() > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(raw_get(gw.listen_addr, "/", "").await, 200);
    gw.shutdown().await;
}

/// A plugin's set-path is made canonical, and strip_prefix copes with a path the plugin moved
/// out from under the route's prefix (was: a panic slicing `&path[prefix.len()..]`).
#[tokio::test]
async fn set_path_is_canonical_and_strip_prefix_survives_it() {
    let up = Upstream::named("up").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("testbed"), dir.path().join("testbed.wasm")).unwrap();
    let gw = gateway(&format!(
        r#"[plugins]
dir = "{}"
cache_dir = "{}"
[services.s]
instances = ["{}"]
[[routes]]
path = "/plugin"
service = "s"
strip_prefix = true
plugins = ["testbed"]
"#,
        dir.path().display(),
        plugin_cache_dir().display(),
        up.addr
    ))
    .await;
    let (status, _, _) = get(gw.listen_addr, "/plugin/set-path?/x/../%61b").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().uri, "/ab");
    let (status, _, _) = get(gw.listen_addr, "/plugin/set-path?/plugin/v1/./c").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().uri, "/v1/c");
    // A set-path that has no canonical form is refused to the plugin.
    let (status, _, _) = get(gw.listen_addr, "/plugin/set-path?/a%2fb").await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/set-path");
    let error = seen.headers["x-set-path"].to_str().unwrap();
    assert!(error.contains("%2F"), "{error}");
    gw.shutdown().await;
}

// ---- the admin API ----

const TOKEN: &str = "test-admin-token-0123456789";
const REGISTRATION_TOKEN: &str = "test-registration-token-0123";

async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, headers, body) = send(addr, req.body(full(body.to_owned())).unwrap()).await;
    (status.as_u16(), headers, body)
}

#[tokio::test]
async fn the_admin_token_guards_writes_and_secrets_but_not_health() {
    let gw = gateway(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\nregistration_token = \"{REGISTRATION_TOKEN}\"\n[kv]\n"
    ))
    .await;
    let at = gw.admin_addr;
    let bearer = format!("Bearer {TOKEN}");
    let registration = format!("Bearer {REGISTRATION_TOKEN}");
    let auth = |v: &str| [("authorization", v.to_owned())];

    // Open reads.
    for path in [
        "/healthz",
        "/metrics",
        "/admin/routes",
        "/admin/services",
        "/admin/plugins",
    ] {
        assert_eq!(admin(at, "GET", path, &[], "").await.0, 200, "{path}");
    }
    // Secrets and writes need the admin token.
    let (status, headers, _) = admin(at, "PUT", "/admin/kv/auth/keys", &[], "mine").await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = "Bearer test-admin-token-0123456788";
    assert_eq!(
        admin(
            at,
            "PUT",
            "/admin/kv/auth/keys",
            &[("authorization", wrong)],
            "mine"
        )
        .await
        .0,
        401
    );
    let a = auth(&bearer);
    let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        admin(at, "PUT", "/admin/kv/auth/keys", &a, "theirs")
            .await
            .0,
        200
    );
    assert_eq!(
        admin(at, "GET", "/admin/kv/auth/keys", &[], "").await.0,
        401
    );
    assert_eq!(admin(at, "GET", "/admin/kv", &[], "").await.0, 401);
    let (status, _, value) = admin(at, "GET", "/admin/kv/auth/keys", &a, "").await;
    assert_eq!((status, value.as_str()), (200, "theirs"));
    assert_eq!(
        admin(at, "POST", "/admin/plugins/reload", &[], "").await.0,
        401
    );
    assert_eq!(
        admin(at, "POST", "/admin/plugins/reload", &a, "").await.0,
        200
    );

    // The registration token registers, and nothing else.
    let up = Upstream::named("up").await;
    let body = format!("{{\"address\": \"{}\"}}", up.addr);
    let r = auth(&registration);
    let r: Vec<(&str, &str)> = r.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let put = "/registry/services/users/instances/u1";
    assert_eq!(admin(at, "PUT", put, &[], &body).await.0, 401);
    assert_eq!(admin(at, "PUT", put, &r, &body).await.0, 200);
    assert_eq!(
        admin(at, "GET", "/registry/services/users", &[], "")
            .await
            .0,
        200
    );
    assert_eq!(admin(at, "GET", "/admin/kv/auth/keys", &r, "").await.0, 401);
    assert_eq!(
        admin(at, "POST", "/admin/plugins/reload", &r, "").await.0,
        401
    );
    assert_eq!(admin(at, "DELETE", put, &r, "").await.0, 204);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_public_admin_listener_without_a_token_is_refused_at_start() {
    if std::env::var_os(sluice::admin_auth::TOKEN_ENV).is_some() {
        // The environment gives a token: the refusal does not apply.
        return;
    }
    // Refused before anything is bound.
    let config = sluice::config::Config::parse(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:0\"\n",
        "t.toml",
    )
    .unwrap();
    let error = sluice::Gateway::start(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("server.admin: 0.0.0.0:0"), "{error}");
    assert!(error.contains("no token"), "{error}");
    // With a token it would start (checked without binding a public address in a test).
    let config = sluice::config::Config::parse(
        &format!("[server]\nadmin = \"0.0.0.0:9901\"\n[admin]\ntoken = \"{TOKEN}\"\n"),
        "t.toml",
    )
    .unwrap();
    assert!(sluice::admin_auth::AdminAuth::from_config(&config).is_ok());
}

#[tokio::test]
async fn without_a_token_foreign_hosts_and_cross_site_writes_are_refused() {
    if std::env::var_os(sluice::admin_auth::TOKEN_ENV).is_some() {
        return;
    }
    let gw = gateway("").await;
    let at = gw.admin_addr;
    let request = |host: &str, extra: &str| {
        format!(
            "POST /admin/plugins/reload HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let status = |text: String| async move {
        raw_status(&raw(at, text.as_bytes(), Duration::from_secs(5)).await)
    };
    assert_eq!(status(request("127.0.0.1", "")).await, 200);
    assert_eq!(status(request("localhost:9901", "")).await, 200);
    // DNS rebinding: a page on attacker.example resolved to 127.0.0.1.
    assert_eq!(status(request("attacker.example:9901", "")).await, 403);
    // CSRF: a page elsewhere posting to the loopback admin.
    assert_eq!(
        status(request("127.0.0.1", "Origin: https://attacker.example\r\n")).await,
        403
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn registrations_are_checked_against_the_address_policy() {
    let gw = gateway("").await;
    let at = gw.admin_addr;
    let register = |address: String| async move {
        let body = format!("{{\"address\": \"{address}\"}}");
        admin(
            at,
            "PUT",
            "/registry/services/users/instances/u1",
            &[],
            &body,
        )
        .await
    };
    for bad in [
        "169.254.169.254:80".to_string(),
        "[fe80::1]:80".to_string(),
        "0.0.0.0:80".to_string(),
        "224.0.0.1:80".to_string(),
        gw.admin_addr.to_string(),
        gw.listen_addr.to_string(),
        format!("localhost:{}", gw.admin_addr.port()),
    ] {
        let (status, _, body) = register(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("address:"), "{body}");
    }
    // Loopback instances are fine while the admin listener is loopback-only.
    let up = Upstream::named("up").await;
    assert_eq!(register(up.addr.to_string()).await.0, 200);
    gw.shutdown().await;

    // allow_addresses lets a refused network in.
    let gw = gateway("[registry]\nallow_addresses = [\"169.254.169.0/24\"]\n").await;
    let body = "{\"address\": \"169.254.169.254:80\"}";
    let put = "/registry/services/users/instances/u1";
    assert_eq!(admin(gw.admin_addr, "PUT", put, &[], body).await.0, 200);
    gw.shutdown().await;
}
