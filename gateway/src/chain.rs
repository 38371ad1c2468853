//! The plugin chain of one request, beside the proxy that runs it: `on-request` of each plugin
//! on the route in order, then (after the upstream) `on-response` in reverse. This is where
//! the runtime's results become the gateway's responses and errors (`ResponseBody`,
//! `ProxyError`); the runtime itself (`plugin/`) knows neither.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::error::{ProxyError, UpstreamFailure};
use crate::plugin::PluginRuntime;
use crate::plugin::PluginSet;
use crate::plugin::bindings::types;
use crate::plugin::host::{PluginBody, RequestState, ResponseState};
use crate::plugin::loaded::{LoadedPlugin, PluginFailure};
use crate::plugin::settings::{FailurePolicy, PluginSettings};
use crate::plugin::{canary, sandbox};

/// What became of a request upstream, as `on-response` is told.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamOutcome {
    /// Why the gateway answered instead of the upstream, if it did.
    pub failure: Option<UpstreamFailure>,
    /// Whether the request went to (or was tried on) an upstream at all.
    pub attempted: bool,
}

/// The result of the request phase of a chain.
pub struct RequestChain {
    /// The request as the plugins left it.
    pub request: Box<RequestState>,
    /// Set when a plugin (or a plugin failure) answered instead of the upstream.
    pub response: Option<Response<ResponseBody>>,
    /// The error behind `response`, when the gateway made it (for the log).
    pub error: Option<ProxyError>,
    /// Plugins whose `on-request` ran and continued; their `on-response` runs in reverse.
    pub ran: Vec<Arc<LoadedPlugin>>,
}

/// Runs the `on-request` chain of a route.
pub async fn on_request(
    plugins: &PluginRuntime,
    set: &PluginSet,
    chain: &[String],
    mut request: Box<RequestState>,
) -> RequestChain {
    if chain.iter().any(|n| canary::base(n) == "auth") {
        plugins.strip_identity_headers(&mut request.parts.headers);
    }
    let mut ran = Vec::with_capacity(chain.len());
    for entry in chain {
        // A canary entry draws its version here, once: `ran` keeps the plugin that ran,
        // so the same version runs `on-response`.
        let name = canary::choose(entry, |n| set.get(n).is_some(), &plugins.metrics().canary);
        let Some(plugin) = set.get(name) else {
            let error = ProxyError::PluginUnavailable {
                plugin: name.to_owned(),
                reason: "is not loaded".into(),
            };
            let timer = request.trace.call_started();
            let name: Arc<str> = Arc::from(name);
            request
                .trace
                .call_finished(timer, &name, "on_request", "not_loaded");
            match plugins.settings_for(&name).on_failure {
                FailurePolicy::FailClosed => return fail(request, error, ran),
                FailurePolicy::FailOpen => {
                    plugins
                        .metrics()
                        .record_call(&name, "on_request", "skipped", 0.0);
                    continue;
                }
            }
        };
        let hooks = plugin.hooks();
        if !hooks.on_request {
            // Never called (the plugin declared no `on-request`); its `on-response` runs.
            if hooks.on_response {
                ran.push(plugin.clone());
            }
            continue;
        }
        request.body.visible = plugin.shared.settings.request_body;
        let timer = request.trace.call_started();
        let (req, result) = plugin.on_request(request).await;
        request = req;
        let outcome = match &result {
            Ok(types::Action::Continue) => "ok",
            Ok(types::Action::Respond(_)) => "respond",
            Err(failure) => failure.outcome(),
        };
        request
            .trace
            .call_finished(timer, plugin.name(), "on_request", outcome);
        request.body.visible = false;
        let failure = match result {
            Ok(types::Action::Continue) => {
                // A plugin without `on-response` needs nothing on the way back.
                if hooks.on_response {
                    ran.push(plugin.clone());
                }
                continue;
            }
            Ok(types::Action::Respond(answer)) => {
                match plugin_response(answer, &plugin.shared.settings) {
                    Ok(response) => {
                        return RequestChain {
                            request,
                            response: Some(response),
                            error: None,
                            ran,
                        };
                    }
                    Err(reason) => PluginFailure::Error(reason),
                }
            }
            Err(failure) => failure,
        };
        match plugin.shared.settings.on_failure {
            FailurePolicy::FailClosed => {
                return fail(request, plugin_error(name, failure), ran);
            }
            FailurePolicy::FailOpen => skipped(plugins, plugin.name(), "on_request", &failure),
        }
    }
    RequestChain {
        request,
        response: None,
        error: None,
        ran,
    }
}

/// Runs `on-response` of the plugins that ran, in reverse order, telling them what became
/// of the request upstream. Returns the response, the error that made it (if a plugin failed
/// closed), and the request as the plugins left it (with what they asked of its trace).
pub async fn on_response(
    plugins: &PluginRuntime,
    ran: &[Arc<LoadedPlugin>],
    mut request: Box<RequestState>,
    response: Response<ResponseBody>,
    upstream: UpstreamOutcome,
) -> (
    Response<ResponseBody>,
    Option<ProxyError>,
    Box<RequestState>,
) {
    let (parts, body) = response.into_parts();
    // Every plugin that ran `on-request` gets its `on-response`, even once the answer has
    // become an error: plugins keep per-request resources (a bulkhead slot, a half-open
    // trial) until then. The first error is what the client gets.
    let mut failed: Option<ProxyError> = None;
    // A plugin that opted in to response bodies gets the body buffered (bounded by the
    // smallest `max_body_bytes` among them).
    let wanting = ran
        .iter()
        .filter(|p| p.shared.settings.response_body)
        .min_by_key(|p| p.shared.settings.max_body_bytes);
    let (parts, buffered, mut streaming) = match wanting {
        None => (parts, None, Some(body)),
        Some(plugin) => {
            let limit = plugin.shared.settings.max_body_bytes;
            match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await
            {
                Ok(collected) => (parts, Some(collected.to_bytes()), None),
                Err(e) => {
                    let error = ProxyError::PluginFailed {
                        plugin: plugin.name().to_string(),
                        reason: if e.is::<http_body_util::LengthLimitError>() {
                            format!("response body larger than max_body_bytes ({limit})")
                        } else {
                            format!("reading the response body: {e}")
                        },
                    };
                    let (parts, _) = error.to_response().into_parts();
                    failed = Some(error);
                    (parts, None, None)
                }
            }
        }
    };
    let mut head = Box::new(ResponseState {
        parts,
        body: PluginBody::new(buffered),
        upstream_failure: upstream.failure.map(types::UpstreamFailure::from),
        upstream_attempted: upstream.attempted,
    });
    for plugin in ran.iter().rev() {
        head.body.visible = plugin.shared.settings.response_body;
        let timer = request.trace.call_started();
        let (req, resp, result) = plugin.on_response(request, head).await;
        (request, head) = (req, resp);
        let outcome = result
            .as_ref()
            .map_or_else(PluginFailure::outcome, |()| "ok");
        request
            .trace
            .call_finished(timer, plugin.name(), "on_response", outcome);
        if let Err(failure) = result {
            match plugin.shared.settings.on_failure {
                FailurePolicy::FailClosed if failed.is_none() => {
                    let error = plugin_error(plugin.name(), failure);
                    // The plugins still to run see the error answer.
                    head.parts = error.to_response().into_parts().0;
                    head.body = PluginBody::new(None);
                    streaming = None;
                    failed = Some(error);
                }
                FailurePolicy::FailClosed => {
                    tracing::warn!(
                        plugin = &**plugin.name(),
                        "on_response failed too: {failure}"
                    );
                }
                FailurePolicy::FailOpen => skipped(plugins, plugin.name(), "on_response", &failure),
            }
        }
    }
    if let Some(error) = failed {
        return (error.to_response(), Some(error), request);
    }
    let body = match (head.body.bytes.take(), streaming.take()) {
        (Some(bytes), _) => {
            // The length changed, perhaps: hyper sets it from the new body.
            head.parts.headers.remove(http::header::CONTENT_LENGTH);
            head.parts.headers.remove(http::header::TRANSFER_ENCODING);
            ResponseBody::full(bytes)
        }
        (None, Some(body)) => body,
        (None, None) => ResponseBody::full(Bytes::new()),
    };
    (Response::from_parts(head.parts, body), None, request)
}

/// A failed call of a fail-open plugin: logged, counted, and the request goes on.
fn skipped(
    plugins: &PluginRuntime,
    plugin: &Arc<str>,
    phase: &'static str,
    failure: &PluginFailure,
) {
    tracing::warn!(
        plugin = &**plugin,
        phase,
        "plugin skipped (fail-open): {failure}"
    );
    plugins.metrics().record_call(plugin, phase, "skipped", 0.0);
}

fn fail(
    request: Box<RequestState>,
    error: ProxyError,
    ran: Vec<Arc<LoadedPlugin>>,
) -> RequestChain {
    RequestChain {
        request,
        response: Some(error.to_response()),
        error: Some(error),
        ran,
    }
}

fn plugin_error(name: &str, failure: PluginFailure) -> ProxyError {
    match failure {
        // Trap text (panic messages, wasm backtraces) may tell a client about the plugin's
        // internals or data: it goes to the log only.
        PluginFailure::Trap(text) => {
            tracing::warn!(plugin = name, "plugin trapped: {text}");
            ProxyError::PluginFailed {
                plugin: name.to_owned(),
                reason: "trapped (details in the gateway log)".into(),
            }
        }
        PluginFailure::Instantiate(text) => {
            tracing::warn!(plugin = name, "plugin instance could not start: {text}");
            ProxyError::PluginFailed {
                plugin: name.to_owned(),
                reason: "could not start an instance (details in the gateway log)".into(),
            }
        }
        PluginFailure::Quarantined => ProxyError::PluginUnavailable {
            plugin: name.to_owned(),
            reason: failure.to_string(),
        },
        other => ProxyError::PluginFailed {
            plugin: name.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// A response a plugin made (`action.respond`), checked: framing and hop-by-hop headers are
/// the gateway's, and its headers count against the call's caps.
fn plugin_response(
    answer: types::Response,
    settings: &PluginSettings,
) -> Result<Response<ResponseBody>, String> {
    let mut added = sandbox::AddedHeaders::default();
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|_| (100..=599).contains(&answer.status))
        .ok_or_else(|| format!("answered with invalid status {}", answer.status))?;
    let mut response = Response::new(ResponseBody::full(Bytes::from(answer.body)));
    *response.status_mut() = status;
    for h in answer.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("answered with invalid header name `{}`", h.name))?;
        let value = HeaderValue::from_bytes(&h.value)
            .map_err(|_| format!("answered with an invalid value for header `{}`", h.name))?;
        sandbox::check_plugin_header(&name).map_err(|e| format!("answered with {e}"))?;
        added
            .admit(&name, value.len(), settings)
            .map_err(|e| format!("answered with {e}"))?;
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

/// The gateway's upstream failure as the WIT type a plugin reads (`upstream-failure`).
impl From<UpstreamFailure> for types::UpstreamFailure {
    fn from(failure: UpstreamFailure) -> Self {
        match failure {
            UpstreamFailure::ConnectFailed => Self::ConnectFailed,
            UpstreamFailure::TimedOut => Self::TimedOut,
            UpstreamFailure::Failed => Self::Failed,
            UpstreamFailure::NoInstance => Self::NoInstance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutPhase;

    /// What a plugin's `on-response` reads for each error the gateway answers with: the
    /// upstream's failures by kind, nothing for the others.
    #[test]
    fn plugins_are_told_which_upstream_failure_made_the_answer() {
        let (service, instance): (Arc<str>, Arc<str>) = (Arc::from("svc"), Arc::from("i:1"));
        let lent = |e: ProxyError| e.upstream_failure().map(types::UpstreamFailure::from);
        let cases = [
            (
                ProxyError::NoInstance {
                    service: service.clone(),
                },
                Some(types::UpstreamFailure::NoInstance),
            ),
            (
                ProxyError::UpstreamConnect {
                    service: service.clone(),
                    instance: instance.clone(),
                },
                Some(types::UpstreamFailure::ConnectFailed),
            ),
            (
                ProxyError::UpstreamTimeout {
                    service: service.clone(),
                    instance: instance.clone(),
                    phase: TimeoutPhase::Response,
                },
                Some(types::UpstreamFailure::TimedOut),
            ),
            (
                ProxyError::UpstreamFailed {
                    service,
                    instance,
                    reason: "reset".into(),
                },
                Some(types::UpstreamFailure::Failed),
            ),
            (
                ProxyError::PluginFailed {
                    plugin: "p".into(),
                    reason: "trapped".into(),
                },
                None,
            ),
        ];
        for (error, expected) in cases {
            let text = error.to_string();
            assert_eq!(lent(error), expected, "{text}");
        }
    }
}
