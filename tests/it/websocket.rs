//! WebSocket through the gateway: the upgrade is routed and guarded by the route's plugins
//! (the built-in `auth`), then frames go both ways; an idle WebSocket is closed.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

use crate::builtin::{SECRET, token};
use crate::harness::{gateway, get, plugin_cache_dir, wait_for};

/// A WebSocket echo server on 127.0.0.1:0 (one thread per connection; ends with the test).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(msg) = ws.read() {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
[server.websocket]
idle_timeout = "1s"
[plugins]
cache_dir = "{}"
[services.chat]
instances = ["{upstream}"]
[[routes]]
path = "/chat"
service = "chat"
plugins = ["auth"]
[[plugin.auth.keys]]
kid = "k1"
alg = "HS256"
secret = "{SECRET}"
"#,
        plugin_cache_dir().display()
    )
}

#[tokio::test]
async fn websocket_upgrades_are_guarded_by_auth_and_relayed() {
    let up = echo_server();
    let gw = gateway(&config(up)).await;
    let url = format!("ws://{}/chat", gw.listen_addr);

    let refused = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || match tungstenite::connect(url.as_str()) {
            Ok((_, response)) => Ok(response.status()),
            Err(tungstenite::Error::Http(response)) => Err(Some(response.status())),
            Err(_) => Err(None),
        })
        .await
        .unwrap()
    };
    assert_eq!(refused, Err(Some(http::StatusCode::UNAUTHORIZED)));

    let bearer = format!("Bearer {}", token("alice", 60));
    let closed_when_idle = tokio::task::spawn_blocking(move || {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        let (mut ws, response) = tungstenite::connect(request).expect("upgrade with a token");
        assert_eq!(response.status(), 101);
        for i in 0..3 {
            ws.send(Message::text(format!("hello {i}"))).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i}")));
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
        // Nothing moves for longer than idle_timeout: the gateway closes the connection.
        if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let started = std::time::Instant::now();
        let end = ws.read();
        (
            end.is_err() || end.is_ok_and(|m| m.is_close()),
            started.elapsed(),
        )
    })
    .await
    .unwrap();
    assert!(closed_when_idle.0, "the idle WebSocket was closed");
    assert!(
        closed_when_idle.1 < Duration::from_secs(4),
        "closed after {:?}",
        closed_when_idle.1
    );

    // The relay task lowers the gauge as it ends, just after the client saw the close.
    wait_for(
        Duration::from_secs(5),
        "the WebSocket gauge back to 0",
        || async {
            get(gw.admin_addr, "/metrics")
                .await
                .2
                .contains("sluice_websocket_connections 0")
        },
    )
    .await;
    let metrics = get(gw.admin_addr, "/metrics").await.2;
    assert!(
        metrics.contains("sluice_websocket_upgrades_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_requests_by_protocol_total{protocol=\"ws\",tls=\"\"} 2"),
        "{metrics}"
    );
    gw.shutdown().await;
}

/// A client WebSocket text frame (RFC 6455 §5.2): FIN, opcode 1, masked, payload < 126 bytes.
fn masked_text(text: &str) -> bytes::Bytes {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame.into()
}

/// An RFC 8441 extended CONNECT for `/chat` over an HTTP/2 connection, with a bearer token
/// when given.
fn extended_connect(addr: SocketAddr, bearer: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}/chat"))
        .header("sec-websocket-version", "13");
    if let Some(bearer) = bearer {
        request = request.header("authorization", bearer);
    }
    let mut request = request.body(()).unwrap();
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    request
}

#[tokio::test]
async fn websocket_over_http2_extended_connect_is_guarded_and_relayed() {
    let up = echo_server();
    let gw = gateway(&config(up)).await;
    let tcp = tokio::net::TcpStream::connect(gw.listen_addr)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // A first exchange brings the server's SETTINGS; the route wants a token.
    let (response, _) = client
        .send_request(
            http::Request::get(format!("http://{}/chat", gw.listen_addr))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 401);
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL announced"
    );

    // Without a token: refused by `auth`, as the HTTP/1.1 upgrade is.
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(extended_connect(gw.listen_addr, None), false)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 401);

    // With one: 200, then frames both ways on the stream.
    let bearer = format!("Bearer {}", token("alice", 60));
    let mut client = client.ready().await.unwrap();
    let (response, mut send) = client
        .send_request(extended_connect(gw.listen_addr, Some(&bearer)), false)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !response.headers().contains_key("sec-websocket-accept")
            && !response.headers().contains_key("upgrade"),
        "no HTTP/1.1 handshake headers on the stream: {:?}",
        response.headers()
    );
    let mut recv = response.into_body();
    for text in ["hello", "over h2"] {
        send.send_data(masked_text(text), false).unwrap();
        // The echo server's frame: FIN + text, unmasked length, payload.
        let mut want = vec![0x81, text.len() as u8];
        want.extend_from_slice(text.as_bytes());
        let mut got = Vec::new();
        while got.len() < want.len() {
            let chunk = tokio::time::timeout(Duration::from_secs(10), recv.data())
                .await
                .expect("the echo within 10 s")
                .expect("the stream stays open")
                .unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, want);
    }
    // The client ends its side: the relay ends and the gauge goes back.
    send.send_data(bytes::Bytes::new(), true).unwrap();
    let metrics = get(gw.admin_addr, "/metrics").await.2;
    assert!(
        metrics.contains("sluice_websocket_upgrades_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_requests_by_protocol_total{protocol=\"ws\",tls=\"\"} 2"),
        "{metrics}"
    );
    gw.shutdown().await;
}
