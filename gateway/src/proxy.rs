//! The request path, top to bottom: edge checks → route → upstream pick → forward → relay,
//! then metrics and the access log.
//!
//! Long (~800 lines before its tests) on purpose: the request path is meant to be read top
//! to bottom in one file (docs/architecture.md); the plugin chain is in `chain.rs`, retries
//! in `upstream/retry.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::LengthLimitError;
use http_body_util::Limited;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::chain::UpstreamOutcome;
use crate::clock::monotonic_ns;
use crate::conn::AmbiguousFraming;
use crate::error::{ProxyError, TimeoutPhase};
use crate::headers;
use crate::metrics::{Metrics, Protocol, RouteMetrics};
use crate::plugin::host::{PluginBody, RequestState};
use crate::plugin::{PluginRuntime, PluginSet};
use crate::registry::Registry;
use crate::routing::Route;
use crate::snapshot::Snapshot;
use crate::telemetry::{FinishedRequest, RequestTrace, Telemetry};
use crate::upstream::retry::{RetryPlan, TryReport, TryResult};
use crate::upstream::{AttemptError, Service};

/// Everything a data-plane worker needs to answer requests; shared by all workers.
#[derive(Debug)]
pub struct Proxy {
    /// Routes and the resolver; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Services and their instances.
    pub registry: Arc<Registry>,
    /// The plugin runtime.
    pub plugins: Arc<PluginRuntime>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Request metrics of requests that matched no route.
    pub unmatched: RouteMetrics,
    /// `server.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `log.access`.
    pub access_log: bool,
    /// Trace export, when `[telemetry]` is set.
    pub telemetry: Option<Arc<Telemetry>>,
    /// Canonical paths, trusted proxies, the body read timeout (`[server]`).
    pub edge: crate::edge::EdgePolicy,
    /// `[server.websocket]`.
    pub websocket: crate::config::WebSocketConfig,
}

/// One request on its way through the gateway, owned by [`Proxy::handle`] and lent to each
/// step of the request path: what the metrics, the access log and the trace need, and — on a
/// route with plugins — the request as the plugins see and change it. Every step reads and
/// writes this one place; nothing is copied from one record to another to keep them in step.
struct RequestContext {
    client: SocketAddr,
    started: Instant,
    protocol: Protocol,
    /// TLS version of the client's connection, `""` in the clear.
    tls: &'static str,
    /// Method and path as received, kept for the access log and the server span only: no
    /// copies when both are off.
    request_line: Option<(http::Method, String)>,
    /// `x-request-id`, as received or made up; the response carries it back.
    request_id: Option<HeaderValue>,
    route: Option<Arc<Route>>,
    /// The instance of the last try.
    upstream: Option<Arc<str>>,
    /// Why the gateway (or a plugin failing closed) answered instead of the upstream.
    error: Option<ProxyError>,
    /// The gateway's spans, when `[telemetry]` is on.
    trace: Option<RequestTrace>,
    /// The request as the plugins left it (routes with plugins, after `on-request`): what
    /// `on-response` reads, and what plugins asked of the trace.
    plugin_view: Option<Box<RequestState>>,
}

impl RequestContext {
    fn new(proxy: &Proxy, request: &Request<Incoming>, client: SocketAddr) -> Self {
        let trace = proxy.telemetry.as_ref().map(Telemetry::begin);
        let request_line = (proxy.access_log || trace.is_some())
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        let tls = request
            .extensions()
            .get::<crate::conn::TlsInfo>()
            .map_or("", |t| t.version);
        Self {
            client,
            started: Instant::now(),
            protocol: protocol_of(request),
            tls,
            request_line,
            request_id: None,
            route: None,
            upstream: None,
            error: None,
            trace,
            plugin_view: None,
        }
    }

    /// The gateway answers with this error.
    fn fail(&mut self, error: ProxyError) -> Response<ResponseBody> {
        let response = error.to_response();
        self.error = Some(error);
        response
    }
}

/// A request that passed the edge checks and found its route.
struct Admitted {
    route: Arc<Route>,
    parts: http::request::Parts,
    body: Incoming,
    /// The client has until then to send the whole body.
    body_deadline: Instant,
}

/// Where a request goes after the plugins' `on-request`.
enum Onward {
    /// Upstream: the head and body as the plugins left them, and a plugin's cap on the wait.
    Upstream {
        parts: http::request::Parts,
        body: RequestBody,
        cap: Option<std::time::Duration>,
    },
    /// A plugin (or a plugin failure) answered instead.
    Answered(Response<ResponseBody>),
}

/// The plugins whose `on-response` runs once the response is there, in reverse order.
type Ran = Vec<Arc<crate::plugin::loaded::LoadedPlugin>>;

impl Proxy {
    /// Answers one client request. Never fails: every error becomes a response here.
    ///
    /// The whole request path, top-down. Each step is awaited here rather than in a nested
    /// `async fn`: hyper moves this future into its connection task, and every level of
    /// nesting would copy the levels below it once more. The plugin steps are boxed, so a
    /// route without plugins does not carry their state.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let mut cx = RequestContext::new(self, &request, client);
        // 1.-2. Edge checks and the route.
        let admitted = match self.admit(request, &mut cx) {
            Ok(admitted) => admitted,
            Err(error) => {
                let response = cx.fail(error);
                return self.answer(cx, response);
            }
        };
        let Admitted {
            route,
            parts,
            body,
            body_deadline,
        } = admitted;
        // 3. Plugins on the way in.
        let (onward, ran) = if route.plugins.is_empty() {
            let body = self.upstream_body(body, body_deadline);
            let onward = Onward::Upstream {
                parts,
                body,
                cap: None,
            };
            (onward, Ran::new())
        } else {
            Box::pin(self.plugins_in(&route, parts, body, body_deadline, &mut cx)).await
        };
        // 4. Upstream, with the request as the plugins left it.
        let (response, attempted) = match onward {
            Onward::Answered(response) => (response, false),
            Onward::Upstream { parts, body, cap } => {
                match self.forward(&route, parts, body, cap, &mut cx).await {
                    Ok(response) => (response, true),
                    Err(e) => {
                        let attempted = e.upstream_failure().is_some();
                        (cx.fail(e), attempted)
                    }
                }
            }
        };
        // 5. Plugins on the way out, in reverse.
        let response = if ran.is_empty() {
            response
        } else {
            Box::pin(self.plugins_out(&ran, response, attempted, &mut cx)).await
        };
        self.answer(cx, response)
    }

    /// The request path's first steps: edge checks that must run before anything reaches an
    /// upstream, then the route.
    fn admit(
        &self,
        request: Request<Incoming>,
        cx: &mut RequestContext,
    ) -> Result<Admitted, ProxyError> {
        let (mut parts, body) = request.into_parts();

        // 1. Edge checks.
        if parts.extensions.get::<AmbiguousFraming>().is_some() {
            return Err(ProxyError::BadRequest(BOTH_FRAMING_HEADERS));
        }
        check_framing(&parts.headers, self.max_body_bytes)?;
        // One Host and one canonical path, used by routing, plugins and the upstream alike.
        crate::edge::canonical_request(&mut parts, &self.edge)?;
        let body_deadline = Instant::now() + self.edge.body_read_timeout;
        if parts.version == Version::HTTP_2 {
            h2_request_view(&mut parts);
        }
        cx.request_id = Some(headers::ensure_request_id(&mut parts.headers));

        // 2. Route. One snapshot of routes (and later, of plugins) for the whole request.
        let snapshot = self.snapshot.load();
        let host = host_of(&parts);
        let route = match snapshot.routes.find(host, &parts.method, parts.uri.path()) {
            Some(route) => route.clone(),
            None => {
                self.resolve(&snapshot, parts.uri.path())
                    .ok_or_else(|| ProxyError::NoRoute {
                        method: parts.method.clone(),
                        path: parts.uri.path().to_owned(),
                    })?
            }
        };
        cx.route = Some(route.clone());
        Ok(Admitted {
            route,
            parts,
            body,
            body_deadline,
        })
    }

    /// The request is answered: the response gets its last touches, then metrics, the trace
    /// and the access log take what the context recorded.
    fn answer(
        &self,
        mut cx: RequestContext,
        mut response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if cx.protocol == Protocol::Grpc
            && !response.body().is_upstream()
            && !crate::grpc::is_grpc(response.headers())
        {
            // Answered by the gateway or a plugin: a gRPC client reads grpc-status.
            response = crate::grpc::answer(response, cx.error.as_ref());
        }
        if let Some(id) = cx.request_id.take() {
            response
                .headers_mut()
                .insert(headers::X_REQUEST_ID.clone(), id);
        }

        let elapsed = cx.started.elapsed();
        let status = response.status().as_u16();
        let route_metrics = cx.route.as_ref().map_or(&self.unmatched, |r| &r.metrics);
        route_metrics.record(status, elapsed.as_secs_f64());
        self.metrics.record_protocol(cx.protocol, cx.tls);
        if let (Some(trace), Some((method, path))) = (cx.trace.take(), &cx.request_line) {
            trace.finish(
                &FinishedRequest {
                    method,
                    path,
                    route: cx.route.as_ref().map(|r| r.path.as_str()),
                    status,
                    client: cx.client,
                    request_id: response.headers().get(&headers::X_REQUEST_ID),
                    error: cx.error.as_ref(),
                },
                cx.plugin_view.take().map(|view| view.trace),
            );
        }
        if self.access_log {
            log_access(&cx, status, elapsed, response.headers());
        }
        response
    }

    /// The request body as it goes upstream: bounded by `max_body_bytes`, and the client has
    /// until `deadline` to send it.
    fn upstream_body(&self, body: Incoming, deadline: Instant) -> RequestBody {
        RequestBody::limited(body, self.max_body_bytes)
            .read_deadline(deadline, self.edge.body_read_timeout)
    }

    /// Step 3 on a route with plugins: the body buffered for plugins that opted in to it,
    /// then each plugin's `on-request`. The request as they left it stays in the context.
    async fn plugins_in(
        &self,
        route: &Route,
        parts: http::request::Parts,
        body: Incoming,
        body_deadline: Instant,
        cx: &mut RequestContext,
    ) -> (Onward, Ran) {
        let set = self.plugins.current();
        // Most routes' plugins leave the body streaming: no buffering, and no timer armed.
        let (buffered, streaming) = match wanting_request_body(&set, route) {
            None => (None, Some(body)),
            Some(plugin) => {
                let buffering = self.buffer_for_plugin(plugin, body);
                let buffered = match tokio::time::timeout_at(body_deadline, buffering).await {
                    Ok(result) => result,
                    Err(_) => Err(ProxyError::RequestTimeout(self.edge.body_read_timeout)),
                };
                match buffered {
                    Ok(bytes) => (Some(bytes), None),
                    Err(e) => return (Onward::Answered(cx.fail(e)), Ran::new()),
                }
            }
        };
        let request_id = cx.request_id.clone().expect("set when admitted");
        let mut view = Box::new(RequestState::new(
            parts,
            cx.client,
            route.name.to_arc(),
            request_id,
            PluginBody::new(buffered),
        ));
        view.trace.trace_id = cx.trace.as_ref().map(RequestTrace::trace_id_hex);
        let chain = crate::chain::on_request(&self.plugins, &set, &route.plugins, view).await;
        let mut view = chain.request;
        // The request phase is over: the upstream (or the client) gets the trace id now.
        view.trace.settled = true;
        let onward = match chain.response {
            Some(answer) => {
                cx.error = chain.error;
                Onward::Answered(answer)
            }
            None => {
                let body = match (view.body.bytes.take(), streaming) {
                    (Some(bytes), _) => RequestBody::full(bytes),
                    (None, Some(incoming)) => self.upstream_body(incoming, body_deadline),
                    (None, None) => RequestBody::full(Bytes::new()),
                };
                // `on-response` reads the request head after it went upstream: the upstream
                // gets a copy only when some plugin will look at it.
                let parts = if chain.ran.is_empty() {
                    std::mem::replace(&mut view.parts, Request::new(()).into_parts().0)
                } else {
                    copy_parts(&view.parts)
                };
                Onward::Upstream {
                    parts,
                    body,
                    cap: view.upstream_timeout,
                }
            }
        };
        cx.plugin_view = Some(view);
        (onward, chain.ran)
    }

    /// Step 5: `on-response` of the plugins that ran, in reverse order, told what became of
    /// the request upstream.
    async fn plugins_out(
        &self,
        ran: &[Arc<crate::plugin::loaded::LoadedPlugin>],
        response: Response<ResponseBody>,
        attempted: bool,
        cx: &mut RequestContext,
    ) -> Response<ResponseBody> {
        let upstream = UpstreamOutcome {
            failure: cx.error.as_ref().and_then(ProxyError::upstream_failure),
            attempted,
        };
        let view = cx.plugin_view.take().expect("kept after on-request");
        let (response, error, view) =
            crate::chain::on_response(&self.plugins, ran, view, response, upstream).await;
        cx.plugin_view = Some(view);
        if error.is_some() {
            cx.error = error;
        }
        response
    }

    /// Reads the whole body for the plugins on the route that opted in to bodies, bounded by
    /// `plugin`'s `max_body_bytes` (the smallest among them, [`wanting_request_body`]).
    async fn buffer_for_plugin(
        &self,
        plugin: &crate::plugin::loaded::LoadedPlugin,
        body: Incoming,
    ) -> Result<Bytes, ProxyError> {
        let limit = plugin
            .shared
            .settings
            .max_body_bytes
            .min(self.max_body_bytes as usize);
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(ProxyError::BodyTooLargeForPlugin {
                    plugin: plugin.name().to_string(),
                    limit,
                })
            }
            Err(_) => Err(ProxyError::BadRequest("request body aborted")),
        }
    }

    /// The route of a path that names a service, when `[resolver]` is on.
    fn resolve(&self, snapshot: &Snapshot, path: &str) -> Option<Arc<Route>> {
        snapshot
            .resolver
            .as_ref()?
            .resolve(path, &self.registry, &self.metrics)
    }

    /// Picks an instance and sends the request, retrying on another instance as the service's
    /// policy and retry budget allow; the upstream's response head, or why not. `cap` is a
    /// plugin's limit on each try.
    async fn forward(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: RequestBody,
        cap: Option<std::time::Duration>,
        cx: &mut RequestContext,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let no_instance = || ProxyError::NoInstance {
            service: route.service.clone(),
        };
        let service = self
            .registry
            .service(&route.service)
            .ok_or_else(no_instance)?;
        // A gRPC call's deadline bounds the wait for the upstream, like a plugin's cap.
        let cap = match (parts.version == Version::HTTP_2)
            .then(|| crate::grpc::timeout(&parts.headers))
            .flatten()
        {
            Some(deadline) => Some(cap.map_or(deadline, |c| c.min(deadline))),
            None => cap,
        };

        // hyper marks requests that ask for an upgrade (none on the usual path: this is a
        // check of an empty extension map): an HTTP/1.1 `Upgrade: websocket`, or an HTTP/2
        // extended CONNECT (RFC 8441).
        let upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .filter(|_| {
                crate::websocket::is_websocket(&parts.headers)
                    || crate::websocket::is_extended_connect(&parts.extensions)
            });

        // Origin-form URI; hop-by-hop headers off, X-Forwarded-* on.
        parts.uri = upstream_uri(route, &parts.uri)?;
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers);
        let client = cx.client.ip();
        headers::add_forwarded(&mut parts.headers, client, self.edge.trusts(client));
        if parts.extensions.get::<crate::conn::TlsInfo>().is_some() {
            parts.headers.insert(
                header::HeaderName::from_static("x-forwarded-proto"),
                HeaderValue::from_static("https"),
            );
        }
        if let Some(upgrade) = upgrade {
            // Boxed: its state does not enlarge every request's future.
            return Box::pin(self.forward_websocket(&service, parts, body, upgrade, cx)).await;
        }
        // HTTP/1.0 clients may send no Host; HTTP/1.1 upstreams require one.
        let add_host = !parts.headers.contains_key(header::HOST);

        let policy = &service.retry;
        let plan = RetryPlan::new(
            policy,
            route.retries.unwrap_or(policy.retries),
            &parts.method,
        );
        // One clock read serves the budget and the first pick.
        let mut now_ns = monotonic_ns();
        service.budget.record_request(now_ns / 1_000_000_000);
        // A copy to send again is kept only when a failure after sending may be retried
        // (connect failures give the request back unsent).
        let (body, replay) = if plan.retryable && policy.needs_replay() {
            keep_for_replay(&parts.headers, body, policy.max_replay_body_bytes).await?
        } else {
            (body, None)
        };
        // Boxed: kept across every try, it would otherwise enlarge every request's future.
        let replay = replay.map(|bytes| Box::new((copy_parts(&parts), bytes)));

        let endpoints = service.endpoints();
        // A plugin's cap (the breaker's per-command timeout) bounds the whole exchange, every
        // retry included, not only each try.
        let overall = cap.map_or(service.request_timeout, |c| c.min(service.request_timeout));
        let deadline = Instant::now() + overall;
        let mut tried = Tried::default();
        let mut request = Request::from_parts(parts, body);
        let mut number = 0;
        loop {
            number += 1;
            if number > 1 {
                now_ns = monotonic_ns();
            }
            let picked = service.pick(&endpoints, request.headers(), tried.as_slice(), now_ns);
            let Some(index) = picked else {
                return Err(no_instance());
            };
            tried.push(index);
            let endpoint = &endpoints.endpoints[index as usize];
            cx.upstream = Some(endpoint.address.clone());
            if add_host {
                request
                    .headers_mut()
                    .insert(header::HOST, endpoint.host_header.clone());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = cap.map_or(service.per_try_timeout, |c| c.min(service.per_try_timeout));
            // One client span per try; its id goes upstream as the `traceparent` parent, in
            // the trace the plugins left the request in.
            let plugins = cx.plugin_view.as_deref().map(|view| &view.trace);
            let span = cx
                .trace
                .as_mut()
                .map(|t| t.attempt_started(plugins, &endpoint.address, request.headers_mut()));
            let result = service
                .send(endpoint, request, timeout.min(remaining))
                .await;
            if let (Some(trace), Some(span)) = (cx.trace.as_mut(), span) {
                let status = result.as_ref().map(|(r, _)| r.status().as_u16());
                trace.attempt_finished(span, status.map_err(|f| &f.error));
            }

            // Account for the try, then ask the policy whether to try again.
            let (answer, unsent) = match result {
                Ok((response, connection)) => {
                    let status = response.status().as_u16();
                    service.record_attempt(endpoint, status >= 500, monotonic_ns());
                    (Ok((response, connection)), None)
                }
                Err(AttemptError { error, unsent }) => {
                    if error.upstream_failure().is_none() {
                        // The client's own body failed (too large, aborted): nothing to retry.
                        return Err(error);
                    }
                    self.metrics
                        .record_upstream_error(&service.name, error.kind());
                    // A try cut short by what was left of the overall deadline says nothing
                    // about the instance's health.
                    let cut_short = remaining < timeout
                        && matches!(
                            error,
                            ProxyError::UpstreamTimeout {
                                phase: TimeoutPhase::Response,
                                ..
                            }
                        );
                    if !cut_short {
                        service.record_attempt(endpoint, true, monotonic_ns());
                    }
                    (Err(error), unsent)
                }
            };
            let report = TryReport {
                number,
                result: match &answer {
                    Ok((response, _)) => TryResult::Answered(response.status().as_u16()),
                    Err(error) => TryResult::Failed(error),
                },
                time_left: deadline.saturating_duration_since(Instant::now()),
                resendable: unsent.is_some() || replay.is_some(),
            };
            let pause = match policy.decide(&plan, &report) {
                Some(pause) if self.take_retry(&service) => pause,
                _ => return answer.map(|(response, connection)| relay(response, connection)),
            };
            match &answer {
                Ok(_) => self
                    .metrics
                    .record_upstream_error(&service.name, "retried_status"),
                Err(error) => tracing::debug!(
                    service = &*service.name,
                    instance = &*endpoint.address,
                    attempt = number,
                    "retrying after: {error}"
                ),
            }
            // An answer is dropped unread: its connection closes instead of going back to the
            // pool. The next try sends the request that came back unsent, or the copy.
            drop(answer);
            request = unsent
                .or_else(|| {
                    replay.as_deref().map(|(parts, bytes)| {
                        Request::from_parts(copy_parts(parts), RequestBody::full(bytes.clone()))
                    })
                })
                .expect("the policy retries only a resendable try");
            tokio::time::sleep(pause).await;
        }
    }

    /// A WebSocket upgrade: one instance, no retries (see [`crate::websocket`]).
    async fn forward_websocket(
        &self,
        service: &Arc<Service>,
        parts: http::request::Parts,
        body: RequestBody,
        upgrade: hyper::upgrade::OnUpgrade,
        cx: &mut RequestContext,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let endpoints = service.endpoints();
        let picked = service.pick(&endpoints, &parts.headers, &[], monotonic_ns());
        let Some(index) = picked else {
            return Err(ProxyError::NoInstance {
                service: service.name.clone(),
            });
        };
        let endpoint = &endpoints.endpoints[index as usize];
        cx.upstream = Some(endpoint.address.clone());
        let mut request = Request::from_parts(parts, body);
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, endpoint.host_header.clone());
        }
        let result = crate::websocket::forward(
            service,
            endpoint,
            request,
            upgrade,
            &self.websocket,
            &self.metrics,
        )
        .await;
        let failed = match &result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        service.record_attempt(endpoint, failed, monotonic_ns());
        if let Err(e) = &result {
            self.metrics.record_upstream_error(&service.name, e.kind());
        }
        result
    }

    /// Takes a retry from the service's budget, counting it either way.
    fn take_retry(&self, service: &Service) -> bool {
        if service.budget.try_retry(monotonic_ns() / 1_000_000_000) {
            service.metrics.retries.inc();
            true
        } else {
            service.metrics.budget_exhausted.inc();
            false
        }
    }
}

/// Instances a request already tried (the first few: enough to spread retries out).
#[derive(Default)]
struct Tried {
    indices: [u32; 8],
    len: usize,
}

impl Tried {
    fn push(&mut self, index: u32) {
        if self.len < self.indices.len() {
            self.indices[self.len] = index;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u32] {
        &self.indices[..self.len]
    }
}

/// The upstream's response on its way to the client: hop-by-hop headers off, the connection
/// riding along in the body until it has been relayed.
fn relay(
    response: http::Response<Incoming>,
    connection: crate::upstream::pool::Pooled,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, ResponseBody::upstream(body, connection))
}

/// Reads a request body into memory when it may have to be sent again: an absent body, or
/// one whose declared length is at most `max`. Anything else streams on and is not replayed.
async fn keep_for_replay(
    headers: &http::HeaderMap,
    body: RequestBody,
    max: u64,
) -> Result<(RequestBody, Option<Bytes>), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let small = match declared {
        Some(len) => len <= max,
        // No Content-Length and no Transfer-Encoding: an HTTP/1.1 request without a body.
        None => !headers.contains_key(header::TRANSFER_ENCODING),
    };
    if !small {
        return Ok((body, None));
    }
    match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            Ok((RequestBody::full(bytes.clone()), Some(bytes)))
        }
        Err(crate::body::RequestBodyError::TooLarge { limit }) => {
            Err(ProxyError::PayloadTooLarge { limit })
        }
        Err(crate::body::RequestBodyError::Client(_)) => {
            Err(ProxyError::BadRequest("request body aborted"))
        }
        Err(crate::body::RequestBodyError::Timeout(t)) => Err(ProxyError::RequestTimeout(t)),
    }
}

/// The plugin on the route that opted in to request bodies with the smallest
/// `max_body_bytes`, if any opted in: the body is then buffered up to that.
fn wanting_request_body<'a>(
    set: &'a PluginSet,
    route: &Route,
) -> Option<&'a crate::plugin::loaded::LoadedPlugin> {
    route
        .plugins
        .iter()
        .filter_map(|name| set.get(name))
        .filter(|p| p.shared.settings.request_body)
        .min_by_key(|p| p.shared.settings.max_body_bytes)
        .map(|p| &**p)
}

/// A copy of a request head, to send again or for `on-response` after the original went
/// upstream (extensions are not copied: nothing downstream reads them).
fn copy_parts(parts: &http::request::Parts) -> http::request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
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

/// An HTTP/2 request as plugins and routes see every request: `:authority` as the `Host`
/// header (when the client sent no `Host` of its own) and an origin-form URI. hyper keeps
/// pseudo-headers out of the header map. A WebSocket opened by extended CONNECT (RFC 8441)
/// is the `GET` it is over HTTP/1.1 (its `:protocol` stays in the extensions).
fn h2_request_view(parts: &mut http::request::Parts) {
    if parts.method == http::Method::CONNECT
        && crate::websocket::is_extended_connect(&parts.extensions)
    {
        parts.method = http::Method::GET;
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
}

fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// The request target sent upstream (origin form, `/path?query`), with the route's prefix
/// removed when it strips. A client that sent an absolute URI (proxy style) is treated the
/// same.
fn upstream_uri(route: &Route, uri: &Uri) -> Result<Uri, ProxyError> {
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
    Ok(Uri::from(path_and_query))
}

/// The protocol a request came over, as the protocol counters name it. gRPC runs over
/// HTTP/2 only: HTTP/1.1 requests are not looked at.
fn protocol_of(request: &Request<Incoming>) -> Protocol {
    let upgrade = || {
        request
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some()
    };
    if request.version() == Version::HTTP_2 && crate::grpc::is_grpc(request.headers()) {
        Protocol::Grpc
    } else if upgrade()
        && (crate::websocket::is_websocket(request.headers())
            || crate::websocket::is_extended_connect(request.extensions()))
    {
        Protocol::Ws
    } else if request.version() == Version::HTTP_2 {
        Protocol::H2
    } else {
        Protocol::Http1
    }
}

fn log_access(
    cx: &RequestContext,
    status: u16,
    elapsed: std::time::Duration,
    response_headers: &http::HeaderMap,
) {
    let Some((method, path)) = &cx.request_line else {
        return;
    };
    let request_id = response_headers
        .get(&headers::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let error = cx.error.as_ref().map(|e| e.to_string());
    tracing::info!(
        target: "sluice::access",
        %method,
        path,
        status,
        route = cx.route.as_ref().map_or("", |r| r.name.as_str()),
        upstream = cx.upstream.as_deref().unwrap_or(""),
        duration_us = elapsed.as_micros() as u64,
        client = %cx.client.ip(),
        request_id,
        protocol = cx.protocol.as_str(),
        tls = cx.tls,
        error = error.as_deref().unwrap_or(""),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a call returns, without making the call.
    fn future_size<F: Future, A, B, C>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves every request's future into its connection task, and each `.await` of a
    /// sub-future moves that in too: kilobytes here are memcpy on every request (connecting,
    /// the cold path, once made it 12 KiB). Cold paths are boxed to keep this small.
    #[test]
    fn the_request_future_stays_small() {
        let handle =
            future_size(|p: &'static Proxy, r: Request<Incoming>, a: SocketAddr| p.handle(r, a));
        let send = future_size(
            |s: &'static crate::upstream::Service,
             e: &'static Arc<crate::upstream::Endpoint>,
             r: Request<RequestBody>| s.send(e, r, std::time::Duration::ZERO),
        );
        assert!(
            handle <= 5 * 1024,
            "Proxy::handle's future is {handle} bytes"
        );
        assert!(send <= 2 * 1024, "Service::send's future is {send} bytes");
    }

    /// The size of the future a call of many arguments returns, without making the call.
    fn future_size_of<F: Future, A>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The plugin steps are boxed (`Box::pin` copies the whole future into the box on every
    /// request of a plugin route) and hold the chain's futures, which hold each plugin call's:
    /// rustc keeps an awaited future twice, so sizes double per level. With an instance's
    /// set-up and a suspended call's timer inline they were 2.6 and 2.8 KB in a test build
    /// (1.3 and 1.6 KB since).
    #[test]
    fn the_plugin_steps_futures_stay_small() {
        type In = (
            &'static Proxy,
            &'static Route,
            http::request::Parts,
            Incoming,
            Instant,
            &'static mut RequestContext,
        );
        let plugins_in = future_size_of(|(p, route, parts, body, deadline, cx): In| {
            p.plugins_in(route, parts, body, deadline, cx)
        });
        type Out = (
            &'static Proxy,
            &'static [Arc<crate::plugin::loaded::LoadedPlugin>],
            Response<ResponseBody>,
            &'static mut RequestContext,
        );
        let plugins_out =
            future_size_of(|(p, ran, response, cx): Out| p.plugins_out(ran, response, true, cx));
        assert!(
            plugins_in <= 2048,
            "plugins_in's future is {plugins_in} bytes"
        );
        assert!(
            plugins_out <= 2048,
            "plugins_out's future is {plugins_out} bytes"
        );
    }
}
