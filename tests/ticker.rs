//! The epoch ticker sleeping while no plugin runs (crates/plugin-host/src/ticker.rs), in a
//! process of its own: the ticker is one per process, and the `it` binary's other tests would
//! keep it awake.

// The integration tests' harness; this binary uses a few of its helpers.
#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

use std::time::Duration;

use sluice::plugin::ticker;

use crate::harness::*;

#[tokio::test]
async fn calls_made_while_the_ticker_sleeps_still_meet_their_cpu_deadline() {
    // Answers after the ticker has gone back to sleep behind the plugin's outbound call.
    let slow = Upstream::slow(Duration::from_secs(1), "late").await;
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(
        dir.path(),
        up.addr,
        &format!(
            "quarantine_after = 0\ncpu_timeout = \"200ms\"\ntimeout = \"10s\"\nallowed_hosts = [\"{}\"]",
            slow.addr
        ),
    )
    .await;
    let cpu_limit = "plugin testbed failed: used more than its CPU time limit (200ms)\n";
    assert_eq!(get(gw.listen_addr, "/p/ok").await.0, 200);

    // No call for a while: the ticker sleeps (an idle gateway has no thread waking up).
    assert_eventually!(
        within: Duration::from_secs(10),
        ticker::is_parked(),
        "the ticker sleeps once no plugin runs"
    );
    // A spinning call started now wakes it, and is cut at its CPU deadline.
    let (status, _, body) = get(gw.listen_addr, "/p/loop").await;
    assert_eq!((status.as_u16(), body.as_str()), (500, cpu_limit));

    // A call that waits on outbound HTTP for a second (the ticker goes back to sleep
    // meanwhile), then spins: resuming it wakes the ticker again.
    assert_eventually!(within: Duration::from_secs(10), ticker::is_parked(), "asleep again");
    let (status, _, body) = get(
        gw.listen_addr,
        &format!("/p/fetch-loop?http://{}/", slow.addr),
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (500, cpu_limit));
    assert_eq!(get(gw.listen_addr, "/p/ok").await.0, 200);
    gw.shutdown().await;
}
