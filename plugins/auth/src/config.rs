//! The plugin's configuration: parsed and validated once in `init`, with errors naming the
//! offending field. Keys are imported into the gateway's `crypto` here, once per key (the
//! gateway checks the material); unit tests run them against the SDK's test host.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use serde_json::Value;
use sluice_plugin_sdk::crypto::{self, KeyMaterial};

/// Default `leeway`.
pub const DEFAULT_LEEWAY_MS: u64 = 30_000;
/// Default `max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Default `grace` of the `auth/keys` kv entry.
pub const DEFAULT_GRACE_MS: u64 = 10 * 60 * 1000;
/// Default `jwks_refresh`.
pub const DEFAULT_JWKS_REFRESH_MS: u64 = 5 * 60 * 1000;
/// Default `jwks_cooldown`.
pub const DEFAULT_JWKS_COOLDOWN_MS: u64 = 30 * 1000;
/// Default `jwks_max_stale`.
pub const DEFAULT_JWKS_MAX_STALE_MS: u64 = 60 * 60 * 1000;

const ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// The validated configuration.
#[derive(Debug)]
pub struct AuthConfig {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required member of `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `max_age`.
    pub leeway_ms: u64,
    /// Path prefixes (segment-aware) that pass without a token.
    pub public_paths: Vec<String>,
    /// Claim -> header (lower-case) sent upstream.
    pub forward_claims: Vec<(String, String)>,
    /// Claims that must be present (and not null).
    pub required_claims: Vec<String>,
    /// Maximum age of a token, from `iat`.
    pub max_age_ms: Option<u64>,
    /// Tokens longer than this are refused before any decoding.
    pub max_token_bytes: usize,
    /// Keys from the configuration, by kid.
    pub keys: BTreeMap<String, Rc<Key>>,
    /// Keys fetched from a JWKS URL, when configured.
    pub jwks: Option<JwksConfig>,
    /// Verified tokens remembered per instance (0: off).
    pub token_cache_size: usize,
}

/// Where and how often to fetch a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// The `http://` URL of the key set.
    pub url: String,
    /// The cached copy is refetched once it is this old.
    pub refresh_ms: u64,
    /// Minimum time between fetches triggered by an unknown kid.
    pub cooldown_ms: u64,
    /// How long the last good copy keeps serving while the endpoint fails.
    pub max_stale_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Option<String>,
    #[serde(default)]
    public_paths: Vec<String>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    required_claims: Vec<String>,
    max_age: Option<String>,
    max_token_bytes: Option<usize>,
    #[serde(default)]
    keys: Vec<Value>,
    jwks_url: Option<String>,
    jwks_refresh: Option<String>,
    jwks_cooldown: Option<String>,
    jwks_max_stale: Option<String>,
    token_cache_size: Option<usize>,
}

/// A verification key: pinned to one algorithm.
pub struct Key {
    /// Its id, matched against the token header's `kid`.
    pub kid: String,
    /// The only algorithm a token verified with this key may use.
    pub alg: Algorithm,
    /// The key, imported into the gateway's `crypto` (signatures are verified there).
    pub verifier: crypto::Key,
    /// The key as configured (JSON), kept so a retired kv key can be shared with other
    /// instances through the plugin's state.
    pub raw: Value,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: String,
    alg: String,
    secret: Option<String>,
    pem: Option<String>,
    jwk: Option<Value>,
}

impl AuthConfig {
    /// Parses and validates the configuration JSON.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let raw: RawConfig =
            RawConfig::deserialize(value).map_err(|e| format!("invalid config: {e}"))?;
        let leeway_ms = match &raw.leeway {
            Some(text) => {
                parse_duration(text).map_err(|e| format!("invalid config: leeway: {e}"))?
            }
            None => DEFAULT_LEEWAY_MS,
        };
        let max_age_ms = raw
            .max_age
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| format!("invalid config: max_age: {e}"))?;
        if max_age_ms == Some(0) {
            return Err("invalid config: max_age: must be greater than 0".into());
        }
        let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        if max_token_bytes == 0 {
            return Err("invalid config: max_token_bytes: must be at least 1".into());
        }
        for (i, path) in raw.public_paths.iter().enumerate() {
            if !path.starts_with('/') {
                return Err(format!(
                    "invalid config: public_paths[{i}]: `{path}` must start with `/`"
                ));
            }
        }
        let mut forward_claims = Vec::new();
        for (claim, header) in &raw.forward_claims {
            if claim.is_empty() {
                return Err("invalid config: forward_claims: empty claim name".into());
            }
            if !is_header_name(header) {
                return Err(format!(
                    "invalid config: forward_claims.{claim}: `{header}` is not a valid header name"
                ));
            }
            if header.eq_ignore_ascii_case("authorization") {
                // It would replace the token the plugin reads, with a claim of that token.
                return Err(format!(
                    "invalid config: forward_claims.{claim}: `{header}` is the token's own header"
                ));
            }
            forward_claims.push((claim.clone(), header.to_ascii_lowercase()));
        }
        for (i, claim) in raw.required_claims.iter().enumerate() {
            if claim.is_empty() {
                return Err(format!(
                    "invalid config: required_claims[{i}]: empty claim name"
                ));
            }
        }
        let keys = parse_keys(&raw.keys, "keys").map_err(|e| format!("invalid config: {e}"))?;
        let jwks = parse_jwks(&raw).map_err(|e| format!("invalid config: {e}"))?;
        Ok(Self {
            issuer: raw.issuer,
            audience: raw.audience,
            leeway_ms,
            public_paths: raw.public_paths,
            forward_claims,
            required_claims: raw.required_claims,
            max_age_ms,
            max_token_bytes,
            keys,
            jwks,
            token_cache_size: raw
                .token_cache_size
                .unwrap_or(crate::cache::DEFAULT_TOKEN_CACHE_SIZE),
        })
    }

    /// Whether `path` is under one of the public prefixes (whole segments only: `/health`
    /// covers `/health` and `/health/live`, not `/healthz`). The gateway hands plugins the
    /// canonical path (dot segments resolved, `%2F`, backslash and `..;` refused unless
    /// `[server] escaped_slashes` says otherwise); whatever it lets through, a path that an
    /// upstream could still resolve elsewhere (dot segments, `..;`, encoded or back slashes)
    /// never counts as public.
    pub fn is_public(&self, path: &str) -> bool {
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
            return false;
        }
        if path.split('/').any(|s| {
            let s = s.to_ascii_lowercase();
            let before_params = s.split(';').next().unwrap_or("");
            before_params == "." || before_params == ".." || s.contains("%2e")
        }) {
            return false;
        }
        self.public_paths.iter().any(|prefix| {
            path == prefix
                || (path.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || path.as_bytes()[prefix.len()] == b'/'))
        })
    }
}

/// The `jwks_*` fields: all optional, but the durations need `jwks_url`.
fn parse_jwks(raw: &RawConfig) -> Result<Option<JwksConfig>, String> {
    let duration = |field: &str, text: &Option<String>, default: u64| -> Result<u64, String> {
        let ms = match text {
            Some(text) => parse_duration(text).map_err(|e| format!("{field}: {e}"))?,
            None => default,
        };
        if ms == 0 {
            return Err(format!("{field}: must be greater than 0"));
        }
        Ok(ms)
    };
    let refresh_ms = duration("jwks_refresh", &raw.jwks_refresh, DEFAULT_JWKS_REFRESH_MS)?;
    let cooldown_ms = duration(
        "jwks_cooldown",
        &raw.jwks_cooldown,
        DEFAULT_JWKS_COOLDOWN_MS,
    )?;
    let max_stale_ms = duration(
        "jwks_max_stale",
        &raw.jwks_max_stale,
        DEFAULT_JWKS_MAX_STALE_MS,
    )?;
    let Some(url) = &raw.jwks_url else {
        for (field, value) in [
            ("jwks_refresh", &raw.jwks_refresh),
            ("jwks_cooldown", &raw.jwks_cooldown),
            ("jwks_max_stale", &raw.jwks_max_stale),
        ] {
            if value.is_some() {
                return Err(format!("{field}: needs jwks_url"));
            }
        }
        return Ok(None);
    };
    if !is_http_url(url) {
        return Err(format!(
            "jwks_url: `{url}` is not an http:// URL with a host (the gateway's outbound HTTP \
             is http only)"
        ));
    }
    if max_stale_ms < refresh_ms {
        return Err("jwks_max_stale: must be at least jwks_refresh".into());
    }
    Ok(Some(JwksConfig {
        url: url.clone(),
        refresh_ms,
        cooldown_ms,
        max_stale_ms,
    }))
}

/// `http://host[:port][/path][?query]`, without whitespace or control characters.
fn is_http_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty()
        && !host.contains('@')
        && !host.starts_with(':')
        && url.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses a list of keys (`what` names the field in errors); kids must be unique.
pub fn parse_keys(keys: &[Value], what: &str) -> Result<BTreeMap<String, Rc<Key>>, String> {
    let mut out = BTreeMap::new();
    for (i, value) in keys.iter().enumerate() {
        let key = parse_key(value).map_err(|e| format!("{what}[{i}]: {e}"))?;
        if out.contains_key(&key.kid) {
            return Err(format!("{what}[{i}].kid: duplicate kid `{}`", key.kid));
        }
        out.insert(key.kid.clone(), Rc::new(key));
    }
    Ok(out)
}

/// Parses one key. Each key pins its algorithm, and the material must fit it: an HMAC key is
/// only ever a `secret`, an asymmetric key only ever a public `pem` or `jwk`.
pub fn parse_key(value: &Value) -> Result<Key, String> {
    let raw = RawKey::deserialize(value).map_err(|e| e.to_string())?;
    if raw.kid.is_empty() {
        return Err("kid: must not be empty".into());
    }
    let alg = Algorithm::from_str(&raw.alg).map_err(|_| {
        format!(
            "alg: unsupported algorithm `{}` (expected one of {ALGORITHMS})",
            raw.alg
        )
    })?;
    let materials = [raw.secret.is_some(), raw.pem.is_some(), raw.jwk.is_some()]
        .iter()
        .filter(|m| **m)
        .count();
    if materials > 1 {
        return Err("give exactly one of secret, pem, jwk (found several)".into());
    }
    let verifier = match alg.family() {
        AlgorithmFamily::Hmac => {
            let Some(secret) = &raw.secret else {
                return Err(format!(
                    "secret: required for {alg:?} (HMAC keys take only a secret)"
                ));
            };
            if secret.is_empty() {
                return Err("secret: must not be empty".into());
            }
            import(alg, KeyMaterial::Secret(secret.as_bytes()))
                .map_err(|e| format!("secret: {e}"))?
        }
        family => {
            if raw.secret.is_some() {
                return Err(format!(
                    "secret: not allowed for {alg:?} (use pem or jwk with a public key)"
                ));
            }
            if let Some(pem) = &raw.pem {
                if pem.contains("PRIVATE KEY") {
                    return Err("pem: must be a public key, not a private key".into());
                }
                import(alg, KeyMaterial::Pem(pem))
                    .map_err(|e| format!("pem: not a valid {family:?} public key: {e}"))?
            } else if let Some(jwk) = &raw.jwk {
                let jwk: Jwk =
                    serde_json::from_value(jwk.clone()).map_err(|e| format!("jwk: {e}"))?;
                if let Some(jwk_alg) = jwk.common.key_algorithm
                    && jwk_alg.to_string() != raw.alg
                {
                    return Err(format!(
                        "jwk: its alg `{jwk_alg}` differs from the key's alg `{}`",
                        raw.alg
                    ));
                }
                import_jwk(alg, &jwk).map_err(|e| format!("jwk: {e}"))?
            } else {
                return Err(format!("pem or jwk: required for {alg:?}"));
            }
        }
    };
    Ok(Key {
        kid: raw.kid,
        alg,
        verifier,
        raw: value.clone(),
    })
}

/// The gateway's name of a JWS algorithm.
pub fn crypto_alg(alg: Algorithm) -> Result<crypto::Algorithm, String> {
    Ok(match alg {
        Algorithm::HS256 => crypto::Algorithm::Hs256,
        Algorithm::HS384 => crypto::Algorithm::Hs384,
        Algorithm::HS512 => crypto::Algorithm::Hs512,
        Algorithm::RS256 => crypto::Algorithm::Rs256,
        Algorithm::RS384 => crypto::Algorithm::Rs384,
        Algorithm::RS512 => crypto::Algorithm::Rs512,
        Algorithm::PS256 => crypto::Algorithm::Ps256,
        Algorithm::PS384 => crypto::Algorithm::Ps384,
        Algorithm::PS512 => crypto::Algorithm::Ps512,
        Algorithm::ES256 => crypto::Algorithm::Es256,
        Algorithm::ES384 => crypto::Algorithm::Es384,
        Algorithm::EdDSA => crypto::Algorithm::EdDsa,
        other => return Err(format!("{other:?} is not supported")),
    })
}

/// Imports key material into the gateway for `alg`, once: the key then verifies every token.
pub fn import(alg: Algorithm, material: KeyMaterial<'_>) -> Result<crypto::Key, String> {
    crypto::Key::import(crypto_alg(alg)?, material).map_err(|e| e.to_string())
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("`{field}` is not base64url"))
}

/// Imports a public JWK (RSA `n`/`e`, EC `x`/`y`, OKP Ed25519 `x`) for `alg`. A key of
/// another family than `alg` needs is refused here, before the gateway sees it.
pub fn import_jwk(alg: Algorithm, jwk: &Jwk) -> Result<crypto::Key, String> {
    let family = alg.family();
    match (&jwk.algorithm, family) {
        (AlgorithmParameters::RSA(rsa), AlgorithmFamily::Rsa) => {
            let (n, e) = (b64("n", &rsa.n)?, b64("e", &rsa.e)?);
            import(alg, KeyMaterial::Rsa { n: &n, e: &e })
        }
        (AlgorithmParameters::EllipticCurve(ec), AlgorithmFamily::Ec) => {
            let curve_fits = matches!(
                (alg, &ec.curve),
                (Algorithm::ES256, EllipticCurve::P256) | (Algorithm::ES384, EllipticCurve::P384)
            );
            if !curve_fits {
                return Err(format!("curve {:?} does not fit {alg:?}", ec.curve));
            }
            let (x, y) = (b64("x", &ec.x)?, b64("y", &ec.y)?);
            import(alg, KeyMaterial::Ec { x: &x, y: &y })
        }
        (AlgorithmParameters::OctetKeyPair(okp), AlgorithmFamily::Ed)
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            let x = b64("x", &okp.x)?;
            import(alg, KeyMaterial::Ed25519(&x))
        }
        _ => Err(format!("not a {family:?} key, which {alg:?} needs")),
    }
}

/// Durations as configs write them (the SDK's parser).
pub use sluice_plugin_sdk::parse_duration_ms as parse_duration;

/// RFC 9110 token.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The `auth/keys` kv entry: `{"keys": [...], "grace": "10m"}`.
#[derive(Debug)]
pub struct KvKeys {
    /// Keys by kid.
    pub keys: BTreeMap<String, Rc<Key>>,
    /// How long a key removed from the entry stays valid.
    pub grace_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKvKeys {
    #[serde(default)]
    keys: Vec<Value>,
    grace: Option<String>,
}

impl KvKeys {
    /// Parses the kv entry's value.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawKvKeys =
            serde_json::from_slice(bytes).map_err(|e| format!("auth/keys: {e}"))?;
        let grace_ms = match &raw.grace {
            Some(text) => parse_duration(text).map_err(|e| format!("auth/keys: grace: {e}"))?,
            None => DEFAULT_GRACE_MS,
        };
        let keys = parse_keys(&raw.keys, "auth/keys: keys")?;
        Ok(Self { keys, grace_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(value: Value) -> String {
        // Keys are imported into the (test) host's crypto.
        let _host = sluice_plugin_sdk::testing::TestHost::new();
        AuthConfig::parse(&value).unwrap_err()
    }

    #[test]
    fn defaults() {
        let c = AuthConfig::parse(&json!({})).unwrap();
        assert_eq!(c.leeway_ms, 30_000);
        assert_eq!(c.max_token_bytes, 8192);
        assert!(c.keys.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(err(json!({"leeway": "soon"})).contains("leeway"));
        assert!(err(json!({"max_age": "1 fortnight"})).contains("max_age"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = err(json!({"issuer": "x", "audiance": "y"}));
        assert!(e.contains("unknown field `audiance`"), "{e}");
        let e = err(json!({"keys": [{"kid": "k", "alg": "HS256", "secret": "s", "pem": "p"}]}));
        assert!(
            e.contains("keys[0]") && e.contains("exactly one of secret, pem, jwk"),
            "{e}"
        );
        let e = err(json!({"keys": [{"kid": "k", "alg": "HS256"}]}));
        assert!(e.contains("keys[0]: secret: required"), "{e}");
        let e = err(json!({"keys": [{"kid": "k", "alg": "HS999", "secret": "s"}]}));
        assert!(
            e.contains("keys[0]: alg: unsupported algorithm `HS999`"),
            "{e}"
        );
        let e = err(json!({"keys": [{"kid": "k", "alg": "none", "secret": "s"}]}));
        assert!(e.contains("alg: unsupported algorithm `none`"), "{e}");
        let e = err(json!({"keys": [{"kid": "k", "alg": "RS256", "secret": "s"}]}));
        assert!(e.contains("keys[0]: secret: not allowed for RS256"), "{e}");
        let e = err(json!({"keys": [{"kid": "k", "alg": "HS256", "secret": "s", "colour": 1}]}));
        assert!(
            e.contains("keys[0]") && e.contains("unknown field `colour`"),
            "{e}"
        );
        let e = err(json!({"keys": [
            {"kid": "k", "alg": "HS256", "secret": "a"},
            {"kid": "k", "alg": "HS256", "secret": "b"}
        ]}));
        assert!(e.contains("keys[1].kid: duplicate kid `k`"), "{e}");
        let e = err(json!({"keys": [{"kid": "k", "alg": "RS256", "pem": "garbage"}]}));
        assert!(e.contains("keys[0]: pem"), "{e}");
        let e = err(json!({"public_paths": ["health"]}));
        assert!(e.contains("public_paths[0]"), "{e}");
        let e = err(json!({"forward_claims": {"sub": "x user"}}));
        assert!(e.contains("forward_claims.sub"), "{e}");
        let e = err(json!({"forward_claims": {"sub": "Authorization"}}));
        assert!(
            e.contains("forward_claims.sub: `Authorization` is the token's own header"),
            "{e}"
        );
        let e = err(json!({"max_token_bytes": 0}));
        assert!(e.contains("max_token_bytes"), "{e}");
    }

    #[test]
    fn jwks_fields() {
        let c = AuthConfig::parse(&json!({})).unwrap();
        assert_eq!(c.jwks, None);
        let c = AuthConfig::parse(&json!({"jwks_url": "http://idp:8080/jwks.json"})).unwrap();
        assert_eq!(
            c.jwks,
            Some(JwksConfig {
                url: "http://idp:8080/jwks.json".into(),
                refresh_ms: 300_000,
                cooldown_ms: 30_000,
                max_stale_ms: 3_600_000,
            })
        );
        let c = AuthConfig::parse(&json!({"jwks_url": "http://idp/k", "jwks_refresh": "1m",
            "jwks_cooldown": "5s", "jwks_max_stale": "2h"}))
        .unwrap();
        let j = c.jwks.unwrap();
        assert_eq!(
            (j.refresh_ms, j.cooldown_ms, j.max_stale_ms),
            (60_000, 5_000, 7_200_000)
        );
        for (config, want) in [
            (
                json!({"jwks_url": "https://idp/k"}),
                "jwks_url: `https://idp/k`",
            ),
            (json!({"jwks_url": "http:///k"}), "jwks_url"),
            (json!({"jwks_url": "http://a b/k"}), "jwks_url"),
            (
                json!({"jwks_url": "http://idp/k", "jwks_refresh": "soon"}),
                "jwks_refresh: `soon`",
            ),
            (
                json!({"jwks_url": "http://idp/k", "jwks_cooldown": "0s"}),
                "jwks_cooldown: must be",
            ),
            (
                json!({"jwks_url": "http://idp/k", "jwks_max_stale": "1m"}),
                "jwks_max_stale: must be at least",
            ),
            (
                json!({"jwks_refresh": "1m"}),
                "jwks_refresh: needs jwks_url",
            ),
            (
                json!({"jwks_url": "http://idp/k", "jwks_refesh": "1m"}),
                "unknown field `jwks_refesh`",
            ),
        ] {
            let e = err(config);
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn public_paths_are_segment_aware() {
        let c = AuthConfig::parse(&json!({"public_paths": ["/health", "/static/"]})).unwrap();
        assert!(c.is_public("/health"));
        assert!(c.is_public("/health/live"));
        assert!(!c.is_public("/healthz"));
        assert!(!c.is_public("/health/../admin"));
        assert!(!c.is_public("/health/%2e%2e/admin"));
        assert!(!c.is_public("/health/..;/admin"));
        assert!(!c.is_public("/health/.;x/admin"));
        assert!(!c.is_public("/health/..%2Fadmin"));
        assert!(!c.is_public("/health/..%5cadmin"));
        assert!(!c.is_public("/health/..\\admin"));
        assert!(c.is_public("/health/a;b"));
        assert!(c.is_public("/static/app.js"));
        assert!(!c.is_public("/static"));
        assert!(!c.is_public("/"));
    }

    #[test]
    fn kv_entry() {
        let _host = sluice_plugin_sdk::testing::TestHost::new();
        let kv =
            KvKeys::parse(br#"{"keys":[{"kid":"a","alg":"HS256","secret":"s"}],"grace":"1m"}"#)
                .unwrap();
        assert_eq!(kv.grace_ms, 60_000);
        assert_eq!(kv.keys["a"].alg, Algorithm::HS256);
        let e = KvKeys::parse(br#"{"keys":[{"kid":"a","alg":"XX"}]}"#).unwrap_err();
        assert!(e.contains("auth/keys: keys[0]: alg"), "{e}");
    }
}
