//! Upstream services: their instances, instance choice, and the pooled HTTP/1.1 client that
//! forwards requests to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;

use crate::body::{RequestBody, RequestBodyError};
use crate::config::ServiceConfig;
use crate::error::ProxyError;

/// One upstream instance.
#[derive(Debug)]
pub struct Instance {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same, parsed once for building request URIs.
    pub authority: Authority,
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
    client: Client<HttpConnector, RequestBody>,
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
    /// Builds a service from its config (instances already validated as `host:port`).
    pub fn from_config(name: &str, config: &ServiceConfig) -> Self {
        let instances = config
            .instances
            .iter()
            .filter_map(|i| {
                let address = i.get_ref().as_str();
                Some(Instance {
                    address: Arc::from(address),
                    authority: address.parse().ok()?,
                })
            })
            .collect();
        let mut connector = HttpConnector::new();
        // Small request/response exchanges: Nagle's algorithm would only add latency.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            name: Arc::from(name),
            instances,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            next: AtomicUsize::new(0),
            client,
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
    /// timeout. Failures are classified for the client's status and the metrics.
    pub async fn send(
        &self,
        instance: &Instance,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.request_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.classify(instance, &e)),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                service: self.name.clone(),
                instance: instance.address.clone(),
                phase: "response",
            }),
        }
    }

    fn classify(
        &self,
        instance: &Instance,
        error: &hyper_util::client::legacy::Error,
    ) -> ProxyError {
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
            if error.is_connect()
                && let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return ProxyError::UpstreamTimeout {
                    service,
                    instance,
                    phase: "connect",
                };
            }
            source = e.source();
        }
        if error.is_connect() {
            ProxyError::UpstreamConnect { service, instance }
        } else {
            ProxyError::UpstreamFailed {
                service,
                instance,
                reason: error_chain(error),
            }
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
