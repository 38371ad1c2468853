//! Graceful shutdown: stop accepting, finish what is in flight, bounded.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn a_request_in_flight_finishes_and_new_connections_are_refused() {
    let up = Upstream::slow(Duration::from_millis(500), "finished").await;
    let gw = gateway(&one_route(up.addr, "/")).await;
    let addr = gw.listen_addr;
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    // Let the request reach the upstream, then shut down while it waits.
    while up.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tokio::time::Instant::now();
    gw.shutdown().await;
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "finished"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_shutdown_timeout() {
    let up = Upstream::slow(Duration::from_secs(30), "too late").await;
    let gw = gateway(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nshutdown_timeout = \"300ms\"\n{}",
        one_route(up.addr, "/")
    ))
    .await;
    let addr = gw.listen_addr;
    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    while up.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tokio::time::Instant::now();
    gw.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    in_flight.abort();
}
