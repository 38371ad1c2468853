//! The request path, top to bottom: edge checks → route → upstream pick → forward → relay,
//! then metrics and the access log.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::{Metrics, RouteName};
use crate::routing::Route;
use crate::server::AmbiguousFraming;
use crate::snapshot::Snapshot;

/// Everything a data-plane worker needs to answer requests; shared by all workers.
#[derive(Debug)]
pub struct Proxy {
    /// Routes and services; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `log.access`.
    pub access_log: bool,
}

/// What the access log and metrics need to know about how a request went.
struct Outcome {
    route: RouteName,
    upstream: Option<Arc<str>>,
    error: Option<ProxyError>,
}

impl Proxy {
    /// Answers one client request. Never fails: every error becomes a response here.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut outcome = Outcome {
            route: RouteName::unmatched(),
            upstream: None,
            error: None,
        };

        let (mut response, request_id) = match self.forward(request, client, &mut outcome).await {
            Ok(pair) => pair,
            Err((e, id)) => {
                let response = e.to_response();
                outcome.error = Some(e);
                (response, id)
            }
        };
        if let Some(id) = request_id {
            response
                .headers_mut()
                .insert(headers::X_REQUEST_ID.clone(), id);
        }

        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        self.metrics
            .record_request(&outcome.route, status, elapsed.as_secs_f64());
        if let Some(e) = &outcome.error
            && let Some(service) = upstream_error_service(e)
        {
            self.metrics.record_upstream_error(service, e.kind());
        }
        if self.access_log {
            log_access(
                &method,
                &path,
                status,
                &outcome,
                elapsed,
                client,
                response.headers(),
            );
        }
        response
    }

    /// Routes and forwards; returns the upstream's response or the error to answer with, plus
    /// the request id to echo back.
    async fn forward(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        outcome: &mut Outcome,
    ) -> Result<(Response<ResponseBody>, Option<HeaderValue>), (ProxyError, Option<HeaderValue>)>
    {
        let (mut parts, body) = request.into_parts();

        // 1. Edge checks that must run before anything reaches an upstream.
        if parts.extensions.get::<AmbiguousFraming>().is_some() {
            return Err((ProxyError::BadRequest(BOTH_FRAMING_HEADERS), None));
        }
        check_framing(&parts.headers, self.max_body_bytes).map_err(|e| (e, None))?;
        let request_id = headers::ensure_request_id(&mut parts.headers);
        let fail = |e| (e, Some(request_id.clone()));

        // 2. Route. One snapshot for the whole request.
        let snapshot = self.snapshot.load_full();
        let host = host_of(&parts);
        let Some(route) = snapshot.routes.find(host, &parts.method, parts.uri.path()) else {
            return Err(fail(ProxyError::NoRoute {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
            }));
        };
        outcome.route = route.name.clone();

        // 3. Upstream instance.
        let service = snapshot.services.get(&route.service).ok_or_else(|| {
            fail(ProxyError::NoInstance {
                service: route.service.clone(),
            })
        })?;
        let instance = service.pick().map_err(fail)?;
        outcome.upstream = Some(instance.address.clone());

        // 4. The upstream request: absolute URI for the pool key, hop-by-hop headers off,
        //    X-Forwarded-* on.
        parts.uri = upstream_uri(route, &parts.uri, &instance.authority).map_err(fail)?;
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, client.ip());
        let upstream_request =
            Request::from_parts(parts, RequestBody::limited(body, self.max_body_bytes));

        // 5. Forward and relay.
        let response = service
            .send(instance, upstream_request)
            .await
            .map_err(fail)?;
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok((
            Response::from_parts(parts, ResponseBody::upstream(body)),
            Some(request_id),
        ))
    }
}

const BOTH_FRAMING_HEADERS: &str = "both Content-Length and Transfer-Encoding are set";

/// Rejects ambiguous framing (RFC 9112 §6.1: a message with both Content-Length and
/// Transfer-Encoding is a request-smuggling vector; we refuse it rather than guess) and
/// bodies whose declared length is already over the limit.
fn check_framing(headers: &http::HeaderMap, max_body: u64) -> Result<(), ProxyError> {
    let content_length = headers.get(header::CONTENT_LENGTH);
    if content_length.is_some() && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest(BOTH_FRAMING_HEADERS));
    }
    if let Some(len) = content_length {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
        if len > max_body {
            return Err(ProxyError::PayloadTooLarge { limit: max_body });
        }
    }
    Ok(())
}

fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// `http://INSTANCE/PATH?QUERY`, with the route's prefix removed when it strips.
fn upstream_uri(
    route: &Route,
    uri: &Uri,
    authority: &http::uri::Authority,
) -> Result<Uri, ProxyError> {
    let path_and_query = if route.strip_prefix {
        let path = route.upstream_path(uri.path());
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid request target"))?
    } else {
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest("invalid request target"))
}

fn upstream_error_service(e: &ProxyError) -> Option<&Arc<str>> {
    match e {
        ProxyError::NoInstance { service }
        | ProxyError::UpstreamConnect { service, .. }
        | ProxyError::UpstreamTimeout { service, .. }
        | ProxyError::UpstreamFailed { service, .. } => Some(service),
        _ => None,
    }
}

fn log_access(
    method: &http::Method,
    path: &str,
    status: u16,
    outcome: &Outcome,
    elapsed: std::time::Duration,
    client: SocketAddr,
    response_headers: &http::HeaderMap,
) {
    let request_id = response_headers
        .get(&headers::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let error = outcome.error.as_ref().map(|e| e.to_string());
    tracing::info!(
        target: "sluice::access",
        %method,
        path,
        status,
        route = outcome.route.as_str(),
        upstream = outcome.upstream.as_deref().unwrap_or(""),
        duration_us = elapsed.as_micros() as u64,
        client = %client.ip(),
        request_id,
        error = error.as_deref().unwrap_or(""),
        "request"
    );
}
