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
