//! The data-plane listener: worker threads, each with its own single-threaded event loop and
//! its own SO_REUSEPORT socket (the nginx worker model: no work stealing, no cross-thread
//! wake-ups on the hot path), HTTP/1.1 connections with edge limits, and graceful shutdown.
//!
//! Long (~800 lines before its tests): the accept loops of plain, TLS and h2 listeners share
//! the connection limits and shutdown; their HTTP/1 and HTTP/2 loops look alike but close
//! differently (hard close vs GOAWAY), so they stay side by side.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Http2Config, ServerConfig};
use crate::conn::{ActiveRequest, AmbiguousFraming, ConnState, TlsInfo};
use crate::proxy::Proxy;
use crate::tls::Tls;

/// HTTP edge limits applied to every client connection.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    max_header_count: usize,
    max_header_bytes: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    shutdown_timeout: Duration,
    write_timeout: Duration,
    /// `max_connections` (0 = none) and the connections open now, across every worker.
    max_connections: usize,
    open_connections: Arc<std::sync::atomic::AtomicUsize>,
    /// `[server.http2]` when HTTP/2 is enabled.
    http2: Option<Arc<Http2Config>>,
}

impl From<&ServerConfig> for EdgeLimits {
    fn from(c: &ServerConfig) -> Self {
        Self {
            max_header_count: c.max_header_count,
            max_header_bytes: c.max_header_bytes,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            shutdown_timeout: c.shutdown_timeout,
            write_timeout: c.write_timeout,
            max_connections: c.max_connections,
            open_connections: Arc::default(),
            http2: c.http2.enabled.then(|| Arc::new(c.http2.clone())),
        }
    }
}

/// One place among `max_connections`, given back when the connection ends.
/// It also counts the connection in `sluice_downstream_connections`, from accept on (before
/// the h2c preface check or the TLS handshake), so the gauge and the limit agree.
struct ConnectionSlot {
    open: Arc<std::sync::atomic::AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl ConnectionSlot {
    /// A place, unless `max` (0 = no limit) connections are open already.
    fn take(limits: &EdgeLimits, proxy: &Proxy) -> Option<Self> {
        let open = &limits.open_connections;
        let before = open.fetch_add(1, Ordering::Relaxed);
        if limits.max_connections != 0 && before >= limits.max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let gauge = proxy.metrics.connections().clone();
        gauge.inc();
        Some(Self {
            open: open.clone(),
            gauge,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Binds `workers` sockets to one address with SO_REUSEPORT so the kernel spreads
/// connections across workers. With port 0, the first socket picks the port.
pub fn bind_reuseport(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Starts one worker thread per listener. Each returns when `shutdown` is cancelled and its
/// connections have drained (or the shutdown timeout cut them). With `tls`, worker `i` also
/// serves the `i`th TLS listener.
pub fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    tls: Option<(Vec<std::net::TcpListener>, Tls)>,
    proxy: Arc<Proxy>,
    limits: EdgeLimits,
    shutdown: CancellationToken,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (mut tls_listeners, tls) = match tls {
        Some((listeners, tls)) => (listeners.into_iter().map(Some).collect(), Some(tls)),
        None => (Vec::new(), None),
    };
    tls_listeners.resize_with(listeners.len(), || None);
    listeners
        .into_iter()
        .zip(tls_listeners)
        .enumerate()
        .map(|(i, (listener, tls_listener))| {
            let proxy = proxy.clone();
            let limits = limits.clone();
            let shutdown = shutdown.clone();
            let tls = tls.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    crate::upstream::pool::set_worker_index(i);
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(worker = i, "cannot register listener: {e}");
                                return;
                            }
                        };
                        let plain = accept_loop(
                            listener,
                            None,
                            proxy.clone(),
                            limits.clone(),
                            shutdown.clone(),
                        );
                        let secure = async {
                            let (Some(listener), Some(tls)) = (tls_listener, tls) else {
                                return;
                            };
                            match TcpListener::from_std(listener) {
                                Ok(l) => accept_loop(l, Some(tls), proxy, limits, shutdown).await,
                                Err(e) => {
                                    tracing::error!(worker = i, "cannot register TLS listener: {e}")
                                }
                            }
                        };
                        tokio::join!(plain, secure);
                    });
                })
        })
        .collect()
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Tls>,
    proxy: Arc<Proxy>,
    limits: EdgeLimits,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Our own watchdog enforces the header-read and idle timeouts separately (hyper's one
        // timer would also close idle keep-alive connections at the header timeout).
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // hyper parses up to 100 headers on the stack; any other limit moves the parse buffer to
    // the heap on every request, so only set it when it differs.
    if limits.max_header_count != 100 {
        builder.max_headers(limits.max_header_count);
    }
    let builder = Arc::new(builder);
    let h2 = limits.http2.as_deref().map(|c| Arc::new(h2_builder(c)));
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Over `max_connections`: closed at once (not left in the backlog), so the
                // client fails fast and retries elsewhere; see the README.
                let Some(slot) = ConnectionSlot::take(&limits, &proxy) else {
                    tracing::debug!(%peer, "closing connection: max_connections reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let builders = Builders {
                    http1: builder.clone(),
                    h2: h2.clone(),
                };
                match &tls {
                    None => connections.spawn(serve_connection(
                        slot,
                        stream,
                        peer,
                        proxy.clone(),
                        builders,
                        limits.clone(),
                        shutdown.clone(),
                    )),
                    Some(tls) => connections.spawn(serve_tls(
                        slot,
                        stream,
                        peer,
                        tls.clone(),
                        proxy.clone(),
                        builders,
                        limits.clone(),
                        shutdown.clone(),
                    )),
                };
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning on the error.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown timeout reached; closing connections with requests still in flight"
        );
    }
}

/// The connection builders of one listener.
struct Builders {
    http1: Arc<http1::Builder>,
    /// `None` when HTTP/2 is disabled.
    h2: Option<Arc<http2::Builder<TokioExecutor>>>,
}

/// HTTP/2 limits from `[server.http2]`, rapid-reset protection included.
fn h2_builder(c: &Http2Config) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(c.max_header_list_size)
        .initial_stream_window_size(c.initial_stream_window_size)
        .initial_connection_window_size(c.initial_connection_window_size)
        // CVE-2023-44487: a client that opens and resets streams faster than they are
        // accepted, or provokes resets, loses its connection.
        .max_pending_accept_reset_streams(c.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(c.max_local_error_reset_streams)
        .keep_alive_interval((!c.keep_alive_interval.is_zero()).then_some(c.keep_alive_interval))
        .keep_alive_timeout(c.keep_alive_timeout)
        // WebSockets over HTTP/2 (RFC 8441 extended CONNECT, see websocket.rs).
        .enable_connect_protocol();
    b
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), what h2c clients with prior knowledge send
/// first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with the HTTP/2 preface. Peeks (nothing is consumed);
/// waits only while what arrived so far could still be the preface.
async fn is_h2_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_connection(
    _slot: ConnectionSlot,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builders: Builders,
    limits: EdgeLimits,
    shutdown: CancellationToken,
) {
    if let Some(h2) = builders
        .h2
        .as_ref()
        .filter(|_| limits.http2.as_ref().is_some_and(|c| c.h2c))
    {
        // Only the first bytes of a connection are looked at, once. A client that sends
        // nothing is dropped after the idle timeout, as an HTTP/1.1 connection would be.
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(limits.idle_timeout, is_h2_preface(&stream)) => sniffed,
            () = shutdown.cancelled() => return,
        };
        match sniffed {
            Ok(Ok(true)) => {
                return serve_h2(stream, peer, None, proxy, h2, &limits, shutdown).await;
            }
            Ok(Ok(false)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    serve_http1(
        stream,
        peer,
        None,
        proxy,
        &builders.http1,
        &limits,
        shutdown,
    )
    .await;
}

/// A TLS connection: the handshake (within the header-read timeout), then HTTP/2 or
/// HTTP/1.1 as ALPN chose.
#[allow(
    clippy::too_many_arguments,
    reason = "a connection's state, passed once from the accept loop"
)]
async fn serve_tls(
    _slot: ConnectionSlot,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Tls,
    proxy: Arc<Proxy>,
    builders: Builders,
    limits: EdgeLimits,
    shutdown: CancellationToken,
) {
    let handshake = tokio::time::timeout(limits.header_read_timeout, tls.acceptor.accept(stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            proxy.metrics.record_tls_handshake_error();
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            proxy.metrics.record_tls_handshake_error();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let info = TlsInfo {
        version: crate::tls::version_name(session.protocol_version()),
    };
    let h2 = session.alpn_protocol() == Some(b"h2");
    match (&builders.h2, h2) {
        (Some(h2), true) => serve_h2(stream, peer, Some(info), proxy, h2, &limits, shutdown).await,
        _ => {
            serve_http1(
                stream,
                peer,
                Some(info),
                proxy,
                &builders.http1,
                &limits,
                shutdown,
            )
            .await
        }
    }
}

/// An HTTP/2 connection: many streams at once, each one request through the proxy. The
/// connection closes (GOAWAY) after `idle_timeout` without a request in flight.
async fn serve_h2<S>(
    stream: S,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    proxy: Arc<Proxy>,
    builder: &http2::Builder<TokioExecutor>,
    limits: &EdgeLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // No reads are watched (frames are not request heads): only the idle timeout applies,
    // counted from the end of the last request.
    let state = Arc::new(ConnState::new());
    let service_state = state.clone();
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        let proxy = proxy.clone();
        if let Some(info) = tls {
            request.extensions_mut().insert(info);
        }
        let active = ActiveRequest::begin(&service_state);
        async move {
            let mut response = proxy.handle(request, peer).await;
            response.body_mut().set_active(active);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut timer = WatchdogTimer::new(&state, limits);
    let mut draining = false;
    loop {
        tokio::select! {
            // In this order: the watchdog reads what the connection's poll recorded.
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "h2 connection ended: {e}");
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            expired = poll_fn(|cx| state.poll_watchdog(limits, &mut timer, cx)), if !draining => {
                tracing::debug!(%peer, "closing h2 connection: {expired}");
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn serve_http1<S>(
    stream: S,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    proxy: Arc<Proxy>,
    builder: &http1::Builder,
    limits: &EdgeLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        state: state.clone(),
        scanner: HeadScanner::default(),
    });
    let service_state = state.clone();
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        let proxy = proxy.clone();
        if service_state
            .ambiguous_framing
            .swap(false, Ordering::Relaxed)
        {
            request.extensions_mut().insert(AmbiguousFraming);
        }
        if let Some(info) = tls {
            request.extensions_mut().insert(info);
        }
        let active = ActiveRequest::begin(&service_state);
        async move {
            let mut response = proxy.handle(request, peer).await;
            response.body_mut().set_active(active);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // Upgrades (WebSocket) are handed over to the proxy once answered 101.
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let mut timer = WatchdogTimer::new(&state, limits);
    let mut draining = false;
    loop {
        tokio::select! {
            // In this order: the watchdog reads what the connection's poll recorded.
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                // Finish the request in flight (if any), then close.
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            expired = poll_fn(|cx| state.poll_watchdog(limits, &mut timer, cx)) => {
                tracing::debug!(%peer, "closing connection: {expired}");
                break;
            }
        }
    }
}

impl ConnState {
    fn on_read(&self) {
        let now = self.now();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A write either went through or found the socket full (the client is not reading).
    fn on_write(&self, blocked: bool) {
        if blocked {
            let now = self.now();
            let _ =
                self.write_blocked
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        } else if self.write_blocked.load(Ordering::Relaxed) != 0 {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    /// Polls the connection's watchdog: ready, saying why, when the connection has been idle,
    /// slow to send a request head, or not reading what is written to it, for too long.
    ///
    /// It is polled in the connection's `select!` right after the connection itself (biased),
    /// and every read and write is recorded during that poll, so it sees a deadline that just
    /// began (a request head, a blocked write) without being woken: no wake-up and no second
    /// poll of the connection per request. The timer is only ever moved earlier here; a
    /// deadline that moved later (activity) is found when the armed one passes, and re-armed.
    fn poll_watchdog(
        &self,
        limits: &EdgeLimits,
        timer: &mut WatchdogTimer,
        cx: &mut Context<'_>,
    ) -> Poll<&'static str> {
        loop {
            let earliest = self.earliest_deadline(limits);
            if earliest < timer.armed {
                timer.arm(self, earliest);
            }
            if timer.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The armed moment passed: judge by the clock, then re-arm for the next check.
            match self.check(limits, self.now()) {
                Err(expired) => return Poll::Ready(expired),
                Ok(next) => timer.arm(self, next),
            }
        }
    }

    /// The earliest moment a limit could expire, from what the connection recorded (no clock
    /// read): `u64::MAX` while a request is in flight and writes flow.
    fn earliest_deadline(&self, limits: &EdgeLimits) -> u64 {
        let at = if self.in_flight.load(Ordering::Relaxed) > 0 {
            u64::MAX
        } else {
            match self.head_started.load(Ordering::Relaxed) {
                0 => self
                    .last_activity
                    .load(Ordering::Relaxed)
                    .saturating_add(limits.idle_timeout.as_nanos() as u64),
                started => started.saturating_add(limits.header_read_timeout.as_nanos() as u64),
            }
        };
        match self.write_blocked.load(Ordering::Relaxed) {
            0 => at,
            since => at.min(since.saturating_add(limits.write_timeout.as_nanos() as u64)),
        }
    }

    /// At `now`: which limit expired, or when to look again.
    fn check(&self, limits: &EdgeLimits, now: u64) -> Result<u64, &'static str> {
        let write_timeout = limits.write_timeout.as_nanos() as u64;
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked != 0 && blocked + write_timeout <= now {
            return Err("write timeout (the client is not reading)");
        }
        let (deadline, why) = if self.in_flight.load(Ordering::Relaxed) > 0 {
            // The upstream and request timeouts govern a request in flight; look again within
            // a write timeout in case one of its writes stalls.
            (
                now + write_timeout.min(limits.idle_timeout.as_nanos() as u64),
                "",
            )
        } else {
            match self.head_started.load(Ordering::Relaxed) {
                0 => (
                    self.last_activity.load(Ordering::Relaxed)
                        + limits.idle_timeout.as_nanos() as u64,
                    "idle timeout",
                ),
                started => (
                    started + limits.header_read_timeout.as_nanos() as u64,
                    "header read timeout",
                ),
            }
        };
        if deadline <= now && !why.is_empty() {
            return Err(why);
        }
        let deadline = match blocked {
            0 => deadline,
            since => deadline.min(since + write_timeout),
        };
        Ok(deadline.max(now))
    }
}

/// The watchdog's timer and the moment (nanoseconds since the connection opened) it is armed
/// for. One per connection, reset in place.
struct WatchdogTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: u64,
}

impl WatchdogTimer {
    /// Armed for the connection's first idle deadline.
    fn new(state: &ConnState, limits: &EdgeLimits) -> Self {
        let armed = limits.idle_timeout.as_nanos() as u64;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(
                state.opened + Duration::from_nanos(armed),
            )),
            armed,
        }
    }

    fn arm(&mut self, state: &ConnState, at: u64) {
        self.armed = at;
        self.sleep
            .as_mut()
            .reset(state.opened + Duration::from_nanos(at));
    }
}

/// A client stream (TCP or TLS) that reports reads to its [`ConnState`] and scans request
/// heads.
struct WatchedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    scanner: HeadScanner,
}

/// Looks for `Content-Length` and `Transfer-Encoding` in the same request head.
///
/// Hand-written because hyper resolves that conflict itself (it drops Content-Length and
/// decodes chunked, which RFC 9112 §6.1 allows) and leaves no trace of it in the parsed
/// request, while our policy is to refuse such requests outright: they are the classic
/// request-smuggling probe. It scans only the first head after each completed request, so
/// body bytes are never mistaken for headers; a second pipelined head in the same burst is
/// not scanned (hyper re-frames every forwarded request, so upstreams stay safe either way).
#[derive(Debug, Default)]
struct HeadScanner {
    generation: u64,
    done: bool,
    saw_content_length: bool,
    saw_transfer_encoding: bool,
    lines: usize,
    line: [u8; 20],
    line_len: usize,
}

impl HeadScanner {
    /// Feeds bytes read from the client; returns true when a head ended with both headers.
    fn feed(&mut self, generation: u64, bytes: &[u8]) -> bool {
        if generation != self.generation {
            *self = Self {
                generation,
                ..Self::default()
            };
        }
        for &b in bytes {
            if self.done {
                return false;
            }
            if b != b'\n' {
                if self.line_len < self.line.len() {
                    self.line[self.line_len] = b.to_ascii_lowercase();
                }
                self.line_len += 1;
                continue;
            }
            let line = &self.line[..self.line_len.min(self.line.len())];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if self.line_len <= 1 && line.is_empty() {
                // A blank line: the end of the head (leading blank lines are allowed noise).
                if self.lines > 0 {
                    self.done = true;
                    return self.saw_content_length && self.saw_transfer_encoding;
                }
            } else {
                self.lines += 1;
                self.saw_content_length |= line.starts_with(b"content-length:");
                self.saw_transfer_encoding |= line.starts_with(b"transfer-encoding:");
            }
            self.line_len = 0;
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let this = &mut *self;
            this.state.on_read();
            if this.state.in_flight.load(Ordering::Relaxed) == 0 {
                let generation = this.state.completed.load(Ordering::Relaxed);
                if this.scanner.feed(generation, &buf.filled()[before..]) {
                    this.state.ambiguous_framing.store(true, Ordering::Relaxed);
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.on_write(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.on_write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScanner;

    #[test]
    fn head_scanner_flags_both_framing_headers_in_one_head() {
        let mut s = HeadScanner::default();
        assert!(s.feed(
            0,
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        let mut s = HeadScanner::default();
        assert!(!s.feed(0, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn head_scanner_handles_split_reads_and_ignores_bodies() {
        let mut s = HeadScanner::default();
        assert!(!s.feed(0, b"POST / HTTP/1.1\r\ncontent-le"));
        assert!(!s.feed(0, b"ngth: 40\r\n"));
        assert!(
            !s.feed(0, b"\r\ntransfer-encoding: chunked\r\n\r\n"),
            "body bytes"
        );
        // The next request (a new generation) is scanned afresh.
        assert!(s.feed(
            1,
            b"\r\nPOST / HTTP/1.1\r\nTRANSFER-ENCODING: x\r\ncontent-length: 1\r\n\r\n"
        ));
    }
}
