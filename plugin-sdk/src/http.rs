//! Typed views of the request and response. Header values are bytes (a header need not be
//! UTF-8); the `_str` helpers give text when it is.

use crate::Error;
use crate::bindings;
#[cfg(feature = "testing")]
use crate::testing::{TestRequest, TestResponseHead};

/// The request as the gateway will forward it. Changes made here are what later plugins and
/// the upstream see.
pub struct Request<'a> {
    inner: RequestInner<'a>,
}

enum RequestInner<'a> {
    Wit(&'a bindings::Request),
    #[cfg(feature = "testing")]
    Test(&'a TestRequest),
}

/// Runs the same call on whichever backend holds the request.
macro_rules! on_request {
    ($self:ident, $r:ident => $e:expr) => {
        match &$self.inner {
            RequestInner::Wit($r) => $e,
            #[cfg(feature = "testing")]
            RequestInner::Test($r) => $e,
        }
    };
}

impl<'a> Request<'a> {
    pub(crate) fn wit(request: &'a bindings::Request) -> Self {
        Self {
            inner: RequestInner::Wit(request),
        }
    }

    #[cfg(feature = "testing")]
    pub(crate) fn test(request: &'a TestRequest) -> Self {
        Self {
            inner: RequestInner::Test(request),
        }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> String {
        on_request!(self, r => r.method())
    }

    /// Changes the method.
    pub fn set_method(&self, method: &str) -> Result<(), Error> {
        on_request!(self, r => r.set_method(method)).map_err(Error::from)
    }

    /// The path (no query), as the client sent it (before any `strip_prefix`).
    pub fn path(&self) -> String {
        on_request!(self, r => r.path())
    }

    /// Changes the path; it must start with `/`.
    pub fn set_path(&self, path: &str) -> Result<(), Error> {
        on_request!(self, r => r.set_path(path)).map_err(Error::from)
    }

    /// The query string without `?`.
    pub fn query(&self) -> Option<String> {
        on_request!(self, r => r.query())
    }

    /// Changes or removes the query string.
    pub fn set_query(&self, query: Option<&str>) -> Result<(), Error> {
        on_request!(self, r => r.set_query(query)).map_err(Error::from)
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        on_request!(self, r => r.header(name))
    }

    /// The first value of a header, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        on_request!(self, r => r.header_all(name))
    }

    /// Every header, in order, as `(name, value)`.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        on_request!(self, r => r.headers())
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect()
    }

    /// Replaces every value of a header.
    pub fn set_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        on_request!(self, r => r.set_header(name, value.as_ref())).map_err(Error::from)
    }

    /// Adds a value to a header.
    pub fn append_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        on_request!(self, r => r.append_header(name, value.as_ref())).map_err(Error::from)
    }

    /// Removes a header; whether it was there.
    pub fn remove_header(&self, name: &str) -> bool {
        on_request!(self, r => r.remove_header(name))
    }

    /// The client's IP address.
    pub fn client_addr(&self) -> String {
        on_request!(self, r => r.client_addr())
    }

    /// The matched route's name.
    pub fn route(&self) -> String {
        on_request!(self, r => r.route())
    }

    /// The request id (`x-request-id`).
    pub fn request_id(&self) -> String {
        on_request!(self, r => r.request_id())
    }

    /// The body, when this plugin opted in (`request_body = true`) and it fit.
    pub fn body(&self) -> Option<Vec<u8>> {
        on_request!(self, r => r.body())
    }

    /// Replaces the body (opted-in plugins only).
    pub fn set_body(&self, body: impl AsRef<[u8]>) -> Result<(), Error> {
        on_request!(self, r => r.set_body(body.as_ref())).map_err(Error::from)
    }

    /// Caps how long the gateway waits for the upstream's response head (each try); the
    /// service's own timeout still applies when shorter. When it passes the client gets 504
    /// and [`ResponseHead::upstream_failure`] is [`UpstreamFailure::TimedOut`].
    pub fn set_upstream_timeout(&self, timeout: std::time::Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        on_request!(self, r => r.set_upstream_timeout(ms))
    }

    /// What this plugin attached to this request with [`Request::set_plugin_data`], e.g. in
    /// `on_request`, to read in `on_response` (which may run in another instance).
    pub fn plugin_data(&self) -> Option<Vec<u8>> {
        on_request!(self, r => r.plugin_data())
    }

    /// Attaches bytes (at most 4 KiB) to this request for this plugin only.
    pub fn set_plugin_data(&self, data: impl AsRef<[u8]>) -> Result<(), Error> {
        on_request!(self, r => r.set_plugin_data(data.as_ref())).map_err(Error::from)
    }
}

/// Why the gateway itself answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made.
    ConnectFailed,
    /// The upstream did not answer in time (504).
    TimedOut,
    /// The exchange failed after the request was sent (reset, malformed response).
    Failed,
    /// The service had no live instance.
    NoInstance,
}

impl UpstreamFailure {
    fn from_wit(f: bindings::types::UpstreamFailure) -> Self {
        use bindings::types::UpstreamFailure as W;
        match f {
            W::ConnectFailed => Self::ConnectFailed,
            W::TimedOut => Self::TimedOut,
            W::Failed => Self::Failed,
            W::NoInstance => Self::NoInstance,
        }
    }
}

/// The response head on its way back to the client.
pub struct ResponseHead<'a> {
    inner: ResponseInner<'a>,
}

enum ResponseInner<'a> {
    Wit(&'a bindings::ResponseHead),
    #[cfg(feature = "testing")]
    Test(&'a TestResponseHead),
}

macro_rules! on_response {
    ($self:ident, $r:ident => $e:expr) => {
        match &$self.inner {
            ResponseInner::Wit($r) => $e,
            #[cfg(feature = "testing")]
            ResponseInner::Test($r) => $e,
        }
    };
}

impl<'a> ResponseHead<'a> {
    pub(crate) fn wit(response: &'a bindings::ResponseHead) -> Self {
        Self {
            inner: ResponseInner::Wit(response),
        }
    }

    #[cfg(feature = "testing")]
    pub(crate) fn test(response: &'a TestResponseHead) -> Self {
        Self {
            inner: ResponseInner::Test(response),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        on_response!(self, r => r.status())
    }

    /// Changes the status code (100..=599).
    pub fn set_status(&self, status: u16) -> Result<(), Error> {
        on_response!(self, r => r.set_status(status)).map_err(Error::from)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        on_response!(self, r => r.header(name))
    }

    /// The first value of a header, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        on_response!(self, r => r.headers())
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect()
    }

    /// Replaces every value of a header.
    pub fn set_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        on_response!(self, r => r.set_header(name, value.as_ref())).map_err(Error::from)
    }

    /// Adds a value to a header.
    pub fn append_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        on_response!(self, r => r.append_header(name, value.as_ref())).map_err(Error::from)
    }

    /// Removes a header; whether it was there.
    pub fn remove_header(&self, name: &str) -> bool {
        on_response!(self, r => r.remove_header(name))
    }

    /// The response body, when this plugin opted in (`response_body = true`) and it fit.
    pub fn body(&self) -> Option<Vec<u8>> {
        on_response!(self, r => r.body())
    }

    /// Replaces the response body (opted-in plugins only).
    pub fn set_body(&self, body: impl AsRef<[u8]>) -> Result<(), Error> {
        on_response!(self, r => r.set_body(body.as_ref())).map_err(Error::from)
    }

    /// Set when the gateway made this response because the upstream failed (502/503/504);
    /// `None` when the status came from the upstream or a plugin.
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match &self.inner {
            ResponseInner::Wit(r) => r.upstream_failure().map(UpstreamFailure::from_wit),
            #[cfg(feature = "testing")]
            ResponseInner::Test(r) => r.upstream_failure(),
        }
    }

    /// Whether the request went to (or was tried on) an upstream: `false` when a plugin
    /// answered it or the gateway refused it before picking an instance.
    pub fn upstream_attempted(&self) -> bool {
        on_response!(self, r => r.upstream_attempted())
    }
}

/// A response a plugin answers with ([`crate::Action::Respond`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, no headers, empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body with its content type.
    pub fn json(self, body: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }

    /// The first value of a header.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn into_wit(self) -> bindings::types::Response {
        bindings::types::Response {
            status: self.status,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| bindings::types::Header { name, value })
                .collect(),
            body: self.body,
        }
    }
}
