//! WebSocket pass-through (HTTP/1.1 `Upgrade: websocket`, RFC 6455; and over HTTP/2, RFC
//! 8441 extended CONNECT).
//!
//! The upgrade request goes through routing and the route's `on-request` plugins like any
//! other request (so `auth` guards it); then it is sent to an instance on a connection of its
//! own (an upgraded connection never goes back to a pool). When the instance answers 101,
//! both connections are taken over from HTTP and bytes are copied both ways until either
//! side closes, nothing moves for `server.websocket.idle_timeout`, or
//! `server.websocket.max_duration` passes. Frames are not parsed: the instance does the
//! WebSocket protocol; the gateway only relays it.
//!
//! Over HTTP/2 a client opens a WebSocket with `:method CONNECT` and `:protocol websocket`
//! on one stream (the gateway announces `SETTINGS_ENABLE_CONNECT_PROTOCOL`). It is routed and
//! checked the same way, then sent to the instance as the HTTP/1.1 upgrade the instance
//! expects (`GET`, `Upgrade: websocket`, a fresh `Sec-WebSocket-Key`); the instance's 101
//! becomes the 200 that RFC 8441 answers with, and the frames (the same bytes in both
//! framings) are relayed between the HTTP/2 stream and the upgraded connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::config::WebSocketConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::{Endpoint, Service};

/// Whether a request asks to become a WebSocket (`Upgrade: websocket`).
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Whether a request is an HTTP/2 extended CONNECT for a WebSocket (RFC 8441: `:method
/// CONNECT`, `:protocol websocket`; hyper gives only such requests a `Protocol`, and the
/// request view turns their method into `GET`).
pub fn is_extended_connect(extensions: &http::Extensions) -> bool {
    extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns an RFC 8441 extended CONNECT into the HTTP/1.1 upgrade request an instance
/// expects (a `GET` already, see `proxy::h2_request_view`): no body, a new `Sec-WebSocket-Key` (RFC 6455 §4.1: 16 random bytes,
/// base64), `Sec-WebSocket-Version: 13` unless the client named one. The client's other
/// `Sec-WebSocket-*` headers (protocol, extensions) go along as they are.
fn upgrade_request(request: &mut Request<RequestBody>) {
    use base64::Engine as _;
    *request.body_mut() = RequestBody::full(bytes::Bytes::new());
    request.extensions_mut().remove::<hyper::ext::Protocol>();
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    let headers = request.headers_mut();
    headers.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    headers
        .entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// Sends the upgrade request to `endpoint` and, on 101, relays the two connections in a task
/// of their own. Returns the instance's answer for the client (101 or a refusal; 200 for an
/// HTTP/2 extended CONNECT, whose stream is relayed).
pub async fn forward(
    service: &Service,
    endpoint: &Arc<Endpoint>,
    mut request: Request<RequestBody>,
    client_upgrade: OnUpgrade,
    limits: &WebSocketConfig,
    metrics: &Arc<Metrics>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let extended_connect = is_extended_connect(request.extensions());
    if extended_connect {
        upgrade_request(&mut request);
    }
    // The hop-by-hop headers were dropped on the way; these two are what this hop needs.
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));

    let instance = endpoint.address.clone();
    let timeout = service.per_try_timeout;
    let exchange = async {
        let mut sender = endpoint
            .pool
            .connect_upgradable(service.connect_timeout)
            .await
            .map_err(|_| ProxyError::UpstreamConnect {
                service: service.name.clone(),
                instance: instance.clone(),
            })?;
        sender
            .send_request(request)
            .await
            .map_err(|e| ProxyError::UpstreamFailed {
                service: service.name.clone(),
                instance: instance.clone(),
                reason: e.to_string(),
            })
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProxyError::UpstreamTimeout {
            service: service.name.clone(),
            instance: instance.clone(),
            phase: crate::error::TimeoutPhase::Response,
        })??;

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (401, 426, ...): relayed as an ordinary answer.
        let (mut parts, body) = response.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, ResponseBody::streamed(body)));
    }
    let (mut parts, body) = response.into_parts();
    let mut upstream_side = Response::from_parts(parts.clone(), body);
    let limits = limits.clone();
    let metrics = metrics.clone();
    let service_name = service.name.clone();
    tokio::spawn(async move {
        let (client, upstream) =
            match tokio::join!(client_upgrade, hyper::upgrade::on(&mut upstream_side)) {
                (Ok(c), Ok(u)) => (c, u),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(service = &*service_name, "WebSocket upgrade failed: {e}");
                    return;
                }
            };
        metrics.websocket_opened();
        let ended = relay(TokioIo::new(client), TokioIo::new(upstream), &limits).await;
        metrics.websocket_closed();
        tracing::debug!(service = &*service_name, "WebSocket closed: {ended}");
    });
    if extended_connect {
        // RFC 8441 §5: a 2xx opens the WebSocket; the HTTP/1.1 handshake's own headers
        // (Upgrade, Connection, Sec-WebSocket-Accept) have no place on an HTTP/2 stream. A
        // chosen subprotocol or extension goes along.
        parts.status = StatusCode::OK;
        parts.version = http::Version::HTTP_2;
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    // The 101 goes to the client as the instance sent it (Upgrade, Connection,
    // Sec-WebSocket-Accept and any subprotocol included).
    Ok(Response::from_parts(parts, ResponseBody::empty()))
}

/// Copies bytes both ways until a side closes or a limit is reached; says which.
async fn relay<A, B>(client: A, upstream: B, limits: &WebSocketConfig) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Active {
        inner: client,
        started,
        last: last.clone(),
    };
    let mut upstream = Active {
        inner: upstream,
        started,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let end = started + limits.max_duration;
    loop {
        let idle_end =
            started + Duration::from_nanos(last.load(Ordering::Relaxed)) + limits.idle_timeout;
        tokio::select! {
            result = copy.as_mut() => {
                return if result.is_ok() { "closed" } else { "connection error" };
            }
            () = tokio::time::sleep_until(idle_end.min(end)) => {
                let now = Instant::now();
                if now >= end {
                    return "max_duration reached";
                }
                let last_seen = started + Duration::from_nanos(last.load(Ordering::Relaxed));
                if now >= last_seen + limits.idle_timeout {
                    return "idle_timeout reached";
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved through it.
struct Active<S> {
    inner: S,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Active<S> {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
