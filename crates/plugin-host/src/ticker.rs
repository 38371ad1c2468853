//! The epoch ticker: the thread that advances every engine's epoch, which is how a plugin
//! call's CPU deadline is noticed (wasmtime checks the epoch at function entries and loop
//! back-edges; the call's epoch callback in loaded.rs yields or traps).
//!
//! It ticks every [`IDLE_TICK`] while calls are being made, every [`EPOCH_TICK`] while one runs
//! long, and sleeps without a timeout once no call has started for [`PARK_AFTER_IDLE_TICKS`]
//! ticks, so an idle gateway (or one serving only routes without plugins) has no thread waking
//! up 500 times a second. The next call wakes it ([`note_call`]); a call's deadline is counted
//! from the ticks after it started, so a call made while the ticker slept is still cut on time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// One epoch tick while a guest call runs long. CPU deadlines are counted in ticks, and a long
/// call yields to its worker's event loop every tick (docs/benchmarks.md: 250 µs keeps another
/// route's p99 within +10 ms beside a spinning plugin, 1 ms did not).
pub const EPOCH_TICK: Duration = Duration::from_micros(250);

/// The tick while no call runs long. Waking 4000 times a second cost ~8 % of the gateway's
/// CPU on a plugin route under load (perf, 2026-11-27), for calls that almost all finish in
/// microseconds; a call that does run long is noticed within this, then ticked every
/// [`EPOCH_TICK`].
pub const IDLE_TICK: Duration = Duration::from_millis(2);

/// Ticks with no call started after which the ticker sleeps until the next call (100 ms).
pub const PARK_AFTER_IDLE_TICKS: u32 = 50;

/// Set by a call's epoch callback when the call has run at least one [`EPOCH_TICK`]: the
/// ticker then ticks fast until a tick passes with no such call.
static LONG_CALL: AtomicBool = AtomicBool::new(false);

/// Set by every call start ([`note_call`]); the ticker clears it each tick.
static CALLED: AtomicBool = AtomicBool::new(false);

/// Whether the ticker is (about to be) asleep without a timeout.
static PARKED: AtomicBool = AtomicBool::new(false);

/// The ticker thread, to wake it.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Engines the ticker advances (one per gateway; tests run several in one process).
static TICKED: Mutex<Vec<wasmtime::EngineWeak>> = Mutex::new(Vec::new());

/// Starts the ticker (once per process) and adds `engine` to what it advances. A dropped
/// engine is forgotten. Not a Tokio task: a busy worker must not delay the very tick that
/// interrupts it.
pub fn spawn(engine: &wasmtime::Engine) {
    TICKED.lock().expect("ticker lock").push(engine.weak());
    TICKER.get_or_init(|| {
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(run)
            .expect("spawning the epoch ticker thread")
            .thread()
            .clone()
    });
}

/// Called when a plugin call (or an instance's set-up) is about to run guest code: wakes the
/// ticker if it sleeps. Costs one load of a line that changes at most once a tick.
pub fn note_call() {
    // SeqCst on both sides (here: store CALLED, then load PARKED; the ticker: store PARKED,
    // then load CALLED): at least one of the two sees the other, so the ticker never sleeps
    // through a call.
    if !CALLED.load(Ordering::SeqCst) {
        CALLED.store(true, Ordering::SeqCst);
        if PARKED.load(Ordering::SeqCst)
            && let Some(ticker) = TICKER.get()
        {
            ticker.unpark();
        }
    }
}

/// Called from a call's epoch callback when the call has been running at least a tick.
pub fn note_long_call() {
    if !LONG_CALL.swap(true, Ordering::Relaxed)
        && let Some(ticker) = TICKER.get()
    {
        ticker.unpark();
    }
}

/// Whether the ticker sleeps until the next call (for tests and diagnostics).
pub fn is_parked() -> bool {
    PARKED.load(Ordering::SeqCst)
}

fn run() {
    let mut idle_ticks = 0;
    loop {
        let long = LONG_CALL.swap(false, Ordering::Relaxed);
        // Sleep first, then tick: woken by the first call after a sleep, the ticker gives that
        // call a whole tick before its deadline comes due, as for any call.
        std::thread::park_timeout(if long { EPOCH_TICK } else { IDLE_TICK });
        TICKED.lock().expect("ticker lock").retain(|weak| {
            let Some(engine) = weak.upgrade() else {
                return false;
            };
            engine.increment_epoch();
            true
        });
        idle_ticks = next_idle_ticks(idle_ticks, CALLED.swap(false, Ordering::SeqCst), long);
        if idle_ticks >= PARK_AFTER_IDLE_TICKS {
            PARKED.store(true, Ordering::SeqCst);
            // A call that started after the swap above is seen here, or it sees PARKED and
            // unparks us (a token `park` returns on at once).
            if !CALLED.load(Ordering::SeqCst) {
                std::thread::park();
            }
            PARKED.store(false, Ordering::SeqCst);
            idle_ticks = 0;
        }
    }
}

/// The count of consecutive ticks with no call started, after one more tick.
fn next_idle_ticks(idle_ticks: u32, called: bool, long_call: bool) -> u32 {
    if called || long_call {
        0
    } else {
        idle_ticks.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_sleeps_only_after_a_run_of_ticks_without_a_call() {
        let mut idle = 0;
        for _ in 0..PARK_AFTER_IDLE_TICKS - 1 {
            idle = next_idle_ticks(idle, false, false);
        }
        assert!(idle < PARK_AFTER_IDLE_TICKS, "not yet");
        // A call (or a call still running long) starts the run again.
        assert_eq!(next_idle_ticks(idle, true, false), 0);
        assert_eq!(next_idle_ticks(idle, false, true), 0);
        assert_eq!(next_idle_ticks(idle, false, false), PARK_AFTER_IDLE_TICKS);
        assert_eq!(next_idle_ticks(u32::MAX, false, false), u32::MAX);
    }
}
