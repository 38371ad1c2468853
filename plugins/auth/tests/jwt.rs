//! The plugin end to end against the SDK's in-memory host: attacks and edge cases, claim
//! forwarding, public paths, key rotation through `auth/keys`.

use std::time::Duration;

use auth::Auth;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sluice_plugin_sdk::Action;
use sluice_plugin_sdk::host::Level;
use sluice_plugin_sdk::testing::{TestHost, TestRequest};

const RSA_PRIVATE: &str = include_str!("keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa_public.pem");
const EC256_PRIVATE: &str = include_str!("keys/ec256_private.pem");
const EC256_PUBLIC: &str = include_str!("keys/ec256_public.pem");
const EC384_PRIVATE: &str = include_str!("keys/ec384_private.pem");
const EC384_PUBLIC: &str = include_str!("keys/ec384_public.pem");
const ED_PRIVATE: &str = include_str!("keys/ed25519_private.pem");
const ED_PUBLIC: &str = include_str!("keys/ed25519_public.pem");

const HS_SECRET: &str = "hs256-test-secret-0123456789abcdef";
const HS512_SECRET: &str = "hs512-test-secret-0123456789abcdef0123456789abcdef";

/// The TestHost clock starts at 1 000 000 ms.
const NOW: i64 = 1000;

fn config() -> Value {
    json!({
        "issuer": "https://issuer.example",
        "audience": "orders",
        "leeway": "30s",
        "public_paths": ["/health", "/login"],
        "forward_claims": {"sub": "x-user-id", "admin": "x-admin", "roles": "x-roles"},
        "required_claims": ["sub"],
        "keys": [
            {"kid": "hs", "alg": "HS256", "secret": HS_SECRET},
            {"kid": "hs512", "alg": "HS512", "secret": HS512_SECRET},
            {"kid": "rsa", "alg": "RS256", "pem": RSA_PUBLIC},
            {"kid": "ps", "alg": "PS384", "pem": RSA_PUBLIC},
            {"kid": "es256", "alg": "ES256", "pem": EC256_PUBLIC},
            {"kid": "es384", "alg": "ES384", "pem": EC384_PUBLIC},
            {"kid": "ed", "alg": "EdDSA", "pem": ED_PUBLIC},
        ]
    })
}

fn claims() -> Value {
    json!({
        "iss": "https://issuer.example",
        "aud": "orders",
        "sub": "user-1",
        "iat": NOW,
        "exp": NOW + 600,
    })
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(HS512_SECRET.as_bytes()),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    sign_with(alg, Some(kid), claims, &encoding_key(alg))
}

fn b64(bytes: &[u8]) -> String {
    // Minimal base64url without padding, to forge tokens by hand.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn bearer(token: &str) -> TestRequest {
    TestRequest::get("/api/orders").with_header("authorization", format!("Bearer {token}"))
}

fn status(plugin: &Auth, host: &TestHost, request: &TestRequest) -> u16 {
    match host.on_request(plugin, request).unwrap() {
        Action::Continue => 200,
        Action::Respond(r) => r.status,
    }
}

fn challenge(plugin: &Auth, host: &TestHost, request: &TestRequest) -> Option<String> {
    match host.on_request(plugin, request).unwrap() {
        Action::Continue => None,
        Action::Respond(r) => {
            Some(String::from_utf8(r.header_value("www-authenticate").unwrap().to_vec()).unwrap())
        }
    }
}

#[test]
fn attacks_and_edge_cases() {
    let good = sign(Algorithm::HS256, "hs", &claims());
    let (h, p, s) = {
        let parts: Vec<&str> = good.split('.').collect();
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"hs"}"#),
        b64(claims().to_string().as_bytes())
    );
    let confusion = sign_with(
        Algorithm::HS256,
        Some("rsa"),
        &claims(),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    );
    let tampered_payload = format!(
        "{h}.{}.{s}",
        b64(with(claims(), json!({"sub": "admin"}))
            .to_string()
            .as_bytes())
    );
    let mut sig = s.clone().into_bytes();
    sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
    let tampered_signature = format!("{h}.{p}.{}", String::from_utf8(sig).unwrap());
    let oversized = sign(
        Algorithm::HS256,
        "hs",
        &with(claims(), json!({"pad": "x".repeat(9000)})),
    );

    let cases: Vec<(&str, TestRequest, u16)> = vec![
        ("HS256 ok", bearer(&good), 200),
        (
            "HS512 ok",
            bearer(&sign(Algorithm::HS512, "hs512", &claims())),
            200,
        ),
        (
            "RS256 ok",
            bearer(&sign(Algorithm::RS256, "rsa", &claims())),
            200,
        ),
        (
            "PS384 ok",
            bearer(&sign(Algorithm::PS384, "ps", &claims())),
            200,
        ),
        (
            "ES256 ok",
            bearer(&sign(Algorithm::ES256, "es256", &claims())),
            200,
        ),
        (
            "ES384 ok",
            bearer(&sign(Algorithm::ES384, "es384", &claims())),
            200,
        ),
        (
            "EdDSA ok",
            bearer(&sign(Algorithm::EdDSA, "ed", &claims())),
            200,
        ),
        ("alg none", bearer(&alg_none), 401),
        ("RS/HS confusion", bearer(&confusion), 401),
        (
            "alg not pinned (HS512 on HS256 key)",
            bearer(&sign_with(
                Algorithm::HS512,
                Some("hs"),
                &claims(),
                &EncodingKey::from_secret(HS_SECRET.as_bytes()),
            )),
            401,
        ),
        (
            "alg not pinned (RS256 on PS384 key)",
            bearer(&sign(Algorithm::RS256, "ps", &claims())),
            401,
        ),
        (
            "expired",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"exp": NOW - 3600})),
            )),
            401,
        ),
        (
            "exp at leeway boundary",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"exp": NOW - 30})),
            )),
            200,
        ),
        (
            "exp one second past leeway",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"exp": NOW - 31})),
            )),
            401,
        ),
        (
            "not yet valid",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"nbf": NOW + 3600})),
            )),
            401,
        ),
        (
            "nbf at leeway boundary",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"nbf": NOW + 30})),
            )),
            200,
        ),
        (
            "nbf one second past leeway",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"nbf": NOW + 31})),
            )),
            401,
        ),
        (
            "no exp",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"exp": null})),
            )),
            401,
        ),
        (
            "wrong iss",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"iss": "https://evil.example"})),
            )),
            401,
        ),
        (
            "no iss",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"iss": null})),
            )),
            401,
        ),
        (
            "wrong aud",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"aud": "billing"})),
            )),
            401,
        ),
        (
            "aud list containing ours",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"aud": ["billing", "orders"]})),
            )),
            200,
        ),
        (
            "required claim missing",
            bearer(&sign(
                Algorithm::HS256,
                "hs",
                &with(claims(), json!({"sub": null})),
            )),
            401,
        ),
        (
            "unknown kid",
            bearer(&sign_with(
                Algorithm::HS256,
                Some("nope"),
                &claims(),
                &EncodingKey::from_secret(HS_SECRET.as_bytes()),
            )),
            401,
        ),
        (
            "no kid with several keys",
            bearer(&sign_with(
                Algorithm::HS256,
                None,
                &claims(),
                &EncodingKey::from_secret(HS_SECRET.as_bytes()),
            )),
            401,
        ),
        ("tampered payload", bearer(&tampered_payload), 401),
        ("tampered signature", bearer(&tampered_signature), 401),
        ("oversized token", bearer(&oversized), 401),
        ("garbage token", bearer("not-a-jwt"), 401),
        (
            "token in query",
            TestRequest::get(&format!("/api/orders?access_token={good}")),
            401,
        ),
        (
            "token in cookie",
            TestRequest::get("/api/orders").with_header("cookie", format!("access_token={good}")),
            401,
        ),
        (
            "missing Bearer",
            TestRequest::get("/api/orders").with_header("authorization", &good),
            401,
        ),
        (
            "Basic scheme",
            TestRequest::get("/api/orders").with_header("authorization", "Basic dXNlcjpwYXNz"),
            401,
        ),
        (
            "lower-case bearer",
            TestRequest::get("/api/orders").with_header("authorization", format!("bearer {good}")),
            200,
        ),
        ("no token", TestRequest::get("/api/orders"), 401),
    ];

    let mut failures = Vec::new();
    for (name, request, expected) in &cases {
        // A fresh host per case: counters and clock start clean.
        let host = TestHost::new();
        let plugin: Auth = host.init(config()).unwrap();
        let got = status(&plugin, &host, request);
        if got != *expected {
            failures.push(format!("{name}: expected {expected}, got {got}"));
        }
        let (accepted, rejected) = (host.counter("accepted"), host.counter("rejected"));
        let want = if *expected == 200 { (1, 0) } else { (0, 1) };
        if (accepted, rejected) != want {
            failures.push(format!(
                "{name}: counters accepted={accepted} rejected={rejected}"
            ));
        }
        for (level, line) in host.logs() {
            if line.contains(&good) || line.contains(&s) {
                failures.push(format!("{name}: token logged at {level:?}: {line}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn confusion_with_a_single_rsa_key_and_no_kid() {
    let host = TestHost::new();
    let plugin: Auth = host
        .init(json!({"keys": [{"kid": "rsa", "alg": "RS256", "pem": RSA_PUBLIC}]}))
        .unwrap();
    let forged = sign_with(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    );
    assert_eq!(status(&plugin, &host, &bearer(&forged)), 401);
    let right = sign_with(
        Algorithm::RS256,
        None,
        &claims(),
        &encoding_key(Algorithm::RS256),
    );
    assert_eq!(
        status(&plugin, &host, &bearer(&right)),
        200,
        "no kid, exactly one key"
    );
}

#[test]
fn challenges_follow_rfc_6750() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(
        challenge(&plugin, &host, &TestRequest::get("/api")).as_deref(),
        Some("Bearer")
    );
    let expired = sign(
        Algorithm::HS256,
        "hs",
        &with(claims(), json!({"exp": NOW - 3600})),
    );
    assert_eq!(
        challenge(&plugin, &host, &bearer(&expired)).as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="token expired""#)
    );
    assert!(
        host.logs()
            .iter()
            .any(|(l, m)| *l == Level::Debug && m.contains("token expired"))
    );
}

#[test]
fn forwards_claims_and_strips_client_copies() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    let token = sign(
        Algorithm::HS256,
        "hs",
        &with(claims(), json!({"admin": true, "roles": ["a", "b"]})),
    );
    let request = bearer(&token)
        .with_header("x-user-id", "attacker")
        .with_header("x-user-id", "root")
        .with_header("x-admin", "true")
        .with_header("x-roles", "root");
    assert_eq!(status(&plugin, &host, &request), 200);
    assert_eq!(request.header_all("x-user-id"), [b"user-1".to_vec()]);
    assert_eq!(request.header_str("x-admin").as_deref(), Some("true"));
    assert_eq!(
        request.header_str("x-roles").as_deref(),
        Some(r#"["a","b"]"#)
    );

    // A claim absent from the token: the client's copy is still gone.
    let token = sign(Algorithm::HS256, "hs", &claims());
    let request = bearer(&token).with_header("x-admin", "true");
    assert_eq!(status(&plugin, &host, &request), 200);
    assert_eq!(request.header_str("x-admin"), None);

    // Rejected requests lose them too.
    let request = TestRequest::get("/api").with_header("x-user-id", "attacker");
    assert_eq!(status(&plugin, &host, &request), 401);
    assert_eq!(request.header_str("x-user-id"), None);
}

#[test]
fn public_paths_pass_without_a_token_but_still_strip() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    for path in ["/health", "/health/live", "/login"] {
        let request = TestRequest::get(path).with_header("x-user-id", "attacker");
        assert_eq!(status(&plugin, &host, &request), 200, "{path}");
        assert_eq!(request.header_str("x-user-id"), None, "{path}");
    }
    for path in ["/healthz", "/health/../admin", "/", "/api/login"] {
        assert_eq!(
            status(&plugin, &host, &TestRequest::get(path)),
            401,
            "{path}"
        );
    }
}

fn kv_keys(keys: &[(&str, &str)], grace: &str) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, secret)| json!({"kid": kid, "alg": "HS256", "secret": secret}))
        .collect();
    json!({"keys": keys, "grace": grace}).to_string()
}

fn hs(kid: &str, secret: &str) -> String {
    sign_with(
        Algorithm::HS256,
        Some(kid),
        &with(claims(), json!({"exp": NOW + 86_400})),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[test]
fn kv_keys_are_read_only_when_their_version_changes() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    let token = hs("kvk", "kv-secret-0123456789");
    assert_eq!(status(&plugin, &host, &bearer(&token)), 401);
    assert_eq!(host.kv_value_reads(), 0, "absent: nothing to read");
    host.kv_put(
        "auth/keys",
        kv_keys(&[("kvk", "kv-secret-0123456789")], "0s"),
    );
    for _ in 0..5 {
        assert_eq!(status(&plugin, &host, &bearer(&token)), 200);
    }
    assert_eq!(
        host.kv_value_reads(),
        1,
        "read once, then only its version is asked"
    );
    // The same value put again is a new version: read (and the cache emptied) once more.
    host.kv_put(
        "auth/keys",
        kv_keys(&[("kvk", "kv-secret-0123456789")], "0s"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&token)), 200);
    assert_eq!(host.kv_value_reads(), 2);
    // Deleted: noticed on the next request; the key is gone at once (no grace).
    host.kv_delete("auth/keys");
    assert_eq!(status(&plugin, &host, &bearer(&token)), 401);
    assert_eq!(plugin.cached_tokens(), 0);
}

#[test]
fn rotation_through_kv_keeps_old_tokens_for_the_grace_period() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    let old = hs("old", "old-secret-0123456789");
    let new = hs("new", "new-secret-0123456789");

    assert_eq!(
        status(&plugin, &host, &bearer(&old)),
        401,
        "no kv entry yet"
    );
    host.kv_put(
        "auth/keys",
        kv_keys(&[("old", "old-secret-0123456789")], "10m"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&old)), 200);
    assert_eq!(status(&plugin, &host, &bearer(&new)), 401);

    // Rotate: the new key only.
    host.kv_put(
        "auth/keys",
        kv_keys(&[("new", "new-secret-0123456789")], "10m"),
    );
    assert_eq!(
        status(&plugin, &host, &bearer(&new)),
        200,
        "new key right away"
    );
    assert_eq!(
        status(&plugin, &host, &bearer(&old)),
        200,
        "old key in grace"
    );
    assert!(host.state("retired:old").is_some());

    // Another instance, started after the change, agrees (shared state).
    let other: Auth = host.init(config()).unwrap();
    assert_eq!(
        status(&other, &host, &bearer(&old)),
        200,
        "other instance, in grace"
    );

    host.advance(Duration::from_secs(9 * 60));
    assert_eq!(
        status(&plugin, &host, &bearer(&old)),
        200,
        "9 minutes later"
    );
    host.advance(Duration::from_secs(61));
    assert_eq!(status(&plugin, &host, &bearer(&old)), 401, "after grace");
    assert_eq!(
        status(&other, &host, &bearer(&old)),
        401,
        "after grace, other"
    );
    assert_eq!(status(&plugin, &host, &bearer(&new)), 200);

    // A forged token for the retired kid with another secret never passed.
    host.kv_put(
        "auth/keys",
        kv_keys(&[("new2", "x-secret-0123456789")], "10m"),
    );
    let forged = hs("new", "wrong-secret-0123456");
    assert_eq!(status(&plugin, &host, &bearer(&forged)), 401);
}

#[test]
fn a_bad_kv_entry_keeps_the_previous_keys() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    let old = hs("old", "old-secret-0123456789");
    host.kv_put(
        "auth/keys",
        kv_keys(&[("old", "old-secret-0123456789")], "10m"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&old)), 200);
    host.kv_put("auth/keys", r#"{"keys":[{"kid":"x","alg":"none"}]}"#);
    assert_eq!(status(&plugin, &host, &bearer(&old)), 200);
    assert!(
        host.logs()
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("auth/keys"))
    );
}

#[test]
fn config_errors_name_the_field() {
    let host = TestHost::new();
    let cases = [
        (json!({"keyz": []}), "unknown field `keyz`"),
        (
            json!({"keys": [{"kid": "k", "alg": "HS256", "secret": "s", "pem": RSA_PUBLIC}]}),
            "keys[0]: give exactly one of secret, pem, jwk",
        ),
        (
            json!({"keys": [{"kid": "k", "alg": "HS256", "pem": RSA_PUBLIC}]}),
            "keys[0]: secret: required for HS256",
        ),
        (
            json!({"keys": [{"kid": "k", "alg": "RS257", "pem": RSA_PUBLIC}]}),
            "keys[0]: alg: unsupported algorithm `RS257`",
        ),
        (
            json!({"keys": [{"kid": "k", "alg": "RS256", "pem": RSA_PRIVATE}]}),
            "keys[0]: pem: must be a public key",
        ),
        (
            // Material of another family than the alg pins: refused at import by the host.
            json!({"keys": [{"kid": "k", "alg": "RS256", "pem": ED_PUBLIC}]}),
            "keys[0]: pem: not a valid Rsa public key: RS256: invalid public key",
        ),
        (
            json!({"keys": [{"kid": "k", "alg": "ES256", "pem": EC384_PUBLIC}]}),
            "keys[0]: pem: not a valid Ec public key: ES256: invalid public key",
        ),
        (json!({"leeway": "30 fortnights"}), "leeway"),
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

#[test]
fn token_cache_rechecks_time_claims_on_every_hit() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    // Expires in 60 s; the config allows 30 s of leeway.
    let token = sign(
        Algorithm::HS256,
        "hs",
        &with(claims(), json!({"exp": NOW + 60})),
    );
    assert_eq!(status(&plugin, &host, &bearer(&token)), 200);
    assert_eq!(plugin.cached_tokens(), 1, "a verified token is cached");
    let again = bearer(&token);
    assert_eq!(status(&plugin, &host, &again), 200, "cache hit");
    assert_eq!(
        again.header_str("x-user-id").as_deref(),
        Some("user-1"),
        "claims are forwarded on a hit too"
    );
    host.advance(Duration::from_secs(60 + 31));
    assert_eq!(
        challenge(&plugin, &host, &bearer(&token)).as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"token expired\""),
        "an expired token is refused on a cache hit"
    );
    assert_eq!(plugin.cached_tokens(), 0, "and forgotten");

    // Not yet valid: never cached, so valid later only once verified for real.
    let early = sign(
        Algorithm::HS256,
        "hs",
        &with(claims(), json!({"nbf": NOW + 200, "exp": NOW + 900})),
    );
    assert_eq!(status(&plugin, &host, &bearer(&early)), 401);
    assert_eq!(plugin.cached_tokens(), 0, "refused tokens are not cached");
}

#[test]
fn token_cache_keyed_on_the_raw_header_hits_only_the_identical_value() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    let token = sign(Algorithm::HS256, "hs", &claims());
    assert_eq!(status(&plugin, &host, &bearer(&token)), 200);
    assert_eq!(plugin.cached_tokens(), 1);
    let raw = format!("Bearer {token}");
    let (signed, signature) = token.rsplit_once('.').unwrap();
    // Another signature byte (the first one changes decoded bits whatever the length).
    let flipped = {
        let mut s = signature.to_owned();
        let c = if s.starts_with('A') { "B" } else { "A" };
        s.replace_range(0..1, c);
        format!("{signed}.{s}")
    };
    let forged_claims = format!(
        "{}.{}.{signature}",
        signed.split('.').next().unwrap(),
        b64(br#"{"iss":"https://issuer.example","aud":"orders","sub":"admin","exp":9999999999}"#)
    );
    for (what, value) in [
        ("a prefix", raw[..raw.len() - 1].to_owned()),
        (
            "a prefix ending at a word boundary",
            raw[..raw.len() - 8].to_owned(),
        ),
        ("an extension", format!("{raw}x")),
        (
            "an extension by a NUL word",
            format!("{raw}\0\0\0\0\0\0\0\0"),
        ),
        ("another signature", format!("Bearer {flipped}")),
        (
            "other claims under the same signature",
            format!("Bearer {forged_claims}"),
        ),
        ("the token without the scheme", token.clone()),
        ("another scheme", format!("Basic {token}")),
    ] {
        let request = TestRequest::get("/api/orders").with_header("authorization", &value);
        assert_eq!(status(&plugin, &host, &request), 401, "{what}");
        assert_eq!(request.header_str("x-user-id"), None, "{what}");
    }
    // Two values of which one is the cached one: refused, as without the cache.
    let two = TestRequest::get("/api/orders")
        .with_header("authorization", &raw)
        .with_header("authorization", &raw);
    assert_eq!(
        challenge(&plugin, &host, &two).as_deref(),
        Some(
            "Bearer error=\"invalid_token\", error_description=\"multiple Authorization headers\""
        )
    );
    // The same token written differently is its own entry, verified once.
    let lower =
        TestRequest::get("/api/orders").with_header("authorization", format!("bearer  {token} "));
    assert_eq!(status(&plugin, &host, &lower), 200);
    assert_eq!(lower.header_str("x-user-id").as_deref(), Some("user-1"));
    assert_eq!(plugin.cached_tokens(), 2, "refused values are never cached");
    // And the cached value still hits, forwarding its own claims.
    let again = bearer(&token);
    assert_eq!(status(&plugin, &host, &again), 200);
    assert_eq!(again.header_str("x-user-id").as_deref(), Some("user-1"));
}

#[test]
fn token_cache_never_outlives_a_rotated_key() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    let old = hs("old", "old-secret-0123456789");
    host.kv_put(
        "auth/keys",
        kv_keys(&[("old", "old-secret-0123456789")], "10m"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&old)), 200);
    assert_eq!(plugin.cached_tokens(), 1);

    // Rotation empties the cache; the old token is verified again with the retired key and
    // cached again, but only until the grace period ends.
    host.kv_put(
        "auth/keys",
        kv_keys(&[("new", "new-secret-0123456789")], "10m"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&old)), 200, "in grace");
    assert_eq!(plugin.cached_tokens(), 1, "cached again after the rotation");
    host.advance(Duration::from_secs(10 * 60 + 1));
    assert_eq!(
        status(&plugin, &host, &bearer(&old)),
        401,
        "a cached token stops at the end of its key's grace period"
    );

    // Removed without grace: refused at once, cached or not.
    let new = hs("new", "new-secret-0123456789");
    assert_eq!(status(&plugin, &host, &bearer(&new)), 200);
    host.kv_put(
        "auth/keys",
        kv_keys(&[("newer", "newer-secret-0123456789")], "0s"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&new)), 401);

    // A key put back under the same kid with other material does not honour tokens cached
    // for the old material.
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    host.kv_put(
        "auth/keys",
        kv_keys(&[("k", "first-secret-0123456789")], "0s"),
    );
    let first = hs("k", "first-secret-0123456789");
    assert_eq!(status(&plugin, &host, &bearer(&first)), 200);
    host.kv_put(
        "auth/keys",
        kv_keys(&[("k", "second-secret-012345678")], "0s"),
    );
    assert_eq!(status(&plugin, &host, &bearer(&first)), 401);
}

#[test]
fn token_cache_can_be_turned_off() {
    let host = TestHost::new();
    let plugin: Auth = host
        .init(with(config(), json!({"token_cache_size": 0})))
        .unwrap();
    let token = sign(Algorithm::HS256, "hs", &claims());
    assert_eq!(status(&plugin, &host, &bearer(&token)), 200);
    assert_eq!(status(&plugin, &host, &bearer(&token)), 200);
    assert_eq!(plugin.cached_tokens(), 0);
}

#[test]
fn an_instance_that_notices_a_rotation_late_grants_no_fresh_grace() {
    let host = TestHost::new();
    let first: Auth = host.init(config()).unwrap();
    let late: Auth = host.init(config()).unwrap();
    let old = hs("old", "old-secret-0123456789");
    host.kv_put(
        "auth/keys",
        kv_keys(&[("old", "old-secret-0123456789")], "10m"),
    );
    assert_eq!(status(&first, &host, &bearer(&old)), 200);
    assert_eq!(status(&late, &host, &bearer(&old)), 200);
    host.kv_put(
        "auth/keys",
        kv_keys(&[("new", "new-secret-0123456789")], "10m"),
    );
    assert_eq!(status(&first, &host, &bearer(&old)), 200, "in grace");
    // `late` serves nothing until the grace period is over (a pooled instance left idle).
    host.advance(Duration::from_secs(10 * 60 + 1));
    assert_eq!(
        status(&late, &host, &bearer(&old)),
        401,
        "the retirement time is the first instance's, not the late one's"
    );
    assert_eq!(status(&first, &host, &bearer(&old)), 401);
}

#[test]
fn keys_are_imported_into_the_host_once_not_per_request() {
    let host = TestHost::new();
    let plugin: Auth = host.init(config()).unwrap();
    assert_eq!(host.crypto_imports(), 7, "one import per configured key");
    for (i, (alg, kid)) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS384, "ps"),
        (Algorithm::ES256, "es256"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::HS512, "hs512"),
    ]
    .into_iter()
    .enumerate()
    {
        // A fresh token each time: no token-cache hit, the signature is verified.
        let token = sign(
            alg,
            kid,
            &with(claims(), json!({"sub": format!("user-{i}")})),
        );
        assert_eq!(status(&plugin, &host, &bearer(&token)), 200, "{alg:?}");
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            status(&plugin, &host, &bearer(&forged)),
            401,
            "{alg:?} forged"
        );
    }
    assert_eq!(host.crypto_imports(), 7, "verifying imported nothing more");
}
