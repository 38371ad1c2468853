//! gRPC through the gateway: a real tonic server behind it (h2c), a tonic client in front
//! (h2c prior knowledge on the plain listener): the four streaming shapes, a status relayed
//! from the service, deadlines, and answers the gateway makes in gRPC form.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::harness::{closed_port, gateway};

pub mod echo {
    tonic::include_proto!("echo");
}

use echo::Msg;
use echo::echo_client::EchoClient;
use echo::echo_server::{Echo, EchoServer};

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[derive(Default)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        let authority = request
            .metadata()
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        let msg = request.into_inner();
        match msg.text.as_str() {
            "fail" => Err(Status::not_found("no such greeting")),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Response::new(msg))
            }
            text => {
                let mut response = Response::new(Msg {
                    text: format!("echo {text}"),
                    count: msg.count,
                });
                response
                    .metadata_mut()
                    .insert("x-seen-forwarded-for", authority.parse().unwrap());
                Ok(response)
            }
        }
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        request: Request<Msg>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let msg = request.into_inner();
        let items: Vec<Result<Msg, Status>> = (0..msg.count)
            .map(|i| {
                Ok(Msg {
                    text: format!("{} {i}", msg.text),
                    count: i,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Msg>, Status> {
        let mut stream = request.into_inner();
        let mut texts = Vec::new();
        while let Some(msg) = stream.next().await {
            texts.push(msg?.text);
        }
        Ok(Response::new(Msg {
            count: texts.len() as u32,
            text: texts.join(","),
        }))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let stream = request.into_inner();
        Ok(Response::new(Box::pin(stream.map(|msg| {
            let msg = msg?;
            Ok(Msg {
                text: format!("re: {}", msg.text),
                count: msg.count,
            })
        }))))
    }
}

/// A tonic echo server on 127.0.0.1:0 (cleartext HTTP/2); stops when the token is dropped.
struct EchoUpstream {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn echo_upstream() -> EchoUpstream {
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await
            .unwrap();
    });
    EchoUpstream { addr, stop }
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[services.greeter]\ninstances = [\"{upstream}\"]\nprotocol = \"h2c\"\nrequest_timeout = \"1s\"\nretries = 0\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"greeter\"\n{extra}"
    )
}

async fn client(addr: SocketAddr) -> EchoClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

fn msg(text: &str, count: u32) -> Msg {
    Msg {
        text: text.into(),
        count,
    }
}

#[tokio::test]
async fn the_four_streaming_shapes_pass_through() {
    let up = echo_upstream().await;
    let gw = gateway(&config(up.addr, "")).await;
    let mut c = client(gw.listen_addr).await;

    let reply = c.unary(msg("hi", 7)).await.unwrap();
    assert_eq!(reply.get_ref(), &msg("echo hi", 7));
    // Request metadata went through with the gateway's own (X-Forwarded-For), and response
    // metadata came back.
    let forwarded_for = reply.metadata().get("x-seen-forwarded-for").unwrap();
    assert_eq!(forwarded_for.to_str().unwrap(), "127.0.0.1");

    let replies: Vec<Msg> = c
        .server_stream(msg("n", 5))
        .await
        .unwrap()
        .into_inner()
        .map(|m| m.unwrap())
        .collect()
        .await;
    assert_eq!(replies.len(), 5);
    assert_eq!(replies[4], msg("n 4", 4));

    let outbound = tokio_stream::iter(["a", "b", "c"].map(|t| msg(t, 0)));
    let reply = c.client_stream(outbound).await.unwrap().into_inner();
    assert_eq!(reply, msg("a,b,c", 3));

    // Bidi: each reply arrives before the next message is sent (really interleaved).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        tx.send(msg(&format!("m{i}"), i)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("a reply before the next message")
            .unwrap()
            .unwrap();
        assert_eq!(reply, msg(&format!("re: m{i}"), i));
    }
    drop(tx);
    assert!(replies.next().await.is_none(), "the stream ends cleanly");

    // Many calls share one upstream HTTP/2 connection.
    let calls = (0..20).map(|i| {
        let mut c = c.clone();
        async move { c.unary(msg(&i.to_string(), i)).await.unwrap() }
    });
    futures_util::future::join_all(calls).await;
    let metrics = crate::harness::get(gw.admin_addr, "/metrics").await.2;
    assert!(
        metrics.contains("sluice_requests_by_protocol_total{protocol=\"grpc\",tls=\"\"} 24"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_status_from_the_service_is_relayed() {
    let up = echo_upstream().await;
    let gw = gateway(&config(up.addr, "")).await;
    let mut c = client(gw.listen_addr).await;
    let status = c.unary(msg("fail", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such greeting");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_gateway_answers_grpc_calls_in_grpc_form() {
    let up = echo_upstream().await;
    let down = closed_port().await;
    let extra = format!(
        "[services.down]\ninstances = [\"{down}\"]\nprotocol = \"h2c\"\nretries = 0\n\
         [[routes]]\npath = \"/down.Echo\"\nservice = \"down\"\n"
    );
    let gw = gateway(&config(up.addr, &extra)).await;
    let mut c = client(gw.listen_addr).await;

    // A deadline shorter than the call: the gateway gives up and says DEADLINE_EXCEEDED.
    // (Sent by hand: a tonic client would also time out by itself at the same moment.)
    let started = std::time::Instant::now();
    let (status, headers) =
        raw_unary(gw.listen_addr, "/echo.Echo/Unary", &msg("slow", 0), "300m").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The route's timeout bounds a longer deadline.
    let mut slow = Request::new(msg("slow", 0));
    slow.set_timeout(Duration::from_secs(30));
    let status = c.unary(slow).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("did not answer in time")
            || status.message().contains("timed out"),
        "{status:?}"
    );

    // No route: UNIMPLEMENTED, with the gateway's reason.
    let channel = Channel::from_shared(format!("http://{}", gw.listen_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut other = tonic::client::Grpc::new(channel.clone());
    other.ready().await.unwrap();
    let status = other
        .unary::<Msg, Msg, _>(
            Request::new(msg("x", 0)),
            "/nothere.Echo/Unary".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("no route"), "{status:?}");

    // The service cannot be reached: UNAVAILABLE.
    let mut down = tonic::client::Grpc::new(channel);
    down.ready().await.unwrap();
    let status = down
        .unary::<Msg, Msg, _>(
            Request::new(msg("x", 0)),
            "/down.Echo/Unary".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    gw.shutdown().await;
}

/// One unary gRPC call by hand over h2c with `grpc-timeout`; the response's HTTP status and
/// headers (a Trailers-Only answer carries `grpc-status` there).
async fn raw_unary(
    addr: SocketAddr,
    path: &str,
    message: &Msg,
    timeout: &str,
) -> (u16, http::HeaderMap) {
    use prost::Message as _;
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer")
        .unwrap();
    (response.status().as_u16(), response.headers().clone())
}

#[tokio::test]
async fn a_plugin_refusal_is_a_grpc_status() {
    let up = echo_upstream().await;
    let config = format!(
        "[plugins]\ncache_dir = \"{}\"\n\
         [services.greeter]\ninstances = [\"{}\"]\nprotocol = \"h2c\"\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"greeter\"\nplugins = [\"auth\"]\n\
         [[plugin.auth.keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret = \"{}\"\n",
        crate::harness::plugin_cache_dir().display(),
        up.addr,
        crate::builtin::SECRET
    );
    let gw = gateway(&config).await;
    let mut c = client(gw.listen_addr).await;
    let status = c.unary(msg("hi", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut request = Request::new(msg("hi", 1));
    let bearer = format!("Bearer {}", crate::builtin::token("alice", 60));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let reply = c.unary(request).await.unwrap();
    assert_eq!(reply.get_ref(), &msg("echo hi", 1));
    gw.shutdown().await;
}
