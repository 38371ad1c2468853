//! Keys from a JWKS URL: verification, refresh, unknown-kid cooldown, a failing endpoint and
//! `jwks_max_stale`, skipped keys, config errors.

use std::time::Duration;

use auth::Auth;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sluice_plugin_sdk::Action;
use sluice_plugin_sdk::outbound::{HttpError, HttpResponse};
use sluice_plugin_sdk::testing::{TestHost, TestRequest};

const RSA_PRIVATE: &str = include_str!("keys/rsa_private.pem");
const EC256_PRIVATE: &str = include_str!("keys/ec256_private.pem");
const HS_SECRET: &str = "hs256-test-secret-0123456789abcdef";

/// The JWK form of tests/keys/rsa_public.pem and ec256_public.pem.
const RSA_N: &str = "vPNuxYlqPJU9PV1UDm9ps4Suu8vVi_IdzKLXWSVNpg_-KDu5LdQhq3p-EfD1UwR-OhCRCq-QMySVKoUKBBBZw1g4rPpJ4xohOY7RHBdNOSIJ7M2zVyesRy7FSYErGAaCzwqW1f4-opPSIjGukFoPTs_4jbEsc8BNub7Lk3dNTbJGHG-_g6oVGv1tb90hDkV6nfKiUk3m3tMRqPRQJcqrcR7Io2zgF_E6FicAPsnlMFQb7AdGSz91CyB7Y0yN-WkG2A9wLHOkWvUkXmE24pv5n68V5ZSBkSdgzDobKua4tSIulwO78rWd3AKl8YOxu4LdZgbuY2sVXdS9aC101_VSZw";
const RSA_E: &str = "AQAB";
const EC_X: &str = "xlw8twHvemafWeiPBKwcZZCq3yJ86gn7FTb8RcToGrQ";
const EC_Y: &str = "KXbJTJsgM2YwCUoVMYy9rHjvvQqK-Ah7TSdXlL1QjVw";

const URL: &str = "http://idp.internal:8080/.well-known/jwks.json";
/// The TestHost clock starts at 1 000 000 ms.
const NOW: i64 = 1000;

fn config() -> Value {
    json!({
        "keys": [{"kid": "hs", "alg": "HS256", "secret": HS_SECRET}],
        "jwks_url": URL,
        "jwks_refresh": "5m",
        "jwks_cooldown": "30s",
        "jwks_max_stale": "1h",
    })
}

fn rsa_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": RSA_N, "e": RSA_E})
}

fn ec_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "kid": kid, "alg": "ES256", "crv": "P-256", "x": EC_X, "y": EC_Y})
}

fn serve(host: &TestHost, keys: &[Value]) {
    let body = json!({ "keys": keys }).to_string();
    host.http_answer(
        "GET",
        URL,
        Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: body.into_bytes(),
        }),
    );
}

fn down(host: &TestHost) {
    host.http_answer(
        "GET",
        URL,
        Err(HttpError::Transport("connection refused".into())),
    );
}

fn token(alg: Algorithm, kid: &str) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    // Valid for a day of test-clock time.
    let claims = json!({"sub": "user-1", "iat": NOW, "exp": NOW + 86_400});
    encode(&header, &claims, &key).unwrap()
}

fn status(plugin: &Auth, host: &TestHost, token: &str) -> u16 {
    let request = TestRequest::get("/api").with_header("authorization", format!("Bearer {token}"));
    match host.on_request(plugin, &request).unwrap() {
        Action::Continue => 200,
        Action::Respond(r) => r.status,
    }
}

#[test]
fn jwks_keys_verify_tokens_with_pinned_algorithms() {
    let host = TestHost::new();
    serve(&host, &[rsa_jwk("r1"), ec_jwk("e1")]);
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(status(&plugin, &host, &token(Algorithm::ES256, "e1")), 200);
    // Config keys still work, and are found first.
    assert_eq!(status(&plugin, &host, &token(Algorithm::HS256, "hs")), 200);
    // The token's alg must equal the JWK's alg.
    assert_eq!(status(&plugin, &host, &token(Algorithm::ES256, "r1")), 401);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "e1")), 401);
    let sent = host.http_sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].method, "GET");
    assert_eq!(sent[0].url, URL);
    assert!(sent[0].timeout_ms.is_some());
    assert_eq!(host.counter("jwks_fetch_ok"), 1);
    assert!(host.state("jwks:body").is_some());
    assert_eq!(host.state("jwks:fetched_at").unwrap(), b"1000000");
    // A second instance uses the shared copy without fetching.
    let other: Auth = host.init(config()).unwrap();
    assert_eq!(status(&other, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(host.http_sent().len(), 1);
}

#[test]
fn config_and_kv_keys_win_over_jwks_on_a_kid_clash() {
    let host = TestHost::new();
    // The JWKS claims kid `hs` for an RSA key; the config's HMAC key wins.
    serve(&host, &[rsa_jwk("hs")]);
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(status(&plugin, &host, &token(Algorithm::HS256, "hs")), 200);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "hs")), 401);
}

#[test]
fn refreshes_after_jwks_refresh() {
    let host = TestHost::new();
    serve(&host, &[rsa_jwk("r1")]);
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    host.advance(Duration::from_secs(299));
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(host.http_sent().len(), 1);
    // The key set changed at the IdP; the refresh picks it up.
    serve(&host, &[ec_jwk("e1")]);
    host.advance(Duration::from_secs(1));
    assert_eq!(status(&plugin, &host, &token(Algorithm::ES256, "e1")), 200);
    assert_eq!(host.http_sent().len(), 2);
    assert_eq!(host.counter("jwks_fetch_ok"), 2);
    // The removed kid is now unknown: one cooldown fetch, which does not bring it back.
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 401);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 401);
    assert_eq!(host.http_sent().len(), 3);
}

#[test]
fn unknown_kid_refetches_once_per_cooldown() {
    let host = TestHost::new();
    serve(&host, &[rsa_jwk("r1")]);
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(host.http_sent().len(), 1);
    // A new key published before the next scheduled refresh: the unknown kid fetches.
    host.advance(Duration::from_secs(1));
    serve(&host, &[rsa_jwk("r1"), ec_jwk("e2")]);
    assert_eq!(status(&plugin, &host, &token(Algorithm::ES256, "e2")), 200);
    assert_eq!(host.http_sent().len(), 2);
    // A flood of random kids within the cooldown causes no further fetch.
    for i in 0..100u64 {
        let kid = format!("random-{}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, &kid)), 401);
    }
    assert_eq!(host.http_sent().len(), 2);
    // After the cooldown, one more.
    host.advance(Duration::from_secs(30));
    assert_eq!(
        status(&plugin, &host, &token(Algorithm::RS256, "nope-1")),
        401
    );
    assert_eq!(
        status(&plugin, &host, &token(Algorithm::RS256, "nope-2")),
        401
    );
    assert_eq!(host.http_sent().len(), 3);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
}

#[test]
fn a_failing_endpoint_serves_the_cached_copy_until_max_stale() {
    let host = TestHost::new();
    serve(&host, &[rsa_jwk("r1")]);
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    down(&host);
    host.advance(Duration::from_secs(5 * 60));
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(host.http_sent().len(), 2);
    assert_eq!(host.counter("jwks_fetch_failed"), 1);
    // The failed fetch keeps the lease: no retry on every request.
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(host.http_sent().len(), 2);
    // Bad status and bad JSON count as failures too and keep the cached copy.
    host.advance(Duration::from_secs(10 * 60));
    host.http_answer(
        "GET",
        URL,
        Ok(HttpResponse {
            status: 503,
            headers: vec![],
            body: b"{\"keys\":[]}".to_vec(),
        }),
    );
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    host.advance(Duration::from_secs(60));
    host.http_answer(
        "GET",
        URL,
        Ok(HttpResponse {
            status: 200,
            headers: vec![],
            body: b"<html>".to_vec(),
        }),
    );
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    assert_eq!(host.counter("jwks_fetch_failed"), 3);
    assert_eq!(host.counter("jwks_fetch_ok"), 1);
    // Past jwks_max_stale (1h after the last good fetch): JWKS keys no longer count.
    down(&host);
    host.set_now_ms(1_000_000 + 3_600_000);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
    host.set_now_ms(1_000_000 + 3_600_000 + 1);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 401);
    // Config keys still do.
    assert_eq!(status(&plugin, &host, &token(Algorithm::HS256, "hs")), 200);
    // The endpoint is back: keys work again.
    host.advance(Duration::from_secs(11));
    serve(&host, &[rsa_jwk("r1")]);
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "r1")), 200);
}

#[test]
fn jwks_keys_without_alg_or_not_for_signing_are_ignored() {
    let host = TestHost::new();
    let mut no_alg = rsa_jwk("no-alg");
    no_alg.as_object_mut().unwrap().remove("alg");
    let mut enc = rsa_jwk("enc");
    enc["use"] = json!("enc");
    let hmac = json!({"kty": "oct", "kid": "oct", "alg": "HS256", "k": "c2VjcmV0"});
    serve(&host, &[no_alg, enc, hmac, ec_jwk("e1")]);
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(
        status(&plugin, &host, &token(Algorithm::RS256, "no-alg")),
        401
    );
    assert_eq!(status(&plugin, &host, &token(Algorithm::RS256, "enc")), 401);
    assert_eq!(status(&plugin, &host, &token(Algorithm::ES256, "e1")), 200);
    assert!(
        host.logs()
            .iter()
            .any(|(_, m)| m.contains("jwks") && m.contains("no alg"))
    );
}

#[test]
fn jwks_config_errors_name_the_field() {
    let host = TestHost::new();
    let cases = [
        (json!({"jwks_url": "https://idp/jwks"}), "jwks_url"),
        (json!({"jwks_url": "idp/jwks"}), "jwks_url"),
        (
            json!({"jwks_url": URL, "jwks_refresh": "often"}),
            "jwks_refresh",
        ),
        (
            json!({"jwks_url": URL, "jwks_cooldown": "30"}),
            "jwks_cooldown",
        ),
        (
            json!({"jwks_url": URL, "jwks_max_stale": "1 fortnight"}),
            "jwks_max_stale",
        ),
        (json!({"jwks_uri": URL}), "unknown field `jwks_uri`"),
    ];
    for (config, want) in cases {
        let err = host.init::<Auth>(config).unwrap_err();
        assert!(
            err.message().contains(want),
            "{want}: got {}",
            err.message()
        );
    }
}
