//! The gateway's built-in tracing plugin: continues the caller's trace (W3C Trace Context or
//! B3), decides sampling, names the server span after the route, and records chosen request
//! and response headers as span attributes. Everything goes through the WIT `host` span
//! functions, which any plugin may use the same way; the gateway makes and exports the spans
//! (see docs/tracing.md). When the gateway exports no traces (`exports-traces()` is false)
//! the plugin declares no hooks, so a route listing it costs no plugin call.

pub mod context;
pub mod sampler;

use serde::Deserialize;
use sluice_plugin_sdk::host::{self, Level, TraceParent};
use sluice_plugin_sdk::{Action, Config, Error, Hooks, Plugin, Request, ResponseHead};

use crate::context::{Incoming, Parent};
use crate::sampler::{SamplerKind, ratio_keeps};

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sampler: SamplerKind,
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    root_sampler: Option<SamplerKind>,
    #[serde(default)]
    keep_errors: bool,
    #[serde(default)]
    request_headers: Vec<String>,
    #[serde(default)]
    response_headers: Vec<String>,
}

/// The plugin, with its validated configuration.
#[derive(Debug)]
pub struct Tracing {
    sampler: SamplerKind,
    /// For `ratio` (as the sampler or the root sampler).
    ratio: f64,
    /// What `parent_based` does without a caller decision.
    root_sampler: SamplerKind,
    keep_errors: bool,
    /// `(header name, attribute key)`.
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    /// Whether the gateway exports traces; without it there is nothing to do.
    exports_traces: bool,
}

fn header_list(
    field: &str,
    names: Vec<String>,
    prefix: &str,
) -> Result<Vec<(String, String)>, Error> {
    names
        .into_iter()
        .map(|name| {
            let lower = name.trim().to_ascii_lowercase();
            let valid = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if valid {
                Ok((lower.clone(), format!("{prefix}{lower}")))
            } else {
                Err(Error::new(format!(
                    "{field}: `{name}` is not a header name"
                )))
            }
        })
        .collect()
}

impl Plugin for Tracing {
    fn init(config: Config) -> Result<Self, Error> {
        let raw: RawConfig = config.deserialize()?;
        let root_sampler = raw.root_sampler.unwrap_or(SamplerKind::Always);
        if root_sampler == SamplerKind::ParentBased {
            return Err(Error::new(
                "root_sampler: must be always, never or ratio (it decides when there is no parent)",
            ));
        }
        let needs_ratio = raw.sampler == SamplerKind::Ratio
            || (raw.sampler == SamplerKind::ParentBased && root_sampler == SamplerKind::Ratio);
        let ratio = match raw.ratio {
            Some(r) if !(0.0..=1.0).contains(&r) || r.is_nan() => {
                return Err(Error::new(format!("ratio: {r} is not between 0 and 1")));
            }
            Some(r) => r,
            None if needs_ratio => {
                return Err(Error::new(
                    "ratio: required when the sampler (or root_sampler) is `ratio`",
                ));
            }
            None => 1.0,
        };
        Ok(Self {
            sampler: raw.sampler,
            ratio,
            root_sampler,
            keep_errors: raw.keep_errors,
            request_headers: header_list(
                "request_headers",
                raw.request_headers,
                "http.request.header.",
            )?,
            response_headers: header_list(
                "response_headers",
                raw.response_headers,
                "http.response.header.",
            )?,
            exports_traces: host::exports_traces(),
        })
    }

    /// None when the gateway exports no traces; `on-response` only when it has work there
    /// (`keep_errors` or `response_headers`): each hook left out is a call a request skips.
    fn hooks(&self) -> Hooks {
        if !self.exports_traces {
            Hooks::NONE
        } else if self.keep_errors || !self.response_headers.is_empty() {
            Hooks::ALL
        } else {
            Hooks::ON_REQUEST
        }
    }

    fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
        if host::trace_id().is_none() {
            return Ok(Action::Continue);
        }
        let incoming = extract(request);
        let mut caller_decision = None;
        match incoming {
            Some(Incoming::Parent(parent)) => {
                let continued = host::trace_continue(&TraceParent {
                    trace_id: parent.trace_id,
                    span_id: parent.span_id,
                    sampled: parent.sampled,
                    trace_state: parent.trace_state,
                });
                match continued {
                    Ok(()) => caller_decision = parent.sampled,
                    Err(e) => host::log(Level::Debug, &format!("trace context ignored: {e}")),
                }
            }
            Some(Incoming::Deny) => caller_decision = Some(false),
            None => {}
        }
        // After `trace_continue`, the caller's trace id.
        let trace_id = host::trace_id().unwrap_or_default();
        let sampled = match self.sampler {
            SamplerKind::ParentBased => {
                caller_decision.unwrap_or_else(|| self.decide(self.root_sampler, &trace_id))
            }
            other => self.decide(other, &trace_id),
        };
        host::trace_set_sampled(sampled);
        host::span_set_name(&format!("{} {}", request.method(), request.route()));
        for (name, key) in &self.request_headers {
            let values = request.header_all(name);
            if !values.is_empty() {
                host::span_set_attribute(key, &join(&values));
            }
        }
        Ok(Action::Continue)
    }

    fn on_response(
        &self,
        _request: &Request<'_>,
        response: &ResponseHead<'_>,
    ) -> Result<(), Error> {
        if host::trace_id().is_none() {
            return Ok(());
        }
        if self.keep_errors && (response.status() >= 500 || response.upstream_failure().is_some()) {
            host::trace_set_sampled(true);
        }
        if !self.response_headers.is_empty() {
            let headers = response.headers();
            for (name, key) in &self.response_headers {
                let values: Vec<Vec<u8>> = headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .collect();
                if !values.is_empty() {
                    host::span_set_attribute(key, &join(&values));
                }
            }
        }
        Ok(())
    }
}

impl Tracing {
    /// A decision without (or ignoring) the caller's.
    fn decide(&self, kind: SamplerKind, trace_id: &str) -> bool {
        match kind {
            SamplerKind::Always | SamplerKind::ParentBased => true,
            SamplerKind::Never => false,
            SamplerKind::Ratio => ratio_keeps(trace_id, self.ratio),
        }
    }
}

/// The caller's context: W3C first, then B3 single, then B3 multi. A malformed header is
/// ignored (the next format is tried).
fn extract(request: &Request<'_>) -> Option<Incoming> {
    if let Some(tp) = request.header_str("traceparent") {
        let state = request
            .header_all("tracestate")
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        if let Some(parent) = context::parse_traceparent(&tp, Some(&state)) {
            return Some(Incoming::Parent(parent));
        }
    }
    if let Some(found) = request
        .header_str("b3")
        .and_then(|b3| context::parse_b3_single(&b3))
    {
        return Some(found);
    }
    context::parse_b3_multi(
        request.header_str("x-b3-traceid").as_deref(),
        request.header_str("x-b3-spanid").as_deref(),
        request.header_str("x-b3-sampled").as_deref(),
        request.header_str("x-b3-flags").as_deref(),
    )
}

fn join(values: &[Vec<u8>]) -> String {
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// Exposed for tests: the parent a request carries.
pub fn incoming_parent(request: &Request<'_>) -> Option<Parent> {
    match extract(request) {
        Some(Incoming::Parent(p)) => Some(p),
        _ => None,
    }
}

sluice_plugin_sdk::export_plugin!(Tracing);
