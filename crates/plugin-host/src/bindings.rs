//! Host bindings generated from the plugin contract, one module per version the gateway
//! serves: `v0_2` from `wit/plugin.wit` (current) and `v0_1` from the frozen
//! `wit/0.1.0/plugin.wit`. Generated code only; the imports are implemented once, for 0.2, in
//! `host.rs` and `crypto.rs`, and `compat.rs` adapts the 0.1 traits to them. Both versions'
//! `request` / `response-head` resources are the same host types.

#![allow(missing_docs, reason = "bindgen-generated code")]

/// Contract `sluice:plugin@0.2.0`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin.wit",
        world: "sluice:plugin/plugin@0.2.0",
        imports: {
            // Outbound HTTP waits on the network: it must not block the worker's event loop.
            "sluice:plugin/outbound.send": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "sluice:plugin/types.request": crate::host::RequestState,
            "sluice:plugin/types.response-head": crate::host::ResponseState,
            "sluice:plugin/crypto.key": crate::crypto::Key,
        },
        require_store_data_send: true,
    });
}

/// Contract `sluice:plugin@0.1.0` (frozen), served to components built against it.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0/plugin.wit",
        world: "sluice:plugin/plugin@0.1.0",
        imports: {
            "sluice:plugin/outbound.send": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "sluice:plugin/types.request": crate::host::RequestState,
            "sluice:plugin/types.response-head": crate::host::ResponseState,
        },
        require_store_data_send: true,
    });
}

pub use self::v0_2::sluice::plugin::{crypto, host, kv, outbound, state, types};
