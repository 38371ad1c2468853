//! The wasmtime engine: one per gateway, configured for the plugin world, with the epoch
//! ticker that enforces CPU deadlines and the on-disk cache of compiled plugins.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use super::bindings::{v0_1, v0_2};
use super::host::HostState;

/// One epoch tick while a guest call runs long. CPU deadlines are counted in ticks, and a long
/// call yields to its worker's event loop every tick (docs/benchmarks.md: 250 µs keeps another
/// route's p99 within +10 ms beside a spinning plugin, 1 ms did not).
pub const EPOCH_TICK: Duration = Duration::from_micros(250);

/// The tick while no call runs long. Waking 4000 times a second cost ~8 % of the gateway's
/// CPU on a plugin route under load (perf, 2026-11-27), for calls that almost all finish in
/// microseconds; a call that does run long is noticed within this, then ticked every
/// [`EPOCH_TICK`].
pub const IDLE_TICK: Duration = Duration::from_millis(2);

/// Set by a call's epoch callback when the call has run at least one [`EPOCH_TICK`]: the
/// ticker then ticks fast until a tick passes with no such call.
static LONG_CALL: AtomicBool = AtomicBool::new(false);

/// The ticker thread, to wake it early when a long call appears.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Engines the ticker advances (one per gateway; tests run several in one process).
static TICKED: Mutex<Vec<wasmtime::EngineWeak>> = Mutex::new(Vec::new());

/// Called from a call's epoch callback when the call has been running at least a tick.
pub fn note_long_call() {
    if !LONG_CALL.swap(true, Ordering::Relaxed)
        && let Some(ticker) = TICKER.get()
    {
        ticker.unpark();
    }
}

/// Component instances the pooling allocator has slots for (idle pooled instances included):
/// past it, instantiation fails until a slot is freed.
pub const POOL_COMPONENT_INSTANCES: u32 = 1000;

/// The default `max_held_instances`: per-request instances kept across the upstream call
/// (from a request's `on-request` to its `on-response`) take at most half the pool's slots, so
/// requests waiting on slow upstreams never starve other requests' instantiation.
pub const DEFAULT_MAX_HELD_INSTANCES: usize = POOL_COMPONENT_INSTANCES as usize / 2;

/// Bytes of a recycled linear memory kept resident and reset in place (see `engine_config`).
const KEEP_RESIDENT: usize = 1 << 20;

/// Builds the engine. `cache_dir = None` disables the compiled-artifact cache.
/// `max_memory_bytes` is the largest linear memory any plugin may use.
///
/// Instances come from wasmtime's pooling allocator when the machine lets us reserve its
/// address space: memories, tables and async stacks are then recycled instead of mapped and
/// unmapped for every instance (the bulk of the cost of a per-request instance). Where the
/// reservation fails (small address space, strict overcommit) the on-demand allocator is used.
pub fn build_engine(cache_dir: Option<PathBuf>, max_memory_bytes: usize) -> anyhow::Result<Engine> {
    let pooled = engine_config(cache_dir.clone(), Some(max_memory_bytes));
    match Engine::new(&pooled) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            tracing::warn!(target: crate::LOG_TARGET,
                "plugin instance pool unavailable ({e}); allocating instances on demand"
            );
            Engine::new(&engine_config(cache_dir, None)).map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
}

fn engine_config(cache_dir: Option<PathBuf>, pool_memory: Option<usize>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Every store gets a deadline; the ticker thread below advances the epoch.
    config.epoch_interruption(true);
    // Deep recursion in a guest traps instead of overflowing the worker's stack.
    config.max_wasm_stack(1024 * 1024);
    // `SLUICE_WASM_PROFILER=perfmap` writes /tmp/perf-PID.map so `perf report` names the
    // plugins' compiled functions instead of showing anonymous JIT addresses (a developer
    // switch for profiling, docs/benchmarks.md; off by default: the map grows per compile).
    if std::env::var_os("SLUICE_WASM_PROFILER").is_some_and(|v| v == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(dir) = cache_dir {
        // wasmtime's cache keys entries by a hash of the component bytes, the engine's
        // settings and the wasmtime version: a restart with known plugins skips compiling.
        let mut cache_config = CacheConfig::new();
        cache_config.with_directory(dir);
        match Cache::new(cache_config) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => {
                tracing::warn!(target: crate::LOG_TARGET, "plugin compile cache disabled: {e}")
            }
        }
    }
    if let Some(max_memory) = pool_memory {
        let mut pool = PoolingAllocationConfig::new();
        // Component instances in existence at once (idle pooled ones included); Python and
        // JavaScript components hold several core instances, memories and tables each.
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(4000)
            .total_memories(2000)
            .total_tables(4000)
            .total_stacks(1000)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_memory_size(max_memory)
            // A recycled slot (a per-request instance, a worn-out one) is reset by rewriting
            // only the pages the instance dirtied (PAGEMAP_SCAN, Linux >= 6.7; plain memset of
            // the low bytes elsewhere) instead of madvise: the next instance then takes no
            // page faults and the process no TLB shootdowns. Page faults and decommits were
            // most of a fresh instance's cost (perf, 2026-11-27: 31 µs per request).
            // The price: what an instance dirtied (up to 1 MiB) stays resident in its slot;
            // slots are reused, so that is about 1 MiB per instance alive at the busiest moment.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch on the process's ticker thread (not a Tokio task: a busy
/// worker must not delay the very tick that interrupts it): every [`IDLE_TICK`], or every
/// [`EPOCH_TICK`] while a call runs long. Started with the first plugin, so a gateway without
/// plugins has no timer thread waking up; a dropped engine is forgotten.
pub fn spawn_epoch_ticker(engine: &Engine) {
    TICKED.lock().expect("ticker lock").push(engine.weak());
    TICKER.get_or_init(|| {
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(|| {
                loop {
                    TICKED.lock().expect("ticker lock").retain(|weak| {
                        let Some(engine) = weak.upgrade() else {
                            return false;
                        };
                        engine.increment_epoch();
                        true
                    });
                    let tick = match LONG_CALL.swap(false, Ordering::Relaxed) {
                        true => EPOCH_TICK,
                        false => IDLE_TICK,
                    };
                    std::thread::park_timeout(tick);
                }
            })
            .expect("spawning the epoch ticker thread")
            .thread()
            .clone()
    });
}

/// The linker with every import of both contract versions (0.2.0 and the frozen 0.1.0):
/// WASI (capability-less contexts are made per store) and the gateway's own interfaces.
pub fn build_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    v0_2::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    v0_1::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(linker)
}

/// The default cache directory: `$XDG_CACHE_HOME/sluice` or `~/.cache/sluice`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("sluice").join("plugins"))
}
