//! Where host calls go: the gateway's imports inside a component, the in-memory test host
//! when a plugin's logic runs natively under `cargo test` (feature `testing`).

/// `host_call!(wit => EXPR, test |h| => EXPR)`.
#[cfg(target_arch = "wasm32")]
macro_rules! host_call {
    (wit => $wit:expr, test |$h:ident| => $test:expr) => {
        $wit
    };
}

#[cfg(all(not(target_arch = "wasm32"), feature = "testing"))]
macro_rules! host_call {
    (wit => $wit:expr, test |$h:ident| => $test:expr) => {
        $crate::testing::with_host(|$h| $test)
    };
}

#[cfg(all(not(target_arch = "wasm32"), not(feature = "testing")))]
macro_rules! host_call {
    (wit => $wit:expr, test |$h:ident| => $test:expr) => {
        panic!(
            "sluice-plugin-sdk: host calls only work inside the gateway; \
             enable the `testing` feature to run plugin logic natively"
        )
    };
}

pub(crate) use host_call;
