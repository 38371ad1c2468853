//! Bindings generated from `wit/plugin.wit`. Plugin authors never use these directly: the
//! SDK wraps every type and import.

#![allow(missing_docs, reason = "generated code")]
#![allow(unsafe_code, reason = "generated code: the canonical ABI glue")]

wit_bindgen::generate!({
    path: "../wit",
    world: "sluice:plugin/plugin",
    pub_export_macro: true,
    export_macro_name: "__export",
    default_bindings_module: "sluice_plugin_sdk::bindings",
});

pub use self::sluice::plugin::{
    crypto as wit_crypto, host as wit_host, kv as wit_kv, outbound as wit_outbound,
    state as wit_state, types,
};
