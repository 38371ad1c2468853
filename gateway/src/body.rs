//! Body types of the data plane. Concrete enums rather than boxed trait objects: the proxy
//! path allocates nothing for a body it only streams through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::server::ActiveRequest;
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
            },
        }
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
            RequestKind::Streaming { inner, seen, limit } => match Pin::new(inner).poll_frame(cx) {
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
                Poll::Pending => Poll::Pending,
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
