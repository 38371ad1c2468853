//! Verified-token cache, as Envoy's `jwt_cache_config`: a token whose signature was checked is
//! remembered (in this instance's memory) with the key that verified it, the time window its
//! claims allow and the headers it forwards, so the next request with the same token skips
//! every parse and the signature arithmetic. Only good tokens go in; every hit still checks the
//! time window against the current clock (`exp`, `nbf`, `max_age`) and that the key which
//! verified the token is still the key its `kid` selects (rotation, retirement after the grace
//! period, a JWKS refresh), and the whole cache is emptied whenever the kv keys change.
//!
//! Keyed by the raw `Authorization` value, byte for byte, so a hit is found before any
//! parsing: a byte-identical value went through every check (header syntax, size cap, alg,
//! key, signature, claims) when it was cached, and the claims it carries cannot differ. The
//! lookup hashes the value with foldhash under a per-cache random seed (cheap over a few
//! hundred bytes, where std's SipHash is not; the hash only picks a slot) and then compares the
//! whole stored value with the presented one, so a different value — another token, a prefix,
//! a hash collision — is never a hit.
//!
//! Bounded by entries; the oldest entry is evicted first (FIFO: cheap, and a busy token is
//! simply verified again and re-cached).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::rc::Rc;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::config::Key;

/// Default `token_cache_size` (entries per plugin instance), Envoy's default.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 100;

/// The instants (ms since the epoch, both included) between which a token's time claims
/// hold: `exp`, `nbf` and, with `max_age`, `iat`, each with the leeway applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first instant the token is valid (`i128::MIN`: no lower bound).
    pub from: i128,
    /// The last instant the token is valid.
    pub until: i128,
}

impl Window {
    /// Whether the token is valid at `now_ms`.
    pub fn contains(&self, now_ms: u64) -> bool {
        let now = i128::from(now_ms);
        self.from <= now && now <= self.until
    }
}

/// What is remembered of a verified token.
#[derive(Debug)]
pub struct Verified {
    /// The header's `kid`, to look its key up again on a hit.
    pub kid: Option<String>,
    /// The key that verified the signature.
    pub key: Rc<Key>,
    /// When its time claims hold.
    pub window: Window,
    /// The headers its claims forward (`forward_claims`), name and value, computed once.
    pub forward: Rc<[(String, String)]>,
}

#[derive(Debug)]
struct Slot {
    raw: Box<[u8]>,
    /// Insertion number: eviction order refers to a slot by (hash, seq).
    seq: u64,
    verified: Verified,
}

/// The cache.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    hasher: FixedState,
    slots: HashTable<Slot>,
    /// Insertion order (hash, seq), for eviction; may name slots already removed (skipped on
    /// eviction).
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        // The seed comes from std's RandomState (the sandbox's random source): whoever sends
        // tokens cannot predict which values share a slot.
        let seed = std::hash::RandomState::new().hash_one(0x5eed_u64);
        Self {
            capacity,
            hasher: FixedState::with_seed(seed),
            slots: HashTable::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    fn hash(&self, raw: &[u8]) -> u64 {
        self.hasher.hash_one(raw)
    }

    /// The entry for this raw `Authorization` value.
    pub fn get(&self, raw: &[u8]) -> Option<&Verified> {
        if self.slots.is_empty() {
            return None;
        }
        self.slots
            .find(self.hash(raw), |s| same_bytes(&s.raw, raw))
            .map(|s| &s.verified)
    }

    /// Remembers a verified token under its raw `Authorization` value, evicting the oldest
    /// entries past the capacity.
    pub fn insert(&mut self, raw: &[u8], verified: Verified) {
        if self.capacity == 0 {
            return;
        }
        self.remove(raw);
        while self.slots.len() >= self.capacity {
            let Some((hash, seq)) = self.order.pop_front() else {
                break;
            };
            if let Ok(slot) = self.slots.find_entry(hash, |s| s.seq == seq) {
                slot.remove();
            }
        }
        let hash = self.hash(raw);
        let seq = self.next_seq;
        self.next_seq += 1;
        let hasher = &self.hasher;
        self.slots.insert_unique(
            hash,
            Slot {
                raw: raw.into(),
                seq,
                verified,
            },
            |s| hasher.hash_one(&*s.raw),
        );
        self.order.push_back((hash, seq));
        // Slots removed on a failed hit stay in `order`; keep it from growing past twice the
        // live entries.
        if self.order.len() > 2 * self.capacity {
            let slots = &self.slots;
            self.order
                .retain(|&(hash, seq)| slots.find(hash, |s| s.seq == seq).is_some());
        }
    }

    /// Forgets one token (its key changed, or its time claims failed).
    pub fn remove(&mut self, raw: &[u8]) {
        let hash = self.hash(raw);
        if let Ok(slot) = self.slots.find_entry(hash, |s| same_bytes(&s.raw, raw)) {
            slot.remove();
        }
    }

    /// Forgets every token (the key set changed).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.order.clear();
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Whether two byte strings are equal, compared eight bytes at a time. Hand-written because
/// `[u8] == [u8]` becomes a `memcmp` call, and wasm32's (compiler_builtins) goes byte by byte:
/// it was 8–10 % of a cached token's profile. No early exit within equal lengths (the
/// differences are OR-ed together), so the time taken does not tell where two values differ.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (words_a, tail_a) = a.as_chunks::<8>();
    let (words_b, tail_b) = b.as_chunks::<8>();
    let words = words_a.iter().zip(words_b).fold(0u64, |acc, (x, y)| {
        acc | (u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y))
    });
    let tail = tail_a
        .iter()
        .zip(tail_b)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    words == 0 && tail == 0
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
            window: Window {
                from: i128::MIN,
                until: 1000,
            },
            forward: Rc::new([]),
        }
    }

    #[test]
    fn bounded_with_the_oldest_evicted_first() {
        let mut cache = TokenCache::new(2);
        cache.insert(b"a", verified());
        cache.insert(b"b", verified());
        cache.insert(b"c", verified());
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b"a").is_none(), "oldest evicted");
        assert!(cache.get(b"b").is_some() && cache.get(b"c").is_some());
        // Removed entries do not count, and the order list stays bounded.
        for i in 0..100 {
            let t = format!("t{i}");
            cache.insert(t.as_bytes(), verified());
            cache.remove(t.as_bytes());
        }
        assert!(cache.order.len() <= 4, "{}", cache.order.len());
        // The first of them evicted b; c is still there.
        assert_eq!(cache.len(), 1);
        assert!(cache.get(b"c").is_some());
        // Inserting a value again replaces it (one slot, not two).
        cache.insert(b"c", verified());
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
        assert!(cache.get(b"b").is_none());
    }

    #[test]
    fn size_zero_caches_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert(b"a", verified());
        assert!(cache.get(b"a").is_none());
    }

    #[test]
    fn only_the_identical_value_is_a_hit() {
        let token = "Bearer eyJhbGciOiJIUzI1NiIsImtpZCI6ImhzIn0.eyJzdWIiOiJ1In0.c2lnbmF0dXJl";
        let mut cache = TokenCache::new(10);
        cache.insert(token.as_bytes(), verified());
        assert!(cache.get(token.as_bytes()).is_some());
        let mut others = vec![
            String::new(),
            token[..token.len() - 1].to_owned(),
            token[..token.len() - 8].to_owned(),
            format!("{token}A"),
            format!("{token}\0\0\0\0\0\0\0\0"),
            format!(" {token}"),
            token.replacen("Bearer", "bearer", 1),
            token.replacen("Bearer ", "Bearer  ", 1),
        ];
        // Every single-byte change, in the words and in the tail.
        for i in 0..token.len() {
            let mut b = token.as_bytes().to_vec();
            b[i] ^= 1;
            others.push(String::from_utf8(b).unwrap());
        }
        for other in &others {
            assert!(cache.get(other.as_bytes()).is_none(), "{other:?} is a hit");
        }
        // Other values in the same slots (all in one table) still find only themselves.
        for (i, other) in others.iter().enumerate().take(9) {
            cache.insert(other.as_bytes(), verified());
            assert!(cache.get(other.as_bytes()).is_some(), "{i}");
        }
        assert!(cache.get(token.as_bytes()).is_some());
    }

    #[test]
    fn word_wise_compare() {
        for len in 0..40 {
            let a: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert!(same_bytes(&a, &a.clone()));
            for i in 0..len {
                let mut b = a.clone();
                b[i] = b[i].wrapping_add(1);
                assert!(!same_bytes(&a, &b), "len {len}, byte {i}");
            }
            assert!(!same_bytes(&a, &a[..len.saturating_sub(1)]) || len == 0);
        }
    }

    #[test]
    fn windows_include_both_ends() {
        let w = Window {
            from: 1000,
            until: 2000,
        };
        assert!(!w.contains(999));
        assert!(w.contains(1000) && w.contains(2000));
        assert!(!w.contains(2001));
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
