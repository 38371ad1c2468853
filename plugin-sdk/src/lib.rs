//! Write [Sluice](https://github.com/) gateway plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`]: `init` builds it from its configuration once
//! per instance, `on_request` and `on_response` (both optional) run for every request on the
//! routes that list the plugin. [`export_plugin!`] turns it into a WebAssembly component for
//! the world `sluice:plugin/plugin@0.2.0`; build it with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! ```no_run
//! use sluice_plugin_sdk::{Action, Config, Error, Plugin, Request, ResponseHead};
//!
//! struct AddHeader {
//!     value: String,
//! }
//!
//! impl Plugin for AddHeader {
//!     fn init(config: Config) -> Result<Self, Error> {
//!         Ok(Self { value: config.str("value").unwrap_or("hello").to_owned() })
//!     }
//!
//!     fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
//!         request.set_header("x-greeting", &self.value)?;
//!         Ok(Action::Continue)
//!     }
//!
//!     fn on_response(&self, _request: &Request<'_>, response: &ResponseHead<'_>) -> Result<(), Error> {
//!         response.set_header("x-plugin", "add-header")?;
//!         Ok(())
//!     }
//! }
//!
//! sluice_plugin_sdk::export_plugin!(AddHeader);
//! ```
//!
//! Host capabilities are in [`host`] (log, clocks, metrics, spans), [`state`] (shared state
//! with atomic increment, compare-and-swap, TTLs and atomic batches), [`kv`] (watched
//! configuration), [`outbound`] (HTTP to allowed hosts) and [`crypto`] (signature
//! verification done natively by the gateway). With the `testing` feature, [`testing`] runs
//! a plugin natively against an in-memory host (`testing-crypto` adds native verification).
//!
//! A plugin that implements only some hooks says so with [`Plugin::HOOKS`]: the gateway then
//! never calls the others (no second call on the way back for a plugin without
//! `on_response`).

#![deny(missing_docs)]
// Natively without `testing` every host call is a panic, so arguments go unused and code
// after a host call is unreachable; the wasm32 and `testing` builds check these normally.
#![cfg_attr(
    all(not(target_arch = "wasm32"), not(feature = "testing")),
    allow(
        unused_variables,
        unreachable_code,
        clippy::diverging_sub_expression,
        reason = "host calls panic in this build"
    )
)]

mod backend;
#[doc(hidden)]
pub mod bindings;
mod config;
pub mod crypto;
pub mod host;
mod http;
pub mod kv;
pub mod outbound;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::config::{Config, parse_duration, parse_duration_ms};
pub use crate::http::{Request, Response, ResponseHead, UpstreamFailure};

/// What `on_request` decides.
#[derive(Debug)]
pub enum Action {
    /// Go on: the next plugin, then the upstream.
    Continue,
    /// Answer the client with this response; the upstream and the rest of the chain are
    /// skipped.
    Respond(Response),
}

/// A plugin failure: the gateway applies the plugin's failure policy (fail-closed answers
/// 500 naming the plugin; fail-open skips it). Every SDK call that can fail returns it, so
/// `?` works throughout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

/// The hooks a plugin implements ([`Plugin::HOOKS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// `on_request` is implemented.
    pub on_request: bool,
    /// `on_response` is implemented.
    pub on_response: bool,
}

impl Hooks {
    /// Both hooks (the default).
    pub const ALL: Self = Self {
        on_request: true,
        on_response: true,
    };
    /// Only `on_request`.
    pub const ON_REQUEST: Self = Self {
        on_request: true,
        on_response: false,
    };
    /// Only `on_response`.
    pub const ON_RESPONSE: Self = Self {
        on_request: false,
        on_response: true,
    };
    /// Neither: the plugin is never called for a request (e.g. it has nothing to do with
    /// this gateway's settings, see [`Plugin::hooks`]).
    pub const NONE: Self = Self {
        on_request: false,
        on_response: false,
    };
}

/// A gateway plugin. Only `init` is required; the hooks default to doing nothing.
///
/// An instance serves one request at a time and is usually reused for many (pooled mode), so
/// `Self` may cache what is safe to recompute (parsed config, keys). State every request must
/// see (counters, buckets) belongs in [`state`], shared by all instances. With
/// `instance = "per-request"` a fresh instance serves one request (both hooks, within the
/// gateway's `max_held_instances`) and is dropped.
pub trait Plugin: Sized + 'static {
    /// The hooks this plugin implements. The gateway calls only these, so a plugin that
    /// overrides only `on_request` should say `const HOOKS: Hooks = Hooks::ON_REQUEST;`
    /// (it then costs no call on the way back). The default, both, is always correct.
    const HOOKS: Hooks = Hooks::ALL;

    /// The hooks this instance implements, asked once after `init`: [`Self::HOOKS`] unless
    /// overridden. Override it when the answer depends on the configuration or the gateway,
    /// e.g. `tracing` declares none when [`host::exports_traces`] is false, so a route
    /// listing it costs nothing there. Every instance of a plugin must give the same answer
    /// for the same configuration (the gateway keeps the first).
    fn hooks(&self) -> Hooks {
        Self::HOOKS
    }

    /// Builds the plugin from its configuration (`[plugin.NAME]` in the gateway config, or
    /// `NAME.toml` beside the plugin). An error refuses the configuration: the gateway does
    /// not activate the plugin and shows the message.
    fn init(config: Config) -> Result<Self, Error>;

    /// Sees (and may change) each request; continue, or answer it.
    fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
        let _ = request;
        Ok(Action::Continue)
    }

    /// Sees (and may change) each response head, with the request as forwarded.
    fn on_response(&self, request: &Request<'_>, response: &ResponseHead<'_>) -> Result<(), Error> {
        let _ = (request, response);
        Ok(())
    }
}

/// Exports a [`Plugin`] type as the component's implementation of the world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __SluiceExportedPlugin;

        impl $crate::bindings::Guest for __SluiceExportedPlugin {
            fn init(
                config: ::std::string::String,
            ) -> ::std::result::Result<$crate::bindings::types::Hooks, ::std::string::String> {
                $crate::__private::init::<$plugin>(config)
            }

            fn on_request(
                request: &$crate::bindings::Request,
            ) -> ::std::result::Result<$crate::bindings::Action, ::std::string::String> {
                $crate::__private::on_request::<$plugin>(request)
            }

            fn on_response(
                request: &$crate::bindings::Request,
                response: &$crate::bindings::ResponseHead,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::on_response::<$plugin>(request, response)
            }
        }

        $crate::bindings::__export!(__SluiceExportedPlugin with_types_in $crate::bindings);
    };
}

/// What [`export_plugin!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    use crate::bindings;
    use crate::{Action, Config, Plugin, Request, ResponseHead};

    thread_local! {
        // One plugin per component instance; wasm instances are single-threaded.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_plugin<P: Plugin, R>(f: impl FnOnce(&P) -> Result<R, String>) -> Result<R, String> {
        INSTANCE.with(|slot| {
            let slot = slot.borrow();
            let plugin = slot
                .as_ref()
                .and_then(|p| p.downcast_ref::<P>())
                .ok_or_else(|| "plugin called before init".to_owned())?;
            f(plugin)
        })
    }

    pub fn init<P: Plugin>(config: String) -> Result<bindings::types::Hooks, String> {
        let plugin = P::init(Config::parse(&config).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let declared = plugin.hooks();
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        let mut hooks = bindings::types::Hooks::empty();
        if declared.on_request {
            hooks |= bindings::types::Hooks::ON_REQUEST;
        }
        if declared.on_response {
            hooks |= bindings::types::Hooks::ON_RESPONSE;
        }
        Ok(hooks)
    }

    pub fn on_request<P: Plugin>(request: &bindings::Request) -> Result<bindings::Action, String> {
        with_plugin::<P, _>(|p| match p.on_request(&Request::wit(request)) {
            Ok(Action::Continue) => Ok(bindings::Action::Continue),
            Ok(Action::Respond(response)) => Ok(bindings::Action::Respond(response.into_wit())),
            Err(e) => Err(e.to_string()),
        })
    }

    pub fn on_response<P: Plugin>(
        request: &bindings::Request,
        response: &bindings::ResponseHead,
    ) -> Result<(), String> {
        with_plugin::<P, _>(|p| {
            p.on_response(&Request::wit(request), &ResponseHead::wit(response))
                .map_err(|e| e.to_string())
        })
    }
}
