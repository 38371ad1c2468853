//! A test OTLP receiver on 127.0.0.1: OTLP/HTTP (`POST /v1/traces`, protobuf) and OTLP/gRPC
//! (`TraceService/Export`), decoding what the gateway sends with the official protobuf
//! definitions (opentelemetry-proto). And a blackhole: a TCP listener that accepts and never
//! answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One received span with its resource's attributes.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: HashMap<String, String>,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// An attribute as text (ints printed).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
    /// `SPAN_KIND_*` as an i32 (1 internal, 2 server, 3 client).
    pub fn kind(&self) -> i32 {
        self.span.kind
    }
}

pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<Received>>,
    /// Headers (or gRPC metadata) of each export request.
    headers: Mutex<Vec<HeaderMap>>,
}

impl Store {
    fn add(&self, request: ExportTraceServiceRequest, headers: HeaderMap) {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|kv| match kv.value?.value? {
                    Value::StringValue(s) => Some((kv.key, s)),
                    _ => None,
                })
                .collect();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.headers.lock().unwrap().push(headers);
    }
}

/// A receiver that keeps every span it is sent.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Arc<Store>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// OTLP/HTTP with protobuf bodies.
    pub async fn http() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Store::default());
        let stop = CancellationToken::new();
        let (st, s) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            assert_eq!(parts.uri.path(), "/v1/traces");
                            assert_eq!(parts.method, http::Method::POST);
                            assert_eq!(
                                parts.headers["content-type"], "application/x-protobuf",
                                "OTLP/HTTP protobuf"
                            );
                            let request = ExportTraceServiceRequest::decode(body)
                                .expect("an ExportTraceServiceRequest");
                            st.add(request, parts.headers);
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            let mut resp = Response::new(Full::new(Bytes::from(answer)));
                            resp.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, store, stop }
    }

    /// OTLP/gRPC.
    pub async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Store::default());
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Grpc(store.clone()));
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    s.cancelled_owned(),
                )
                .await;
        });
        Self { addr, store, stop }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Headers of each export request.
    pub fn export_headers(&self) -> Vec<HeaderMap> {
        self.store.headers.lock().unwrap().clone()
    }

    /// Waits until at least `n` spans arrived (panics after 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        crate::harness::assert_eventually!(
            self.spans().len() >= n,
            "{n} spans ({} arrived)",
            self.spans().len()
        );
        self.spans()
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.add(request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector that accepts connections and never answers (nor closes them) until dropped.
pub struct Blackhole {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Blackhole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => if let Ok((stream, _)) = a { held.push(stream) },
                }
            }
        });
        Self { addr, stop }
    }
}
