//! HTTP/2 from clients: h2c with prior knowledge on the plain listener, the request view an
//! upstream (and a plugin) gets, and the `[server.http2]` limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::{Upstream, gateway, get, one_route};

async fn h2c(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let up = Upstream::named("two").await;
    let gw = gateway(&one_route(up.addr, "/api")).await;
    let mut sender = h2c(gw.listen_addr).await;
    let request = Request::get("http://api.example:8080/api/items?x=1")
        .header("x-custom", "yes")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"two");

    // The upstream got HTTP/1.1 with `:authority` as Host and an origin-form target.
    let seen = up.last();
    assert_eq!(seen.uri, "/api/items?x=1");
    assert_eq!(seen.headers["host"], "api.example:8080");
    assert_eq!(seen.headers["x-custom"], "yes");
    assert!(!seen.headers.keys().any(|k| k.as_str().starts_with(':')));

    // Several requests at once on the one connection.
    let requests = (0..10).map(|i| {
        let mut sender = sender.clone();
        async move {
            let request = Request::get(format!("http://api.example/api/{i}"))
                .body(Empty::new())
                .unwrap();
            sender.send_request(request).await.unwrap().status()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    // HTTP/1.1 on the same listener is untouched.
    assert_eq!(get(gw.listen_addr, "/api/x").await.0, StatusCode::OK);

    let metrics = get(gw.admin_addr, "/metrics").await.2;
    assert!(
        metrics.contains("sluice_requests_by_protocol_total{protocol=\"h2\",tls=\"\"} 11"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn http2_limits_are_applied() {
    let up = Upstream::named("ok").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [server.http2]\nmax_concurrent_streams = 7\nmax_header_list_size = 4096\n{}",
        one_route(up.addr, "/")
    );
    let gw = gateway(&config).await;
    // The first exchange carries the server's SETTINGS.
    let tcp = tokio::net::TcpStream::connect(gw.listen_addr)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(Request::get("http://h/").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 7);

    let mut sender = h2c(gw.listen_addr).await;

    // A header list over the limit never reaches the upstream.
    let hits = up.hits();
    let big = Request::get("http://h/")
        .header("x-big", "a".repeat(8000))
        .body(Empty::new())
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), sender.send_request(big))
        .await
        .expect("an answer");
    // Either a 431 or a reset stream: both are refusals.
    if let Ok(response) = refused {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    assert_eq!(up.hits(), hits, "the upstream saw nothing");
    gw.shutdown().await;
}

#[tokio::test]
async fn http2_can_be_turned_off() {
    let up = Upstream::named("ok").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server.http2]\nenabled = false\n{}",
        one_route(up.addr, "/")
    );
    let gw = gateway(&config).await;
    let tcp = tokio::net::TcpStream::connect(gw.listen_addr)
        .await
        .unwrap();
    let handshake = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await;
    let works = match handshake {
        Ok((mut sender, conn)) => {
            tokio::spawn(conn);
            let request = Request::get("http://h/").body(Empty::new()).unwrap();
            matches!(
                tokio::time::timeout(Duration::from_secs(5), sender.send_request(request)).await,
                Ok(Ok(_))
            )
        }
        Err(_) => false,
    };
    assert!(!works, "no HTTP/2 when disabled");
    assert_eq!(get(gw.listen_addr, "/").await.0, StatusCode::OK);
    gw.shutdown().await;
}

/// Raw HTTP/2 frames, for clients that misbehave on purpose (the `h2` crate will not send a
/// CONTINUATION flood, nor write as fast as the socket takes).
mod raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    /// HPACK: `:method GET`, `:scheme http`, `:path /` (static table), `:authority h`.
    pub const GET_ROOT: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'h'];

    /// One frame: 9-byte head (length, type, flags, stream id), then the payload.
    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The preface and an empty SETTINGS frame: what opens a client connection.
    pub fn open() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        frame(&mut out, SETTINGS, 0, 0, &[]);
        out
    }

    /// Reads frames until the server closes the connection (EOF or reset) or `wait` passes.
    /// Returns the first GOAWAY's last stream id and error code, if one came, and whether the
    /// connection was closed.
    pub async fn read_until_closed(
        mut read: impl tokio::io::AsyncRead + Unpin,
        wait: std::time::Duration,
    ) -> (Option<(u32, u32)>, bool) {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut goaway = None;
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 16384];
        let closed = loop {
            let n = match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
                Err(_) => break false,
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(n)) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let payload = &buf[9..9 + len];
                if buf[3] == GOAWAY && goaway.is_none() && len >= 8 {
                    let last = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    goaway = Some((last, code));
                }
                buf.drain(..9 + len);
            }
        };
        (goaway, closed)
    }
}

#[tokio::test]
async fn a_rapid_reset_flood_loses_its_connection_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::named("ok").await;
    let gw = gateway(&one_route(up.addr, "/")).await;

    // A well-behaved h2c client keeps calling while the flood runs.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sender = h2c(gw.listen_addr).await;
    let good = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.is_cancelled() {
                let request = Request::get("http://h/").body(Empty::new()).unwrap();
                match tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
                    .await
                {
                    Ok(Ok(response)) if response.status() == StatusCode::OK => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }
    });

    // The flood (CVE-2023-44487): HEADERS then RST_STREAM on a new stream each time, written
    // in batches as fast as the socket takes them, without waiting for anything.
    let tcp = tokio::net::TcpStream::connect(gw.listen_addr)
        .await
        .unwrap();
    let (read, mut write) = tcp.into_split();
    let reader = tokio::spawn(raw::read_until_closed(read, Duration::from_secs(10)));
    write.write_all(&raw::open()).await.unwrap();
    const STREAMS: u32 = 5000;
    let mut written = 0;
    for batch in 0..STREAMS / 50 {
        let mut frames = Vec::new();
        for i in 0..50 {
            let id = 2 * (batch * 50 + i) + 1;
            let flags = raw::END_STREAM | raw::END_HEADERS;
            raw::frame(&mut frames, raw::HEADERS, flags, id, raw::GET_ROOT);
            raw::frame(&mut frames, raw::RST_STREAM, 0, id, &8u32.to_be_bytes()); // CANCEL
        }
        if write.write_all(&frames).await.is_err() {
            break; // the gateway closed the connection
        }
        written += 50;
    }
    let (goaway, closed) = reader.await.unwrap();
    assert!(
        closed,
        "the flooding connection is closed by the gateway ({written} streams reset)"
    );
    // The GOAWAY is there unless the close overtook it (a reset discards unread data).
    if let Some((last_stream, code)) = goaway {
        assert_eq!(code, raw::ENHANCE_YOUR_CALM, "GOAWAY reason");
        // Cut off within a bounded number of streams, far fewer than the flood's (21 here
        // when written: max_pending_accept_reset_streams = 20, plus the one over it; the
        // margin is for a loaded machine, where the gateway reads the flood in smaller bites).
        let streams = last_stream.div_ceil(2);
        assert!(streams <= 500, "GOAWAY after {streams} streams");
    }
    // The reset streams that the gateway did take up were few, not the flood's 5000 (without
    // the limit: 1 364 of them reached the upstream, and the connection stayed open).
    assert!(up.hits() <= 500, "{} reset requests proxied", up.hits());

    // The other client was served throughout, and still is.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let (ok, failed) = good.await.unwrap();
    assert!(failed.is_empty(), "{ok} served, failed: {failed:?}");
    assert!(ok >= 1, "the well-behaved client made calls");
    let mut sender = h2c(gw.listen_addr).await;
    let response = sender
        .send_request(Request::get("http://h/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_continuation_flood_loses_its_connection() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::named("ok").await;
    let gw = gateway(&one_route(up.addr, "/")).await;
    let tcp = tokio::net::TcpStream::connect(gw.listen_addr)
        .await
        .unwrap();
    let (read, mut write) = tcp.into_split();
    let reader = tokio::spawn(raw::read_until_closed(read, Duration::from_secs(10)));
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // of one small header each (the decoded list stays far under max_header_list_size).
    let mut frames = raw::open();
    raw::frame(&mut frames, raw::HEADERS, raw::END_STREAM, 1, raw::GET_ROOT);
    for _ in 0..100 {
        // Literal header without indexing, new name: `x-a: a`.
        let header = [0x00, 3, b'x', b'-', b'a', 1, b'a'];
        raw::frame(&mut frames, raw::CONTINUATION, 0, 1, &header);
    }
    let _ = write.write_all(&frames).await;
    let (goaway, closed) = reader.await.unwrap();
    assert!(
        closed,
        "the connection is closed, not left waiting for END_HEADERS"
    );
    let (_, code) = goaway.expect("a GOAWAY before the close");
    assert_eq!(code, raw::ENHANCE_YOUR_CALM, "GOAWAY reason");
    assert_eq!(up.hits(), 0, "the request never reached the upstream");
    // Others are served.
    assert_eq!(get(gw.listen_addr, "/").await.0, StatusCode::OK);
    gw.shutdown().await;
}

/// An h2c-only upstream (HTTP/2 with prior knowledge, as a gRPC server without TLS speaks) on
/// 127.0.0.1:0. `/health` answers 200, in gRPC's way once `failing` is set: still HTTP 200,
/// with `grpc-status: 14` (unavailable). Records the HTTP version of each health check.
async fn h2c_upstream(
    failing: Arc<AtomicBool>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Version>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let checks: Arc<std::sync::Mutex<Vec<Version>>> = Arc::default();
    let seen = checks.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (failing, seen) = (failing.clone(), seen.clone());
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut response = http::Response::new(Full::new(Bytes::from_static(b"h2c")));
                if req.uri().path() == "/health" {
                    seen.lock().unwrap().push(req.version());
                    if failing.load(Ordering::SeqCst) {
                        response
                            .headers_mut()
                            .insert("grpc-status", http::HeaderValue::from_static("14"));
                    }
                }
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, checks)
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn active_checks_of_an_h2c_service_speak_h2c() {
    let failing = Arc::new(AtomicBool::new(false));
    let (addr, checks) = h2c_upstream(failing.clone()).await;
    let config = format!(
        "[services.s]\ninstances = [\"{addr}\"]\nprotocol = \"h2c\"\n\
         [services.s.active_health]\npath = \"/health\"\ninterval = \"100ms\"\n\
         unhealthy_threshold = 2\nhealthy_threshold = 2\n\
         [[routes]]\npath = \"/\"\nservice = \"s\"\n"
    );
    let gw = gateway(&config).await;
    let admin = gw.admin_addr;
    let failing_checks = move || async move {
        let view: serde_json::Value =
            serde_json::from_str(&get(admin, "/admin/services").await.2).unwrap();
        view["services"][0]["instances"][0]["health"]["failing_checks"].clone()
    };
    // An HTTP/1.1 check would get no answer from this server: the checks are h2c, and pass.
    eventually("three h2c checks", || {
        let seen = checks.lock().unwrap().clone();
        async move { seen.len() >= 3 }
    })
    .await;
    assert!(
        checks.lock().unwrap().iter().all(|v| *v == Version::HTTP_2),
        "{:?}",
        checks.lock().unwrap()
    );
    assert_eq!(failing_checks().await, false);
    assert_eq!(get(gw.listen_addr, "/").await.2, "h2c");

    // A gRPC-style failure (HTTP 200, `grpc-status` 14) fails the check.
    failing.store(true, Ordering::SeqCst);
    eventually("marked down by grpc-status", || async move {
        failing_checks().await == true
    })
    .await;
    // And passing again brings it back.
    failing.store(false, Ordering::SeqCst);
    eventually("back up", || async move { failing_checks().await == false }).await;
    gw.shutdown().await;
}
