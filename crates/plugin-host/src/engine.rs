//! The wasmtime engine: one per gateway, configured for the plugin world, with the on-disk
//! cache of compiled plugins (its epoch is advanced by the ticker, ticker.rs).

use std::path::PathBuf;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use super::bindings::{v0_1, v0_2};
use super::host::HostState;

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
