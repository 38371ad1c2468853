//! Built-in plugins: embedded in the binary, loaded when the config uses them, overridden by a
//! file of the same name in the plugin directory, and back when that file goes.

use http::Request;
use jsonwebtoken::{EncodingKey, Header, encode};

use crate::harness::*;

pub const SECRET: &str = "a-test-secret-that-is-long-enough";

pub fn token(sub: &str, exp_in_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({ "sub": sub, "exp": now + exp_in_s, "iat": now });
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn config(upstream: std::net::SocketAddr, dir: &std::path::Path) -> String {
    format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[services.s]
instances = ["{upstream}"]
[[routes]]
path = "/"
service = "s"
plugins = ["auth"]
[plugin.auth]
public_paths = ["/health"]
forward_claims = {{ sub = "x-user-id" }}
[[plugin.auth.keys]]
kid = "k1"
alg = "HS256"
secret = "{SECRET}"
"#,
        dir.display(),
        plugin_cache_dir().display()
    )
}

fn source_of(plugins: &serde_json::Value) -> serde_json::Value {
    plugin_view(plugins, "auth")["source"].clone()
}

#[tokio::test]
async fn the_built_in_auth_plugin_guards_a_route_and_a_file_overrides_it() {
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&config(up.addr, dir.path())).await;
    let at = gw.listen_addr;

    // The built-in: no token → 401 naming the scheme; a valid token → through, claim forwarded.
    let (status, headers, _) = get(at, "/orders").await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let bad = Request::get("/orders")
        .header("authorization", "Bearer not.a.jwt")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(at, bad).await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\"")
    );
    let good = Request::get("/orders")
        .header("authorization", format!("Bearer {}", token("alice", 300)))
        .header("x-user-id", "mallory")
        .header("x-user-id", "root")
        .body(full(""))
        .unwrap();
    assert_eq!(send(at, good).await.0, 200);
    let seen: Vec<_> = up
        .last()
        .headers
        .get_all("x-user-id")
        .iter()
        .cloned()
        .collect();
    assert_eq!(seen, ["alice"], "every copy the client sent was replaced");
    assert_eq!(get(at, "/health").await.0, 200, "public path");
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    assert_eq!(source_of(&plugins)["kind"], "built-in");

    // A file of the same name overrides it (here: the test plugin, which lets everything by).
    std::fs::copy(fixture("testbed"), dir.path().join("auth.wasm")).unwrap();
    let reload = || {
        send(
            gw.admin_addr,
            Request::post("/admin/plugins/reload")
                .body(full(""))
                .unwrap(),
        )
    };
    assert_eq!(reload().await.0, 200);
    assert_eq!(get(at, "/orders").await.0, 200);
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    assert_eq!(source_of(&plugins)["kind"], "file");

    // Removing the file brings the built-in back.
    std::fs::remove_file(dir.path().join("auth.wasm")).unwrap();
    assert_eq!(reload().await.0, 200);
    assert_eq!(get(at, "/orders").await.0, 401);
    gw.shutdown().await;
}

/// The embedded default (what `sluice run` serves with no config) with the token the README
/// gives: the quick start works as written.
#[tokio::test]
async fn the_embedded_default_guards_its_private_route_with_the_readme_token() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let token = readme
        .split("Authorization: Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the README shows a demo token");
    let config = sluice::config::EMBEDDED_DEFAULT
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("admin = \"127.0.0.1:9901\"", "admin = \"127.0.0.1:0\"");
    let up = Upstream::recording(|_| http::Response::new(full("echo"))).await;
    let config = config
        .replace("[demo_upstream]\nlisten = \"127.0.0.1:9000\"\n", "")
        .replace(
            "instances = [\"127.0.0.1:9000\"]",
            &format!("instances = [\"{}\"]", up.addr),
        );
    let gw = gateway(&config).await;
    assert_eq!(get(gw.listen_addr, "/demo/private/").await.0, 401);
    let req = Request::get("/demo/private/")
        .header("authorization", format!("Bearer {token}"))
        .body(full(""))
        .unwrap();
    assert_eq!(send(gw.listen_addr, req).await.0, 200);
    assert_eq!(up.last().headers["x-user-id"], "demo-user");
    assert_eq!(
        get(gw.listen_addr, "/demo/open").await.0,
        200,
        "the public demo route needs no token"
    );
    gw.shutdown().await;
}

pub fn hs256(kid: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    let claims = serde_json::json!({ "sub": kid, "exp": now + 600 });
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Rotation through the watched kv entry, under load: tokens of the old key keep passing
/// during the grace period and fail after it, tokens of the new key pass within a second of
/// the change, and nothing but 200 and 401 is ever answered.
#[tokio::test]
async fn keys_rotate_under_load_without_dropping_valid_tokens() {
    use std::sync::{Arc, Mutex};
    use tokio::time::{Duration, Instant};

    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&format!(
        "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n[services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\nplugins = [\"auth\"]\n[plugin.auth]\nleeway = \"0s\"\n",
        dir.path().display(),
        plugin_cache_dir().display(),
        up.addr
    ))
    .await;
    let put_keys = |body: String| {
        send(
            gw.admin_addr,
            Request::put("/admin/kv/auth/keys")
                .body(full(body))
                .unwrap(),
        )
    };
    let (old_secret, new_secret) = ("old-secret-0123456789abcdef", "new-secret-0123456789abcdef");
    let keys = |kid: &str, secret: &str| {
        format!(r#"{{"keys":[{{"kid":"{kid}","alg":"HS256","secret":"{secret}"}}],"grace":"2s"}}"#)
    };
    assert_eq!(put_keys(keys("old", old_secret)).await.0, 200);
    let (old, new) = (hs256("old", old_secret), hs256("new", new_secret));
    let with = |token: &str| {
        Request::get("/r")
            .header("authorization", format!("Bearer {token}"))
            .body(full(""))
            .unwrap()
    };
    assert_eq!(send(gw.listen_addr, with(&old)).await.0, 200);
    assert_eq!(
        send(gw.listen_addr, with(&new)).await.0,
        401,
        "not yet a key"
    );

    // Load with the old token: (sent at, status) of every request.
    let seen: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = gw.listen_addr;
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (seen, stop, old) = (seen.clone(), stop.clone(), old.clone());
            tokio::spawn(async move {
                let client = client();
                for _ in 0..5000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let at = Instant::now();
                    let req = Request::get(format!("http://{addr}/r"))
                        .header("authorization", format!("Bearer {old}"))
                        .body(full(""))
                        .unwrap();
                    let status = client.request(req).await.map_or(0, |r| r.status().as_u16());
                    seen.lock().unwrap().push((at, status));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rotate: the old key leaves the entry, the new one arrives.
    let rotated_at = Instant::now();
    assert_eq!(put_keys(keys("new", new_secret)).await.0, 200);
    loop {
        if send(gw.listen_addr, with(&new)).await.0 == 200 {
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(1),
            "the new key was not accepted within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.iter().all(|(_, s)| *s == 200 || *s == 401),
        "only auth answers: {:?}",
        seen.iter()
            .filter(|(_, s)| *s != 200 && *s != 401)
            .collect::<Vec<_>>()
    );
    let during_grace: Vec<u16> = seen
        .iter()
        .filter(|(at, _)| *at < rotated_at + Duration::from_millis(1500))
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !during_grace.is_empty() && during_grace.iter().all(|s| *s == 200),
        "old tokens pass during the grace period"
    );
    let after_grace: Vec<u16> = seen
        .iter()
        .filter(|(at, _)| *at > rotated_at + Duration::from_millis(2600))
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !after_grace.is_empty() && after_grace.iter().all(|s| *s == 401),
        "old tokens fail after it"
    );
    assert_eq!(send(gw.listen_addr, with(&new)).await.0, 200);
    gw.shutdown().await;
}

const RSA_PRIVATE: &str = include_str!("../../plugins/auth/tests/keys/rsa_private.pem");
/// The JWK form of plugins/auth/tests/keys/rsa_public.pem.
const RSA_N: &str = "vPNuxYlqPJU9PV1UDm9ps4Suu8vVi_IdzKLXWSVNpg_-KDu5LdQhq3p-EfD1UwR-OhCRCq-QMySVKoUKBBBZw1g4rPpJ4xohOY7RHBdNOSIJ7M2zVyesRy7FSYErGAaCzwqW1f4-opPSIjGukFoPTs_4jbEsc8BNub7Lk3dNTbJGHG-_g6oVGv1tb90hDkV6nfKiUk3m3tMRqPRQJcqrcR7Io2zgF_E6FicAPsnlMFQb7AdGSz91CyB7Y0yN-WkG2A9wLHOkWvUkXmE24pv5n68V5ZSBkSdgzDobKua4tSIulwO78rWd3AKl8YOxu4LdZgbuY2sVXdS9aC101_VSZw";

fn rs256(kid: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    let claims = serde_json::json!({ "sub": kid, "exp": now + 600 });
    encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Keys from a real JWKS endpoint on 127.0.0.1: fetched through the gateway's outbound HTTP,
/// a flood of unknown kids causes a bounded number of fetches, and known keys keep working
/// while the endpoint is down.
#[tokio::test]
async fn jwks_keys_are_fetched_bounded_and_survive_the_endpoint_going_down() {
    let jwks = serde_json::json!({ "keys": [
        { "kty": "RSA", "kid": "idp-1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB" }
    ]})
    .to_string();
    let idp = Upstream::recording(move |_| {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(jwks.clone()))
            .unwrap()
    })
    .await;
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[plugins.override.auth]
allowed_hosts = ["{idp}"]
[services.s]
instances = ["{}"]
[[routes]]
path = "/"
service = "s"
plugins = ["auth"]
[plugin.auth]
jwks_url = "http://{idp}/.well-known/jwks.json"
jwks_cooldown = "1h"
"#,
        dir.path().display(),
        plugin_cache_dir().display(),
        up.addr,
        idp = idp.addr,
    ))
    .await;
    let at = gw.listen_addr;
    let with = |token: String| {
        Request::get("/r")
            .header("authorization", format!("Bearer {token}"))
            .body(full(""))
            .unwrap()
    };
    assert_eq!(send(at, with(rs256("idp-1"))).await.0, 200);
    assert_eq!(idp.hits(), 1, "one fetch");
    assert_eq!(idp.last().uri.path(), "/.well-known/jwks.json");
    assert_eq!(send(at, with(rs256("idp-1"))).await.0, 200);
    assert_eq!(idp.hits(), 1, "served from the cache");

    // A flood of tokens with kids the JWKS does not have: all refused, fetches bounded.
    for i in 0..50 {
        assert_eq!(send(at, with(rs256(&format!("random-{i}")))).await.0, 401);
    }
    assert!(
        idp.hits() <= 2,
        "{} fetches for 50 unknown kids",
        idp.hits()
    );

    // The endpoint goes away: the cached keys keep working.
    drop(idp);
    assert_eq!(send(at, with(rs256("idp-1"))).await.0, 200);
    gw.shutdown().await;
}
