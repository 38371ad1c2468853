//! State shared by every instance of the plugin and every gateway worker, kept in the gateway.
//! Every operation is atomic; `ttl_ms` makes an entry vanish that long after the write.

use crate::Error;
use crate::backend::host_call;
#[cfg(target_arch = "wasm32")]
use crate::bindings::wit_state;

/// The current value of a key.
pub fn get(key: &str) -> Option<Vec<u8>> {
    host_call!(wit => wit_state::get(key), test |h| => h.state_get(key))
}

/// Stores a value.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl_ms: Option<u64>) {
    host_call!(wit => wit_state::set(key, value.as_ref(), ttl_ms), test |h| => h.state_set(key, value.as_ref(), ttl_ms))
}

/// Removes a key; whether it existed.
pub fn delete(key: &str) -> bool {
    host_call!(wit => wit_state::delete(key), test |h| => h.state_delete(key))
}

/// Adds `delta` to a counter (a missing key counts as 0) and returns the new value. The TTL
/// applies when the key is created.
pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, Error> {
    let result: Result<i64, String> = host_call!(
        wit => wit_state::incr(key, delta, ttl_ms),
        test |h| => h.state_incr(key, delta, ttl_ms)
    );
    result.map_err(Error::from)
}

/// Replaces the value only if it equals `expected` (`None` = absent); `new = None` deletes.
/// Whether the swap happened.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: Option<&[u8]>,
    ttl_ms: Option<u64>,
) -> bool {
    host_call!(
        wit => wit_state::compare_and_swap(key, expected, new, ttl_ms),
        test |h| => h.state_cas(key, expected, new, ttl_ms)
    )
}

/// Most operations in one [`apply`] call (the gateway fails a call with more).
pub const MAX_BATCH: usize = 64;

/// One operation of [`apply`], with the meaning of the function of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// [`get`].
    Get(&'a str),
    /// [`set`]: key, value, TTL.
    Set(&'a str, &'a [u8], Option<u64>),
    /// [`delete`].
    Delete(&'a str),
    /// [`incr`]: key, delta, TTL.
    Incr(&'a str, i64, Option<u64>),
    /// [`compare_and_swap`]: key, expected, new, TTL.
    CompareAndSwap(&'a str, Option<&'a [u8]>, Option<&'a [u8]>, Option<u64>),
}

/// The result of one [`Op`], in the same position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// The value read.
    Get(Option<Vec<u8>>),
    /// Stored.
    Set,
    /// Whether the key existed.
    Delete(bool),
    /// The new counter value, or why the increment failed (the other operations still ran).
    Incr(Result<i64, Error>),
    /// Whether the swap happened.
    CompareAndSwap(bool),
}

/// Runs the operations in order as one atomic step (no other operation on this plugin's
/// state, from any instance or gateway worker, runs in between) and one host call: e.g. read
/// a circuit and take a slot together. At most [`MAX_BATCH`] operations.
pub fn apply(ops: &[Op<'_>]) -> Vec<OpResult> {
    host_call!(wit => wit_apply(ops), test |h| => ops.iter().map(|op| match *op {
        Op::Get(key) => OpResult::Get(h.state_get(key)),
        Op::Set(key, value, ttl) => {
            h.state_set(key, value, ttl);
            OpResult::Set
        }
        Op::Delete(key) => OpResult::Delete(h.state_delete(key)),
        Op::Incr(key, delta, ttl) => OpResult::Incr(h.state_incr(key, delta, ttl).map_err(Error::from)),
        Op::CompareAndSwap(key, expected, new, ttl) => {
            OpResult::CompareAndSwap(h.state_cas(key, expected, new, ttl))
        }
    }).collect())
}

#[cfg(target_arch = "wasm32")]
fn wit_apply(ops: &[Op<'_>]) -> Vec<OpResult> {
    use wit_state::{CasOp, IncrOp, SetOp, StateOp};
    let ops: Vec<StateOp> = ops
        .iter()
        .map(|op| match *op {
            Op::Get(key) => StateOp::Get(key.to_owned()),
            Op::Set(key, value, ttl_ms) => StateOp::Set(SetOp {
                key: key.to_owned(),
                value: value.to_vec(),
                ttl_ms,
            }),
            Op::Delete(key) => StateOp::Delete(key.to_owned()),
            Op::Incr(key, delta, ttl_ms) => StateOp::Incr(IncrOp {
                key: key.to_owned(),
                delta,
                ttl_ms,
            }),
            Op::CompareAndSwap(key, expected, new, ttl_ms) => StateOp::CompareAndSwap(CasOp {
                key: key.to_owned(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.map(<[u8]>::to_vec),
                ttl_ms,
            }),
        })
        .collect();
    batch_apply(&ops)
}

/// A batch for [`apply`] that keeps its keys' buffers from one use to the next.
///
/// [`apply`] takes borrowed keys and copies each into the owned form the host call needs; a
/// plugin that runs the same kind of batch on every request (the built-in breaker: one on the
/// way in, one on the way out) can instead keep a `Batch`, [`clear`](Batch::clear) it and
/// write each key straight into a buffer it already has: no allocation per key, no copy.
/// Gets, increments and deletes (the per-request kinds; for the others use [`apply`]).
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<crate::bindings::wit_state::StateOp>,
    /// Operations in use; the ones after it only lend their key buffers.
    len: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a [`get`]; `key` writes the key into an empty buffer.
    pub fn get(&mut self, key: impl FnOnce(&mut String)) {
        let key = self.key_buffer(key);
        self.push(crate::bindings::wit_state::StateOp::Get(key));
    }

    /// Adds an [`incr`]; `key` writes the key into an empty buffer.
    pub fn incr(&mut self, delta: i64, ttl_ms: Option<u64>, key: impl FnOnce(&mut String)) {
        let key = self.key_buffer(key);
        self.push(crate::bindings::wit_state::StateOp::Incr(
            crate::bindings::wit_state::IncrOp { key, delta, ttl_ms },
        ));
    }

    /// Adds a [`delete`]; `key` writes the key into an empty buffer.
    pub fn delete(&mut self, key: impl FnOnce(&mut String)) {
        let key = self.key_buffer(key);
        self.push(crate::bindings::wit_state::StateOp::Delete(key));
    }

    /// Runs the batch as [`apply`] does (one atomic step, one host call; at most
    /// [`MAX_BATCH`] operations): one result per operation, in order. The batch keeps its
    /// operations (apply it again, or [`clear`](Batch::clear) it).
    pub fn apply(&self) -> Vec<OpResult> {
        let ops = &self.ops[..self.len];
        host_call!(wit => batch_apply(ops), test |h| => ops.iter().map(|op| {
            use crate::bindings::wit_state::StateOp;
            match op {
                StateOp::Get(key) => OpResult::Get(h.state_get(key)),
                StateOp::Incr(o) => {
                    OpResult::Incr(h.state_incr(&o.key, o.delta, o.ttl_ms).map_err(Error::from))
                }
                StateOp::Delete(key) => OpResult::Delete(h.state_delete(key)),
                StateOp::Set(_) | StateOp::CompareAndSwap(_) => {
                    unreachable!("a Batch only holds gets, increments and deletes")
                }
            }
        }).collect())
    }

    /// The next position's old key buffer (or a new one), emptied and written by `write`.
    fn key_buffer(&mut self, write: impl FnOnce(&mut String)) -> String {
        use crate::bindings::wit_state::StateOp;
        let mut key = match self.ops.get_mut(self.len) {
            Some(StateOp::Get(key) | StateOp::Delete(key)) => std::mem::take(key),
            Some(StateOp::Incr(o)) => std::mem::take(&mut o.key),
            Some(StateOp::Set(o)) => std::mem::take(&mut o.key),
            Some(StateOp::CompareAndSwap(o)) => std::mem::take(&mut o.key),
            None => String::new(),
        };
        key.clear();
        write(&mut key);
        key
    }

    fn push(&mut self, op: crate::bindings::wit_state::StateOp) {
        match self.ops.get_mut(self.len) {
            Some(slot) => *slot = op,
            None => self.ops.push(op),
        }
        self.len += 1;
    }
}

#[cfg(target_arch = "wasm32")]
fn batch_apply(ops: &[wit_state::StateOp]) -> Vec<OpResult> {
    use wit_state::StateResult;
    wit_state::apply(ops)
        .into_iter()
        .map(|r| match r {
            StateResult::Get(v) => OpResult::Get(v),
            StateResult::Set => OpResult::Set,
            StateResult::Delete(existed) => OpResult::Delete(existed),
            StateResult::Incr(r) => OpResult::Incr(r.map_err(Error::from)),
            StateResult::CompareAndSwap(done) => OpResult::CompareAndSwap(done),
        })
        .collect()
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::TestHost;

    /// A batch runs its operations in order, and after `clear` only the new ones: the buffers
    /// it keeps from a longer batch are not run again.
    #[test]
    fn a_cleared_batch_runs_only_its_new_operations() {
        let host = TestHost::new();
        let mut batch = Batch::new();
        batch.incr(2, None, |key| key.push_str("one"));
        batch.get(|key| key.push_str("one"));
        batch.incr(5, None, |key| key.push_str("two"));
        assert_eq!(batch.len(), 3);
        assert_eq!(
            batch.apply(),
            vec![
                OpResult::Incr(Ok(2)),
                OpResult::Get(Some(b"2".to_vec())),
                OpResult::Incr(Ok(5)),
            ]
        );

        batch.clear();
        assert!(batch.is_empty());
        // The first buffer held "one": it is emptied before the new key is written.
        batch.get(|key| key.push_str("two"));
        batch.delete(|key| key.push_str("one"));
        assert_eq!(
            batch.apply(),
            vec![OpResult::Get(Some(b"5".to_vec())), OpResult::Delete(true)]
        );
        assert_eq!(host.state("one"), None);
        assert_eq!(
            host.state("two").as_deref(),
            Some(&b"5"[..]),
            "two not incremented again"
        );

        // An increment of a non-counter fails alone, as with `apply`.
        batch.clear();
        host.set_state("text", "x", None);
        batch.incr(1, None, |key| key.push_str("text"));
        batch.incr(1, Some(1000), |key| key.push_str("two"));
        let results = batch.apply();
        assert!(matches!(results[0], OpResult::Incr(Err(_))), "{results:?}");
        assert_eq!(results[1], OpResult::Incr(Ok(6)));
    }
}
