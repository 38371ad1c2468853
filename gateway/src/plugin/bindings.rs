//! Host bindings generated from `wit/plugin.wit`. Generated code only; the implementations
//! of the imports live in `host.rs`.

#![allow(missing_docs, reason = "bindgen-generated code")]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sluice:plugin/plugin",
    imports: {
        // Outbound HTTP waits on the network: it must not block the worker's event loop.
        "sluice:plugin/outbound.send": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "sluice:plugin/types.request": crate::plugin::host::RequestState,
        "sluice:plugin/types.response-head": crate::plugin::host::ResponseState,
    },
    require_store_data_send: true,
});

pub use self::sluice::plugin::{host, kv, outbound, state, types};
