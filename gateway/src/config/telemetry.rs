//! `[telemetry]`: where and how spans are exported (OTLP); read by `telemetry/exporter.rs`.
//! The endpoint and the headers are typed here, once: the exporter neither parses them again
//! nor skips one it cannot parse.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use toml::Spanned;

use super::{FromText, Parsed};

/// `[telemetry]`. Its presence turns tracing on; without it the gateway makes no spans and
/// injects no trace headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `endpoint = "http://127.0.0.1:4318"`: the OTLP receiver. For `http`, a URL without a
    /// path gets `/v1/traces`; a URL with a path is used as is. For `grpc`, the server's URL
    /// (`http://127.0.0.1:4317`).
    #[serde(default)]
    pub endpoint: Option<Parsed<OtlpEndpoint>>,
    /// `protocol = "http"` (OTLP/HTTP with protobuf bodies) or `"grpc"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// `service_name = "sluice"`: the `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// `headers = { authorization = "..." }`: sent with every export (gRPC metadata for
    /// `grpc`).
    #[serde(default = "no_headers")]
    pub headers: Spanned<OtlpHeaders>,
    /// `resource = { "deployment.environment" = "prod" }`: more resource attributes.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// `batch_size = 512`: most spans in one export request.
    #[serde(default = "default_batch_size")]
    pub batch_size: Spanned<usize>,
    /// `queue_size = 2048`: most spans waiting for export; a request whose spans do not fit
    /// has them dropped (and counted) instead of waiting.
    #[serde(default = "default_queue_size")]
    pub queue_size: Spanned<usize>,
    /// `batch_delay = "1s"`: a batch that is not full is exported after this long.
    #[serde(default = "default_batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
    /// `export_timeout = "5s"`: one export request may take this long.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
    /// `shutdown_timeout = "2s"`: on shutdown, how long the last spans may take to export.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

/// `protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// OTLP/HTTP, protobuf bodies (default port 4318).
    #[default]
    Http,
    /// OTLP/gRPC (default port 4317).
    Grpc,
}

/// `endpoint`: an `http://` or `https://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// As written.
    text: String,
    /// Whether the URL has a path of its own (beyond `/`): OTLP/HTTP then uses it as is.
    has_path: bool,
}

impl FromText for OtlpEndpoint {
    fn from_text(text: &str) -> Result<Self, String> {
        let uri = text.parse::<http::Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some()
        });
        match uri {
            Some(uri) => Ok(Self {
                text: text.to_owned(),
                has_path: !uri.path().trim_end_matches('/').is_empty(),
            }),
            None => Err(format!(
                "`{text}` is not an http:// or https:// URL (for example http://127.0.0.1:4318)"
            )),
        }
    }
}

/// `headers`: sent with every export, typed when the file is read. A name or value that is
/// not valid in HTTP is kept aside (by name) for the validation pass to report.
#[derive(Debug, Clone, Default)]
pub struct OtlpHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
    refused: Vec<String>,
}

impl OtlpHeaders {
    /// The headers, in the file's (sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.headers.iter()
    }
}

impl<'de> Deserialize<'de> for OtlpHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Self::default();
        for (name, value) in BTreeMap::<String, String>::deserialize(d)? {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => out.headers.push((n, v)),
                _ => out.refused.push(name),
            }
        }
        Ok(out)
    }
}

fn default_service_name() -> String {
    "sluice".into()
}
fn no_headers() -> Spanned<OtlpHeaders> {
    Spanned::new(0..0, OtlpHeaders::default())
}
fn default_batch_size() -> Spanned<usize> {
    Spanned::new(0..0, 512)
}
fn default_queue_size() -> Spanned<usize> {
    Spanned::new(0..0, 2048)
}
fn default_batch_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(2)
}

impl TelemetryConfig {
    /// The export URL: the configured endpoint, or the protocol's default on 127.0.0.1; for
    /// HTTP, `/v1/traces` is added when the URL has no path.
    pub fn export_url(&self) -> String {
        match (self.endpoint.as_ref().map(Parsed::get), self.protocol) {
            (Some(e), Protocol::Http) => {
                let url = e.text.trim_end_matches('/');
                match e.has_path {
                    true => url.to_owned(),
                    false => format!("{url}/v1/traces"),
                }
            }
            (Some(e), Protocol::Grpc) => e.text.clone(),
            (None, Protocol::Http) => "http://127.0.0.1:4318/v1/traces".into(),
            (None, Protocol::Grpc) => "http://127.0.0.1:4317".into(),
        }
    }

    /// Problems serde cannot see: `(span, message)`, the span pointing at the value.
    pub fn problems(&self) -> Vec<(Option<std::ops::Range<usize>>, String)> {
        let mut out = Vec::new();
        if let Some(why) = self.endpoint.as_ref().and_then(Parsed::problem) {
            let span = self.endpoint.as_ref().map(Parsed::span);
            out.push((span, format!("telemetry.endpoint: {why}")));
        }
        for name in &self.headers.get_ref().refused {
            out.push((
                Some(self.headers.span()),
                format!("telemetry.headers: `{name}` is not a valid header name and value"),
            ));
        }
        if *self.batch_size.get_ref() == 0 {
            out.push((
                Some(self.batch_size.span()).filter(|s| !s.is_empty()),
                "telemetry.batch_size: must be at least 1".into(),
            ));
        }
        if self.queue_size.get_ref() < self.batch_size.get_ref() {
            out.push((
                Some(self.queue_size.span()).filter(|s| !s.is_empty()),
                format!(
                    "telemetry.queue_size: must be at least batch_size ({})",
                    self.batch_size.get_ref()
                ),
            ));
        }
        for (what, d) in [
            ("batch_delay", self.batch_delay),
            ("export_timeout", self.export_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if d.is_zero() {
                out.push((None, format!("telemetry.{what}: must be more than 0")));
            }
        }
        // In file order; problems without a position last.
        out.sort_by_key(|(span, _)| span.as_ref().map_or(usize::MAX, |s| s.start));
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn telemetry(text: &str) -> super::TelemetryConfig {
        Config::parse(text, "t.toml")
            .unwrap_or_else(|e| panic!("{e}"))
            .telemetry
            .expect("[telemetry] set")
    }

    #[test]
    fn defaults() {
        let t = telemetry("[telemetry]\n");
        assert_eq!(t.export_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.service_name, "sluice");
        assert_eq!(*t.batch_size.get_ref(), 512);
        assert_eq!(*t.queue_size.get_ref(), 2048);
        assert_eq!(t.batch_delay, std::time::Duration::from_secs(1));
        assert_eq!(t.export_timeout, std::time::Duration::from_secs(5));
        assert_eq!(t.shutdown_timeout, std::time::Duration::from_secs(2));
        let t = telemetry("[telemetry]\nprotocol = \"grpc\"\n");
        assert_eq!(t.export_url(), "http://127.0.0.1:4317");
        assert!(Config::parse("", "t.toml").unwrap().telemetry.is_none());
    }

    #[test]
    fn http_endpoint_gets_the_signal_path_only_without_one() {
        let url = |e: &str| telemetry(&format!("[telemetry]\nendpoint = \"{e}\"\n")).export_url();
        assert_eq!(url("http://jaeger:4318"), "http://jaeger:4318/v1/traces");
        assert_eq!(url("http://jaeger:4318/"), "http://jaeger:4318/v1/traces");
        assert_eq!(
            url("https://otel.example/otlp/v1/traces"),
            "https://otel.example/otlp/v1/traces"
        );
    }

    #[test]
    fn queue_must_hold_a_batch() {
        let e = Config::parse(
            "[telemetry]\nbatch_size = 100\nqueue_size = 10\nexport_timeout = \"0s\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t.toml:3:14: telemetry.queue_size: must be at least batch_size (100)\n\
             t.toml: telemetry.export_timeout: must be more than 0"
        );
    }

    #[test]
    fn headers_are_typed_and_every_bad_one_is_named() {
        let t = telemetry("[telemetry]\nheaders = { Authorization = \"Bearer t\", x-b = \"1\" }\n");
        let headers: Vec<(&str, &[u8])> = t
            .headers
            .get_ref()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", &b"Bearer t"[..]), ("x-b", &b"1"[..])]
        );
        let e = Config::parse(
            "[telemetry]\nheaders = { ok = \"1\", \"b c\" = \"1\", d = \"line\\nbreak\" }\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t.toml:2:11: telemetry.headers: `b c` is not a valid header name and value\n\
             t.toml:2:11: telemetry.headers: `d` is not a valid header name and value"
        );
    }

    #[test]
    fn a_bad_endpoint_is_named_with_its_position() {
        for bad in ["127.0.0.1:4318", "ftp://h:1", "http://", "http:// h"] {
            let e = Config::parse(&format!("[telemetry]\nendpoint = \"{bad}\"\n"), "t.toml")
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "t.toml:2:12: telemetry.endpoint: `{bad}` is not an http:// or https:// URL (for example http://127.0.0.1:4318)"
                )
            );
        }
    }
}
