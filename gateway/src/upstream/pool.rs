//! Keep-alive connections to one upstream instance, one idle list per data-plane worker.
//!
//! Hand-written on hyper's connection-level client (`hyper::client::conn::http1`) instead of
//! hyper-util's pooled `Client`: profiling the proxy path showed the generic client costing
//! several microseconds per request (a boxed, connector-sized future copied per request, a
//! hashed pool key, a shared lock, clock reads), a large share of the budget of a gateway
//! meant to keep up with nginx. Here a checkout is a pop from this worker's own list, and a
//! connection is only ever driven by the worker (event loop) that opened it.
//!
//! An instance may also be reached over TLS and/or HTTP/2 (`protocol`, `tls` of the
//! service, see [`Transport`]). An HTTP/2 connection carries many requests at once: each
//! worker keeps one per instance and every request of that worker shares it (its
//! `SendRequest` is a cheap clone); a new one is made when it closes.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::config::{ServiceConfig, UpstreamProtocol};

/// How the connections of a service's instances are made: TLS or not, HTTP/1.1 or HTTP/2.
pub struct Transport {
    /// `protocol`.
    pub protocol: UpstreamProtocol,
    /// Set when `tls = true` (or `protocol = "h2"`), with the name to verify.
    tls: Option<(
        tokio_rustls::TlsConnector,
        Option<rustls::pki_types::ServerName<'static>>,
    )>,
    /// Why the TLS settings could not be loaded (every connect then fails with it).
    broken: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            protocol: UpstreamProtocol::Http1,
            tls: None,
            broken: None,
        }
    }
}

impl Transport {
    /// The transport a service's config asks for. A TLS file that cannot be loaded (the
    /// config check reads them too) leaves a transport whose connects fail, saying why.
    pub fn from_config(config: &ServiceConfig) -> Self {
        let protocol = config.protocol;
        if !config.uses_tls() {
            return Self {
                protocol,
                ..Self::default()
            };
        }
        match crate::tls::upstream_connector(&config.upstream_tls()) {
            Ok(connector) => Self {
                protocol,
                tls: Some(connector),
                broken: None,
            },
            Err(e) => {
                tracing::error!("upstream TLS settings: {e}");
                Self {
                    protocol,
                    tls: None,
                    broken: Some(e),
                }
            }
        }
    }

    fn is_h2(&self) -> bool {
        matches!(self.protocol, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }
}

/// Either an HTTP/1.1 or an HTTP/2 connection.
#[derive(Debug)]
enum Sender {
    Http1(SendRequest<RequestBody>),
    /// Shared with the other requests of the connection.
    H2(http2::SendRequest<RequestBody>),
}

thread_local! {
    /// Which worker this thread is (0 on any other thread).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Tells the pool which worker the current thread is.
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Idle connections kept per instance and worker.
const MAX_IDLE: usize = 1024;

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connect did not finish in time.
    Timeout,
    /// The TCP connect or HTTP handshake failed.
    Failed(std::io::Error),
}

/// The connection pool of one instance.
#[derive(Debug)]
pub struct InstancePool {
    address: Arc<str>,
    idle: Box<[Mutex<Vec<SendRequest<RequestBody>>>]>,
    /// Each worker's HTTP/2 connection (HTTP/2 transports only). An async lock: requests
    /// that arrive while it is being made wait for it instead of making their own.
    shared: Box<[tokio::sync::Mutex<Option<http2::SendRequest<RequestBody>>>]>,
    transport: Arc<Transport>,
}

impl InstancePool {
    /// A pool for `address` shared by `workers` workers (plain HTTP/1.1).
    pub fn new(address: Arc<str>, workers: usize) -> Arc<Self> {
        Self::with_transport(address, workers, Arc::default())
    }

    /// A pool for `address` reached over `transport`.
    pub fn with_transport(
        address: Arc<str>,
        workers: usize,
        transport: Arc<Transport>,
    ) -> Arc<Self> {
        Arc::new(Self {
            address,
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            shared: (0..workers.max(1))
                .map(|_| tokio::sync::Mutex::default())
                .collect(),
            transport,
        })
    }

    fn shared_slot(&self) -> &tokio::sync::Mutex<Option<http2::SendRequest<RequestBody>>> {
        let index = WORKER.with(Cell::get);
        &self.shared[index % self.shared.len()]
    }

    fn idle_list(&self) -> &Mutex<Vec<SendRequest<RequestBody>>> {
        let index = WORKER.with(Cell::get);
        &self.idle[index % self.idle.len()]
    }

    /// A ready connection: an idle one of this worker, or a new one.
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<Pooled, ConnectError> {
        if self.transport.is_h2() {
            return self.shared_h2(connect_timeout).await;
        }
        loop {
            let idle = self.idle_list().lock().expect("pool lock").pop();
            let Some(mut sender) = idle else { break };
            // Ready at once unless the previous response is still being read; an error means
            // the upstream closed it.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(Pooled {
                    sender: Some(Sender::Http1(sender)),
                    pool: self.clone(),
                    reused: true,
                    in_flight: None,
                });
            }
        }
        self.connect(connect_timeout).await
    }

    /// This worker's HTTP/2 connection, made when there is none or it closed.
    async fn shared_h2(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<Pooled, ConnectError> {
        let mut slot = self.shared_slot().lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(Pooled {
                sender: Some(Sender::H2(sender.clone())),
                pool: self.clone(),
                reused: true,
                in_flight: None,
            });
        }
        let sender = Box::pin(self.open(connect_timeout)).await?;
        if let Sender::H2(shared) = &sender {
            *slot = Some(shared.clone());
        }
        Ok(Pooled {
            sender: Some(sender),
            pool: self.clone(),
            reused: false,
            in_flight: None,
        })
    }

    /// A new connection (for HTTP/2, this worker's shared one, new if it closed); its I/O
    /// task runs on the current worker.
    pub async fn connect(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<Pooled, ConnectError> {
        if self.transport.is_h2() {
            return self.shared_h2(connect_timeout).await;
        }
        // Boxed: connecting (TCP, TLS, HTTP handshake) is the cold path, and its future is
        // kilobytes that every request's future would otherwise carry and copy.
        Ok(Pooled {
            sender: Some(Box::pin(self.open(connect_timeout)).await?),
            pool: self.clone(),
            reused: false,
            in_flight: None,
        })
    }

    /// Connects (TCP, then TLS when the transport says so) and shakes hands.
    async fn open(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        let stream = self.connect_tcp(connect_timeout).await?;
        let transport = &*self.transport;
        let sender = match &transport.tls {
            None => self.handshake(stream).await?,
            Some((connector, name)) => {
                let name = match name {
                    Some(name) => name.clone(),
                    None => server_name_of(&self.address)?,
                };
                let tls = tokio::time::timeout(connect_timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| ConnectError::Timeout)?
                    .map_err(ConnectError::Failed)?;
                self.handshake(tls).await?
            }
        };
        Ok(sender)
    }

    /// The TCP connection to the instance, within `connect_timeout`; refused at once when the
    /// service's transport could not be set up (its TLS settings are broken).
    async fn connect_tcp(&self, connect_timeout: Duration) -> Result<TcpStream, ConnectError> {
        if let Some(why) = &self.transport.broken {
            return Err(ConnectError::Failed(std::io::Error::other(why.clone())));
        }
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(&*self.address)).await {
                Err(_) => return Err(ConnectError::Timeout),
                Ok(Err(e)) => return Err(ConnectError::Failed(e)),
                Ok(Ok(stream)) => stream,
            };
        // Small request/response exchanges: Nagle's algorithm would only add latency.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The HTTP handshake on a connected stream; the connection's I/O task runs on the
    /// current worker.
    async fn handshake<S>(&self, stream: S) -> Result<Sender, ConnectError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |e: hyper::Error| ConnectError::Failed(std::io::Error::other(e));
        let address = self.address.clone();
        if self.transport.is_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .initial_stream_window_size(1024 * 1024)
                .initial_connection_window_size(4 * 1024 * 1024)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(upstream = &*address, "upstream h2 connection ended: {e}");
                }
            });
            return Ok(Sender::H2(sender));
        }
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = &*address, "upstream connection ended: {e}");
            }
        });
        Ok(Sender::Http1(sender))
    }

    /// A new HTTP/1.1 connection of its own that may be upgraded (WebSocket); it is never
    /// pooled.
    pub async fn connect_upgradable(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<RequestBody>, ConnectError> {
        let stream = self.connect_tcp(connect_timeout).await?;
        let transport = &*self.transport;
        let failed = |e: hyper::Error| ConnectError::Failed(std::io::Error::other(e));
        let address = self.address.clone();
        macro_rules! upgradable {
            ($io:expr) => {{
                let (sender, connection) =
                    http1::handshake(TokioIo::new($io)).await.map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.with_upgrades().await {
                        tracing::debug!(upstream = &*address, "upstream connection ended: {e}");
                    }
                });
                sender
            }};
        }
        Ok(match &transport.tls {
            None => upgradable!(stream),
            Some((connector, name)) => {
                let name = match name {
                    Some(name) => name.clone(),
                    None => server_name_of(&self.address)?,
                };
                let tls = tokio::time::timeout(connect_timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| ConnectError::Timeout)?
                    .map_err(ConnectError::Failed)?;
                upgradable!(tls)
            }
        })
    }

    /// Sends one request on a connection of its own, made the way the pool makes them (TCP,
    /// then TLS with the service's roots, name and ALPN, then HTTP/1.1 or HTTP/2 as
    /// `protocol` says), and never pooled: the connection closes once the response is
    /// dropped. Active health checks probe an instance this way, as traffic reaches it,
    /// without borrowing a worker's connections (they run on a control task).
    pub async fn send_unpooled(
        &self,
        request: http::Request<RequestBody>,
        connect_timeout: Duration,
    ) -> std::io::Result<http::Response<Incoming>> {
        let failed = std::io::Error::other;
        let sender = match self.open(connect_timeout).await {
            Ok(sender) => sender,
            Err(ConnectError::Timeout) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ));
            }
            Err(ConnectError::Failed(e)) => return Err(e),
        };
        match sender {
            Sender::Http1(mut sender) => sender.send_request(request).await.map_err(failed),
            Sender::H2(mut sender) => {
                let tls = self.transport.tls.is_some();
                sender
                    .send_request(for_h2(request, tls))
                    .await
                    .map_err(failed)
            }
        }
    }

    fn put_back(&self, sender: SendRequest<RequestBody>) {
        let mut idle = self.idle_list().lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}

/// A checked-out connection. Dropping it returns the connection to its worker's idle list
/// unless it is closed; it rides along in the response body so that happens once the
/// response has been relayed.
#[derive(Debug)]
pub struct Pooled {
    sender: Option<Sender>,
    pool: Arc<InstancePool>,
    reused: bool,
    /// Counts the request as outstanding on its instance until the body is relayed.
    in_flight: Option<super::InFlight>,
}

impl Pooled {
    /// Whether this connection was used before (a failure on it may just mean the upstream
    /// closed it while idle).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Keeps the request counted as outstanding for as long as this connection is out.
    pub fn hold(&mut self, in_flight: super::InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// Sends a request. On failure, the request comes back when it never left.
    pub async fn send(
        &mut self,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, (hyper::Error, Option<http::Request<RequestBody>>)> {
        let sender = self.sender.as_mut().expect("sender present until drop");
        let sent = match sender {
            Sender::Http1(sender) => sender.try_send_request(request).await,
            Sender::H2(sender) => {
                let tls = self.pool.transport.tls.is_some();
                sender.try_send_request(for_h2(request, tls)).await
            }
        };
        sent.map_err(|mut e| {
            let request = e.take_message();
            (e.into_error(), request)
        })
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // An HTTP/2 connection stays shared in its slot: nothing to give back.
        if let Some(Sender::Http1(sender)) = self.sender.take()
            && !sender.is_closed()
        {
            self.pool.put_back(sender);
        }
    }
}

/// An HTTP/2 request needs `:scheme` and `:authority`: the URI becomes absolute, with the
/// `Host` the request carried as authority (it is not sent again as a header).
fn for_h2(request: http::Request<RequestBody>, tls: bool) -> http::Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    parts.version = http::Version::HTTP_2;
    let authority = parts
        .headers
        .remove(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    if uri.authority.is_none() {
        uri.authority = authority;
    }
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // `te` is hop-by-hop and was dropped, but gRPC servers expect `te: trailers` (the only
    // value HTTP/2 allows) on every call.
    if crate::headers::is_grpc(&parts.headers) {
        parts
            .headers
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    http::Request::from_parts(parts, body)
}

/// The TLS name of `host:port` when `tls_server_name` is not set.
fn server_name_of(address: &str) -> Result<rustls::pki_types::ServerName<'static>, ConnectError> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        ConnectError::Failed(std::io::Error::other(format!(
            "`{host}` is not a TLS server name: {e}"
        )))
    })
}
