//! Body types of the data plane. Concrete enums rather than boxed trait objects: the proxy
//! path allocates nothing for a body it only streams through.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::conn::ActiveRequest;
use crate::upstream::pool::Pooled;

/// Why reading the client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The body grew past `server.max_body_bytes`.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client connection failed while sending the body.
    #[error("reading request body: {0}")]
    Client(#[from] hyper::Error),
    /// The body did not arrive in full within `server.body_read_timeout`.
    #[error("request body not received within {0:?}")]
    Timeout(std::time::Duration),
}

/// A client's request body on its way upstream, streamed and cut off at a size limit.
#[derive(Debug)]
pub struct RequestBody {
    kind: RequestKind,
}

#[derive(Debug)]
enum RequestKind {
    Streaming {
        inner: Incoming,
        seen: u64,
        limit: u64,
        /// `server.body_read_timeout`: the body must be in by then (a trickling client).
        deadline: Option<(Pin<Box<tokio::time::Sleep>>, std::time::Duration)>,
    },
    Full(Option<Bytes>),
}

impl RequestBody {
    /// Streams `inner`, failing with [`RequestBodyError::TooLarge`] once more than `limit`
    /// bytes have passed.
    pub fn limited(inner: Incoming, limit: u64) -> Self {
        Self {
            kind: RequestKind::Streaming {
                inner,
                seen: 0,
                limit,
                deadline: None,
            },
        }
    }

    /// Fails with [`RequestBodyError::Timeout`] when the body has not ended by `deadline`
    /// (`timeout` after the request head, for the message).
    pub fn read_deadline(mut self, deadline: tokio::time::Instant, timeout: Duration) -> Self {
        if let RequestKind::Streaming {
            inner, deadline: d, ..
        } = &mut self.kind
            && !inner.is_end_stream()
        {
            *d = Some((Box::pin(tokio::time::sleep_until(deadline)), timeout));
        }
        self
    }

    /// A body already in memory.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: RequestKind::Full(Some(bytes)),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.get_mut().kind {
            RequestKind::Streaming {
                inner,
                seen,
                limit,
                deadline,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len() as u64;
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                                limit: *limit,
                            })));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match deadline {
                    Some((sleep, timeout)) => match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(RequestBodyError::Timeout(*timeout))))
                        }
                        Poll::Pending => Poll::Pending,
                    },
                    None => Poll::Pending,
                },
            },
            RequestKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Streaming { inner, .. } => inner.is_end_stream(),
            RequestKind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Streaming { inner, .. } => inner.size_hint(),
            RequestKind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestKind::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// A response on its way to the client: relayed from an upstream or made by the gateway.
///
/// It carries the connection's [`ActiveRequest`] marker, dropped when hyper has written the
/// whole body, which is when the connection counts as idle again.
#[derive(Debug)]
pub struct ResponseBody {
    kind: ResponseKind,
    active: Option<ActiveRequest>,
    /// The upstream connection, returned to its pool when this body is dropped.
    _connection: Option<Pooled>,
}

#[derive(Debug)]
enum ResponseKind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A body already in memory.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: ResponseKind::Full(Some(bytes)),
            active: None,
            _connection: None,
        }
    }

    /// No body at all (ends at once: an HTTP/2 answer is one HEADERS frame).
    pub fn empty() -> Self {
        Self {
            kind: ResponseKind::Full(None),
            active: None,
            _connection: None,
        }
    }

    /// An upstream's body on a connection that is not pooled.
    pub fn streamed(body: Incoming) -> Self {
        Self {
            kind: ResponseKind::Upstream(body),
            active: None,
            _connection: None,
        }
    }

    /// Whether this body is an upstream's, streamed through.
    pub fn is_upstream(&self) -> bool {
        matches!(self.kind, ResponseKind::Upstream(_))
    }

    /// An upstream's body, streamed through; `connection` goes back to its pool afterwards.
    pub fn upstream(body: Incoming, connection: Pooled) -> Self {
        Self {
            kind: ResponseKind::Upstream(body),
            active: None,
            _connection: Some(connection),
        }
    }

    /// Ties the connection's in-flight marker to this body's lifetime.
    pub(crate) fn set_active(&mut self, active: ActiveRequest) {
        self.active = Some(active);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            ResponseKind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
            ResponseKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Upstream(inner) => inner.is_end_stream(),
            ResponseKind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Upstream(inner) => inner.size_hint(),
            ResponseKind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseKind::Full(None) => SizeHint::with_exact(0),
        }
    }
}
