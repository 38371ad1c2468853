//! A tonic gRPC echo server (tests/proto/echo.proto) for `scripts/bench.sh grpc`: cleartext
//! HTTP/2 on the address given (default 127.0.0.1:19051), one thread. `Unary` answers with
//! the message it got; the streaming methods echo too, so any client of the proto works.
//!
//!     cargo run --release -p sluice --example grpc_echo -- 127.0.0.1:19051

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod echo {
    tonic::include_proto!("echo");
}

use echo::Msg;
use echo::echo_server::{Echo, EchoServer};

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        request: Request<Msg>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let msg = request.into_inner();
        let items: Vec<Result<Msg, Status>> = (0..msg.count)
            .map(|count| {
                Ok(Msg {
                    text: msg.text.clone(),
                    count,
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
        let mut last = Msg::default();
        while let Some(msg) = stream.next().await {
            last = msg?;
        }
        Ok(Response::new(last))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19051".into());
    let addr = addr
        .parse()
        .map_err(|e| format!("grpc_echo: `{addr}` is not an address (host:port): {e}"))?;
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve(addr)
        .await?;
    Ok(())
}
