//! Run a plugin's logic natively under `cargo test`, against an in-memory host: shared state,
//! clocks, watched config, outbound HTTP answers, logs and metrics, all set and inspected by
//! the test. No gateway, no WebAssembly build.
//!
//! ```
//! use sluice_plugin_sdk::testing::{TestHost, TestRequest};
//! use sluice_plugin_sdk::{Action, Config, Error, Plugin, Request};
//!
//! struct Counter;
//! impl Plugin for Counter {
//!     fn init(_: Config) -> Result<Self, Error> {
//!         Ok(Counter)
//!     }
//!     fn on_request(&self, req: &Request<'_>) -> Result<Action, Error> {
//!         let n = sluice_plugin_sdk::state::incr("hits", 1, None)?;
//!         req.set_header("x-hits", n.to_string())?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! let host = TestHost::new();
//! let plugin = host.init::<Counter>(serde_json::json!({})).unwrap();
//! let req = TestRequest::get("/");
//! host.on_request(&plugin, &req).unwrap();
//! host.on_request(&plugin, &req).unwrap();
//! assert_eq!(req.header_str("x-hits").as_deref(), Some("2"));
//! assert_eq!(host.state("hits").as_deref(), Some(&b"2"[..]));
//! ```
//!
//! Each test thread has its own host: [`TestHost::new`] installs a fresh one.
//!
//! Long (~780 lines before its tests): it mirrors every host import the real gateway offers,
//! checked against the real host by `tests/conformance/host.json`; one file keeps them in step.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use crate::bindings::types::Header;
use crate::host::Level;
use crate::host::TraceParent;
use crate::kv::Entry;
use crate::outbound::{HttpError, HttpRequest, HttpResponse};
use crate::{Action, Config, Error, Plugin, Request, ResponseHead, UpstreamFailure};

thread_local! {
    static HOST: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
}

pub(crate) fn with_host<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        let host = h.as_mut().expect(
            "no test host on this thread: create a sluice_plugin_sdk::testing::TestHost first",
        );
        f(host)
    })
}

#[derive(Default)]
pub(crate) struct FakeHost {
    now_ms: u64,
    logs: Vec<(Level, String)>,
    counters: HashMap<String, u64>,
    histograms: HashMap<String, Vec<f64>>,
    span_attributes: Vec<(String, String)>,
    span_events: Vec<(String, Vec<(String, String)>)>,
    pub(crate) span_name: Option<String>,
    trace_parent: Option<TraceParent>,
    pub(crate) trace_sampled: Option<bool>,
    trace_id: Option<String>,
    pub(crate) exports_traces: bool,
    state: HashMap<String, (Vec<u8>, Option<u64>)>,
    kv: HashMap<String, Entry>,
    kv_version: u64,
    kv_value_reads: u64,
    http: HashMap<(String, String), Result<HttpResponse, HttpError>>,
    http_sent: Vec<HttpRequest>,
    crypto_imports: u64,
}

impl FakeHost {
    pub(crate) fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    pub(crate) fn now_ms(&mut self) -> u64 {
        self.now_ms
    }

    pub(crate) fn monotonic_ns(&mut self) -> u64 {
        self.now_ms * 1_000_000
    }

    pub(crate) fn counter_add(&mut self, name: &str, delta: u64) {
        *self.counters.entry(name.to_owned()).or_default() += delta;
    }

    pub(crate) fn histogram_record(&mut self, name: &str, value: f64) {
        self.histograms
            .entry(name.to_owned())
            .or_default()
            .push(value);
    }

    pub(crate) fn span_set_attribute(&mut self, key: &str, value: &str) {
        self.span_attributes
            .push((key.to_owned(), value.to_owned()));
    }

    pub(crate) fn span_add_event(&mut self, name: &str, attributes: &[(&str, &str)]) {
        let attributes = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.span_events.push((name.to_owned(), attributes));
    }

    pub(crate) fn trace_continue(&mut self, parent: &TraceParent) -> Result<(), String> {
        let hex_id = |id: &str, len: usize| {
            id.len() == len
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && id.bytes().any(|b| b != b'0')
        };
        if !hex_id(&parent.trace_id, 32) {
            return Err(format!("invalid trace id `{}`", parent.trace_id));
        }
        if !hex_id(&parent.span_id, 16) {
            return Err(format!("invalid span id `{}`", parent.span_id));
        }
        self.trace_id = Some(parent.trace_id.clone());
        self.trace_parent = Some(parent.clone());
        Ok(())
    }

    pub(crate) fn trace_id(&mut self) -> Option<String> {
        self.trace_id.clone()
    }

    fn live(&self, key: &str) -> Option<&Vec<u8>> {
        let (value, expires) = self.state.get(key)?;
        expires.is_none_or(|t| self.now_ms < t).then_some(value)
    }

    fn expiry(&self, ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ttl| self.now_ms + ttl)
    }

    pub(crate) fn state_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.live(key).cloned()
    }

    pub(crate) fn state_set(&mut self, key: &str, value: &[u8], ttl_ms: Option<u64>) {
        let expires = self.expiry(ttl_ms);
        self.state.insert(key.to_owned(), (value.to_vec(), expires));
    }

    pub(crate) fn state_delete(&mut self, key: &str) -> bool {
        let live = self.live(key).is_some();
        self.state.remove(key);
        live
    }

    pub(crate) fn state_incr(
        &mut self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, String> {
        let (current, expires) = match self.live(key) {
            Some(v) => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| format!("key `{key}` does not hold an integer counter"))?;
                (n, self.state[key].1)
            }
            None => (0, self.expiry(ttl_ms)),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| format!("counter `{key}` would overflow"))?;
        self.state
            .insert(key.to_owned(), (next.to_string().into_bytes(), expires));
        Ok(next)
    }

    pub(crate) fn state_cas(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl_ms: Option<u64>,
    ) -> bool {
        if self.live(key).map(Vec::as_slice) != expected {
            return false;
        }
        match new {
            Some(value) => self.state_set(key, value, ttl_ms),
            None => {
                self.state.remove(key);
            }
        }
        true
    }

    pub(crate) fn crypto_import(
        &mut self,
        alg: crate::crypto::Algorithm,
        material: crate::crypto::KeyMaterial<'_>,
    ) -> Result<TestKey, String> {
        self.crypto_imports += 1;
        TestKey::import(alg, material)
    }

    pub(crate) fn kv_get(&mut self, key: &str) -> Option<Entry> {
        self.kv_value_reads += 1;
        self.kv.get(key).cloned()
    }

    pub(crate) fn kv_version(&mut self, key: &str) -> Option<u64> {
        self.kv.get(key).map(|e| e.version)
    }

    pub(crate) fn http_send(&mut self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.http_sent.push(request.clone());
        self.http
            .get(&(request.method.to_ascii_uppercase(), request.url.clone()))
            .cloned()
            .unwrap_or_else(|| {
                Err(HttpError::Transport(format!(
                    "test host: no answer set for {} {}",
                    request.method, request.url
                )))
            })
    }
}

/// The in-memory host of the current test thread. Creating one replaces any previous host.
#[derive(Debug)]
pub struct TestHost {
    _private: (),
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// Installs a fresh host for this thread: empty state and kv, clock at 1 000 000 ms.
    pub fn new() -> Self {
        HOST.with(|h| {
            *h.borrow_mut() = Some(FakeHost {
                now_ms: 1_000_000,
                ..FakeHost::default()
            })
        });
        Self { _private: () }
    }

    /// Builds the plugin with this configuration, as the gateway's `init` would.
    pub fn init<P: Plugin>(&self, config: serde_json::Value) -> Result<P, Error> {
        P::init(Config::from_value(config))
    }

    /// Runs `on_request`.
    pub fn on_request<P: Plugin>(
        &self,
        plugin: &P,
        request: &TestRequest,
    ) -> Result<Action, Error> {
        plugin.on_request(&Request::test(request))
    }

    /// Runs `on_response`.
    pub fn on_response<P: Plugin>(
        &self,
        plugin: &P,
        request: &TestRequest,
        response: &TestResponseHead,
    ) -> Result<(), Error> {
        plugin.on_response(&Request::test(request), &ResponseHead::test(response))
    }

    /// The wall clock, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        with_host(|h| h.now_ms)
    }

    /// Sets the wall clock.
    pub fn set_now_ms(&self, ms: u64) {
        with_host(|h| h.now_ms = ms);
    }

    /// Moves both clocks forward (state TTLs expire accordingly).
    pub fn advance(&self, by: Duration) {
        with_host(|h| h.now_ms += by.as_millis() as u64);
    }

    /// How many times a plugin read a kv value (`kv::get`; `kv::version` does not count).
    pub fn kv_value_reads(&self) -> u64 {
        with_host(|h| h.kv_value_reads)
    }

    /// Removes a watched kv value (as `DELETE /admin/kv/KEY`).
    pub fn kv_delete(&self, key: &str) {
        with_host(|h| {
            h.kv.remove(key);
        });
    }

    /// Sets a watched kv value (its version grows).
    pub fn kv_put(&self, key: &str, value: impl AsRef<[u8]>) {
        with_host(|h| {
            h.kv_version += 1;
            let entry = Entry {
                value: value.as_ref().to_vec(),
                version: h.kv_version,
            };
            h.kv.insert(key.to_owned(), entry);
        });
    }

    /// Sets what outbound `METHOD url` answers.
    pub fn http_answer(&self, method: &str, url: &str, answer: Result<HttpResponse, HttpError>) {
        with_host(|h| {
            h.http
                .insert((method.to_ascii_uppercase(), url.to_owned()), answer);
        });
    }

    /// Outbound requests the plugin sent, in order.
    pub fn http_sent(&self) -> Vec<HttpRequest> {
        with_host(|h| h.http_sent.clone())
    }

    /// How many `crypto` keys the plugin imported on this host so far.
    pub fn crypto_imports(&self) -> u64 {
        with_host(|h| h.crypto_imports)
    }

    /// A shared-state value.
    pub fn state(&self, key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.state_get(key))
    }

    /// Sets a shared-state value.
    pub fn set_state(&self, key: &str, value: impl AsRef<[u8]>, ttl_ms: Option<u64>) {
        with_host(|h| h.state_set(key, value.as_ref(), ttl_ms));
    }

    /// Log lines written, with their level.
    pub fn logs(&self) -> Vec<(Level, String)> {
        with_host(|h| h.logs.clone())
    }

    /// A counter's total.
    pub fn counter(&self, name: &str) -> u64 {
        with_host(|h| h.counters.get(name).copied().unwrap_or(0))
    }

    /// Values recorded in a histogram.
    pub fn histogram(&self, name: &str) -> Vec<f64> {
        with_host(|h| h.histograms.get(name).cloned().unwrap_or_default())
    }

    /// Span attributes set.
    pub fn span_attributes(&self) -> Vec<(String, String)> {
        with_host(|h| h.span_attributes.clone())
    }

    /// Span events added.
    pub fn span_events(&self) -> Vec<(String, Vec<(String, String)>)> {
        with_host(|h| h.span_events.clone())
    }

    /// The server span's name, if the plugin set one.
    pub fn span_name(&self) -> Option<String> {
        with_host(|h| h.span_name.clone())
    }

    /// The caller's trace the plugin continued, if any.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        with_host(|h| h.trace_parent.clone())
    }

    /// The last sampling decision the plugin made, if any.
    pub fn trace_sampled(&self) -> Option<bool> {
        with_host(|h| h.trace_sampled)
    }

    /// Sets what `host::exports_traces()` answers (`false` at first, as a gateway without
    /// `[telemetry]`).
    pub fn set_exports_traces(&self, exports: bool) {
        with_host(|h| h.exports_traces = exports);
    }

    /// Sets the trace id `trace_id()` reports (as a gateway that exports traces would).
    pub fn set_trace_id(&self, trace_id: Option<&str>) {
        with_host(|h| h.trace_id = trace_id.map(str::to_owned));
    }
}

/// A request for tests; read it back after the plugin ran to see what it changed.
#[derive(Debug, Clone)]
pub struct TestRequest {
    method: RefCell<String>,
    path: RefCell<String>,
    query: RefCell<Option<String>>,
    headers: HeaderList,
    client: String,
    route: String,
    request_id: String,
    body: RefCell<Option<Vec<u8>>>,
    upstream_timeout_ms: RefCell<Option<u64>>,
    plugin_data: RefCell<Option<Vec<u8>>>,
}

impl TestRequest {
    /// A request: `target` is `/path` or `/path?query`.
    pub fn new(method: &str, target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Self {
            method: RefCell::new(method.to_owned()),
            path: RefCell::new(path),
            query: RefCell::new(query),
            headers: HeaderList::default(),
            client: "127.0.0.1".into(),
            route: "test".into(),
            request_id: "test-request".into(),
            body: RefCell::new(None),
            upstream_timeout_ms: RefCell::new(None),
            plugin_data: RefCell::new(None),
        }
    }

    /// A GET request.
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// Adds a header.
    pub fn with_header(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(name, value.as_ref());
        self
    }

    /// Sets the client address.
    pub fn with_client(mut self, ip: &str) -> Self {
        self.client = ip.to_owned();
        self
    }

    /// Sets the matched route's name.
    pub fn with_route(mut self, route: &str) -> Self {
        self.route = route.to_owned();
        self
    }

    /// Sets the body (as a plugin with `request_body = true` would see it).
    pub fn with_body(self, body: impl AsRef<[u8]>) -> Self {
        *self.body.borrow_mut() = Some(body.as_ref().to_vec());
        self
    }

    /// The first value of a header, if UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    // The methods below mirror the WIT `request` resource, so the SDK's `Request` can wrap
    // either.

    pub(crate) fn method(&self) -> String {
        self.method.borrow().clone()
    }

    /// As the gateway: any RFC 9110 token (`M-SEARCH`, `get`), case kept.
    pub(crate) fn set_method(&self, method: &str) -> Result<(), String> {
        if method.is_empty() || !method.bytes().all(is_tchar) {
            return Err(format!("invalid method `{method}`"));
        }
        *self.method.borrow_mut() = method.to_owned();
        Ok(())
    }

    /// The path (after the plugin ran).
    pub fn path(&self) -> String {
        self.path.borrow().clone()
    }

    pub(crate) fn set_path(&self, path: &str) -> Result<(), String> {
        if !path.starts_with('/') {
            return Err(format!("path `{path}` must start with `/`"));
        }
        *self.path.borrow_mut() = path.to_owned();
        Ok(())
    }

    /// The query (after the plugin ran).
    pub fn query(&self) -> Option<String> {
        self.query.borrow().clone()
    }

    /// As the gateway, which re-parses `path?query` as a request target (the `http` crate's
    /// rules): bytes the URL standard leaves unencoded in a query, and any non-ASCII, are
    /// kept; a `#` starts a fragment, which is dropped; anything else (space, `"`, `<`, `>`,
    /// controls) or a target longer than 65 534 bytes is refused.
    pub(crate) fn set_query(&self, query: Option<&str>) -> Result<(), String> {
        let Some(query) = query else {
            *self.query.borrow_mut() = None;
            return Ok(());
        };
        const MAX_TARGET: usize = u16::MAX as usize - 1;
        if self.path.borrow().len() + 1 + query.len() > MAX_TARGET {
            return Err("invalid query".into());
        }
        let kept = query.split_once('#').map_or(query, |(q, _fragment)| q);
        let allowed = |b: u8| matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E | 0x80..);
        if !kept.bytes().all(allowed) {
            return Err("invalid query".into());
        }
        *self.query.borrow_mut() = Some(kept.to_owned());
        Ok(())
    }

    /// The first value of a header (after the plugin ran).
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.first(name)
    }

    /// Every value of a header, in order (after the plugin ran).
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers.all(name)
    }

    pub(crate) fn headers(&self) -> Vec<Header> {
        self.headers.list()
    }

    pub(crate) fn set_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
        self.headers.set(name, value)
    }

    pub(crate) fn append_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
        self.headers.append(name, value)
    }

    pub(crate) fn remove_header(&self, name: &str) -> bool {
        self.headers.remove(name)
    }

    pub(crate) fn client_addr(&self) -> String {
        self.client.clone()
    }

    pub(crate) fn route(&self) -> String {
        self.route.clone()
    }

    pub(crate) fn request_id(&self) -> String {
        self.request_id.clone()
    }

    /// The body (after the plugin ran).
    pub fn body(&self) -> Option<Vec<u8>> {
        self.body.borrow().clone()
    }

    pub(crate) fn set_body(&self, body: &[u8]) -> Result<(), String> {
        let mut slot = self.body.borrow_mut();
        if slot.is_none() {
            return Err(
                "this plugin did not opt in to request bodies (request_body = true)".into(),
            );
        }
        *slot = Some(body.to_vec());
        Ok(())
    }

    /// The upstream timeout the plugin set, in ms, if any.
    pub fn upstream_timeout_ms(&self) -> Option<u64> {
        *self.upstream_timeout_ms.borrow()
    }

    /// The upstream timeout the plugin set, if any.
    pub fn upstream_timeout(&self) -> Option<Duration> {
        self.upstream_timeout_ms().map(Duration::from_millis)
    }

    /// As the gateway: a cap, so the shortest of several calls wins.
    pub(crate) fn set_upstream_timeout(&self, ms: u64) {
        let mut slot = self.upstream_timeout_ms.borrow_mut();
        *slot = Some(slot.map_or(ms, |t| t.min(ms)));
    }

    /// What the plugin attached with `set_plugin_data`.
    pub fn plugin_data(&self) -> Option<Vec<u8>> {
        self.plugin_data.borrow().clone()
    }

    pub(crate) fn set_plugin_data(&self, data: &[u8]) -> Result<(), String> {
        if data.len() > MAX_PLUGIN_DATA {
            return Err(format!(
                "plugin data is {} bytes; at most {MAX_PLUGIN_DATA} are kept",
                data.len()
            ));
        }
        *self.plugin_data.borrow_mut() = Some(data.to_vec());
        Ok(())
    }
}

/// The gateway's cap on `set-plugin-data`.
const MAX_PLUGIN_DATA: usize = 4096;

/// A response head for tests.
#[derive(Debug, Clone)]
pub struct TestResponseHead {
    status: RefCell<u16>,
    headers: HeaderList,
    body: RefCell<Option<Vec<u8>>>,
    upstream_failure: Option<UpstreamFailure>,
    upstream_attempted: bool,
}

impl TestResponseHead {
    /// A response head with this status.
    pub fn new(status: u16) -> Self {
        Self {
            status: RefCell::new(status),
            headers: HeaderList::default(),
            body: RefCell::new(None),
            upstream_failure: None,
            upstream_attempted: true,
        }
    }

    /// Marks the response as one the upstream never saw (a later plugin answered).
    pub fn not_from_upstream(mut self) -> Self {
        self.upstream_attempted = false;
        self
    }

    pub(crate) fn upstream_attempted(&self) -> bool {
        self.upstream_attempted
    }

    /// Marks the response as made by the gateway because the upstream failed.
    pub fn with_upstream_failure(mut self, failure: UpstreamFailure) -> Self {
        self.upstream_failure = Some(failure);
        self
    }

    pub(crate) fn upstream_failure(&self) -> Option<UpstreamFailure> {
        self.upstream_failure
    }

    /// Sets the body (as a plugin with `response_body = true` would see it).
    pub fn with_body(self, body: impl AsRef<[u8]>) -> Self {
        *self.body.borrow_mut() = Some(body.as_ref().to_vec());
        self
    }

    /// The body (after the plugin ran).
    pub fn body(&self) -> Option<Vec<u8>> {
        self.body.borrow().clone()
    }

    pub(crate) fn set_body(&self, body: &[u8]) -> Result<(), String> {
        let mut slot = self.body.borrow_mut();
        if slot.is_none() {
            return Err(
                "this plugin did not opt in to response bodies (response_body = true)".into(),
            );
        }
        *slot = Some(body.to_vec());
        Ok(())
    }

    /// Adds a header.
    pub fn with_header(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(name, value.as_ref());
        self
    }

    /// The status (after the plugin ran).
    pub fn status(&self) -> u16 {
        *self.status.borrow()
    }

    pub(crate) fn set_status(&self, status: u16) -> Result<(), String> {
        if !(100..=599).contains(&status) {
            return Err(format!("invalid status {status}"));
        }
        *self.status.borrow_mut() = status;
        Ok(())
    }

    /// The first value of a header (after the plugin ran).
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.first(name)
    }

    /// The first value of a header, if UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    pub(crate) fn headers(&self) -> Vec<Header> {
        self.headers.list()
    }

    pub(crate) fn set_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
        self.headers.set(name, value)
    }

    pub(crate) fn append_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
        self.headers.append(name, value)
    }

    pub(crate) fn remove_header(&self, name: &str) -> bool {
        self.headers.remove(name)
    }
}

/// Headers of a test request or response: lower-case names, byte values, in order.
#[derive(Debug, Clone, Default)]
struct HeaderList(RefCell<Vec<(String, Vec<u8>)>>);

impl HeaderList {
    fn push(&self, name: &str, value: &[u8]) {
        self.0
            .borrow_mut()
            .push((name.to_ascii_lowercase(), value.to_vec()));
    }

    fn first(&self, name: &str) -> Option<Vec<u8>> {
        self.all(name).into_iter().next()
    }

    fn all(&self, name: &str) -> Vec<Vec<u8>> {
        let name = name.to_ascii_lowercase();
        self.0
            .borrow()
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn list(&self) -> Vec<Header> {
        let headers = self.0.borrow();
        headers
            .iter()
            .map(|(name, value)| Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    }

    fn set(&self, name: &str, value: &[u8]) -> Result<(), String> {
        check_header(name, value)?;
        self.remove(name);
        self.push(name, value);
        Ok(())
    }

    fn append(&self, name: &str, value: &[u8]) -> Result<(), String> {
        check_header(name, value)?;
        self.push(name, value);
        Ok(())
    }

    fn remove(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let mut headers = self.0.borrow_mut();
        let before = headers.len();
        headers.retain(|(n, _)| *n != name);
        headers.len() != before
    }
}

/// An RFC 9110 `tchar`: what method and header names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The same rules the gateway applies (RFC 9110 token names; no CR, LF or NUL in values).
fn check_header(name: &str, value: &[u8]) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("invalid header name `{name}`"));
    }
    if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("invalid value for header `{name}`"));
    }
    Ok(())
}

/// The conformance table `tests/conformance/host.json`, run against this host; the gateway's
/// host runs the same table (`tests/it/conformance.rs`, through the testbed plugin).
#[cfg(test)]
mod conformance {
    use std::time::Duration;

    use serde_json::Value;

    use super::{TestHost, TestRequest};
    use crate::Request;

    fn table() -> Value {
        serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/conformance/host.json"
        )))
        .unwrap()
    }

    /// A case's input: a string, `null`, or `{"repeat": "a", "times": N}`.
    fn input(case: &Value) -> Option<String> {
        match &case["input"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            v => Some(
                v["repeat"]
                    .as_str()
                    .unwrap()
                    .repeat(v["times"].as_u64().unwrap() as usize),
            ),
        }
    }

    #[test]
    fn set_method_and_set_query_match_the_gateway() {
        let _host = TestHost::new();
        let table = table();
        let mut checked = 0;
        for op in ["set_method", "set_query"] {
            for case in table[op].as_array().unwrap() {
                let start = &table["request"];
                let test = TestRequest::new(
                    start["method"].as_str().unwrap(),
                    start["target"].as_str().unwrap(),
                );
                let request = Request::test(&test);
                let arg = input(case);
                let result = match op {
                    "set_method" => request.set_method(arg.as_deref().unwrap()),
                    _ => request.set_query(arg.as_deref()),
                };
                let what = format!("{op}({arg:?})");
                assert_eq!(result.is_ok(), case["ok"] == true, "{what}: {result:?}");
                assert_eq!(request.method(), case["method"].as_str().unwrap(), "{what}");
                assert_eq!(request.query().as_deref(), case["query"].as_str(), "{what}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked}");
    }

    #[test]
    fn set_upstream_timeout_matches_the_gateway() {
        let _host = TestHost::new();
        for case in table()["set_upstream_timeout"].as_array().unwrap() {
            let test = TestRequest::get("/");
            let request = Request::test(&test);
            for ms in case["calls"].as_array().unwrap() {
                request.set_upstream_timeout(Duration::from_millis(ms.as_u64().unwrap()));
            }
            let want = case["effective_ms"].as_u64().map(Duration::from_millis);
            assert_eq!(test.upstream_timeout(), want, "{case}");
        }
    }
}

/// A `crypto` key of the test host, verified natively with aws-lc-rs (the gateway's
/// library) when the SDK's `testing-crypto` feature is on.
#[derive(Debug)]
pub struct TestKey {
    #[cfg(feature = "testing-crypto")]
    inner: native_crypto::Verifier,
}

impl TestKey {
    #[cfg(feature = "testing-crypto")]
    fn import(
        alg: crate::crypto::Algorithm,
        material: crate::crypto::KeyMaterial<'_>,
    ) -> Result<Self, String> {
        Ok(Self {
            inner: native_crypto::import(alg, material)?,
        })
    }

    #[cfg(not(feature = "testing-crypto"))]
    fn import(
        alg: crate::crypto::Algorithm,
        _material: crate::crypto::KeyMaterial<'_>,
    ) -> Result<Self, String> {
        Err(format!(
            "{}: the test host verifies signatures only with the sluice-plugin-sdk feature `testing-crypto`",
            alg.jws_name()
        ))
    }

    /// Whether `signature` is valid for `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        #[cfg(feature = "testing-crypto")]
        return self.inner.verify(message, signature);
        #[cfg(not(feature = "testing-crypto"))]
        {
            let _ = (message, signature);
            unreachable!("a TestKey is only made with testing-crypto")
        }
    }
}

/// The test host's verification: the same aws-lc-rs calls as the gateway's `crypto.rs`, less
/// its checks of RSA key sizes at import and PEM certificates (aws-lc-rs still refuses
/// RSA keys outside 2048..=8192 bits at verification).
#[cfg(feature = "testing-crypto")]
mod native_crypto {
    use aws_lc_rs::{hmac, signature};

    use crate::crypto::{Algorithm, KeyMaterial};

    pub enum Verifier {
        Hmac(Box<hmac::Key>),
        Public(signature::ParsedPublicKey),
    }

    impl std::fmt::Debug for Verifier {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Never the material: an HMAC key is a secret.
            f.write_str(match self {
                Self::Hmac(_) => "Verifier::Hmac",
                Self::Public(_) => "Verifier::Public",
            })
        }
    }

    impl Verifier {
        pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
            match self {
                Self::Hmac(key) => hmac::verify(key, message, sig).is_ok(),
                Self::Public(key) => key.verify_sig(message, sig).is_ok(),
            }
        }
    }

    fn rsa(alg: Algorithm) -> &'static signature::RsaParameters {
        match alg {
            Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }

    fn verification(alg: Algorithm) -> &'static dyn signature::VerificationAlgorithm {
        match alg {
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDsa => &signature::ED25519,
            other => rsa(other),
        }
    }

    pub fn import(alg: Algorithm, material: KeyMaterial<'_>) -> Result<Verifier, String> {
        let name = alg.jws_name();
        let public = |bytes: &[u8]| {
            signature::ParsedPublicKey::new(verification(alg), bytes)
                .map(Verifier::Public)
                .map_err(|e| format!("{name}: invalid public key ({e})"))
        };
        match (alg.is_hmac(), material) {
            (true, KeyMaterial::Secret(secret)) if !secret.is_empty() => {
                let digest = match alg {
                    Algorithm::Hs384 => hmac::HMAC_SHA384,
                    Algorithm::Hs512 => hmac::HMAC_SHA512,
                    _ => hmac::HMAC_SHA256,
                };
                Ok(Verifier::Hmac(Box::new(hmac::Key::new(digest, secret))))
            }
            (true, KeyMaterial::Secret(_)) => Err(format!("{name}: the secret is empty")),
            (true, _) => Err(format!("{name} takes a secret, not a public key")),
            (false, KeyMaterial::Secret(_)) => {
                Err(format!("{name} needs a public key, not a secret"))
            }
            (false, KeyMaterial::SpkiDer(der)) => public(der),
            (false, KeyMaterial::Pem(text)) => {
                let pem = pem::parse(text).map_err(|e| format!("{name}: malformed PEM ({e})"))?;
                match pem.tag() {
                    "PUBLIC KEY" | "RSA PUBLIC KEY" => public(pem.contents()),
                    tag => Err(format!(
                        "{name}: a PEM `{tag}` is not a public key the test host reads"
                    )),
                }
            }
            (false, KeyMaterial::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(rsa(alg))
                .map(Verifier::Public)
                .map_err(|e| format!("{name}: invalid RSA modulus or exponent ({e})")),
            (false, KeyMaterial::Ec { x, y }) => {
                let mut point = vec![0x04];
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                public(&point)
            }
            (false, KeyMaterial::Ed25519(raw)) => public(raw),
        }
    }
}

#[cfg(test)]
mod kv_tests {
    use super::TestHost;
    use crate::kv;

    #[test]
    fn version_follows_puts_and_deletes_without_reading_the_value() {
        let host = TestHost::new();
        assert_eq!(kv::version("k"), None);
        host.kv_put("k", "a");
        let first = kv::version("k").unwrap();
        assert_eq!(kv::get("k").unwrap().version, first);
        host.kv_put("other", "x");
        host.kv_put("k", "a");
        let second = kv::version("k").unwrap();
        assert!(
            second > first,
            "a put is a new version, even of the same value"
        );
        assert_eq!(kv::get("k").unwrap().version, second);
        assert_eq!(host.kv_value_reads(), 2, "only the two gets read the value");
        host.kv_delete("k");
        assert_eq!(kv::version("k"), None);
        assert_eq!(kv::get("k"), None);
    }
}
