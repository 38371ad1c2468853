//! Errors the gateway answers itself, and the one place that maps each to a status and body.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ResponseBody;

/// Why the gateway answered a request itself instead of relaying an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// Request method.
        method: http::Method,
        /// Request path.
        path: String,
    },
    /// The request is malformed or ambiguous (for example both Content-Length and
    /// Transfer-Encoding, the request-smuggling vector of RFC 9112 §6.1).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body did not arrive in full within `server.body_read_timeout`.
    #[error("request body not received within {}", humantime::format_duration(*.0))]
    RequestTimeout(std::time::Duration),
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The service has no instance to send the request to.
    #[error("service {service} has no available instance")]
    NoInstance {
        /// The service name.
        service: Arc<str>,
    },
    /// The TCP connection to the upstream could not be made.
    #[error("cannot connect to upstream {instance} of service {service}")]
    UpstreamConnect {
        /// The service name.
        service: Arc<str>,
        /// The instance address.
        instance: Arc<str>,
    },
    /// The upstream did not answer in time (connect or response head).
    #[error("upstream {instance} of service {service} timed out ({phase})")]
    UpstreamTimeout {
        /// The service name.
        service: Arc<str>,
        /// The instance address.
        instance: Arc<str>,
        /// Waiting for the connection, or for the response head.
        phase: TimeoutPhase,
    },
    /// The connection broke or the upstream sent something that is not HTTP.
    #[error("upstream {instance} of service {service} failed: {reason}")]
    UpstreamFailed {
        /// The service name.
        service: Arc<str>,
        /// The instance address.
        instance: Arc<str>,
        /// What went wrong, for the log.
        reason: String,
    },
    /// A plugin failed and its policy is fail-closed.
    #[error("plugin {plugin} failed: {reason}")]
    PluginFailed {
        /// The plugin.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// A plugin the route needs is not loaded or is quarantined (fail-closed).
    #[error("plugin {plugin} {reason}")]
    PluginUnavailable {
        /// The plugin.
        plugin: String,
        /// Why it cannot run.
        reason: String,
    },
    /// A plugin asked for the request body, and it is larger than the plugin accepts.
    #[error("request body larger than {limit} bytes (needed whole by plugin {plugin})")]
    BodyTooLargeForPlugin {
        /// The plugin.
        plugin: String,
        /// Its `max_body_bytes`.
        limit: usize,
    },
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoInstance { .. } | Self::PluginUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::PluginFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BodyTooLargeForPlugin { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamConnect { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The short label used in metrics (`upstream_errors{kind}`) and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::BadRequest(_) => "bad_request",
            Self::RequestTimeout(_) => "request_timeout",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::NoInstance { .. } => "no_instance",
            Self::UpstreamConnect { .. } => "connect",
            Self::UpstreamTimeout { .. } => "timeout",
            Self::UpstreamFailed { .. } => "reset",
            Self::PluginFailed { .. } => "plugin_failed",
            Self::PluginUnavailable { .. } => "plugin_unavailable",
            Self::BodyTooLargeForPlugin { .. } => "payload_too_large",
        }
    }

    /// What `on-response` is told about a response the gateway made because the upstream
    /// failed; `None` for every other error.
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            Self::NoInstance { .. } => Some(UpstreamFailure::NoInstance),
            Self::UpstreamConnect { .. } => Some(UpstreamFailure::ConnectFailed),
            Self::UpstreamTimeout { .. } => Some(UpstreamFailure::TimedOut),
            Self::UpstreamFailed { .. } => Some(UpstreamFailure::Failed),
            _ => None,
        }
    }

    /// The client-facing body: one line saying what happened. Upstream failures name the
    /// service but not the instance address (internal topology stays internal).
    fn body(&self) -> String {
        match self {
            Self::UpstreamConnect { service, .. } => {
                format!("bad gateway: cannot connect to service {service}\n")
            }
            Self::UpstreamTimeout { service, .. } => {
                format!("gateway timeout: service {service} did not answer in time\n")
            }
            Self::UpstreamFailed { service, .. } => {
                format!("bad gateway: service {service} failed to answer\n")
            }
            other => format!("{other}\n"),
        }
    }

    /// The response sent to the client.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(Bytes::from(self.body())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self,
            Self::BadRequest(_)
                | Self::RequestTimeout(_)
                | Self::PayloadTooLarge { .. }
                | Self::BodyTooLargeForPlugin { .. }
        ) {
            // The rest of the request may still be on the wire; do not try to read past it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Why the gateway answered instead of the upstream (what a plugin's `on-response` is told
/// as `upstream-failure`; `chain.rs` converts it to the WIT type when it lends the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made to any instance tried.
    ConnectFailed,
    /// The upstream did not answer in time.
    TimedOut,
    /// The connection failed after the request was sent (reset, malformed response).
    Failed,
    /// The service had no live instance.
    NoInstance,
}

/// Which wait of an upstream exchange ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Making the connection (TCP, TLS, HTTP handshake).
    Connect,
    /// Waiting for the response head after the request was sent.
    Response,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Response => "response",
        })
    }
}
