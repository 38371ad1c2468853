//! Shared plugin state: a concurrent map per plugin with atomic increment, compare-and-swap
//! and TTLs. It lives in the host so every pooled instance and every worker sees one value.
//!
//! Counters are stored as decimal ASCII, so a plugin in any language can `get` and read them.

use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::clock::Clock;

/// Why an operation on shared state failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// `incr` on a value that is not a decimal integer.
    #[error("key `{0}` does not hold an integer counter")]
    NotACounter(String),
    /// `incr` past the i64 range.
    #[error("counter `{0}` would overflow")]
    Overflow(String),
}

#[derive(Debug, Clone)]
struct Slot {
    value: Bytes,
    /// Monotonic nanoseconds after which the slot is gone; `None` = never.
    expires_at: Option<u64>,
}

impl Slot {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

/// The map's hasher: foldhash (hashbrown's default) instead of std's SipHash. A key is
/// hashed twice per operation (the shard, then the shard's table) and the breaker makes about
/// seven operations per request; keys are names a plugin chose, and a plugin can only fill
/// its own map, so SipHash's flood resistance buys nothing here.
type Hasher = foldhash::fast::RandomState;

/// One plugin's shared state.
#[derive(Debug, Default)]
pub struct SharedState {
    map: DashMap<String, Slot, Hasher>,
    /// Single operations hold it shared, a batch (`apply`) exclusively: a batch then runs with
    /// no other operation on this state between its steps. Uncontended, a shared hold is one
    /// atomic add.
    batch: RwLock<()>,
    /// TTLs run on its runtime's clock (the one its plugin reads).
    clock: Clock,
}

/// One step of [`SharedState::apply`].
#[derive(Debug)]
pub enum StateOp {
    /// `get`.
    Get(String),
    /// `set`.
    Set(String, Bytes, Option<u64>),
    /// `delete`.
    Delete(String),
    /// `incr`.
    Incr(String, i64, Option<u64>),
    /// `compare-and-swap`.
    CompareAndSwap(String, Option<Vec<u8>>, Option<Bytes>, Option<u64>),
}

/// The result of one [`StateOp`].
#[derive(Debug, PartialEq, Eq)]
pub enum StateOpResult {
    /// The value read.
    Get(Option<Bytes>),
    /// Stored.
    Set,
    /// Whether the key existed.
    Delete(bool),
    /// The new counter value.
    Incr(Result<i64, StateError>),
    /// Whether the swap happened.
    CompareAndSwap(bool),
}

/// A counter's stored form, decimal ASCII (one allocation; `itoa` instead of `to_string`'s
/// formatting machinery: counters change on every request the breaker sees).
fn counter(n: i64) -> Bytes {
    Bytes::copy_from_slice(itoa::Buffer::new().format(n).as_bytes())
}

fn deadline(now: u64, ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|ms| now.saturating_add(Duration::from_millis(ms).as_nanos() as u64))
}

impl SharedState {
    /// An empty state whose TTLs run on `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    /// The clock its TTLs run on: its runtime's, which its plugin reads too (the breaker's
    /// windows are read on it by `/hystrix.stream`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The live value of a key.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let _shared = self.shared();
        self.get_unlocked(key)
    }

    fn get_unlocked(&self, key: &str) -> Option<Bytes> {
        let now = self.clock.monotonic_ns();
        let slot = self.map.get(key)?;
        slot.live(now).then(|| slot.value.clone())
    }

    /// Stores a value.
    pub fn set(&self, key: String, value: Bytes, ttl_ms: Option<u64>) {
        let _shared = self.shared();
        self.set_unlocked(key, value, ttl_ms)
    }

    fn set_unlocked(&self, key: String, value: Bytes, ttl_ms: Option<u64>) {
        let now = self.clock.monotonic_ns();
        self.map.insert(
            key,
            Slot {
                value,
                expires_at: deadline(now, ttl_ms),
            },
        );
    }

    /// Removes a key; whether a live value was there.
    pub fn delete(&self, key: &str) -> bool {
        let _shared = self.shared();
        self.delete_unlocked(key)
    }

    fn delete_unlocked(&self, key: &str) -> bool {
        let now = self.clock.monotonic_ns();
        self.map.remove(key).is_some_and(|(_, slot)| slot.live(now))
    }

    /// Adds to a counter atomically (the map shard stays locked for the read-modify-write).
    pub fn incr(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
        let _shared = self.shared();
        self.incr_unlocked(key, delta, ttl_ms)
    }

    fn incr_unlocked(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, StateError> {
        let now = self.clock.monotonic_ns();
        match self.map.entry(key) {
            MapEntry::Occupied(mut e) if e.get().live(now) => {
                let current = std::str::from_utf8(&e.get().value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| StateError::NotACounter(e.key().clone()))?;
                let next = current
                    .checked_add(delta)
                    .ok_or_else(|| StateError::Overflow(e.key().clone()))?;
                e.get_mut().value = counter(next);
                Ok(next)
            }
            MapEntry::Occupied(mut e) => {
                e.insert(Slot {
                    value: counter(delta),
                    expires_at: deadline(now, ttl_ms),
                });
                Ok(delta)
            }
            MapEntry::Vacant(e) => {
                e.insert(Slot {
                    value: counter(delta),
                    expires_at: deadline(now, ttl_ms),
                });
                Ok(delta)
            }
        }
    }

    /// Replaces the value only if it equals `expected` (`None` = absent); `new = None`
    /// deletes. Whether the swap happened.
    pub fn compare_and_swap(
        &self,
        key: String,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        ttl_ms: Option<u64>,
    ) -> bool {
        let _shared = self.shared();
        self.compare_and_swap_unlocked(key, expected, new, ttl_ms)
    }

    fn compare_and_swap_unlocked(
        &self,
        key: String,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        ttl_ms: Option<u64>,
    ) -> bool {
        let now = self.clock.monotonic_ns();
        match self.map.entry(key) {
            MapEntry::Occupied(mut e) => {
                let current = e.get().live(now).then(|| &e.get().value[..]);
                if current != expected {
                    return false;
                }
                match new {
                    Some(value) => {
                        e.insert(Slot {
                            value,
                            expires_at: deadline(now, ttl_ms),
                        });
                    }
                    None => {
                        e.remove();
                    }
                }
                true
            }
            MapEntry::Vacant(e) => {
                if expected.is_some() {
                    return false;
                }
                if let Some(value) = new {
                    e.insert(Slot {
                        value,
                        expires_at: deadline(now, ttl_ms),
                    });
                }
                true
            }
        }
    }

    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        // The lock guards no data: a panic while it was held leaves nothing half-done.
        self.batch.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the operations in order with no other operation on this state in between.
    pub fn apply(&self, ops: Vec<StateOp>) -> Vec<StateOpResult> {
        let _exclusive = self.batch.write().unwrap_or_else(PoisonError::into_inner);
        ops.into_iter()
            .map(|op| match op {
                StateOp::Get(key) => StateOpResult::Get(self.get_unlocked(&key)),
                StateOp::Set(key, value, ttl) => {
                    self.set_unlocked(key, value, ttl);
                    StateOpResult::Set
                }
                StateOp::Delete(key) => StateOpResult::Delete(self.delete_unlocked(&key)),
                StateOp::Incr(key, delta, ttl) => {
                    StateOpResult::Incr(self.incr_unlocked(key, delta, ttl))
                }
                StateOp::CompareAndSwap(key, expected, new, ttl) => StateOpResult::CompareAndSwap(
                    self.compare_and_swap_unlocked(key, expected.as_deref(), new, ttl),
                ),
            })
            .collect()
    }

    /// The live keys that start with `prefix` (a scan of the whole map: for the admin side,
    /// e.g. the breaker's `/hystrix.stream`, not for the request path).
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let now = self.clock.monotonic_ns();
        self.map
            .iter()
            .filter(|e| e.key().starts_with(prefix) && e.value().live(now))
            .map(|e| e.key().clone())
            .collect()
    }

    /// Drops expired entries (run periodically, so keys nobody reads again do not pile up).
    pub fn sweep(&self) {
        let now = self.clock.monotonic_ns();
        self.map.retain(|_, slot| slot.live(now));
    }

    /// Number of keys held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "test-clock")]
    #[test]
    fn ttls_run_on_the_state_s_clock() {
        let clock = Clock::default();
        let s = SharedState::new(clock.clone());
        s.set("k".into(), Bytes::from_static(b"v"), Some(60_000));
        clock.advance(Duration::from_secs(59));
        assert_eq!(s.get("k").as_deref(), Some(&b"v"[..]), "a second left");
        clock.advance(Duration::from_secs(2));
        assert_eq!(s.get("k"), None, "expired on its clock, not on wall time");
    }

    #[test]
    fn incr_counts_from_zero_and_rejects_non_counters() {
        let s = SharedState::default();
        assert_eq!(s.incr("a".into(), 2, None), Ok(2));
        assert_eq!(s.incr("a".into(), -5, None), Ok(-3));
        assert_eq!(s.get("a").unwrap(), "-3");
        s.set("b".into(), Bytes::from_static(b"x"), None);
        assert_eq!(
            s.incr("b".into(), 1, None),
            Err(StateError::NotACounter("b".into()))
        );
    }

    #[test]
    fn compare_and_swap_only_on_match() {
        let s = SharedState::default();
        assert!(s.compare_and_swap("k".into(), None, Some(Bytes::from_static(b"1")), None));
        assert!(!s.compare_and_swap("k".into(), None, Some(Bytes::from_static(b"2")), None));
        assert!(!s.compare_and_swap("k".into(), Some(b"0"), Some(Bytes::from_static(b"2")), None));
        assert!(s.compare_and_swap("k".into(), Some(b"1"), None, None));
        assert_eq!(s.get("k"), None);
    }

    #[test]
    fn ttl_expires_entries() {
        let s = SharedState::default();
        s.set("t".into(), Bytes::from_static(b"v"), Some(0));
        assert_eq!(s.get("t"), None);
        assert_eq!(
            s.incr("t".into(), 1, None),
            Ok(1),
            "an expired counter restarts"
        );
        s.set("gone".into(), Bytes::from_static(b"v"), Some(0));
        s.sweep();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn apply_runs_every_step_in_order_and_reports_each() {
        let s = SharedState::default();
        s.set("b".into(), Bytes::from_static(b"x"), None);
        let results = s.apply(vec![
            StateOp::Incr("n".into(), 2, None),
            StateOp::Get("n".into()),
            StateOp::Incr("b".into(), 1, None),
            StateOp::CompareAndSwap(
                "n".into(),
                Some(b"2".to_vec()),
                Some(Bytes::from_static(b"7")),
                None,
            ),
            StateOp::Delete("b".into()),
            StateOp::Set("s".into(), Bytes::from_static(b"v"), None),
            StateOp::Get("n".into()),
        ]);
        assert_eq!(
            results,
            vec![
                StateOpResult::Incr(Ok(2)),
                StateOpResult::Get(Some(Bytes::from_static(b"2"))),
                StateOpResult::Incr(Err(StateError::NotACounter("b".into()))),
                StateOpResult::CompareAndSwap(true),
                StateOpResult::Delete(true),
                StateOpResult::Set,
                StateOpResult::Get(Some(Bytes::from_static(b"7"))),
            ]
        );
        assert_eq!(s.get("s").unwrap(), "v");
    }

    #[test]
    fn apply_is_atomic_against_single_operations() {
        // Each batch increments two counters; a reader between the two steps of a batch would
        // see them differ.
        let s = std::sync::Arc::new(SharedState::default());
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    s.apply(vec![
                        StateOp::Incr("a".into(), 1, None),
                        StateOp::Incr("b".into(), 1, None),
                    ]);
                }
            })
        };
        for _ in 0..2000 {
            let r = s.apply(vec![StateOp::Get("a".into()), StateOp::Get("b".into())]);
            assert_eq!(r[0], r[1], "a batch was seen half done");
        }
        writer.join().unwrap();
        assert_eq!(s.get("a").unwrap(), "2000");
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let s = std::sync::Arc::new(SharedState::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.incr("n".into(), 1, None).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.get("n").unwrap(), "8000");
    }
}
