//! Outbound HTTP, to the hosts the operator allowed for this plugin (`allowed_hosts`).

use crate::backend::host_call;
#[cfg(target_arch = "wasm32")]
use crate::bindings::{types, wit_outbound};

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Absolute `http://` URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
    /// Time limit in milliseconds; without one, the plugin call's own limit applies.
    pub timeout_ms: Option<u32>,
}

impl HttpRequest {
    /// A GET request.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets a time limit.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host is not in `allowed_hosts`.
    NotAllowed(String),
    /// The request could not be built.
    InvalidRequest(String),
    /// Connecting or exchanging failed.
    Transport(String),
    /// The time limit passed.
    Timeout,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAllowed(m) => write!(f, "not allowed: {m}"),
            Self::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            Self::Transport(m) => write!(f, "transport error: {m}"),
            Self::Timeout => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        crate::Error::new(e.to_string())
    }
}

/// Sends a request and waits for the whole response.
pub fn send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    host_call!(wit => send_wit(request), test |h| => h.http_send(request))
}

#[cfg(target_arch = "wasm32")]
fn send_wit(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    let wit = wit_outbound::OutgoingRequest {
        method: request.method.clone(),
        url: request.url.clone(),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        body: request.body.clone(),
        timeout_ms: request.timeout_ms,
    };
    match wit_outbound::send(&wit) {
        Ok(r) => Ok(HttpResponse {
            status: r.status,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
        }),
        Err(wit_outbound::Error::NotAllowed(m)) => Err(HttpError::NotAllowed(m)),
        Err(wit_outbound::Error::InvalidRequest(m)) => Err(HttpError::InvalidRequest(m)),
        Err(wit_outbound::Error::Transport(m)) => Err(HttpError::Transport(m)),
        Err(wit_outbound::Error::Timeout) => Err(HttpError::Timeout),
    }
}
