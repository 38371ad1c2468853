//! Contract 0.2.0 through a running gateway: a component built from source against
//! `wit/plugin.wit` (the `v02` fixture) and the built-in `auth`, which verifies signatures
//! with the gateway's native `crypto`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use aws_lc_rs::{hmac, rsa};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;

use crate::harness::*;

/// A gateway with the v02 fixture on `/v`, configured with `config` (its `v02.toml`).
async fn gateway_with_v02(
    dir: &std::path::Path,
    upstream: std::net::SocketAddr,
    config: &str,
) -> sluice::Gateway {
    std::fs::copy(fixture("v02"), dir.join("v02.wasm")).unwrap();
    std::fs::write(dir.join("v02.toml"), config).unwrap();
    gateway_with_plugin(dir, "v02", "/v", upstream).await
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_0_2_plugin_is_called_only_for_the_hooks_it_declares() {
    let up = Upstream::named("upstream").await;
    for (hooks, request_runs, response_runs) in [
        ("both", true, true),
        ("request", true, false),
        ("response", false, true),
        ("none", false, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway_with_v02(dir.path(), up.addr, &format!("hooks = \"{hooks}\"\n")).await;
        let (status, headers, _) = get(gw.listen_addr, "/v/plain").await;
        assert_eq!(status, 200, "{hooks}");
        assert_eq!(
            up.last().headers.contains_key("x-v02-request"),
            request_runs,
            "{hooks}: on-request"
        );
        assert_eq!(
            headers.contains_key("x-v02-response"),
            response_runs,
            "{hooks}: on-response"
        );
        let plugins: serde_json::Value =
            serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
        let view = plugin_view(&plugins, "v02");
        assert_eq!(view["contract"], "0.2.0");
        assert_eq!(view["world"], "sluice:plugin/plugin@0.2.0");
        assert_eq!(
            view["hooks"],
            serde_json::json!({"on_request": request_runs, "on_response": response_runs})
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_reloaded_config_declares_its_hooks_afresh() {
    // The hooks a plugin declared belong to the loaded version: a changed configuration
    // (`v02.toml`, picked up by the directory watcher) is a new version with its own `init`.
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_v02(dir.path(), up.addr, "hooks = \"none\"\n").await;
    let (status, headers, _) = get(gw.listen_addr, "/v/plain").await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-v02-response"));
    assert!(!up.last().headers.contains_key("x-v02-request"));

    let tmp = dir.path().join(".v02.toml.tmp");
    std::fs::write(&tmp, "hooks = \"both\"\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("v02.toml")).unwrap();
    assert_eventually!(
        get(gw.listen_addr, "/v/plain")
            .await
            .1
            .contains_key("x-v02-response"),
        "on-response called after the reload"
    );
    assert!(up.last().headers.contains_key("x-v02-request"));
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    assert_eq!(
        plugin_view(&plugins, "v02")["hooks"],
        serde_json::json!({"on_request": true, "on_response": true})
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn state_apply_runs_a_batch_and_reports_each_step() {
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_v02(dir.path(), up.addr, "").await;
    get(gw.listen_addr, "/v/apply").await;
    assert_eq!(
        up.last().headers["x-apply"],
        "incr=1;get=1;set;incr-error=key `s` does not hold an integer counter;delete=true"
    );
    get(gw.listen_addr, "/v/apply").await;
    assert_eq!(
        up.last().headers["x-apply"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("incr=2"),
        "the counter is shared state"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn crypto_verifies_natively_caps_keys_and_refuses_bad_material_without_a_trap() {
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_v02(dir.path(), up.addr, "").await;
    let at = gw.listen_addr;

    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"k"), b"sluice");
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let with_sig = |sig: String| {
        Request::get("/v/hmac")
            .header("x-sig", sig)
            .body(full(""))
            .unwrap()
    };
    send(at, with_sig(hex.clone())).await;
    assert_eq!(up.last().headers["x-verify"], "true");
    let mut tampered = hex.clone();
    tampered.replace_range(0..2, if &hex[0..2] == "00" { "01" } else { "00" });
    send(at, with_sig(tampered)).await;
    assert_eq!(up.last().headers["x-verify"], "false");
    send(at, with_sig(hex[..62].to_owned())).await;
    assert_eq!(up.last().headers["x-verify"], "false", "a short tag");

    // 256 keys per instance; dropping them frees the places (a second request can again).
    for _ in 0..2 {
        let (status, _, _) = get(at, "/v/keys").await;
        assert_eq!(status, 200);
        assert_eq!(
            up.last().headers["x-keys"],
            "256;hs256: this instance already holds 256 keys (drop unused ones)"
        );
    }
    let (status, _, _) = get(at, "/v/bad-key").await;
    assert_eq!(status, 200, "bad material is an err, not a trap");
    let refused = up.last().headers["x-bad-key"].to_str().unwrap().to_owned();
    assert!(
        refused.starts_with("es256: the ec point is not on the curve"),
        "{refused}"
    );
    gw.shutdown().await;
}

/// A signed JWT: `header.claims.signature`, the signature made by `sign`.
fn jwt(alg: &str, kid: &str, sub: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + 300});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Signs with an RSA key pair and a padding (PKCS#1 v1.5 or PSS).
fn rsa_signer<'a>(
    pair: &'a RsaKeyPair,
    rng: &'a SystemRandom,
    padding: &'static dyn signature::RsaEncoding,
) -> impl Fn(&[u8]) -> Vec<u8> + 'a {
    move |m| {
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(padding, rng, m, &mut sig).unwrap();
        sig
    }
}

fn spki_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PUBLIC KEY", der.to_vec()))
}

#[tokio::test]
async fn auth_verifies_rs256_ps256_es256_and_eddsa_through_the_host_and_refuses_forgeries() {
    let rng = SystemRandom::new();
    let rsa_pair = RsaKeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let ec_pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let other_ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let ed_pair = Ed25519KeyPair::generate().unwrap();
    let rsa_pem = spki_pem(rsa_pair.public_key().as_der().unwrap().as_ref());
    let ec_pem = spki_pem(ec_pair.public_key().as_der().unwrap().as_ref());
    let ed_pem = spki_pem(ed_pair.public_key().as_der().unwrap().as_ref());

    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[services.s]
instances = ["{}"]
[[routes]]
path = "/"
service = "s"
plugins = ["auth"]
[plugin.auth]
forward_claims = {{ sub = "x-user-id" }}
[[plugin.auth.keys]]
kid = "rs"
alg = "RS256"
pem = """
{rsa_pem}"""
[[plugin.auth.keys]]
kid = "ps"
alg = "PS256"
pem = """
{rsa_pem}"""
[[plugin.auth.keys]]
kid = "es"
alg = "ES256"
pem = """
{ec_pem}"""
[[plugin.auth.keys]]
kid = "ed"
alg = "EdDSA"
pem = """
{ed_pem}"""
"#,
        dir.path().display(),
        plugin_cache_dir().display(),
        up.addr
    ))
    .await;
    let at = gw.listen_addr;
    let call = |token: String| {
        send(
            at,
            Request::get("/orders")
                .header("authorization", format!("Bearer {token}"))
                .body(full(""))
                .unwrap(),
        )
    };

    let rsa_sign =
        |padding: &'static dyn signature::RsaEncoding| rsa_signer(&rsa_pair, &rng, padding);
    let es_sign = |m: &[u8]| ec_pair.sign(&rng, m).unwrap().as_ref().to_vec();
    let tokens = [
        (
            "RS256",
            jwt(
                "RS256",
                "rs",
                "rs-user",
                rsa_sign(&signature::RSA_PKCS1_SHA256),
            ),
        ),
        (
            "PS256",
            jwt(
                "PS256",
                "ps",
                "ps-user",
                rsa_sign(&signature::RSA_PSS_SHA256),
            ),
        ),
        ("ES256", jwt("ES256", "es", "es-user", es_sign)),
        (
            "EdDSA",
            jwt("EdDSA", "ed", "ed-user", |m| {
                ed_pair.sign(m).as_ref().to_vec()
            }),
        ),
    ];
    for (alg, token) in &tokens {
        let (status, headers, _) = call(token.clone()).await;
        assert_eq!(status, 200, "{alg}: {headers:?}");
        let user = up.last().headers["x-user-id"].to_str().unwrap().to_owned();
        assert_eq!(user, format!("{}-user", alg[..2].to_lowercase()), "{alg}");
        // A repeated token (the verified-token cache) still passes.
        assert_eq!(call(token.clone()).await.0, 200, "{alg} again");

        // The same token with its signature altered.
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        bytes[10] ^= 0x40;
        let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        let (status, headers, _) = call(forged).await;
        assert_eq!(status, 401, "{alg}: a tampered signature");
        assert!(
            header(&headers, "www-authenticate")
                .unwrap()
                .contains("invalid signature"),
            "{alg}: {headers:?}"
        );
    }

    // Signed by another P-256 key.
    let foreign = jwt("ES256", "es", "mallory", |m| {
        other_ec.sign(&rng, m).unwrap().as_ref().to_vec()
    });
    assert_eq!(call(foreign).await.0, 401, "another key's signature");

    // Alg confusion: HS256 "signed" with the RSA public key's PEM as the HMAC secret, naming
    // the RSA key. The key pins RS256, and a public key is never an HMAC secret.
    let confused = jwt("HS256", "rs", "mallory", |m| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, rsa_pem.as_bytes()), m)
            .as_ref()
            .to_vec()
    });
    let (status, headers, _) = call(confused).await;
    assert_eq!(status, 401);
    assert!(
        header(&headers, "www-authenticate")
            .unwrap()
            .contains("algorithm not allowed for this key"),
        "{headers:?}"
    );
    // An ES256 token naming the EdDSA key.
    let mismatched = jwt("ES256", "ed", "mallory", es_sign);
    assert_eq!(call(mismatched).await.0, 401, "alg/key mismatch");
    gw.shutdown().await;
}

#[tokio::test]
async fn kv_version_reads_a_version_without_the_value_under_the_same_rules_as_get() {
    let up = Upstream::named("upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_v02(dir.path(), up.addr, "hooks = \"request\"\n").await;
    let put = |key: &str, value: &'static str| {
        Request::put(format!("/admin/kv/{key}"))
            .body(full(value))
            .unwrap()
    };
    let (at, upstream) = (gw.listen_addr, &up);
    let versions = |key: &'static str| async move {
        get(at, &format!("/v/kv?{key}")).await;
        let h = upstream.last().headers;
        (
            header(&h, "x-kv-version").unwrap(),
            header(&h, "x-kv-get").unwrap(),
        )
    };
    assert_eq!(
        versions("v02/k").await,
        ("none".into(), "none".into()),
        "absent"
    );
    assert_eq!(send(gw.admin_addr, put("v02/k", "one")).await.0, 200);
    assert_eq!(send(gw.admin_addr, put("auth/keys", "secret")).await.0, 200);
    let (v1, g1) = versions("v02/k").await;
    assert_eq!(v1, g1, "its own key: the version `get` sees");
    assert_ne!(v1, "none");
    assert_eq!(send(gw.admin_addr, put("v02/k", "two")).await.0, 200);
    let (v2, g2) = versions("v02/k").await;
    assert_eq!(v2, g2);
    assert!(
        v2.parse::<u64>().unwrap() > v1.parse::<u64>().unwrap(),
        "{v1} then {v2}"
    );
    assert_eq!(
        versions("auth/keys").await,
        ("none".into(), "none".into()),
        "another plugin's key has no version either"
    );
    gw.shutdown().await;
}
