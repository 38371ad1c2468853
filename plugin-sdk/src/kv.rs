//! Watched key-value configuration: values operators change while the gateway runs. Read on
//! every request (cheap), re-parse only when the version changes.

use crate::backend::host_call;
#[cfg(target_arch = "wasm32")]
use crate::bindings::wit_kv;

/// A value and its version (grows on every change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// The current entry of a key.
pub fn get(key: &str) -> Option<Entry> {
    host_call!(
        wit => wit_kv::get(key).map(|e| Entry { value: e.value, version: e.version }),
        test |h| => h.kv_get(key)
    )
}
