//! Token checks: extraction from `Authorization`, header parsing, signature verification
//! with the key's pinned algorithm, and the registered-claim checks. The token is parsed and
//! its claims checked here, in the sandbox; the signature arithmetic is the gateway's
//! (`crypto`, native aws-lc-rs). The clock is passed in, so the checks are unit-tested
//! natively.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::cache::Window;
use crate::config::{AuthConfig, Key};

/// Why a request was refused. The description is short and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No bearer token (RFC 6750: answer without an error code).
    Missing,
    /// A token was presented but is not acceptable.
    Invalid(String),
}

impl Reject {
    pub(crate) fn invalid(description: impl Into<String>) -> Self {
        Self::Invalid(description.into())
    }
}

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive). Anything else,
/// including a token in the query string or a cookie, counts as no token.
pub fn bearer_token(values: &[Vec<u8>], max_token_bytes: usize) -> Result<String, Reject> {
    let value = match values {
        [] => return Err(Reject::Missing),
        [one] => one,
        _ => return Err(Reject::invalid("multiple Authorization headers")),
    };
    // Cap before any work proportional to the token: scheme, spaces and the token itself.
    if value.len() > max_token_bytes + 64 {
        return Err(Reject::invalid("token too large"));
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return Err(Reject::invalid("malformed Authorization header"));
    };
    let value = value.trim();
    let Some((scheme, rest)) = value.split_once([' ', '\t']) else {
        return Err(Reject::Missing);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reject::Missing);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(Reject::Missing);
    }
    if token.len() > max_token_bytes {
        return Err(Reject::invalid("token too large"));
    }
    if !token.bytes().all(|b| TOKEN_BYTE[usize::from(b)]) {
        return Err(Reject::invalid("malformed token"));
    }
    Ok(token.to_owned())
}

/// The bytes a token may contain: base64url, the part separator `.`, and `=` (lenient
/// padding). A table: one load per byte instead of a range check and a search of `-_.=`.
const TOKEN_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=');
        i += 1;
    }
    table
};

/// The three parts of a JWS compact token, as sent.
#[derive(Debug, Clone, Copy)]
pub struct TokenParts<'a> {
    /// `header.payload`: what the signature covers.
    pub signed: &'a str,
    /// The base64url header.
    pub header: &'a str,
    /// The base64url claims.
    pub payload: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
}

/// Splits a token into exactly three parts.
pub fn token_parts(token: &str) -> Result<TokenParts<'_>, Reject> {
    let malformed = || Reject::invalid("malformed token");
    let (signed, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
    let (header, payload) = signed.split_once('.').ok_or_else(malformed)?;
    if payload.contains('.') {
        return Err(malformed());
    }
    Ok(TokenParts {
        signed,
        header,
        payload,
        signature,
    })
}

/// The header fields the plugin reads. Deserialized into this, not jsonwebtoken's `Header`
/// (a dozen optional fields, `jwk` and `x5c` among them, the plugin never uses): the same
/// `alg` rules (`none` and unknown names are refused), less work per token.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Algorithm,
    #[serde(default)]
    kid: Option<String>,
}

/// The unverified header fields used to pick the key.
#[derive(Debug)]
pub struct TokenHeader {
    /// The header's `alg` (`none` and unknown names never get this far).
    pub alg: Algorithm,
    /// The header's `kid`.
    pub kid: Option<String>,
}

/// Reads the (unverified) header: only to choose a key.
pub fn token_header(token: &str) -> Result<TokenHeader, Reject> {
    let parts = token_parts(token)?;
    let header: RawHeader = URL_SAFE_NO_PAD
        .decode(parts.header)
        .ok()
        // A JSON object (a derived struct would also take an array of its fields).
        .filter(|json| json.trim_ascii_start().starts_with(b"{"))
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| Reject::invalid("malformed token header or unsupported alg"))?;
    Ok(TokenHeader {
        alg: header.alg,
        kid: header.kid,
    })
}

/// Verifies the signature with `key` (whose pinned algorithm must be the header's) and then
/// the claims against `config` at `now_ms`. Returns the claims.
pub fn verify(
    token: &str,
    header: &TokenHeader,
    key: &Key,
    config: &AuthConfig,
    now_ms: u64,
) -> Result<Map<String, Value>, Reject> {
    if header.alg != key.alg {
        return Err(Reject::invalid("algorithm not allowed for this key"));
    }
    // JWS compact form: the signature covers `header.payload` as sent.
    let parts = token_parts(token)?;
    let signature = URL_SAFE_NO_PAD
        .decode(parts.signature)
        .map_err(|_| Reject::invalid("malformed token"))?;
    if !key.verifier.verify(parts.signed.as_bytes(), &signature) {
        return Err(Reject::invalid("invalid signature"));
    }
    // Only a token whose signature holds is decoded further.
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(parts.payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| Reject::invalid("malformed token"))?;
    check_claims(&claims, config, now_ms)?;
    Ok(claims)
}

/// A NumericDate claim in ms: `Ok(None)` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i128>, Reject> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(s) if s.is_finite() => Ok(Some((s * 1000.0) as i128)),
            _ => Err(Reject::invalid(format!("malformed {name} claim"))),
        },
    }
}

/// The registered and required claims. Boundaries: a token is still valid at exactly
/// `exp + leeway` and already valid at exactly `nbf - leeway`.
pub fn check_claims(
    claims: &Map<String, Value>,
    config: &AuthConfig,
    now_ms: u64,
) -> Result<(), Reject> {
    let now = i128::from(now_ms);
    let leeway = i128::from(config.leeway_ms);
    let Some(exp) = numeric_date(claims, "exp")? else {
        return Err(Reject::invalid("missing exp claim"));
    };
    if now > exp.saturating_add(leeway) {
        return Err(Reject::invalid("token expired"));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(Reject::invalid("token not yet valid"));
    }
    if let Some(max_age) = config.max_age_ms {
        let Some(iat) = numeric_date(claims, "iat")? else {
            return Err(Reject::invalid("missing iat claim"));
        };
        if iat > now.saturating_add(leeway) {
            return Err(Reject::invalid("token issued in the future"));
        }
        if now
            > iat
                .saturating_add(i128::from(max_age))
                .saturating_add(leeway)
        {
            return Err(Reject::invalid("token too old"));
        }
    }
    if let Some(issuer) = &config.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(Reject::invalid("invalid issuer"));
    }
    if let Some(audience) = &config.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !ok {
            return Err(Reject::invalid("invalid audience"));
        }
    }
    for name in &config.required_claims {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(Reject::invalid(format!("missing {name} claim")));
        }
    }
    Ok(())
}

/// The instants between which the time claims of `claims` hold under `config`: exactly the
/// clock readings at which [`check_claims`]' time checks (`exp`, `nbf`, `max_age` with `iat`)
/// pass. A cache hit checks only this; the other checks do not depend on the clock. A token
/// whose time claims are missing or malformed gets an empty window.
pub fn time_window(claims: &Map<String, Value>, config: &AuthConfig) -> Window {
    const EMPTY: Window = Window {
        from: i128::MAX,
        until: i128::MIN,
    };
    let leeway = i128::from(config.leeway_ms);
    let (Ok(Some(exp)), Ok(nbf)) = (numeric_date(claims, "exp"), numeric_date(claims, "nbf"))
    else {
        return EMPTY;
    };
    let mut window = Window {
        from: nbf.map_or(i128::MIN, |nbf| nbf.saturating_sub(leeway)),
        until: exp.saturating_add(leeway),
    };
    if let Some(max_age) = config.max_age_ms {
        let Ok(Some(iat)) = numeric_date(claims, "iat") else {
            return EMPTY;
        };
        window.from = window.from.max(iat.saturating_sub(leeway));
        window.until = window.until.min(
            iat.saturating_add(i128::from(max_age))
                .saturating_add(leeway),
        );
    }
    window
}

/// A claim as a header value: strings as is, numbers and booleans as text, anything else as
/// JSON. `None` for null or a value a header cannot carry (CR, LF, NUL).
pub fn claim_header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    (!text.contains(['\r', '\n', '\0'])).then_some(text)
}

/// `WWW-Authenticate` for a refusal (RFC 6750).
pub fn www_authenticate(reject: &Reject) -> String {
    match reject {
        Reject::Missing => "Bearer".to_owned(),
        Reject::Invalid(description) => {
            let mut escaped = String::new();
            for c in description.chars().take(200) {
                match c {
                    '"' | '\\' => {
                        escaped.push('\\');
                        escaped.push(c);
                    }
                    c if c.is_ascii_graphic() || c == ' ' => escaped.push(c),
                    _ => escaped.push('?'),
                }
            }
            format!("Bearer error=\"invalid_token\", error_description=\"{escaped}\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> AuthConfig {
        AuthConfig::parse(&value).unwrap()
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn extraction() {
        let h = |v: &str| vec![v.as_bytes().to_vec()];
        assert_eq!(bearer_token(&h("Bearer a.b.c"), 100), Ok("a.b.c".into()));
        assert_eq!(bearer_token(&h("bearer a.b.c"), 100), Ok("a.b.c".into()));
        assert_eq!(bearer_token(&h("BEARER  a.b.c "), 100), Ok("a.b.c".into()));
        assert_eq!(bearer_token(&h("a.b.c"), 100), Err(Reject::Missing));
        assert_eq!(
            bearer_token(&h("Basic dXNlcjpwYXNz"), 100),
            Err(Reject::Missing)
        );
        assert_eq!(bearer_token(&h("Bearer "), 100), Err(Reject::Missing));
        assert_eq!(bearer_token(&[], 100), Err(Reject::Missing));
        assert_eq!(
            bearer_token(&h("Bearer a.b c"), 100),
            Err(Reject::invalid("malformed token"))
        );
        assert_eq!(
            bearer_token(&h("Bearer aaaaa.b.c"), 8),
            Err(Reject::invalid("token too large"))
        );
        assert_eq!(
            bearer_token(&[b"Bearer a".to_vec(), b"Bearer b".to_vec()], 100),
            Err(Reject::invalid("multiple Authorization headers"))
        );
    }

    #[test]
    fn tokens_split_into_exactly_three_parts_and_headers_need_a_known_alg() {
        let p = token_parts("a.b.c").unwrap();
        assert_eq!(
            (p.signed, p.header, p.payload, p.signature),
            ("a.b", "a", "b", "c")
        );
        for bad in ["", "a", "a.b", "a.b.c.d", "a..b.c", "abc"] {
            assert_eq!(
                token_parts(bad).err(),
                Some(Reject::invalid("malformed token")),
                "{bad}"
            );
        }
        let header =
            |json: &str| token_header(&format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(json)));
        let h = header(r#"{"alg":"HS256","kid":"k","typ":"JWT","x5c":5}"#).unwrap();
        assert_eq!((h.alg, h.kid.as_deref()), (Algorithm::HS256, Some("k")));
        assert_eq!(header(r#"{"alg":"ES256"}"#).unwrap().kid, None);
        let refused = Some(Reject::invalid("malformed token header or unsupported alg"));
        for bad in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"kid":"k"}"#,
            r#"{"alg":"HS256","kid":5}"#,
            r#"{"alg":"HS256","alg":"RS256"}"#,
            r#"["HS256"]"#,
            "not json",
        ] {
            assert_eq!(header(bad).err(), refused, "{bad}");
        }
        assert_eq!(token_header("%%%.e30.sig").err(), refused, "not base64url");
        assert_eq!(
            bearer_token(&[b"Bearer a.b.c\x7f".to_vec()], 100),
            Err(Reject::invalid("malformed token"))
        );
        assert_eq!(
            bearer_token(&[b"Bearer aZ09-_.=".to_vec()], 100),
            Ok("aZ09-_.=".into())
        );
    }

    #[test]
    fn claim_boundaries() {
        let c = config(json!({"leeway": "30s"}));
        let exp = 1000;
        let t = claims(json!({"exp": exp}));
        assert!(check_claims(&t, &c, (exp + 30) * 1000).is_ok());
        assert!(check_claims(&t, &c, (exp + 31) * 1000).is_err());
        let t = claims(json!({"exp": 5000, "nbf": exp}));
        assert!(check_claims(&t, &c, (exp - 30) * 1000).is_ok());
        assert!(check_claims(&t, &c, (exp - 31) * 1000).is_err());
        assert_eq!(
            check_claims(&claims(json!({})), &c, 0),
            Err(Reject::invalid("missing exp claim"))
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": "soon"})), &c, 0),
            Err(Reject::invalid("malformed exp claim"))
        );
    }

    #[test]
    fn max_age_and_audience_list() {
        let c = config(json!({"max_age": "1h", "leeway": "0s", "audience": "orders"}));
        let t = claims(json!({"exp": 100_000, "iat": 1000, "aud": ["billing", "orders"]}));
        assert!(check_claims(&t, &c, (1000 + 3600) * 1000).is_ok());
        assert_eq!(
            check_claims(&t, &c, (1000 + 3601) * 1000),
            Err(Reject::invalid("token too old"))
        );
        let t = claims(json!({"exp": 100_000, "aud": "orders"}));
        assert_eq!(
            check_claims(&t, &c, 1000),
            Err(Reject::invalid("missing iat claim"))
        );
    }

    #[test]
    fn the_time_window_is_exactly_where_the_time_checks_pass() {
        let configs = [
            config(json!({"leeway": "30s"})),
            config(json!({"leeway": "0s"})),
            config(json!({"leeway": "5s", "max_age": "100s"})),
            config(json!({"leeway": "0s", "max_age": "1s"})),
        ];
        let tokens = [
            json!({"exp": 1000}),
            json!({"exp": 1000, "nbf": 900}),
            json!({"exp": 1000, "nbf": 1100}),
            json!({"exp": 1000, "iat": 950}),
            json!({"exp": 1000, "iat": 880, "nbf": 890}),
            json!({"exp": 1000.5, "iat": 990.25}),
            json!({"exp": 1000, "nbf": "later"}),
            json!({"nbf": 900}),
            json!({"exp": 1e300, "iat": 1e300}),
        ];
        for c in &configs {
            for t in &tokens {
                let t = claims(t.clone());
                let window = time_window(&t, c);
                for s in (800_000..1_200_000).step_by(250) {
                    assert_eq!(
                        window.contains(s),
                        check_claims(&t, c, s).is_ok(),
                        "{t:?} at {s} ms, {window:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(claim_header_value(&json!("u1")), Some("u1".into()));
        assert_eq!(claim_header_value(&json!(42)), Some("42".into()));
        assert_eq!(claim_header_value(&json!(true)), Some("true".into()));
        assert_eq!(
            claim_header_value(&json!(["a", 1])),
            Some(r#"["a",1]"#.into())
        );
        assert_eq!(claim_header_value(&json!(null)), None);
        assert_eq!(claim_header_value(&json!("a\r\nx: y")), None);
    }

    #[test]
    fn challenge_escapes_quotes() {
        assert_eq!(www_authenticate(&Reject::Missing), "Bearer");
        assert_eq!(
            www_authenticate(&Reject::invalid(r#"missing "x\y" claim"#)),
            r#"Bearer error="invalid_token", error_description="missing \"x\\y\" claim""#
        );
    }
}
