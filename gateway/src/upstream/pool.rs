//! Keep-alive connections to one upstream instance, one idle list per data-plane worker.
//!
//! Hand-written on hyper's connection-level client (`hyper::client::conn::http1`) instead of
//! hyper-util's pooled `Client`: profiling the proxy path showed the generic client costing
//! several microseconds per request (a boxed, connector-sized future copied per request, a
//! hashed pool key, a shared lock, clock reads), a large share of the budget of a gateway
//! meant to keep up with nginx. Here a checkout is a pop from this worker's own list, and a
//! connection is only ever driven by the worker (event loop) that opened it.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

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
}

impl InstancePool {
    /// A pool for `address` shared by `workers` workers.
    pub fn new(address: Arc<str>, workers: usize) -> Arc<Self> {
        Arc::new(Self {
            address,
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        })
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
        loop {
            let idle = self.idle_list().lock().expect("pool lock").pop();
            let Some(mut sender) = idle else { break };
            // Ready at once unless the previous response is still being read; an error means
            // the upstream closed it.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(Pooled {
                    sender: Some(sender),
                    pool: self.clone(),
                    reused: true,
                    in_flight: None,
                });
            }
        }
        self.connect(connect_timeout).await
    }

    /// Opens a new connection; its I/O task runs on the current worker.
    pub async fn connect(
        self: &Arc<Self>,
        connect_timeout: Duration,
    ) -> Result<Pooled, ConnectError> {
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(&*self.address)).await {
                Err(_) => return Err(ConnectError::Timeout),
                Ok(Err(e)) => return Err(ConnectError::Failed(e)),
                Ok(Ok(stream)) => stream,
            };
        // Small request/response exchanges: Nagle's algorithm would only add latency.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Failed(std::io::Error::other(e)))?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = &*address, "upstream connection ended: {e}");
            }
        });
        Ok(Pooled {
            sender: Some(sender),
            pool: self.clone(),
            reused: false,
            in_flight: None,
        })
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
    sender: Option<SendRequest<RequestBody>>,
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
        sender.try_send_request(request).await.map_err(|mut e| {
            let request = e.take_message();
            (e.into_error(), request)
        })
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            self.pool.put_back(sender);
        }
    }
}
