//! The gateway's built-in JWT plugin: verifies `Authorization: Bearer` tokens against keys
//! that each pin one algorithm, checks the registered claims, forwards chosen claims as
//! headers, and rotates keys through the watched kv entry `auth/keys` without dropping valid
//! tokens. See README.md for the configuration.

pub mod cache;
pub mod config;
pub mod jwks;
pub mod verify;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Map, Value, json};
use sluice_plugin_sdk::host::{self, Level};
use sluice_plugin_sdk::{Action, Config, Error, Hooks, Plugin, Request, Response, kv, state};

use crate::cache::{TokenCache, Verified, same_key};
use crate::config::{AuthConfig, Key, KvKeys, parse_key};
use crate::jwks::JwksCache;
use crate::verify::Reject;

/// The watched kv entry with rotating keys.
pub const KV_KEYS: &str = "auth/keys";

/// The plugin.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    kv: RefCell<KvCache>,
    jwks: RefCell<JwksCache>,
    tokens: RefCell<TokenCache>,
}

/// The last parsed `auth/keys` entry.
#[derive(Debug, Default)]
struct KvCache {
    /// Version last seen (`None`: never read, or absent).
    version: Option<u64>,
    keys: BTreeMap<String, Rc<Key>>,
    grace_ms: u64,
}

/// How long a retirement record is kept after its grace period ends.
const RETIRED_RECORD_MS: u64 = 24 * 60 * 60 * 1000;

/// State key of a retired kv key: `{"at": ms, "grace_ms": n, "key": {...}}`.
fn retired_key(kid: &str) -> String {
    format!("retired:{kid}")
}

impl Auth {
    /// Asks for the version of `auth/keys` (8 bytes, not the key set) and reads and re-parses
    /// the entry only when it changed. Keys that disappeared are recorded as retired in the
    /// shared state, with their grace period.
    fn refresh_kv(&self) {
        if kv::version(KV_KEYS) == self.kv.borrow().version {
            return;
        }
        let entry = kv::get(KV_KEYS);
        let mut cache = self.kv.borrow_mut();
        let version = entry.as_ref().map(|e| e.version);
        if version == cache.version {
            return;
        }
        // The key set changes (or an unparsable entry is about to be ignored): no token
        // verified before the change is trusted without being verified again.
        self.tokens.borrow_mut().clear();
        let first = cache.version.is_none() && cache.keys.is_empty();
        let next = match &entry {
            Some(e) => match KvKeys::parse(&e.value) {
                Ok(k) => k,
                Err(err) => {
                    host::log(
                        Level::Warn,
                        &format!("auth: ignoring {KV_KEYS} version {}: {err}", e.version),
                    );
                    cache.version = version;
                    return;
                }
            },
            None => KvKeys {
                keys: BTreeMap::new(),
                grace_ms: cache.grace_ms,
            },
        };
        if !first {
            let now = host::now_ms();
            for (kid, key) in &cache.keys {
                if next.keys.contains_key(kid) || next.grace_ms == 0 {
                    continue;
                }
                let record = json!({"at": now, "grace_ms": next.grace_ms, "key": key.raw});
                // The first instance to notice sets the retirement time; the others agree. The
                // record outlives the grace period by a day, so an instance that notices late
                // (it served nothing meanwhile) finds it and does not grant a fresh grace.
                state::compare_and_swap(
                    &retired_key(kid),
                    None,
                    Some(record.to_string().as_bytes()),
                    Some(next.grace_ms.saturating_add(RETIRED_RECORD_MS)),
                );
            }
        }
        for kid in next.keys.keys() {
            // A key put back is active again; a later removal starts a fresh grace period.
            if !cache.keys.contains_key(kid) {
                state::delete(&retired_key(kid));
            }
        }
        for kid in next.keys.keys() {
            if self.config.keys.contains_key(kid) {
                host::log(
                    Level::Warn,
                    &format!(
                        "auth: {KV_KEYS}: kid `{kid}` is also in the config; the config key wins"
                    ),
                );
            }
        }
        *cache = KvCache {
            version,
            keys: next.keys,
            grace_ms: next.grace_ms,
        };
    }

    /// The key for a token's kid: config keys, then kv keys, then kv keys still in their
    /// grace period, then JWKS keys. Without a kid, only when exactly one config or kv key is
    /// active (JWKS keys are only ever selected by kid).
    fn key_for(&self, kid: Option<&str>) -> Result<Rc<Key>, Reject> {
        let cache = self.kv.borrow();
        let Some(kid) = kid else {
            let mut active = self.config.keys.values().chain(
                cache
                    .keys
                    .iter()
                    .filter(|(kid, _)| !self.config.keys.contains_key(*kid))
                    .map(|(_, k)| k),
            );
            return match (active.next(), active.next()) {
                (Some(key), None) => Ok(Rc::clone(key)),
                _ => Err(Reject::invalid("token has no kid")),
            };
        };
        if let Some(key) = self.config.keys.get(kid).or_else(|| cache.keys.get(kid)) {
            return Ok(Rc::clone(key));
        }
        drop(cache);
        if let Some(key) = retired(kid) {
            return Ok(key);
        }
        self.config
            .jwks
            .as_ref()
            .and_then(|jwks| self.jwks.borrow_mut().key(jwks, kid))
            .ok_or_else(|| Reject::invalid("unknown key"))
    }

    /// The headers the request's token forwards, once the token is verified now or was
    /// earlier (the token cache, keyed by the raw `Authorization` value and looked up before
    /// any parsing).
    fn check(&self, request: &Request<'_>) -> Result<Rc<[(String, String)]>, Reject> {
        let values = request.header_all("authorization");
        if let [raw] = values.as_slice() {
            // Rotation empties the cache: the kv entry is read before the lookup.
            self.refresh_kv();
            if let Some(forward) = self.cached(raw) {
                return Ok(forward);
            }
        }
        // Anything but exactly one value is refused here, before any other work.
        let token = verify::bearer_token(&values, self.config.max_token_bytes)?;
        let header = verify::token_header(&token)?;
        let key = self.key_for(header.kid.as_deref())?;
        let claims = verify::verify(&token, &header, &key, &self.config, host::now_ms())?;
        let forward = self.forwarded(&claims);
        self.tokens.borrow_mut().insert(
            &values[0],
            Verified {
                kid: header.kid,
                key,
                window: verify::time_window(&claims, &self.config),
                forward: Rc::clone(&forward),
            },
        );
        Ok(forward)
    }

    /// Removes the `forward_claims` headers that `forward` (the token's claims) does not set.
    fn remove_forwarded(&self, request: &Request<'_>, forward: &[(String, String)]) {
        for (_, header) in &self.config.forward_claims {
            if !forward.iter().any(|(set, _)| set == header) {
                request.remove_header(header);
            }
        }
    }

    /// The `forward_claims` headers a verified token's claims make.
    fn forwarded(&self, claims: &Map<String, Value>) -> Rc<[(String, String)]> {
        let mut out = Vec::new();
        for (claim, header) in &self.config.forward_claims {
            match claims.get(claim).and_then(verify::claim_header_value) {
                Some(value) => out.push((header.clone(), value)),
                None if claims.contains_key(claim) => host::log(
                    Level::Debug,
                    &format!("auth: claim `{claim}` cannot be sent as a header"),
                ),
                None => {}
            }
        }
        out.into()
    }

    /// A cache hit: the forwarded headers, when the time claims still hold and the key that
    /// verified the token is still the one its kid selects. `None` (and the entry forgotten)
    /// otherwise: the token is then verified afresh, which refuses it with the precise reason
    /// (or caches it again with the key its kid selects now).
    fn cached(&self, raw: &[u8]) -> Option<Rc<[(String, String)]>> {
        let tokens = self.tokens.borrow();
        let hit = tokens.get(raw)?;
        // `key_for` reads the kv and JWKS caches, never the token cache.
        let valid = hit.window.contains(host::now_ms())
            && self
                .key_for(hit.kid.as_deref())
                .is_ok_and(|now| same_key(&now, &hit.key));
        let forward = valid.then(|| Rc::clone(&hit.forward));
        drop(tokens);
        if forward.is_none() {
            self.tokens.borrow_mut().remove(raw);
        }
        forward
    }

    /// Tokens in this instance's verified-token cache (for tests).
    pub fn cached_tokens(&self) -> usize {
        self.tokens.borrow().len()
    }
}

/// A retired kv key still within its grace period, from the shared state.
fn retired(kid: &str) -> Option<Rc<Key>> {
    let record: Value = serde_json::from_slice(&state::get(&retired_key(kid))?).ok()?;
    let at = record.get("at")?.as_u64()?;
    let grace = record.get("grace_ms")?.as_u64()?;
    if host::now_ms() > at.saturating_add(grace) {
        return None;
    }
    let key = parse_key(record.get("key")?).ok()?;
    (key.kid == kid).then(|| Rc::new(key))
}

fn unauthorized(reject: &Reject) -> Response {
    Response::new(401)
        .header("www-authenticate", verify::www_authenticate(reject))
        .header("content-type", "text/plain")
        .header("cache-control", "no-store")
        .body("unauthorized\n")
}

impl Plugin for Auth {
    // No `on_response`: the gateway makes no call for it on the way back.
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn init(config: Config) -> Result<Self, Error> {
        let config = AuthConfig::parse(config.value()).map_err(Error::new)?;
        Ok(Self {
            tokens: RefCell::new(TokenCache::new(config.token_cache_size)),
            config,
            kv: RefCell::default(),
            jwks: RefCell::default(),
        })
    }

    // A client must never be able to inject a forwarded claim, public path or not: every
    // header named in `forward_claims` leaves this hook either removed or set to the token's
    // claim (`set-header` replaces every value the client sent; one host call instead of a
    // removal and a set).
    fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
        // The path is a host call: asked only when some prefix could match.
        if !self.config.public_paths.is_empty() && self.config.is_public(&request.path()) {
            self.remove_forwarded(request, &[]);
            return Ok(Action::Continue);
        }
        match self.check(request) {
            Ok(forward) => {
                self.remove_forwarded(request, &forward);
                for (header, value) in forward.iter() {
                    if let Err(e) = request.set_header(header, value) {
                        // Failing open must not let the client's value through.
                        self.remove_forwarded(request, &[]);
                        return Err(e);
                    }
                }
                host::counter_add("accepted", 1);
                Ok(Action::Continue)
            }
            Err(reject) => {
                self.remove_forwarded(request, &[]);
                let reason = match &reject {
                    Reject::Missing => "no bearer token",
                    Reject::Invalid(d) => d.as_str(),
                };
                host::log(Level::Debug, &format!("auth: rejected: {reason}"));
                host::counter_add("rejected", 1);
                Ok(Action::Respond(unauthorized(&reject)))
            }
        }
    }
}

sluice_plugin_sdk::export_plugin!(Auth);
