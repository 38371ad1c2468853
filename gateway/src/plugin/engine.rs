//! The wasmtime engine: one per gateway, configured for the plugin world, with the epoch
//! ticker that enforces CPU deadlines and the on-disk cache of compiled plugins.

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine};

use super::bindings::Plugin;
use super::host::HostState;

/// One epoch tick. CPU deadlines are counted in ticks, so this is their resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Builds the engine. `cache_dir = None` disables the compiled-artifact cache.
pub fn build_engine(cache_dir: Option<PathBuf>) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Every store gets a deadline; the ticker thread below advances the epoch.
    config.epoch_interruption(true);
    // Deep recursion in a guest traps instead of overflowing the worker's stack.
    config.max_wasm_stack(1024 * 1024);
    if let Some(dir) = cache_dir {
        // wasmtime's cache keys entries by a hash of the component bytes, the engine's
        // settings and the wasmtime version: a restart with known plugins skips compiling.
        let mut cache_config = CacheConfig::new();
        cache_config.with_directory(dir);
        match Cache::new(cache_config) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => tracing::warn!("plugin compile cache disabled: {e}"),
        }
    }
    Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Advances the engine's epoch every tick on its own OS thread (not a Tokio task: a busy
/// worker must not delay the very tick that interrupts it). Stops when the engine is dropped.
/// Started with the first plugin, so a gateway without plugins has no timer thread waking up.
pub fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// The linker with every import of the world: WASI (capability-less contexts are made per
/// store) and the gateway's own interfaces.
pub fn build_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
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
