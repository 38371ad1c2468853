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
    use wit_state::{CasOp, IncrOp, SetOp, StateOp, StateResult};
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
    wit_state::apply(&ops)
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
