//! Keys fetched from a JWKS URL. The last good body and its fetch time live in the plugin's
//! shared state, so all instances share one copy; each instance parses it again only when the
//! fetch time changes. Fetches happen on the request that notices they are due (plugins have
//! no background tasks), under a short lease so only one instance fetches at a time.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::str::FromStr;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use serde_json::Value;
use sluice_plugin_sdk::host::{self, Level};
use sluice_plugin_sdk::outbound::{self, HttpRequest};
use sluice_plugin_sdk::state;

use crate::config::{JwksConfig, Key, import_jwk};

/// State: the last good JWKS body.
pub const STATE_BODY: &str = "jwks:body";
/// State: when it was fetched (ms since the epoch, decimal).
pub const STATE_FETCHED_AT: &str = "jwks:fetched_at";
/// State: the fetch lease (held by the fetching instance; expires after [`LEASE_MS`]).
pub const STATE_LEASE: &str = "jwks:lease";
/// State: when an unknown kid last triggered a fetch (expires after `jwks_cooldown`).
pub const STATE_UNKNOWN_KID_AT: &str = "jwks:unknown_kid_at";
/// How long a fetch lease lasts. A failed fetch keeps it, so a failing endpoint is retried at
/// most this often.
pub const LEASE_MS: u64 = 10_000;
/// Time limit of one fetch.
pub const FETCH_TIMEOUT_MS: u32 = 5_000;
/// Larger bodies count as a failed fetch.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The parsed copy of the shared JWKS, per instance.
#[derive(Debug, Default)]
pub struct JwksCache {
    /// `jwks:fetched_at` of the parsed body (`None`: nothing parsed yet).
    fetched_at: Option<u64>,
    keys: BTreeMap<String, Rc<Key>>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

fn read_ms(key: &str) -> Option<u64> {
    std::str::from_utf8(&state::get(key)?).ok()?.parse().ok()
}

impl JwksCache {
    /// The key for `kid`, refreshing the shared copy when it is older than `jwks_refresh`
    /// and, for an unknown kid, at most once per `jwks_cooldown`.
    pub fn key(&mut self, config: &JwksConfig, kid: &str) -> Option<Rc<Key>> {
        let now = host::now_ms();
        let mut fetched = false;
        let due =
            read_ms(STATE_FETCHED_AT).is_none_or(|at| now.saturating_sub(at) >= config.refresh_ms);
        if due {
            fetched = fetch(config, now);
        }
        if let Some(key) = self.lookup(config, kid, now) {
            return Some(key);
        }
        if fetched || !claim_unknown_kid(config, now) {
            return None;
        }
        host::log(
            Level::Debug,
            &format!("auth: jwks: unknown kid `{kid}`, fetching the key set again"),
        );
        fetch(config, now);
        self.lookup(config, kid, now)
    }

    /// Looks `kid` up in the shared copy, re-parsing it when its fetch time changed. Nothing
    /// once the copy is older than `jwks_max_stale`.
    fn lookup(&mut self, config: &JwksConfig, kid: &str, now: u64) -> Option<Rc<Key>> {
        let fetched_at = read_ms(STATE_FETCHED_AT)?;
        if now.saturating_sub(fetched_at) > config.max_stale_ms {
            host::log(
                Level::Debug,
                "auth: jwks: the cached key set is older than jwks_max_stale; not used",
            );
            return None;
        }
        if self.fetched_at != Some(fetched_at) {
            let body = state::get(STATE_BODY).unwrap_or_default();
            self.keys = match parse_set(&body) {
                Ok(keys) => keys,
                Err(e) => {
                    host::log(Level::Warn, &format!("auth: jwks: cached body: {e}"));
                    BTreeMap::new()
                }
            };
            self.fetched_at = Some(fetched_at);
        }
        self.keys.get(kid).cloned()
    }
}

/// Takes the unknown-kid slot if the cooldown has passed; whether this request may fetch.
fn claim_unknown_kid(config: &JwksConfig, now: u64) -> bool {
    let current = state::get(STATE_UNKNOWN_KID_AT);
    if let Some(at) = current
        .as_deref()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u64>().ok())
        && now.saturating_sub(at) < config.cooldown_ms
    {
        return false;
    }
    state::compare_and_swap(
        STATE_UNKNOWN_KID_AT,
        current.as_deref(),
        Some(now.to_string().as_bytes()),
        Some(config.cooldown_ms),
    )
}

/// Fetches the key set under the lease; whether a fetch was attempted. A good body replaces
/// the shared copy and releases the lease; a failure keeps the lease until it expires.
fn fetch(config: &JwksConfig, now: u64) -> bool {
    let lease = now.to_string();
    if !state::compare_and_swap(STATE_LEASE, None, Some(lease.as_bytes()), Some(LEASE_MS)) {
        return false;
    }
    match fetch_body(config) {
        Ok(body) => {
            state::set(STATE_BODY, &body, None);
            state::set(STATE_FETCHED_AT, now.to_string(), None);
            host::counter_add("jwks_fetch_ok", 1);
            state::compare_and_swap(STATE_LEASE, Some(lease.as_bytes()), None, None);
        }
        Err(e) => {
            host::counter_add("jwks_fetch_failed", 1);
            host::log(
                Level::Warn,
                &format!("auth: jwks: fetching {} failed: {e}", config.url),
            );
        }
    }
    true
}

fn fetch_body(config: &JwksConfig) -> Result<Vec<u8>, String> {
    let request = HttpRequest::get(&config.url)
        .header("accept", "application/json")
        .timeout_ms(FETCH_TIMEOUT_MS);
    let response = outbound::send(&request).map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    if response.body.len() > MAX_BODY_BYTES {
        return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
    }
    serde_json::from_slice::<RawSet>(&response.body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(response.body)
}

/// Parses a JWKS body into usable keys. Keys without `kid` or `alg`, with a `use` other
/// than `sig`, with an HMAC algorithm, or unparsable are skipped (logged at Debug).
pub fn parse_set(body: &[u8]) -> Result<BTreeMap<String, Rc<Key>>, String> {
    let set: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = BTreeMap::new();
    for (i, value) in set.keys.iter().enumerate() {
        match parse_jwk(value) {
            Ok(key) if out.contains_key(&key.kid) => host::log(
                Level::Debug,
                &format!("auth: jwks: keys[{i}]: duplicate kid `{}` skipped", key.kid),
            ),
            Ok(key) => {
                out.insert(key.kid.clone(), Rc::new(key));
            }
            Err(e) => host::log(Level::Debug, &format!("auth: jwks: keys[{i}] skipped: {e}")),
        }
    }
    Ok(out)
}

fn parse_jwk(value: &Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or("no kid")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("kid `{kid}`: use `{other:?}` is not sig")),
    }
    let jwk_alg = jwk
        .common
        .key_algorithm
        .ok_or_else(|| format!("kid `{kid}`: no alg"))?;
    let alg = Algorithm::from_str(&jwk_alg.to_string())
        .map_err(|_| format!("kid `{kid}`: alg `{jwk_alg}` is not a signature algorithm"))?;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(format!("kid `{kid}`: HMAC keys are not taken from a JWKS"));
    }
    // Imported once per key set: the set is parsed again only when a new body was fetched.
    let verifier = import_jwk(alg, &jwk).map_err(|e| format!("kid `{kid}`: {e}"))?;
    Ok(Key {
        kid,
        alg,
        verifier,
        raw: value.clone(),
    })
}
