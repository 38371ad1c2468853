//! Sluice's plugin runtime: WebAssembly components that implement `wit/plugin.wit`, loaded
//! from a directory (and hot-reloaded), by digest or built in, and run sandboxed. It knows
//! nothing of the gateway: what it needs of the configuration comes in as [`settings`], and
//! the per-request chain that turns plugin results into responses is the gateway's
//! (`gateway/src/chain.rs`).
//!
//! Module map: `bindings` (generated), `host` (imports and store data), `engine` (wasmtime set
//! up, epoch ticker, cache), `loader` (file → checked, compiled component), `loaded` (a plugin's
//! instance pool, limits and health), `state` and `kv` (host-side data plugins share),
//! `watcher` (directory watch), and this file: the set of active plugins, loading and
//! reloading them, and what the admin API shows. The per-request chain is the gateway's
//! (`chain.rs`, beside the proxy).
//!
//! Long (~650 lines): every way a plugin enters the active set (built-in, file, digest source,
//! canary version, reload) ends in the same `install`; kept together so the set's invariants
//! are checked in one file.

#![forbid(unsafe_code)]

pub mod bindings;
pub mod canary;
pub mod clock;
mod compat;
pub mod compiler;
pub mod crypto;
pub mod digest;
pub mod engine;
pub mod extra;
pub mod held;
pub mod host;
pub mod kv;
pub mod loaded;
pub mod loader;
pub mod log_stream;
pub mod metrics;
pub mod path;
mod reconfigure;
pub mod sandbox;
pub mod settings;
pub mod state;
pub mod ticker;
pub mod trace;
pub mod watcher;

/// The target of the runtime's log events (defined in the leaf log_stream.rs, so that the
/// modules naming it do not depend on the crate root).
pub(crate) use self::log_stream::LOG_TARGET;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Linker;

use self::host::{HostState, PluginShared};
use self::kv::KvStore;
use self::loaded::{Contract, LoadedPlugin, PluginSource, WORLD};
use self::loader::LoadError;
use self::metrics::PluginMetrics;
use self::settings::{
    DigestSource, FailurePolicy, InstanceMode, Live, NodeSettings, PluginSettings,
};
use self::state::SharedState;

/// The plugins active at one moment. Requests load it once, so a reload mid-request never
/// mixes two versions of a plugin.
#[derive(Debug, Default)]
pub struct PluginSet {
    plugins: HashMap<Arc<str>, Arc<LoadedPlugin>>,
}

impl PluginSet {
    /// The active plugin with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(name)
    }
}

/// A load that failed: shown on the admin API until the next successful load of that name.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// What was wrong.
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// What a reload did.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Plugins loaded or replaced.
    pub loaded: Vec<String>,
    /// Plugins whose file is gone.
    pub unloaded: Vec<String>,
    /// Plugins already up to date.
    pub unchanged: Vec<String>,
    /// Files that failed, with the reason (the previous version, if any, keeps serving).
    pub failed: BTreeMap<String, String>,
}

/// The plugin runtime.
pub struct PluginRuntime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// Compiles components at low priority, beside the data-plane workers.
    compiler: compiler::CompilePool,
    set: ArcSwap<PluginSet>,
    failures: Mutex<BTreeMap<String, LoadFailure>>,
    /// Shared state by plugin name: kept across reloads, so a new version of a plugin sees
    /// the counters of the old one.
    states: Mutex<HashMap<String, Arc<SharedState>>>,
    kv: Arc<KvStore>,
    metrics: Arc<PluginMetrics>,
    outbound: host::OutboundClient,
    /// Address checks of outbound HTTP (knows the admin listener).
    outbound_guard: Arc<sandbox::OutboundGuard>,
    /// Per-request instances held across upstream calls, all plugins together.
    held_slots: Arc<held::InstanceSlots>,
    /// Per-node settings (`dir`, `cache_dir`, digest trust, built-ins).
    settings: NodeSettings,
    /// Settings a cluster configuration may replace at run time (`reconfigure`).
    live: ArcSwap<Live>,
    /// One reload at a time (watcher and admin API may both ask).
    reload_lock: tokio::sync::Mutex<()>,
    /// The epoch ticker starts before the first plugin code runs.
    ticker: std::sync::Once,
    /// What its plugins read as time (tests may advance it: `clock::Clock`).
    clock: clock::Clock,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("dir", &self.settings.dir)
            .finish()
    }
}

impl PluginRuntime {
    /// Sets up the engine and stores; loads nothing yet.
    pub fn new(
        settings: NodeSettings,
        live: Live,
        metrics: Arc<PluginMetrics>,
    ) -> anyhow::Result<Self> {
        let cache_dir = match &settings.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => {
                sandbox::prepare_cache_dir(dir).map_err(|e| anyhow::anyhow!(e))?;
                Some(dir.clone())
            }
            None => engine::default_cache_dir().filter(|dir| {
                // The default location is the user's own: refused, it only costs compile time.
                sandbox::prepare_cache_dir(dir)
                    .map_err(|e| tracing::warn!(target: crate::LOG_TARGET, "compiled-plugin cache disabled: {e}"))
                    .is_ok()
            }),
        };
        let max_memory = live.settings.max_memory_bytes();
        let engine = engine::build_engine(cache_dir, max_memory)?;
        let linker = Arc::new(engine::build_linker(&engine)?);
        let kv = match &settings.kv_file {
            Some(file) => KvStore::open(file)?,
            None => KvStore::in_memory(),
        };
        let held_slots =
            held::InstanceSlots::new(settings.max_held_instances, metrics.held_instances.clone());
        Ok(Self {
            engine,
            linker,
            compiler: compiler::CompilePool::new(settings.workers)?,
            set: ArcSwap::from_pointee(PluginSet::default()),
            failures: Mutex::default(),
            states: Mutex::default(),
            kv: Arc::new(kv),
            metrics,
            outbound: host::outbound_client(),
            outbound_guard: Arc::new(sandbox::OutboundGuard::new(settings.admin)),
            held_slots,
            settings,
            live: ArcSwap::from_pointee(live),
            reload_lock: tokio::sync::Mutex::new(()),
            ticker: std::sync::Once::new(),
            clock: clock::Clock::default(),
        })
    }

    /// Tells outbound HTTP checks where the admin listener is bound.
    pub fn set_admin_addr(&self, addr: std::net::SocketAddr) {
        self.outbound_guard.set_admin(addr);
    }

    /// The key-value store plugins read.
    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// The plugin metrics (calls, canary draws).
    pub fn metrics(&self) -> &Arc<PluginMetrics> {
        &self.metrics
    }

    /// The settings in force for the plugin `name` (`[plugins.defaults]` with its override).
    pub fn settings_for(&self, name: &str) -> PluginSettings {
        self.live.load().settings.settings_for(name)
    }

    /// Removes the client-sent copies of the headers `auth` forwards claims in: done before
    /// a chain with `auth` runs, so no failure of `auth` lets them through.
    pub fn strip_identity_headers(&self, headers: &mut http::HeaderMap) {
        for name in &self.live.load().identity_headers {
            headers.remove(name);
        }
    }

    /// The active plugins.
    pub fn current(&self) -> Arc<PluginSet> {
        self.set.load_full()
    }

    /// The gateway serves from now on: plugins compiled later (added or changed at run time)
    /// compile at the lowest CPU priority, off the workers' cores. Until then (the first load)
    /// they compile at normal priority on every core.
    pub fn begin_serving(&self) {
        self.compiler.begin_serving();
    }

    /// The plugin directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.settings.dir.as_deref()
    }

    /// Brings the active set in line with the plugin directory: loads new and changed files
    /// (a changed `NAME.toml` counts), unloads plugins whose file is gone. A file that fails
    /// never replaces a working version.
    pub async fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reload_lock.lock().await;
        let live = self.live.load_full();
        let mut report = ReloadReport::default();
        let mut files = match &self.settings.dir {
            None => BTreeMap::new(),
            Some(dir) => match plugin_files(dir) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(target: crate::LOG_TARGET, dir = %dir.display(), "cannot list the plugin directory: {e}");
                    report
                        .failed
                        .insert("*".into(), format!("cannot list {}: {e}", dir.display()));
                    return report;
                }
            },
        };
        extra::add_files(&mut files, &self.settings.files);
        let mut record = |name: &str, result: Result<bool, LoadError>| match result {
            Ok(true) => report.loaded.push(name.to_owned()),
            Ok(false) => report.unchanged.push(name.to_owned()),
            Err(e) => {
                report.failed.insert(name.to_owned(), e.to_string());
            }
        };
        for (name, file) in &files {
            match file {
                Ok(path) => record(name, self.load_file(name, path).await),
                Err(why) => {
                    // Refused like a bad file: a version already serving keeps serving.
                    let refused = Err(LoadError::Read(why.clone()));
                    let path = dir_entry(self.settings.dir.as_deref(), name);
                    self.note_result(name, &path, &refused);
                    record(name, refused);
                }
            }
        }
        // Plugins named by digest, unless a file of the same name overrides them.
        for (name, source) in &live.sources {
            if !files.contains_key(name) {
                record(name, self.load_by_digest(name, source).await);
            }
        }
        // Built-ins in use, unless a file of the same name overrides them.
        for name in &live.wanted_builtins {
            if !files.contains_key(name) {
                record(name, self.load_builtin(name).await);
            }
        }
        let current = self.current();
        for (name, plugin) in &current.plugins {
            let file_gone =
                matches!(plugin.source, PluginSource::File(_)) && !files.contains_key(&**name);
            if file_gone
                && !live.wanted_builtins.iter().any(|b| b == &**name)
                && !live.sources.contains_key(&**name)
            {
                self.unload(name);
                report.unloaded.push(name.to_string());
            }
        }
        report
    }

    /// Loads (or keeps) the built-in plugin `name`, configured by `[plugin.NAME]`.
    async fn load_builtin(&self, name: &str) -> Result<bool, LoadError> {
        let bytes = self
            .settings
            .builtins
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| *bytes)
            .ok_or_else(|| LoadError::Read(format!("no built-in plugin {name}")))?;
        let config_json = self.config_json(name, None)?;
        let result = self
            .load_bytes(name, PluginSource::BuiltIn, bytes.to_vec(), config_json)
            .await;
        self.note_result(name, Path::new("<built-in>"), &result);
        result
    }

    /// Loads (or keeps) plugin `name` from its digest source.
    async fn load_by_digest(&self, name: &str, source: &DigestSource) -> Result<bool, LoadError> {
        let origin = source.origin();
        if let Err(e) = digest::check_signature(&self.settings.trusted_keys, name, source) {
            let refused = Err(e);
            self.note_result(name, Path::new(&origin), &refused);
            return refused;
        }
        let result = match self.fetcher().obtain(source).await {
            Ok((path, bytes)) => match self.config_json(name, None) {
                Ok(config) => {
                    self.load_bytes(name, PluginSource::File(path), bytes, config)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.note_result(name, Path::new(&origin), &result);
        result
    }

    /// Fetches plugins by digest for this runtime.
    fn fetcher(&self) -> digest::Fetcher<'_> {
        digest::Fetcher {
            settings: &self.settings,
            outbound: &self.outbound,
        }
    }

    /// Loads (or reloads) one plugin file; `Ok(false)` when it is already active unchanged.
    pub async fn load_file(&self, name: &str, path: &Path) -> Result<bool, LoadError> {
        let result = match loader::read(path) {
            Ok(bytes) => match self.config_json(name, Some(path)) {
                Ok(config) => {
                    self.load_bytes(name, PluginSource::File(path.to_owned()), bytes, config)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.note_result(name, path, &result);
        result
    }

    /// Logs a load and keeps its failure for the admin API.
    fn note_result(&self, name: &str, path: &Path, result: &Result<bool, LoadError>) {
        match result {
            Ok(true) => {
                self.failures.lock().expect("failures lock").remove(name);
                tracing::info!(target: crate::LOG_TARGET, plugin = name, source = %path.display(), "plugin loaded");
            }
            Ok(false) => {}
            Err(e) => {
                let serving = self.current().get(name).is_some();
                tracing::error!(target: crate::LOG_TARGET,
                    plugin = name,
                    source = %path.display(),
                    "plugin not loaded: {e}{}",
                    if serving { " (the previous version keeps serving)" } else { "" }
                );
                self.failures.lock().expect("failures lock").insert(
                    name.to_owned(),
                    LoadFailure {
                        path: path.to_owned(),
                        reason: e.to_string(),
                        at_ms: clock::unix_ms(),
                    },
                );
            }
        }
    }

    /// Starts the epoch ticker: no plugin code may run without it, since only the epoch
    /// deadline can stop a guest spinning in a loop.
    fn ensure_ticker(&self) {
        self.ticker.call_once(|| ticker::spawn(&self.engine));
    }

    /// Checks, compiles, activates and installs a component, unless the same bytes with the
    /// same config from the same kind of source are already active.
    async fn load_bytes(
        &self,
        name: &str,
        source: PluginSource,
        bytes: Vec<u8>,
        config_json: String,
    ) -> Result<bool, LoadError> {
        loader::check_header(&bytes)?;
        if let Some(active) = self.current().get(name) {
            let same_kind = matches!(
                (&active.source, &source),
                (PluginSource::BuiltIn, PluginSource::BuiltIn)
                    | (PluginSource::File(_), PluginSource::File(_))
            );
            if same_kind
                && active.digest == loader::digest(&bytes)
                && active.config_json == config_json
                && active.shared.settings == self.live.load().settings.settings_for(name)
            {
                return Ok(false);
            }
        }
        let (plugin, _) = self.build(name, source, bytes, config_json).await?;
        self.install(Arc::new(plugin));
        Ok(true)
    }

    /// Compiles (off the event loop), checks the world and runs `init`: a plugin ready to
    /// install, and what the component imports and exports.
    async fn build(
        &self,
        name: &str,
        source: PluginSource,
        bytes: Vec<u8>,
        config_json: String,
    ) -> Result<(LoadedPlugin, PluginCheck), LoadError> {
        let (engine, linker) = (self.engine.clone(), self.linker.clone());
        let compiled = self
            .compiler
            .run(move || loader::compile(&engine, &linker, &bytes))
            .await
            .ok_or_else(|| LoadError::Compile("the compile thread panicked".into()))??;
        self.ensure_ticker();
        let shared = self.shared_for(name);
        let plugin = LoadedPlugin::new(shared, source, compiled.digest, config_json, compiled.pre);
        plugin
            .activate()
            .await
            .map_err(|e| LoadError::Activate(e.to_string()))?;
        let check = PluginCheck {
            contract: plugin.contract(),
            hooks: plugin.hooks(),
            imports: compiled.imports,
            exports: compiled.exports,
        };
        Ok((plugin, check))
    }

    /// Everything a load does, without serving: header, compile, world, `init` with the
    /// config beside the file. Returns the contract it targets, the hooks it declared and
    /// what it imports and exports.
    pub async fn check(&self, path: &Path) -> Result<PluginCheck, LoadError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        let bytes = loader::read(path)?;
        let config_json = self.config_json(&name, Some(path))?;
        let source = PluginSource::File(path.to_owned());
        let (_, check) = self.build(&name, source, bytes, config_json).await?;
        Ok(check)
    }

    /// Its clock: what its plugins read as time, their quarantine and their shared state's
    /// TTLs (with the `test-clock` feature, tests advance it: [`clock::Clock::advance`]).
    pub fn clock(&self) -> &clock::Clock {
        &self.clock
    }

    /// The shared state of the plugin with this name (created empty if it never ran). The
    /// same object serves every version of the plugin, so the host may keep it (the breaker's
    /// `/hystrix.stream` and metrics read it).
    pub fn shared_state(&self, name: &str) -> Arc<SharedState> {
        self.states
            .lock()
            .expect("states lock")
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(SharedState::new(self.clock.clone())))
            .clone()
    }

    fn shared_for(&self, name: &str) -> Arc<PluginShared> {
        // A version (`NAME@VERSION`) shares the state of `NAME`.
        let state = self.shared_state(canary::base(name));
        Arc::new(PluginShared {
            name: Arc::from(name),
            settings: self.live.load().settings.settings_for(name),
            state,
            kv: self.kv.clone(),
            metrics: self.metrics.clone(),
            outbound: self.outbound.clone(),
            outbound_guard: self.outbound_guard.clone(),
            clock: self.clock.clone(),
            held_slots: self.held_slots.clone(),
            exports_traces: self.settings.exports_traces,
        })
    }

    /// `[plugin.NAME]` from the main config, with `NAME.toml` beside the file on top.
    fn config_json(&self, name: &str, wasm: Option<&Path>) -> Result<String, LoadError> {
        let live = self.live.load();
        // A version (`NAME@VERSION`) takes `[plugin.NAME]`, with its own table on top.
        let base = canary::base(name);
        let mut table = if base == name {
            toml::Table::new()
        } else {
            live.plugin.get(base).cloned().unwrap_or_default()
        };
        table.extend(live.plugin.get(name).cloned().unwrap_or_default());
        let Some(wasm) = wasm else {
            return Ok(serde_json::to_string(&table).expect("TOML values serialize to JSON"));
        };
        let side = wasm.with_extension("toml");
        match std::fs::read_to_string(&side) {
            Ok(text) => {
                let file: toml::Table = toml::from_str(&text).map_err(|e| {
                    LoadError::Activate(format!("{}: {}", side.display(), e.message().trim()))
                })?;
                table.extend(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LoadError::Activate(format!("{}: {e}", side.display()))),
        }
        Ok(serde_json::to_string(&table).expect("TOML values serialize to JSON"))
    }

    /// Swaps a plugin into the active set. Requests in flight keep the old version.
    fn install(&self, plugin: Arc<LoadedPlugin>) {
        self.set.rcu(|set| {
            let mut plugins = set.plugins.clone();
            plugins.insert(plugin.name().clone(), plugin.clone());
            PluginSet { plugins }
        });
    }

    /// Removes a plugin from the active set.
    pub fn unload(&self, name: &str) {
        self.set.rcu(|set| {
            let mut plugins = set.plugins.clone();
            plugins.remove(name);
            PluginSet { plugins }
        });
        self.failures.lock().expect("failures lock").remove(name);
        tracing::info!(target: crate::LOG_TARGET, plugin = name, "plugin unloaded");
    }

    /// What `GET /admin/plugins` shows.
    pub fn views(&self) -> Vec<PluginView> {
        let set = self.current();
        let failures = self.failures.lock().expect("failures lock").clone();
        let mut views: Vec<PluginView> = set
            .plugins
            .values()
            .map(|p| {
                let stats = p.stats();
                let status = if stats.quarantined_for_s.is_some() {
                    "quarantined"
                } else {
                    "active"
                };
                PluginView {
                    name: p.name().to_string(),
                    status,
                    source: Some(p.source.clone()),
                    digest: Some(p.digest.clone()),
                    world: p.contract().world(),
                    contract: Some(p.contract()),
                    hooks: Some(p.hooks()),
                    instance_mode: Some(p.shared.settings.instance),
                    on_failure: Some(p.shared.settings.on_failure),
                    stats: Some(stats),
                    last_error: failures.get(&**p.name()).cloned(),
                    canary: self.metrics.canary.view(p.name()),
                }
            })
            .collect();
        for (name, failure) in failures {
            if set.get(&name).is_none() {
                let canary = self.metrics.canary.view(&name);
                views.push(PluginView {
                    name,
                    status: "failed",
                    source: Some(PluginSource::File(failure.path.clone())),
                    digest: None,
                    world: WORLD,
                    contract: None,
                    hooks: None,
                    instance_mode: None,
                    on_failure: None,
                    stats: None,
                    canary,
                    last_error: Some(failure),
                });
            }
        }
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Sweeps expired shared-state entries of every plugin.
    pub fn sweep_state(&self) {
        for state in self.states.lock().expect("states lock").values() {
            state.sweep();
        }
    }
}

/// What `sluice plugin check` reports of a plugin that loads.
#[derive(Debug)]
pub struct PluginCheck {
    /// The contract version it targets.
    pub contract: Contract,
    /// The hooks its `init` declared.
    pub hooks: loaded::Hooks,
    /// What the component imports.
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
}

/// One plugin on the admin API.
#[derive(Debug, Serialize)]
pub struct PluginView {
    name: String,
    /// `active`, `quarantined` or `failed`.
    status: &'static str,
    source: Option<PluginSource>,
    digest: Option<String>,
    world: &'static str,
    /// The contract version the plugin targets (`0.1.0` or `0.2.0`).
    contract: Option<Contract>,
    /// The hooks it implements (what its `init` declared; both for 0.1.0).
    hooks: Option<loaded::Hooks>,
    instance_mode: Option<InstanceMode>,
    on_failure: Option<FailurePolicy>,
    #[serde(flatten)]
    stats: Option<loaded::StatsView>,
    /// The last failed load of this name (the active version, if any, keeps serving).
    last_error: Option<LoadFailure>,
    /// Requests that ran this plugin through canary entries (`auth@v2:10%`), if any names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<canary::CanaryView>,
}

/// The path of `NAME.wasm` in the plugin directory.
fn dir_entry(dir: Option<&Path>, name: &str) -> PathBuf {
    dir.unwrap_or(Path::new(".")).join(format!("{name}.wasm"))
}

/// `NAME → path` of every `*.wasm` in the directory; a name that is not a regular file maps
/// to the reason it is refused.
fn plugin_files(dir: &Path) -> std::io::Result<BTreeMap<String, Result<PathBuf, String>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "wasm")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            let name = name.to_owned();
            // `file_type` does not follow symbolic links.
            let file = match sandbox::refuse_non_regular(entry.file_type()?) {
                Some(why) => Err(format!("{} {why}", path.display())),
                None => Ok(path),
            };
            files.insert(name, file);
        }
    }
    Ok(files)
}
