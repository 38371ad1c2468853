//! Routing, header handling, streamed bodies and upstream error statuses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::{Notify, mpsc};

use crate::harness::*;

#[tokio::test]
async fn routes_by_longest_prefix_host_and_method() {
    let (a, b, c, d) = (
        Upstream::named("api").await,
        Upstream::named("api-v2").await,
        Upstream::named("post-only").await,
        Upstream::named("admin-host").await,
    );
    let gw = gateway(&format!(
        r#"
[services.a]
instances = ["{}"]
[services.b]
instances = ["{}"]
[services.c]
instances = ["{}"]
[services.d]
instances = ["{}"]
[[routes]]
path = "/api"
service = "a"
[[routes]]
path = "/api/v2"
service = "b"
[[routes]]
path = "/api"
methods = ["POST"]
service = "c"
[[routes]]
path = "/api"
host = "admin.example"
service = "d"
"#,
        a.addr, b.addr, c.addr, d.addr
    ))
    .await;
    let at = gw.listen_addr;
    assert_eq!(get(at, "/api/users").await.2, "api");
    assert_eq!(get(at, "/api").await.2, "api");
    assert_eq!(get(at, "/api/v2/users").await.2, "api-v2");
    assert_eq!(
        get(at, "/api/v2x").await.2,
        "api",
        "prefixes match whole segments"
    );
    let post = Request::post("/api/x").body(full("")).unwrap();
    assert_eq!(send(at, post).await.2, "post-only");
    let host = Request::get("/api/x")
        .header("host", "admin.example:80")
        .body(full(""))
        .unwrap();
    assert_eq!(send(at, host).await.2, "admin-host");
    let (status, _, body) = get(at, "/apix").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "no route matches GET /apix\n");
    gw.shutdown().await;
}

#[tokio::test]
async fn forwards_method_path_query_and_strips_prefix_when_asked() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&format!(
        "[services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/keep\"\nservice = \"s\"\n[[routes]]\npath = \"/strip\"\nservice = \"s\"\nstrip_prefix = true\n",
        up.addr
    ))
    .await;
    get(gw.listen_addr, "/keep/a/b?x=1&y=%20").await;
    assert_eq!(up.last().uri.to_string(), "/keep/a/b?x=1&y=%20");
    get(gw.listen_addr, "/strip/a?q=2").await;
    assert_eq!(up.last().uri.to_string(), "/a?q=2");
    get(gw.listen_addr, "/strip").await;
    assert_eq!(up.last().uri.to_string(), "/");
    let del = Request::delete("/keep/1").body(full("")).unwrap();
    send(gw.listen_addr, del).await;
    assert_eq!(up.last().method, http::Method::DELETE);
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_added() {
    let up = Upstream::recording(|_| {
        Response::builder()
            .header("connection", "x-up-secret")
            .header("x-up-secret", "1")
            .header("x-up-kept", "1")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let gw = gateway(&one_route(up.addr, "/")).await;
    let req = Request::get("/h")
        .header("host", "front.example")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic x")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-custom", "kept")
        .body(full(""))
        .unwrap();
    let (status, resp_headers, _) = send(gw.listen_addr, req).await;
    assert_eq!(status, 200);
    let seen = up.last().headers;
    for gone in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["host"], "front.example");
    // The client is not a trusted proxy (`[server] trusted_proxies`): its own claim is
    // replaced by its address (the trusted case: tests/it/edge.rs).
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "front.example");
    let id = seen["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        resp_headers["x-request-id"],
        id.as_str(),
        "the request id is echoed back"
    );
    assert!(!resp_headers.contains_key("x-up-secret"));
    assert_eq!(resp_headers["x-up-kept"], "1");

    let req = Request::get("/h")
        .header("x-request-id", "client-chosen")
        .body(full(""))
        .unwrap();
    let (_, resp_headers, _) = send(gw.listen_addr, req).await;
    assert_eq!(up.last().headers["x-request-id"], "client-chosen");
    assert_eq!(resp_headers["x-request-id"], "client-chosen");
    gw.shutdown().await;
}

/// The request body reaches the upstream while the client is still sending it, and the
/// response body reaches the client while the upstream is still sending it: nothing is
/// buffered whole.
#[tokio::test]
async fn bodies_stream_both_ways() {
    let first_chunk_upstream = Arc::new(Notify::new());
    let release_upstream = Arc::new(Notify::new());
    let (got, release) = (first_chunk_upstream.clone(), release_upstream.clone());
    let up = Upstream::with_handler(Arc::new(move |req: Request<hyper::body::Incoming>| {
        let (got, release) = (got.clone(), release.clone());
        Box::pin(async move {
            let mut body = req.into_body();
            // Wait for the first request chunk before the client has sent the second.
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"first;");
            got.notify_one();
            let rest = body.collect().await.unwrap().to_bytes();
            assert_eq!(&rest[..], b"second;");
            // Respond with a streamed body whose second half waits for the client.
            let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, _>>(2);
            tokio::spawn(async move {
                tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"one;"))))
                    .await
                    .unwrap();
                release.notified().await;
                tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"two;"))))
                    .await
                    .unwrap();
            });
            let stream = tokio_stream_from(rx);
            Response::new(StreamBody::new(stream).boxed())
        })
    }))
    .await;
    let gw = gateway(&one_route(up.addr, "/")).await;

    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, _>>(2);
    let req = Request::post(format!("http://{}/stream", gw.listen_addr))
        .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        .unwrap();
    let sender = tokio::spawn(async move {
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first;"))))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), first_chunk_upstream.notified())
            .await
            .expect("the upstream saw the first chunk before the body ended");
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"second;"))))
            .await
            .unwrap();
    });
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first response chunk arrives before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "one;");
    release_upstream.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"two;");
    sender.await.unwrap();
    gw.shutdown().await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn upstream_failures_map_to_502_504_and_503() {
    let dead = closed_port().await;
    let slow = Upstream::with_handler(Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Response::new(full("late"))
        })
    }))
    .await;
    let gw = gateway(&format!(
        r#"
[services.dead]
instances = ["{dead}"]
[services.slow]
instances = ["{}"]
request_timeout = "300ms"
[services.empty]
[[routes]]
path = "/dead"
service = "dead"
[[routes]]
path = "/slow"
service = "slow"
[[routes]]
path = "/empty"
service = "empty"
"#,
        slow.addr
    ))
    .await;
    let (status, _, body) = get(gw.listen_addr, "/dead").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "bad gateway: cannot connect to service dead\n");
    let (status, _, body) = get(gw.listen_addr, "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        body,
        "gateway timeout: service slow did not answer in time\n"
    );
    let (status, _, body) = get(gw.listen_addr, "/empty").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "service empty has no available instance\n");
    gw.shutdown().await;
}

#[tokio::test]
async fn instances_share_load_round_robin_and_connections_are_reused() {
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let gw = gateway(&format!(
        "[services.s]\ninstances = [\"{}\", \"{}\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\n",
        a.addr, b.addr
    ))
    .await;
    for _ in 0..10 {
        get(gw.listen_addr, "/").await;
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
    assert_eq!(
        (a.conns(), b.conns()),
        (1, 1),
        "sequential requests reuse one connection each"
    );
    gw.shutdown().await;
}
