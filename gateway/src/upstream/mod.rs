//! Upstream services: their instances, instance choice, and forwarding a request over a
//! pooled keep-alive connection (`pool`).

pub mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use serde::Serialize;

use self::pool::{ConnectError, InstancePool, Pooled};

use crate::body::{RequestBody, RequestBodyError};
use crate::config::ServiceConfig;
use crate::error::ProxyError;

/// One upstream instance.
#[derive(Debug)]
pub struct Instance {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same as a `Host` header value, for requests that came without one.
    pub host_header: http::HeaderValue,
    /// Keep-alive connections to it.
    pub pool: Arc<InstancePool>,
}

/// A service: its instances, timeouts, and the connection pool to them.
#[derive(Debug)]
pub struct Service {
    /// The service name.
    pub name: Arc<str>,
    /// Its instances.
    pub instances: Vec<Instance>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to the response head.
    pub request_timeout: Duration,
    next: AtomicUsize,
}

/// What `/admin/services` shows of a service.
#[derive(Debug, Serialize)]
pub struct ServiceView<'a> {
    name: &'a str,
    instances: Vec<&'a str>,
    connect_timeout_ms: u128,
    request_timeout_ms: u128,
}

impl ServiceView<'_> {
    /// The service name.
    pub fn name(&self) -> &str {
        self.name
    }
}

impl Service {
    /// Builds a service from its config (instances already validated as `host:port`), with
    /// a connection pool per instance for `workers` data-plane workers.
    pub fn from_config(name: &str, config: &ServiceConfig, workers: usize) -> Self {
        let instances = config
            .instances
            .iter()
            .filter_map(|i| {
                let address: Arc<str> = Arc::from(i.get_ref().as_str());
                Some(Instance {
                    host_header: http::HeaderValue::from_str(&address).ok()?,
                    pool: InstancePool::new(address.clone(), workers),
                    address,
                })
            })
            .collect();
        Self {
            name: Arc::from(name),
            instances,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// The next instance in round-robin order.
    pub fn pick(&self) -> Result<&Instance, ProxyError> {
        match self.instances.len() {
            0 => Err(ProxyError::NoInstance {
                service: self.name.clone(),
            }),
            1 => Ok(&self.instances[0]),
            n => Ok(&self.instances[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }

    /// Sends a request to `instance` and waits for the response head, within the request
    /// timeout (or `cap`, when shorter). Returns the connection with the response: it goes back to the pool once the
    /// body has been relayed. Failures are classified for the client's status and metrics.
    pub async fn send(
        &self,
        instance: &Instance,
        request: http::Request<RequestBody>,
        cap: Option<Duration>,
    ) -> Result<(http::Response<Incoming>, Pooled), ProxyError> {
        let exchange = async {
            let mut conn = instance
                .pool
                .checkout(self.connect_timeout)
                .await
                .map_err(|e| self.connect_error(instance, e))?;
            match conn.send(request).await {
                Ok(response) => Ok((response, conn)),
                // An idle connection the upstream had closed: the request never left, so it
                // is safe to send it once more on a fresh connection.
                Err((_, Some(request))) if conn.reused() => {
                    drop(conn);
                    let mut fresh = instance
                        .pool
                        .connect(self.connect_timeout)
                        .await
                        .map_err(|e| self.connect_error(instance, e))?;
                    match fresh.send(request).await {
                        Ok(response) => Ok((response, fresh)),
                        Err((e, _)) => Err(self.classify(instance, &e)),
                    }
                }
                Err((e, _)) => Err(self.classify(instance, &e)),
            }
        };
        let timeout = cap.map_or(self.request_timeout, |c| c.min(self.request_timeout));
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout {
                service: self.name.clone(),
                instance: instance.address.clone(),
                phase: "response",
            }),
        }
    }

    fn connect_error(&self, instance: &Instance, error: ConnectError) -> ProxyError {
        let service = self.name.clone();
        let instance = instance.address.clone();
        match error {
            ConnectError::Timeout => ProxyError::UpstreamTimeout {
                service,
                instance,
                phase: "connect",
            },
            ConnectError::Failed(e) => {
                tracing::debug!(
                    service = &*service,
                    instance = &*instance,
                    "connect failed: {e}"
                );
                ProxyError::UpstreamConnect { service, instance }
            }
        }
    }

    fn classify(&self, instance: &Instance, error: &hyper::Error) -> ProxyError {
        let service = self.name.clone();
        let instance = instance.address.clone();
        // The client's body may be the cause: too large, or the client went away.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(body_error) = e.downcast_ref::<RequestBodyError>() {
                return match body_error {
                    RequestBodyError::TooLarge { limit } => {
                        ProxyError::PayloadTooLarge { limit: *limit }
                    }
                    RequestBodyError::Client(_) => ProxyError::BadRequest("request body aborted"),
                };
            }
            source = e.source();
        }
        ProxyError::UpstreamFailed {
            service,
            instance,
            reason: error_chain(error),
        }
    }

    /// The admin view.
    pub fn view(&self) -> ServiceView<'_> {
        ServiceView {
            name: &self.name,
            instances: self.instances.iter().map(|i| &*i.address).collect(),
            connect_timeout_ms: self.connect_timeout.as_millis(),
            request_timeout_ms: self.request_timeout.as_millis(),
        }
    }
}

/// `outer: inner: innermost`, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
