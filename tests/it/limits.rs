//! HTTP edge limits, each at its bound and one past it, and request-smuggling framing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

fn limits_config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
max_header_count = 20
max_header_bytes = 2048
max_body_bytes = 1000
header_read_timeout = "300ms"
idle_timeout = "600ms"
{}"#,
        one_route(addr, "/")
    )
}

/// Sends one keep-alive GET on `stream` and checks it is answered 200.
async fn answered_200(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// A GET with `n` headers in total (Host included).
fn with_headers(n: usize) -> String {
    let mut req = String::from("GET /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..n - 2 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    req
}

#[tokio::test]
async fn header_count_at_the_bound_passes_and_one_more_is_431() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&limits_config(up.addr)).await;
    let wait = Duration::from_secs(5);
    assert_eq!(
        raw_status(&raw(gw.listen_addr, with_headers(20).as_bytes(), wait).await),
        200
    );
    assert_eq!(
        raw_status(&raw(gw.listen_addr, with_headers(21).as_bytes(), wait).await),
        431
    );
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn header_bytes_at_the_bound_pass_and_one_more_is_431() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&limits_config(up.addr)).await;
    // A head of exactly `size` bytes, padded in one header value.
    let head = |size: usize| {
        let start = "GET /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-pad: ";
        let end = "\r\n\r\n";
        format!("{start}{}{end}", "a".repeat(size - start.len() - end.len()))
    };
    let wait = Duration::from_secs(5);
    assert_eq!(
        raw_status(&raw(gw.listen_addr, head(2048).as_bytes(), wait).await),
        200
    );
    assert_eq!(
        raw_status(&raw(gw.listen_addr, head(2049).as_bytes(), wait).await),
        431
    );
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn body_at_the_bound_passes_and_one_more_byte_is_413() {
    let up = Upstream::recording(|s| http::Response::new(full(s.body.len().to_string()))).await;
    let gw = gateway(&limits_config(up.addr)).await;
    let wait = Duration::from_secs(5);
    let fixed = |n: usize| {
        format!(
            "POST /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {n}\r\n\r\n{}",
            "b".repeat(n)
        )
    };
    let answer = raw(gw.listen_addr, fixed(1000).as_bytes(), wait).await;
    assert_eq!(raw_status(&answer), 200);
    assert!(answer.ends_with("1000"));
    let answer = raw(gw.listen_addr, fixed(1001).as_bytes(), wait).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert_eq!(
        up.hits(),
        1,
        "a declared oversize body never reaches the upstream"
    );

    // Chunked: the size is only known while streaming.
    let chunked = |n: usize| {
        format!(
            "POST /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{n:x}\r\n{}\r\n0\r\n\r\n",
            "c".repeat(n)
        )
    };
    let answer = raw(gw.listen_addr, chunked(1000).as_bytes(), wait).await;
    assert_eq!(raw_status(&answer), 200);
    let answer = raw(gw.listen_addr, chunked(1001).as_bytes(), wait).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_never_reaches_the_upstream() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&limits_config(up.addr)).await;
    let smuggle = "POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let answer = raw(gw.listen_addr, smuggle.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(answer.contains("both Content-Length and Transfer-Encoding"));
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "the smuggled request got no answer"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.hits(), 0, "the upstream saw nothing");
    assert_eq!(up.conns(), 0, "the upstream was not even connected to");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_client_is_dropped_at_the_header_read_timeout() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&limits_config(up.addr)).await;
    let mut stream = TcpStream::connect(gw.listen_addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway closed the connection");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the timeout"
    );
    assert_eq!(up.hits(), 0);
    gw.shutdown().await;
}

/// The header-read timeout starts with each request head, also the second one on a kept-alive
/// connection whose watchdog was last set for the (much later) idle timeout: a client that
/// trickles its second head is cut at the header timeout, not left until the idle one.
#[tokio::test]
async fn a_second_request_head_sent_slowly_is_cut_at_the_header_read_timeout() {
    let up = Upstream::named("ok").await;
    let config =
        limits_config(up.addr).replace(r#"idle_timeout = "600ms""#, r#"idle_timeout = "30s""#);
    let gw = gateway(&config).await;
    let mut stream = TcpStream::connect(gw.listen_addr).await.unwrap();
    answered_200(&mut stream).await;
    // Longer than the header timeout with no head pending: still open (idle is 30 s).
    tokio::time::sleep(Duration::from_millis(450)).await;
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed long before the 30 s idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF, no response");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the header timeout"
    );
    assert_eq!(up.hits(), 1, "only the first request reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_not_before() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&limits_config(up.addr)).await;
    let mut stream = TcpStream::connect(gw.listen_addr).await.unwrap();
    answered_200(&mut stream).await;
    // Idle longer than the header timeout (300 ms) but shorter than the idle timeout
    // (600 ms): the connection is still usable.
    tokio::time::sleep(Duration::from_millis(400)).await;
    answered_200(&mut stream).await;
    // Then idle past the idle timeout: closed.
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF");
    assert!(started.elapsed() >= Duration::from_millis(500));
    gw.shutdown().await;
}
