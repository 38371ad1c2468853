//! gRPC pass-through: recognising gRPC requests, their deadline (`grpc-timeout`), and
//! answering them in gRPC form when the gateway (or a plugin) answers instead of the service.
//!
//! A gRPC client reads the call's outcome from `grpc-status` / `grpc-message`, not from the
//! HTTP status: an answer made by the gateway is a "Trailers-Only" response (HTTP 200,
//! `content-type: application/grpc`, the status in the headers, no body), with the status
//! code chosen as in gRPC's own HTTP-to-gRPC status mapping.

use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::error::ProxyError;
/// Recognising gRPC is a header rule (headers.rs), which the pool reads too.
pub use crate::headers::is_grpc;

/// `grpc-status` codes used here (see grpc/doc/statuscodes.md).
pub mod code {
    /// Unknown error.
    pub const UNKNOWN: u8 = 2;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// Permission denied.
    pub const PERMISSION_DENIED: u8 = 7;
    /// Out of a resource (a size limit, a rate limit).
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    /// Not implemented (no such method: no route).
    pub const UNIMPLEMENTED: u8 = 12;
    /// Internal error.
    pub const INTERNAL: u8 = 13;
    /// Unavailable: the client may retry.
    pub const UNAVAILABLE: u8 = 14;
    /// No valid credentials.
    pub const UNAUTHENTICATED: u8 = 16;
}

/// The call's deadline from `grpc-timeout` (`1..=8` digits and a unit: H, M, S, m, u, n).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status of an error the gateway answered with.
pub fn code_of_error(error: &ProxyError) -> u8 {
    match error {
        ProxyError::NoRoute { .. } => code::UNIMPLEMENTED,
        ProxyError::UpstreamTimeout { .. } | ProxyError::RequestTimeout(_) => {
            code::DEADLINE_EXCEEDED
        }
        ProxyError::NoInstance { .. }
        | ProxyError::UpstreamConnect { .. }
        | ProxyError::UpstreamFailed { .. }
        | ProxyError::PluginUnavailable { .. } => code::UNAVAILABLE,
        ProxyError::PayloadTooLarge { .. } | ProxyError::BodyTooLargeForPlugin { .. } => {
            code::RESOURCE_EXHAUSTED
        }
        ProxyError::BadRequest(_) | ProxyError::PluginFailed { .. } => code::INTERNAL,
    }
}

/// The gRPC status of an HTTP status a plugin answered with (gRPC's HTTP-to-gRPC mapping,
/// plus 413, which says more than UNKNOWN).
pub fn code_of_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        413 => code::RESOURCE_EXHAUSTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// Turns an answer made by the gateway or a plugin into a gRPC Trailers-Only response.
/// Headers the plugin set (`www-authenticate`, `retry-after`, ...) stay.
pub fn answer(
    response: Response<ResponseBody>,
    error: Option<&ProxyError>,
) -> Response<ResponseBody> {
    let (mut parts, _) = response.into_parts();
    let (code, message) = match error {
        Some(e) => (code_of_error(e), e.to_string()),
        None => (
            code_of_status(parts.status),
            parts
                .status
                .canonical_reason()
                .unwrap_or("answered by the gateway")
                .to_owned(),
        ),
    };
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", value);
    }
    Response::from_parts(parts, ResponseBody::empty())
}

/// `grpc-message` is percent-encoded (bytes outside 0x20..=0x7e, and `%`).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789S", None),
            ("10x", None),
            ("S", None),
        ] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(timeout(&h), want, "{v}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            percent_encode("no route 100% é\n"),
            "no route 100%25 %C3%A9"
        );
    }
}
