//! Watched key-value configuration: values operators change while the gateway runs. Ask for
//! the version on every request ([`version`]: 8 bytes, no copy of the value) and [`get`] the
//! value, to re-parse it, only when the version changed.

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

/// The current version of a key (`None`: absent, or not readable by this plugin), without
/// copying its value into the plugin. Contract 0.2.0's `kv.version`: a component that calls
/// it needs a gateway that has it (see docs/plugins.md).
pub fn version(key: &str) -> Option<u64> {
    host_call!(
        wit => wit_kv::version(key),
        test |h| => h.kv_version(key)
    )
}
