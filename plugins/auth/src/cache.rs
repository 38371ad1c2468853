//! Verified-token cache, as Envoy's `jwt_cache_config`: a token whose signature was checked is
//! remembered (in this instance's memory) with its claims and the key that verified it, so the
//! next request with the same token skips the signature arithmetic. Only good tokens go in;
//! every hit still re-checks the time claims (`exp`, `nbf`, `max_age`) and that the key which
//! verified the token is still the key its `kid` selects (rotation, retirement after the grace
//! period, a JWKS refresh), and the whole cache is emptied whenever the kv keys change.
//!
//! Bounded by entries; the oldest entry is evicted first (FIFO: cheap, and a busy token is
//! simply verified again and re-cached).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::config::Key;

/// Default `token_cache_size` (entries per plugin instance), Envoy's default.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 100;

/// What is remembered of a verified token.
#[derive(Debug)]
pub struct Verified {
    /// The header's `kid`, to look its key up again on a hit.
    pub kid: Option<String>,
    /// The key that verified the signature.
    pub key: Rc<Key>,
    /// The token's claims.
    pub claims: Rc<Map<String, Value>>,
}

/// The cache. Keyed by the whole token (not a hash of it): a lookup can never confuse two
/// tokens, and the memory is bounded by `capacity × max_token_bytes`.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<Box<str>, Verified>,
    /// Insertion order, for eviction; may hold tokens already removed (skipped on eviction).
    order: VecDeque<Box<str>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The entry for this token.
    pub fn get(&self, token: &str) -> Option<&Verified> {
        self.entries.get(token)
    }

    /// Remembers a verified token, evicting the oldest entries past the capacity.
    pub fn insert(&mut self, token: &str, verified: Verified) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        let token: Box<str> = token.into();
        if self.entries.insert(token.clone(), verified).is_none() {
            self.order.push_back(token);
        }
        // Tokens removed on a failed hit stay in `order`; keep it from growing past twice
        // the live entries.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|t| entries.contains_key(t));
        }
    }

    /// Forgets one token (its key changed, or its time claims failed).
    pub fn remove(&mut self, token: &str) {
        self.entries.remove(token);
    }

    /// Forgets every token (the key set changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether `now` is the same key as `then`: the same object, or the same kid, algorithm and
/// material (a retired key is re-read from the shared state as a new object).
pub fn same_key(now: &Rc<Key>, then: &Rc<Key>) -> bool {
    Rc::ptr_eq(now, then) || (now.kid == then.kid && now.alg == then.alg && now.raw == then.raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_key;
    use serde_json::json;

    fn verified() -> Verified {
        // Keys are imported into the host's crypto: the test host's, here (it stays
        // installed on this thread for the rest of the test).
        let _host = sluice_plugin_sdk::testing::TestHost::new();
        let key = parse_key(&json!({"kid": "k", "alg": "HS256", "secret": "s-0123456789abcdef"}))
            .unwrap();
        Verified {
            kid: Some("k".into()),
            key: Rc::new(key),
            claims: Rc::new(Map::new()),
        }
    }

    #[test]
    fn bounded_with_the_oldest_evicted_first() {
        let mut cache = TokenCache::new(2);
        cache.insert("a", verified());
        cache.insert("b", verified());
        cache.insert("c", verified());
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a").is_none(), "oldest evicted");
        assert!(cache.get("b").is_some() && cache.get("c").is_some());
        // Removed entries do not count, and the order list stays bounded.
        for i in 0..100 {
            let t = format!("t{i}");
            cache.insert(&t, verified());
            cache.remove(&t);
        }
        assert!(cache.order.len() <= 4, "{}", cache.order.len());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn size_zero_caches_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert("a", verified());
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn same_key_compares_material_not_only_identity() {
        let a = verified().key;
        let b = verified().key;
        assert!(same_key(&a, &a));
        assert!(same_key(&a, &b), "same kid, alg and material");
        let other = Rc::new(
            parse_key(&json!({"kid": "k", "alg": "HS256", "secret": "another-secret-0123"}))
                .unwrap(),
        );
        assert!(!same_key(&a, &other));
    }
}
