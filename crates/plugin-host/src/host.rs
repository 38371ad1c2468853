//! The host side of the WIT world: the store data of a plugin instance (`HostState`) and the
//! implementation of every import (request/response views, log, metrics, clocks, spans,
//! shared state, key-value config, outbound HTTP).
//!
//! Long (~1 000 lines): one `impl Host` per WIT interface, shaped by the generated traits;
//! each import is a few lines and they share the lent request/response state defined here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{host, kv, outbound, state, types};
use super::kv::KvStore;
use super::log_stream::PluginLogStream;
use super::sandbox::{AddedHeaders, MemoryLimiter, OutboundGuard, check_plugin_header};
use super::state::{SharedState, StateError};
use super::trace::{PluginTrace, SpanEvent, TraceParent};
use crate::settings::PluginSettings;

/// Largest outbound response body a plugin receives.
const MAX_OUTBOUND_BODY: usize = 4 * 1024 * 1024;

/// What all instances of one loaded plugin share.
#[derive(Debug)]
pub struct PluginShared {
    /// The plugin's name.
    pub name: Arc<str>,
    /// How the gateway runs it.
    pub settings: PluginSettings,
    /// Its shared state (kept across reloads of the same plugin name).
    pub state: Arc<SharedState>,
    /// The watched key-value store.
    pub kv: Arc<KvStore>,
    /// Plugin-defined metrics.
    pub metrics: Arc<super::metrics::PluginMetrics>,
    /// Client for outbound HTTP.
    pub outbound: OutboundClient,
    /// The address checks of outbound HTTP (shared by every plugin).
    pub outbound_guard: Arc<OutboundGuard>,
    /// Its runtime's clock: what `now-ms` and `monotonic-ns` answer, and its quarantine.
    pub clock: super::clock::Clock,
    /// The cap on per-request instances held across upstream calls (shared by every plugin).
    pub held_slots: Arc<super::held::InstanceSlots>,
    /// What `exports-traces` answers ([`super::NodeSettings::exports_traces`]).
    pub exports_traces: bool,
}

/// The pooled client used for plugins' outbound HTTP.
pub type OutboundClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Builds the outbound client (one per runtime).
pub fn outbound_client() -> OutboundClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// Most attributes, events (and plugin-data entries) a request keeps from its plugins.
const MAX_TRACE_ITEMS: usize = 64;
/// Largest `set-plugin-data` value.
const MAX_PLUGIN_DATA: usize = 4096;

fn parse_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let invalid = || {
        format!(
            "invalid {what} `{text}`: expected {} lower-case hex digits, not all zero",
            N * 2
        )
    };
    // W3C ids are lower-case: upper-case digits, which `hex` would accept, are refused.
    let mut out = [0u8; N];
    if text.bytes().any(|b| b.is_ascii_uppercase()) || hex::decode_to_slice(text, &mut out).is_err()
    {
        return Err(invalid());
    }
    if out.iter().all(|&b| b == 0) {
        return Err(invalid());
    }
    Ok(out)
}

/// The data of one plugin instance's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Caps linear memory and tracks how much the instance holds.
    pub limiter: MemoryLimiter,
    /// What the plugin shares with its other instances.
    pub plugin: Arc<PluginShared>,
    /// Time spent in async host calls during the current call; the CPU deadline excludes it.
    pub host_time: Duration,
    /// When the current call started.
    pub call_started: Instant,
    /// The request the current call serves (none during `init`). Kept here, not in the
    /// resource table: a call serves exactly one request (and, in `on-response`, one response),
    /// so the guest's borrow handles need no lookup, and moving them in and out of the store
    /// moves one pointer each.
    request: Option<Box<RequestState>>,
    /// The response head the current `on-response` call serves.
    response: Option<Box<ResponseState>>,
    /// Headers the current call set or appended, against the plugin's caps.
    pub added_headers: AddedHeaders,
    /// Time (ns) the current call spent yielded to the event loop at its CPU-deadline
    /// checks; the CPU deadline excludes it. Shared with the yield future that measures it.
    pub yielded_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Whether a refused kv read was already logged at warn level by this instance.
    kv_denied_logged: bool,
    /// `crypto` keys this instance holds in its resource table.
    crypto_keys: usize,
    /// The plugin counters and histograms this instance has used.
    user_metrics: super::metrics::UserMetricHandles,
}

/// The representation of the guest's borrow of the current request (there is only one).
const REQUEST_REP: u32 = 0;
/// The representation of the guest's borrow of the current response head.
const RESPONSE_REP: u32 = 1;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Store data for a new instance: WASI with no capabilities (no files, env, sockets,
    /// args), stdout/stderr into the gateway log under the plugin's name.
    pub fn new(plugin: Arc<PluginShared>) -> Self {
        let wasi = WasiCtxBuilder::new()
            .stdout(PluginLogStream::new(plugin.name.clone(), "stdout"))
            .stderr(PluginLogStream::new(plugin.name.clone(), "stderr"))
            .allow_blocking_current_thread(false)
            .build();
        let limiter = MemoryLimiter::new(plugin.settings.max_memory_bytes);
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter,
            plugin,
            host_time: Duration::ZERO,
            call_started: Instant::now(),
            request: None,
            response: None,
            added_headers: AddedHeaders::default(),
            yielded_ns: Arc::default(),
            kv_denied_logged: false,
            crypto_keys: 0,
            user_metrics: super::metrics::UserMetricHandles::default(),
        }
    }

    /// The resource table holding `crypto` keys, and how many keys it holds.
    pub(super) fn crypto_keys(&mut self) -> (&mut ResourceTable, &mut usize) {
        (&mut self.table, &mut self.crypto_keys)
    }

    /// Hands the request to this store for the duration of a call; the guest's borrow of it.
    pub fn lend_request(&mut self, r: Box<RequestState>) -> Resource<RequestState> {
        self.request = Some(r);
        // Every call (on-request, on-response) starts with its own header allowance.
        self.added_headers = AddedHeaders::default();
        Resource::new_borrow(REQUEST_REP)
    }

    /// Checks a header a plugin sets or appends: a valid name and value, not one the
    /// gateway manages, within the call's caps.
    fn admit_header(
        &mut self,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(HeaderName, HeaderValue), String> {
        let (name, value) = parse_owned_header(name, value)?;
        check_plugin_header(&name)?;
        self.added_headers
            .admit(&name, value.len(), &self.plugin.settings)?;
        Ok((name, value))
    }

    /// Takes the request back after a call.
    pub fn take_request(&mut self) -> Box<RequestState> {
        self.request
            .take()
            .expect("a request was lent for this call")
    }

    /// The trace of the request the current call serves (none during `init`).
    fn trace(&mut self) -> Option<&mut PluginTrace> {
        self.request.as_deref_mut().map(|r| &mut r.trace)
    }

    /// Hands the response head to this store for the duration of a call.
    pub fn lend_response(&mut self, r: Box<ResponseState>) -> Resource<ResponseState> {
        self.response = Some(r);
        Resource::new_borrow(RESPONSE_REP)
    }

    /// Takes the response head back after a call.
    pub fn take_response(&mut self) -> Box<ResponseState> {
        self.response
            .take()
            .expect("a response was lent for this call")
    }

    fn request(&mut self, r: &Resource<RequestState>) -> wasmtime::Result<&mut RequestState> {
        debug_assert_eq!(r.rep(), REQUEST_REP);
        self.request
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("no request is being served"))
    }

    fn response(&mut self, r: &Resource<ResponseState>) -> wasmtime::Result<&mut ResponseState> {
        debug_assert_eq!(r.rep(), RESPONSE_REP);
        self.response
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("no response is being served"))
    }
}

/// The request as plugins see and change it.
#[derive(Debug)]
pub struct RequestState {
    /// Method, URI (origin form: path and query), headers.
    pub parts: http::request::Parts,
    /// The client's address.
    pub client: SocketAddr,
    /// The matched route's name.
    pub route: Arc<str>,
    /// `x-request-id`.
    pub request_id: HeaderValue,
    /// The body, when a plugin on the route opted in to request bodies.
    pub body: PluginBody,
    /// A plugin's cap on the upstream wait (`set-upstream-timeout`), the smallest set.
    pub upstream_timeout: Option<Duration>,
    /// `set-plugin-data`, per plugin name.
    pub plugin_data: Vec<(Arc<str>, Vec<u8>)>,
    /// What plugins asked of the request's trace.
    pub trace: PluginTrace,
    /// Per-request instances kept from their plugin's `on-request` for its `on-response`
    /// (`instance = "per-request"`); dropped with the request if it ends before.
    pub held: Vec<super::held::Held>,
}

impl RequestState {
    /// A request as it enters the plugin chain.
    pub fn new(
        parts: http::request::Parts,
        client: SocketAddr,
        route: Arc<str>,
        request_id: HeaderValue,
        body: PluginBody,
    ) -> Self {
        Self {
            parts,
            client,
            route,
            request_id,
            body,
            upstream_timeout: None,
            plugin_data: Vec::new(),
            trace: PluginTrace::default(),
            held: Vec::new(),
        }
    }
}

/// The response head as plugins see and change it.
#[derive(Debug)]
pub struct ResponseState {
    /// Status and headers.
    pub parts: http::response::Parts,
    /// The body, when a plugin on the route opted in to response bodies.
    pub body: PluginBody,
    /// Why the gateway made this response itself, if it did.
    pub upstream_failure: Option<types::UpstreamFailure>,
    /// Whether the request went to (or was tried on) an upstream.
    pub upstream_attempted: bool,
}

/// A body buffered for the plugins that opted in to it (`request_body` / `response_body`):
/// only the plugin being called, if it opted in, may read or replace it.
#[derive(Debug, Default)]
pub struct PluginBody {
    /// The buffered bytes; `None` when no plugin on the route wants the body.
    pub bytes: Option<Bytes>,
    /// Whether the plugin being called opted in.
    pub visible: bool,
}

impl PluginBody {
    /// A buffered body (or none), visible to no plugin yet.
    pub fn new(bytes: Option<Bytes>) -> Self {
        Self {
            bytes,
            visible: false,
        }
    }

    fn read(&self) -> Option<Vec<u8>> {
        self.visible
            .then(|| self.bytes.as_ref().map(|b| b.to_vec()))
            .flatten()
    }

    /// `setting` names the opt-in in the error (`request_body` or `response_body`).
    fn replace(&mut self, body: Vec<u8>, max: usize, setting: &str) -> Result<(), String> {
        if !self.visible {
            return Err(format!(
                "this plugin did not opt in to bodies ({setting} = true)"
            ));
        }
        if body.len() > max {
            return Err(format!("body larger than max_body_bytes ({max})"));
        }
        self.bytes = Some(Bytes::from(body));
        Ok(())
    }
}

fn header_list(headers: &HeaderMap) -> Vec<types::Header> {
    headers
        .iter()
        .map(|(k, v)| types::Header {
            name: k.as_str().to_owned(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

fn parse_header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name `{name}`"))?;
    let value =
        HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header `{name}`"))?;
    Ok((name, value))
}

/// [`parse_header`] for a value the host call already owns (lifted out of the guest's
/// memory): the header keeps that allocation instead of copying it into a new one (the
/// `set-header` calls of a plugin route are two of a request's allocations fewer).
fn parse_owned_header(name: &str, value: Vec<u8>) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name `{name}`"))?;
    let value = HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| format!("invalid value for header `{name}`"))?;
    Ok((name, value))
}

/// Writes a header the plugin was admitted to write (`HostState::admit_header`, one check for
/// requests and responses alike), or says why it may not.
fn write_header(
    headers: &mut HeaderMap,
    admitted: Result<(HeaderName, HeaderValue), String>,
    append: bool,
) -> Result<(), String> {
    let (name, value) = admitted?;
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

fn remove_header(headers: &mut HeaderMap, name: &str) -> bool {
    HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| headers.remove(n).is_some())
}

fn first_header(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.parts.method.as_str().to_owned())
    }

    fn set_method(
        &mut self,
        r: Resource<RequestState>,
        method: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let req = self.request(&r)?;
        Ok(match Method::from_bytes(method.as_bytes()) {
            Ok(m) => {
                req.parts.method = m;
                Ok(())
            }
            Err(_) => Err(format!("invalid method `{method}`")),
        })
    }

    fn path(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.parts.uri.path().to_owned())
    }

    fn set_path(
        &mut self,
        r: Resource<RequestState>,
        path: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let req = self.request(&r)?;
        if !path.starts_with('/') {
            return Ok(Err(format!("path `{path}` must start with `/`")));
        }
        // The same canonical form as the client's path (issue #15).
        let policy = req.parts.extensions.get().copied().unwrap_or_default();
        let path = match crate::path::canonicalize(&path, policy) {
            Ok(canonical) => canonical.into_owned(),
            Err(e) => return Ok(Err(format!("path `{path}`: {e}"))),
        };
        let pq = match req.parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        Ok(match pq.parse::<http::Uri>() {
            Ok(uri) if uri.query() == req.parts.uri.query() => {
                req.parts.uri = uri;
                Ok(())
            }
            _ => Err(format!("invalid path `{path}`")),
        })
    }

    fn query(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&r)?.parts.uri.query().map(str::to_owned))
    }

    fn set_query(
        &mut self,
        r: Resource<RequestState>,
        query: Option<String>,
    ) -> wasmtime::Result<Result<(), String>> {
        let req = self.request(&r)?;
        let pq = match &query {
            Some(q) => format!("{}?{q}", req.parts.uri.path()),
            None => req.parts.uri.path().to_owned(),
        };
        Ok(match pq.parse::<http::Uri>() {
            Ok(uri) => {
                req.parts.uri = uri;
                Ok(())
            }
            Err(_) => Err("invalid query".to_owned()),
        })
    }

    fn header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first_header(&self.request(&r)?.parts.headers, &name))
    }

    fn header_all(
        &mut self,
        r: Resource<RequestState>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        let headers = &self.request(&r)?.parts.headers;
        Ok(headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect())
    }

    fn headers(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(header_list(&self.request(&r)?.parts.headers))
    }

    fn set_header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let admitted = self.admit_header(&name, value);
        Ok(write_header(
            &mut self.request(&r)?.parts.headers,
            admitted,
            false,
        ))
    }

    fn append_header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let admitted = self.admit_header(&name, value);
        Ok(write_header(
            &mut self.request(&r)?.parts.headers,
            admitted,
            true,
        ))
    }

    fn remove_header(&mut self, r: Resource<RequestState>, name: String) -> wasmtime::Result<bool> {
        Ok(remove_header(&mut self.request(&r)?.parts.headers, &name))
    }

    fn client_addr(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.client.ip().to_string())
    }

    fn route(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.route.to_string())
    }

    fn request_id(&mut self, r: Resource<RequestState>) -> wasmtime::Result<String> {
        Ok(String::from_utf8_lossy(self.request(&r)?.request_id.as_bytes()).into_owned())
    }

    fn body(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.request(&r)?.body.read())
    }

    fn set_body(
        &mut self,
        r: Resource<RequestState>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let max = self.plugin.settings.max_body_bytes;
        Ok(self
            .request(&r)?
            .body
            .replace(body, max, "request bodies (request_body = true)"))
    }

    fn set_upstream_timeout(&mut self, r: Resource<RequestState>, ms: u64) -> wasmtime::Result<()> {
        let request = self.request(&r)?;
        let timeout = Duration::from_millis(ms);
        request.upstream_timeout =
            Some(request.upstream_timeout.map_or(timeout, |t| t.min(timeout)));
        Ok(())
    }

    fn plugin_data(&mut self, r: Resource<RequestState>) -> wasmtime::Result<Option<Vec<u8>>> {
        let name = self.plugin.name.clone();
        Ok(self
            .request(&r)?
            .plugin_data
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, data)| data.clone()))
    }

    fn set_plugin_data(
        &mut self,
        r: Resource<RequestState>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        if data.len() > MAX_PLUGIN_DATA {
            return Ok(Err(format!(
                "plugin data is {} bytes; at most {MAX_PLUGIN_DATA} are kept",
                data.len()
            )));
        }
        let name = self.plugin.name.clone();
        let slots = &mut self.request(&r)?.plugin_data;
        match slots.iter_mut().find(|(n, _)| *n == name) {
            Some((_, slot)) => *slot = data,
            None => slots.push((name, data)),
        }
        Ok(Ok(()))
    }

    fn drop(&mut self, r: Resource<RequestState>) -> wasmtime::Result<()> {
        // The gateway owns requests; a guest only ever borrows them. Nothing to free.
        let _ = r;
        Ok(())
    }
}

impl types::HostResponseHead for HostState {
    fn status(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<u16> {
        Ok(self.response(&r)?.parts.status.as_u16())
    }

    fn set_status(
        &mut self,
        r: Resource<ResponseState>,
        status: u16,
    ) -> wasmtime::Result<Result<(), String>> {
        let resp = self.response(&r)?;
        Ok(match http::StatusCode::from_u16(status) {
            Ok(s) if (100..=599).contains(&status) => {
                resp.parts.status = s;
                Ok(())
            }
            _ => Err(format!("invalid status {status}")),
        })
    }

    fn header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first_header(&self.response(&r)?.parts.headers, &name))
    }

    fn headers(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(header_list(&self.response(&r)?.parts.headers))
    }

    fn set_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let admitted = self.admit_header(&name, value);
        Ok(write_header(
            &mut self.response(&r)?.parts.headers,
            admitted,
            false,
        ))
    }

    fn append_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let admitted = self.admit_header(&name, value);
        Ok(write_header(
            &mut self.response(&r)?.parts.headers,
            admitted,
            true,
        ))
    }

    fn remove_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
    ) -> wasmtime::Result<bool> {
        Ok(remove_header(&mut self.response(&r)?.parts.headers, &name))
    }

    fn body(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.response(&r)?.body.read())
    }

    fn set_body(
        &mut self,
        r: Resource<ResponseState>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let max = self.plugin.settings.max_body_bytes;
        Ok(self
            .response(&r)?
            .body
            .replace(body, max, "response bodies (response_body = true)"))
    }

    fn upstream_failure(
        &mut self,
        r: Resource<ResponseState>,
    ) -> wasmtime::Result<Option<types::UpstreamFailure>> {
        Ok(self.response(&r)?.upstream_failure)
    }

    fn upstream_attempted(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<bool> {
        Ok(self.response(&r)?.upstream_attempted)
    }

    fn drop(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<()> {
        let _ = r;
        Ok(())
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin.name;
        match level {
            types::Level::Trace => tracing::trace!(target: "sluice::plugin", plugin, "{message}"),
            types::Level::Debug => tracing::debug!(target: "sluice::plugin", plugin, "{message}"),
            types::Level::Info => tracing::info!(target: "sluice::plugin", plugin, "{message}"),
            types::Level::Warn => tracing::warn!(target: "sluice::plugin", plugin, "{message}"),
            types::Level::Error => tracing::error!(target: "sluice::plugin", plugin, "{message}"),
        }
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.plugin.clock.unix_ms())
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(self.plugin.clock.monotonic_ns())
    }

    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        let plugin = &self.plugin;
        plugin
            .metrics
            .counter_add(&mut self.user_metrics, &plugin.name, &name, delta);
        Ok(())
    }

    fn histogram_record(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        let plugin = &self.plugin;
        plugin
            .metrics
            .histogram_record(&mut self.user_metrics, &plugin.name, &name, value);
        Ok(())
    }

    fn span_set_attribute(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if let Some(trace) = self.trace()
            && trace.attributes.len() < MAX_TRACE_ITEMS
        {
            trace.attributes.push((key, value));
        }
        Ok(())
    }

    fn span_add_event(
        &mut self,
        name: String,
        attributes: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        if let Some(trace) = self.trace()
            && trace.events.len() < MAX_TRACE_ITEMS
        {
            trace.events.push(SpanEvent {
                name,
                attributes,
                unix_ns: super::clock::unix_ns(),
            });
        }
        Ok(())
    }

    fn span_set_name(&mut self, name: String) -> wasmtime::Result<()> {
        if let Some(trace) = self.trace() {
            trace.name = Some(name);
        }
        Ok(())
    }

    fn trace_continue(
        &mut self,
        parent: host::TraceParent,
    ) -> wasmtime::Result<Result<(), String>> {
        let parsed = parse_hex::<16>(&parent.trace_id, "trace id").and_then(|trace_id| {
            Ok(TraceParent {
                trace_id,
                span_id: parse_hex::<8>(&parent.span_id, "span id")?,
                sampled: parent.sampled,
                trace_state: parent.trace_state,
            })
        });
        let parent = match parsed {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(trace) = self.trace() {
            if trace.settled {
                return Ok(Err(
                    "trace-continue is only possible in on-request: the request already left with its trace id"
                        .into(),
                ));
            }
            if trace.trace_id.is_some() {
                trace.trace_id = Some(hex::encode(parent.trace_id));
            }
            trace.parent = Some(parent);
        }
        Ok(Ok(()))
    }

    fn trace_set_sampled(&mut self, sampled: bool) -> wasmtime::Result<()> {
        if let Some(trace) = self.trace() {
            trace.sampled = Some(sampled);
        }
        Ok(())
    }

    fn trace_id(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.trace().and_then(|t| t.trace_id.clone()))
    }

    fn exports_traces(&mut self) -> wasmtime::Result<bool> {
        Ok(self.plugin.exports_traces)
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.plugin.state.get(&key).map(|v| v.to_vec()))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        self.plugin.state.set(key, Bytes::from(value), ttl_ms);
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        Ok(self.plugin.state.delete(&key))
    }

    fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, String>> {
        Ok(self
            .plugin
            .state
            .incr(key, delta, ttl_ms)
            .map_err(|e: StateError| e.to_string()))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<bool> {
        Ok(self.plugin.state.compare_and_swap(
            key,
            expected.as_deref(),
            new.map(Bytes::from),
            ttl_ms,
        ))
    }

    fn apply(&mut self, ops: Vec<state::StateOp>) -> wasmtime::Result<Vec<state::StateResult>> {
        self.state_apply(ops)
    }
}

/// Most operations in one `state.apply` call.
pub const MAX_STATE_OPS: usize = 64;

impl HostState {
    /// `state.apply`: the operations as one atomic step of the plugin's shared state.
    pub(super) fn state_apply(
        &mut self,
        ops: Vec<state::StateOp>,
    ) -> wasmtime::Result<Vec<state::StateResult>> {
        use super::state::{StateOp, StateOpResult};
        if ops.len() > MAX_STATE_OPS {
            // A guest that sends more is broken or hostile: fail the call, naming the cap.
            wasmtime::bail!(
                "state.apply with {} operations, over the limit of {MAX_STATE_OPS}",
                ops.len()
            );
        }
        let ops = ops
            .into_iter()
            .map(|op| match op {
                state::StateOp::Get(key) => StateOp::Get(key),
                state::StateOp::Set(o) => StateOp::Set(o.key, Bytes::from(o.value), o.ttl_ms),
                state::StateOp::Delete(key) => StateOp::Delete(key),
                state::StateOp::Incr(o) => StateOp::Incr(o.key, o.delta, o.ttl_ms),
                state::StateOp::CompareAndSwap(o) => {
                    StateOp::CompareAndSwap(o.key, o.expected, o.new.map(Bytes::from), o.ttl_ms)
                }
            })
            .collect();
        Ok(self
            .plugin
            .state
            .apply(ops)
            .into_iter()
            .map(|r| match r {
                StateOpResult::Get(v) => state::StateResult::Get(v.map(|v| v.to_vec())),
                StateOpResult::Set => state::StateResult::Set,
                StateOpResult::Delete(existed) => state::StateResult::Delete(existed),
                StateOpResult::Incr(r) => state::StateResult::Incr(r.map_err(|e| e.to_string())),
                StateOpResult::CompareAndSwap(done) => state::StateResult::CompareAndSwap(done),
            })
            .collect())
    }
}

impl HostState {
    /// Whether this plugin may read kv `key` (its own `NAME/...` keys and its `kv_read`
    /// grants); a refusal is logged, at warn the first time per instance.
    fn kv_readable(&mut self, key: &str) -> bool {
        let plugin = &self.plugin;
        if super::sandbox::kv_readable(&plugin.name, key, &plugin.settings.kv_read) {
            return true;
        }
        let why = "not its own (NAME/...) and not granted by kv_read";
        if std::mem::replace(&mut self.kv_denied_logged, true) {
            tracing::debug!(target: crate::LOG_TARGET, plugin = &*plugin.name, key = %key, "kv read refused: {why}");
        } else {
            tracing::warn!(target: crate::LOG_TARGET, plugin = &*plugin.name, key = %key, "kv read refused: {why}");
        }
        false
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<kv::Entry>> {
        // Read as absent when refused: a plugin cannot tell a secret it may not read from no
        // secret.
        if !self.kv_readable(&key) {
            return Ok(None);
        }
        Ok(self.plugin.kv.get(&key).map(|(value, version)| kv::Entry {
            value: value.to_vec(),
            version,
        }))
    }

    fn version(&mut self, key: String) -> wasmtime::Result<Option<u64>> {
        // The same rule as `get`: a refused key has no version.
        if !self.kv_readable(&key) {
            return Ok(None);
        }
        Ok(self.plugin.kv.version(&key))
    }
}

impl outbound::Host for HostState {
    async fn send(
        &mut self,
        request: outbound::OutgoingRequest,
    ) -> wasmtime::Result<Result<outbound::IncomingResponse, outbound::Error>> {
        let started = Instant::now();
        let result = send_outbound(&self.plugin, request).await;
        // Time waiting on the network is not CPU time: keep it out of the CPU deadline.
        self.host_time += started.elapsed();
        Ok(result)
    }
}

async fn send_outbound(
    plugin: &PluginShared,
    request: outbound::OutgoingRequest,
) -> Result<outbound::IncomingResponse, outbound::Error> {
    use outbound::Error;
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|_| Error::InvalidRequest(format!("invalid URL `{}`", request.url)))?;
    if uri.scheme_str() != Some("http") {
        return Err(Error::InvalidRequest(
            "only http:// URLs are supported".into(),
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| Error::InvalidRequest("the URL has no host".into()))?;
    if !host_allowed(&plugin.settings.allowed_hosts, authority) {
        return Err(Error::NotAllowed(format!(
            "{} is not in allowed_hosts of plugin {}",
            authority, plugin.name
        )));
    }
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| Error::InvalidRequest(format!("invalid method `{}`", request.method)))?;
    let mut headers = HeaderMap::new();
    for h in &request.headers {
        let (name, value) = parse_header(&h.name, &h.value).map_err(Error::InvalidRequest)?;
        check_plugin_header(&name).map_err(Error::InvalidRequest)?;
        headers.append(name, value);
    }
    // The name is resolved here and the connection made to the address that was checked,
    // so a name cannot resolve to an allowed address for the check and another for the
    // connection (DNS rebinding). The upstream still sees the name in `Host`.
    let target = resolve_checked(plugin, authority).await?;
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| Error::InvalidRequest(format!("invalid host `{authority}`")))?;
    headers.insert(http::header::HOST, host);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: http::Uri = format!("http://{target}{path}")
        .parse()
        .map_err(|_| Error::InvalidRequest(format!("invalid URL `{}`", request.url)))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let req = builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| Error::InvalidRequest(e.to_string()))?;
    // Without a limit of its own, the exchange is bounded by the plugin call's wall-clock
    // timeout, which then fails the call (rather than handing the plugin a timeout error).
    let limit = request
        .timeout_ms
        .map_or(Duration::MAX, |ms| Duration::from_millis(u64::from(ms)));
    let exchange = async {
        let resp = plugin
            .outbound
            .request(req)
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_OUTBOUND_BODY)
            .collect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?
            .to_bytes();
        Ok(outbound::IncomingResponse {
            status: parts.status.as_u16(),
            headers: header_list(&parts.headers),
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| Error::Timeout)?
}

/// Resolves the authority and picks an address outbound HTTP may reach: loopback,
/// link-local, unspecified addresses and the admin port only when an `allowed_hosts` entry
/// names this exact `host:port`.
async fn resolve_checked(
    plugin: &PluginShared,
    authority: &http::uri::Authority,
) -> Result<SocketAddr, outbound::Error> {
    use outbound::Error;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let pinned = plugin.settings.allowed_hosts.iter().any(|a| {
        a.eq_ignore_ascii_case(authority.as_str())
            && a.parse::<http::uri::Authority>()
                .is_ok_and(|a| a.port().is_some())
    });
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Transport(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut refused = None;
    for addr in addrs {
        match plugin.outbound_guard.restricted(addr) {
            Some(why) if !pinned => refused = Some((addr, why)),
            _ => return Ok(addr),
        }
    }
    Err(match refused {
        Some((addr, why)) => Error::NotAllowed(format!(
            "{authority} resolves to {addr}, {why}: reachable only through an allowed_hosts entry naming `host:port` exactly"
        )),
        None => Error::Transport(format!("{host} resolves to no address")),
    })
}

/// `allowed_hosts` entries are `host` (any port) or `host:port`.
fn host_allowed(allowed: &[String], authority: &http::uri::Authority) -> bool {
    allowed.iter().any(|a| {
        a.eq_ignore_ascii_case(authority.as_str()) || a.eq_ignore_ascii_case(authority.host())
    })
}

#[cfg(test)]
mod tests {
    use super::{host_allowed, parse_hex};

    #[test]
    fn allowed_hosts_match_host_or_host_and_port() {
        let allowed = vec!["keys.internal".to_owned(), "127.0.0.1:8080".to_owned()];
        assert!(host_allowed(
            &allowed,
            &"keys.internal:9000".parse().unwrap()
        ));
        assert!(host_allowed(&allowed, &"127.0.0.1:8080".parse().unwrap()));
        assert!(!host_allowed(&allowed, &"127.0.0.1:8081".parse().unwrap()));
        assert!(!host_allowed(&allowed, &"evil.internal".parse().unwrap()));
    }

    #[test]
    fn trace_ids_are_lower_case_hex_of_their_length_and_not_all_zero() {
        assert_eq!(
            parse_hex::<8>("00f067aa0ba902b7", "span id"),
            Ok([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        for bad in [
            "00F067AA0BA902B7",  // upper case
            "00f067aa0ba902b",   // too short
            "00f067aa0ba902b7a", // too long
            "00f067aa0ba902bz",  // not hex
            "0000000000000000",  // all zero
        ] {
            let e = parse_hex::<8>(bad, "span id").unwrap_err();
            assert!(e.starts_with("invalid span id"), "{bad}: {e}");
        }
    }
}
