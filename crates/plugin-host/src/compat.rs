//! Contract 0.1.0 served through the 0.2.0 implementation: every import of the frozen world
//! delegates to the one implementation of that behaviour (`host.rs`), converting the
//! generated types, which are the same shapes under two module paths.

use wasmtime::component::Resource;

use super::bindings::v0_1::sluice::plugin as v1;
use super::bindings::{host as h2, kv as kv2, outbound as o2, state as s2, types as t2};
use super::host::{HostState, RequestState, ResponseState};

fn header(h: t2::Header) -> v1::types::Header {
    v1::types::Header {
        name: h.name,
        value: h.value,
    }
}

fn header_from(h: v1::types::Header) -> t2::Header {
    t2::Header {
        name: h.name,
        value: h.value,
    }
}

fn headers(list: Vec<t2::Header>) -> Vec<v1::types::Header> {
    list.into_iter().map(header).collect()
}

/// A 0.1 `action` as the 0.2 one (the gateway works with 0.2 types).
pub fn action(a: v1::types::Action) -> t2::Action {
    match a {
        v1::types::Action::Continue => t2::Action::Continue,
        v1::types::Action::Respond(r) => t2::Action::Respond(t2::Response {
            status: r.status,
            headers: r.headers.into_iter().map(header_from).collect(),
            body: r.body,
        }),
    }
}

impl v1::types::Host for HostState {}

type Req = Resource<RequestState>;
type Resp = Resource<ResponseState>;
type R<T> = wasmtime::Result<T>;
type Fallible = wasmtime::Result<Result<(), String>>;

impl v1::types::HostRequest for HostState {
    fn method(&mut self, r: Req) -> R<String> {
        t2::HostRequest::method(self, r)
    }
    fn set_method(&mut self, r: Req, method: String) -> Fallible {
        t2::HostRequest::set_method(self, r, method)
    }
    fn path(&mut self, r: Req) -> R<String> {
        t2::HostRequest::path(self, r)
    }
    fn set_path(&mut self, r: Req, path: String) -> Fallible {
        t2::HostRequest::set_path(self, r, path)
    }
    fn query(&mut self, r: Req) -> R<Option<String>> {
        t2::HostRequest::query(self, r)
    }
    fn set_query(&mut self, r: Req, query: Option<String>) -> Fallible {
        t2::HostRequest::set_query(self, r, query)
    }
    fn header(&mut self, r: Req, name: String) -> R<Option<Vec<u8>>> {
        t2::HostRequest::header(self, r, name)
    }
    fn header_all(&mut self, r: Req, name: String) -> R<Vec<Vec<u8>>> {
        t2::HostRequest::header_all(self, r, name)
    }
    fn headers(&mut self, r: Req) -> R<Vec<v1::types::Header>> {
        t2::HostRequest::headers(self, r).map(headers)
    }
    fn set_header(&mut self, r: Req, name: String, value: Vec<u8>) -> Fallible {
        t2::HostRequest::set_header(self, r, name, value)
    }
    fn append_header(&mut self, r: Req, name: String, value: Vec<u8>) -> Fallible {
        t2::HostRequest::append_header(self, r, name, value)
    }
    fn remove_header(&mut self, r: Req, name: String) -> R<bool> {
        t2::HostRequest::remove_header(self, r, name)
    }
    fn client_addr(&mut self, r: Req) -> R<String> {
        t2::HostRequest::client_addr(self, r)
    }
    fn route(&mut self, r: Req) -> R<String> {
        t2::HostRequest::route(self, r)
    }
    fn request_id(&mut self, r: Req) -> R<String> {
        t2::HostRequest::request_id(self, r)
    }
    fn body(&mut self, r: Req) -> R<Option<Vec<u8>>> {
        t2::HostRequest::body(self, r)
    }
    fn set_body(&mut self, r: Req, body: Vec<u8>) -> Fallible {
        t2::HostRequest::set_body(self, r, body)
    }
    fn set_upstream_timeout(&mut self, r: Req, ms: u64) -> R<()> {
        t2::HostRequest::set_upstream_timeout(self, r, ms)
    }
    fn plugin_data(&mut self, r: Req) -> R<Option<Vec<u8>>> {
        t2::HostRequest::plugin_data(self, r)
    }
    fn set_plugin_data(&mut self, r: Req, data: Vec<u8>) -> Fallible {
        t2::HostRequest::set_plugin_data(self, r, data)
    }
    fn drop(&mut self, r: Req) -> R<()> {
        t2::HostRequest::drop(self, r)
    }
}

impl v1::types::HostResponseHead for HostState {
    fn status(&mut self, r: Resp) -> R<u16> {
        t2::HostResponseHead::status(self, r)
    }
    fn set_status(&mut self, r: Resp, status: u16) -> Fallible {
        t2::HostResponseHead::set_status(self, r, status)
    }
    fn header(&mut self, r: Resp, name: String) -> R<Option<Vec<u8>>> {
        t2::HostResponseHead::header(self, r, name)
    }
    fn headers(&mut self, r: Resp) -> R<Vec<v1::types::Header>> {
        t2::HostResponseHead::headers(self, r).map(headers)
    }
    fn set_header(&mut self, r: Resp, name: String, value: Vec<u8>) -> Fallible {
        t2::HostResponseHead::set_header(self, r, name, value)
    }
    fn append_header(&mut self, r: Resp, name: String, value: Vec<u8>) -> Fallible {
        t2::HostResponseHead::append_header(self, r, name, value)
    }
    fn remove_header(&mut self, r: Resp, name: String) -> R<bool> {
        t2::HostResponseHead::remove_header(self, r, name)
    }
    fn body(&mut self, r: Resp) -> R<Option<Vec<u8>>> {
        t2::HostResponseHead::body(self, r)
    }
    fn set_body(&mut self, r: Resp, body: Vec<u8>) -> Fallible {
        t2::HostResponseHead::set_body(self, r, body)
    }
    fn upstream_failure(&mut self, r: Resp) -> R<Option<v1::types::UpstreamFailure>> {
        Ok(
            t2::HostResponseHead::upstream_failure(self, r)?.map(|f| match f {
                t2::UpstreamFailure::ConnectFailed => v1::types::UpstreamFailure::ConnectFailed,
                t2::UpstreamFailure::TimedOut => v1::types::UpstreamFailure::TimedOut,
                t2::UpstreamFailure::Failed => v1::types::UpstreamFailure::Failed,
                t2::UpstreamFailure::NoInstance => v1::types::UpstreamFailure::NoInstance,
            }),
        )
    }
    fn upstream_attempted(&mut self, r: Resp) -> R<bool> {
        t2::HostResponseHead::upstream_attempted(self, r)
    }
    fn drop(&mut self, r: Resp) -> R<()> {
        t2::HostResponseHead::drop(self, r)
    }
}

impl v1::host::Host for HostState {
    fn log(&mut self, level: v1::types::Level, message: String) -> R<()> {
        let level = match level {
            v1::types::Level::Trace => t2::Level::Trace,
            v1::types::Level::Debug => t2::Level::Debug,
            v1::types::Level::Info => t2::Level::Info,
            v1::types::Level::Warn => t2::Level::Warn,
            v1::types::Level::Error => t2::Level::Error,
        };
        h2::Host::log(self, level, message)
    }
    fn now_ms(&mut self) -> R<u64> {
        h2::Host::now_ms(self)
    }
    fn monotonic_ns(&mut self) -> R<u64> {
        h2::Host::monotonic_ns(self)
    }
    fn counter_add(&mut self, name: String, delta: u64) -> R<()> {
        h2::Host::counter_add(self, name, delta)
    }
    fn histogram_record(&mut self, name: String, value: f64) -> R<()> {
        h2::Host::histogram_record(self, name, value)
    }
    fn span_set_attribute(&mut self, key: String, value: String) -> R<()> {
        h2::Host::span_set_attribute(self, key, value)
    }
    fn span_add_event(&mut self, name: String, attributes: Vec<(String, String)>) -> R<()> {
        h2::Host::span_add_event(self, name, attributes)
    }
    fn span_set_name(&mut self, name: String) -> R<()> {
        h2::Host::span_set_name(self, name)
    }
    fn trace_continue(&mut self, parent: v1::host::TraceParent) -> Fallible {
        let parent = h2::TraceParent {
            trace_id: parent.trace_id,
            span_id: parent.span_id,
            sampled: parent.sampled,
            trace_state: parent.trace_state,
        };
        h2::Host::trace_continue(self, parent)
    }
    fn trace_set_sampled(&mut self, sampled: bool) -> R<()> {
        h2::Host::trace_set_sampled(self, sampled)
    }
    fn trace_id(&mut self) -> R<Option<String>> {
        h2::Host::trace_id(self)
    }
}

impl v1::state::Host for HostState {
    fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        s2::Host::get(self, key)
    }
    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> R<()> {
        s2::Host::set(self, key, value, ttl_ms)
    }
    fn delete(&mut self, key: String) -> R<bool> {
        s2::Host::delete(self, key)
    }
    fn incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> R<Result<i64, String>> {
        s2::Host::incr(self, key, delta, ttl_ms)
    }
    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> R<bool> {
        s2::Host::compare_and_swap(self, key, expected, new, ttl_ms)
    }
}

impl v1::kv::Host for HostState {
    fn get(&mut self, key: String) -> R<Option<v1::kv::Entry>> {
        Ok(kv2::Host::get(self, key)?.map(|e| v1::kv::Entry {
            value: e.value,
            version: e.version,
        }))
    }
}

impl v1::outbound::Host for HostState {
    async fn send(
        &mut self,
        request: v1::outbound::OutgoingRequest,
    ) -> R<Result<v1::outbound::IncomingResponse, v1::outbound::Error>> {
        let request = o2::OutgoingRequest {
            method: request.method,
            url: request.url,
            headers: request.headers.into_iter().map(header_from).collect(),
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        Ok(match o2::Host::send(self, request).await? {
            Ok(r) => Ok(v1::outbound::IncomingResponse {
                status: r.status,
                headers: headers(r.headers),
                body: r.body,
            }),
            Err(e) => Err(match e {
                o2::Error::NotAllowed(m) => v1::outbound::Error::NotAllowed(m),
                o2::Error::InvalidRequest(m) => v1::outbound::Error::InvalidRequest(m),
                o2::Error::Transport(m) => v1::outbound::Error::Transport(m),
                o2::Error::Timeout => v1::outbound::Error::Timeout,
            }),
        })
    }
}
