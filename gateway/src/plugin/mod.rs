//! The plugin runtime: WebAssembly components that implement `wit/plugin.wit`, loaded from a
//! directory (and hot-reloaded), run in a chain on each request and response.
//!
//! Module map: `bindings` (generated), `host` (imports and store data), `engine` (wasmtime set
//! up, epoch ticker, cache), `loader` (file → checked, compiled component), `loaded` (a plugin's
//! instance pool, limits and health), `state` and `kv` (host-side data plugins share),
//! `watcher` (directory watch), and this file: the set of active plugins and the chain.

pub mod bindings;
pub mod builtin;
pub mod canary;
mod compat;
pub mod compiler;
pub mod crypto;
pub mod digest;
pub mod engine;
pub mod extra;
pub mod host;
pub mod kv;
pub mod loaded;
pub mod loader;
pub mod log_stream;
pub mod metrics;
mod reconfigure;
pub mod sandbox;
pub mod state;
pub mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Linker;

use self::bindings::types;
use self::host::{HostState, PluginBody, PluginShared, PluginTrace, RequestState, ResponseState};
use self::kv::KvStore;
use self::loaded::{Contract, LoadedPlugin, PluginFailure, PluginSource, WORLD};
use self::loader::LoadError;
use self::metrics::PluginMetrics;
use self::state::SharedState;
use crate::body::ResponseBody;
use crate::config::{Config, FailurePolicy, PluginsConfig};
use crate::error::ProxyError;

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

/// What became of a request upstream, as `on-response` is told.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamOutcome {
    /// Why the gateway answered instead of the upstream, if it did.
    pub failure: Option<types::UpstreamFailure>,
    /// Whether the request went to (or was tried on) an upstream at all.
    pub attempted: bool,
}

/// The result of the request phase of a chain.
pub struct RequestChain {
    /// The request as the plugins left it.
    pub request: Box<RequestState>,
    /// Set when a plugin (or a plugin failure) answered instead of the upstream.
    pub response: Option<Response<ResponseBody>>,
    /// The error behind `response`, when the gateway made it (for the log).
    pub error: Option<ProxyError>,
    /// Plugins whose `on-request` ran and continued; their `on-response` runs in reverse.
    pub ran: Vec<Arc<LoadedPlugin>>,
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
    /// Per-node settings (`dir`, `watch`, `cache_dir`).
    settings: PluginsConfig,
    /// Settings a cluster configuration may replace at run time (`reconfigure`).
    live: ArcSwap<reconfigure::Live>,
    /// One reload at a time (watcher and admin API may both ask).
    reload_lock: tokio::sync::Mutex<()>,
    /// The epoch ticker starts before the first plugin code runs.
    ticker: std::sync::Once,
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
    pub fn new(config: &Config, metrics: Arc<PluginMetrics>) -> anyhow::Result<Self> {
        let cache_dir = match &config.plugins.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => {
                sandbox::prepare_cache_dir(dir).map_err(|e| anyhow::anyhow!(e))?;
                Some(dir.clone())
            }
            None => engine::default_cache_dir().filter(|dir| {
                // The default location is the user's own: refused, it only costs compile time.
                sandbox::prepare_cache_dir(dir)
                    .map_err(|e| tracing::warn!("compiled-plugin cache disabled: {e}"))
                    .is_ok()
            }),
        };
        let max_memory = config
            .plugins
            .overrides
            .keys()
            .map(|name| config.plugins.settings_for(name).max_memory_bytes)
            .chain([config.plugins.defaults.max_memory_bytes])
            .max()
            .unwrap_or_default();
        let engine = engine::build_engine(cache_dir, max_memory)?;
        let linker = Arc::new(engine::build_linker(&engine)?);
        let kv = match &config.kv.file {
            Some(file) => KvStore::open(file)?,
            None => KvStore::in_memory(),
        };
        Ok(Self {
            engine,
            linker,
            compiler: compiler::CompilePool::new(config.server.workers)?,
            set: ArcSwap::from_pointee(PluginSet::default()),
            failures: Mutex::default(),
            states: Mutex::default(),
            kv: Arc::new(kv),
            metrics,
            outbound: host::outbound_client(),
            outbound_guard: Arc::new(sandbox::OutboundGuard::new(config.server.admin)),
            settings: config.plugins.clone(),
            live: ArcSwap::from_pointee(reconfigure::Live::from_config(config)),
            reload_lock: tokio::sync::Mutex::new(()),
            ticker: std::sync::Once::new(),
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

    /// The active plugins.
    pub fn current(&self) -> Arc<PluginSet> {
        self.set.load_full()
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
                    tracing::error!(dir = %dir.display(), "cannot list the plugin directory: {e}");
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
        for (name, source) in &live.plugins.sources {
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
                && !live.plugins.sources.contains_key(&**name)
            {
                self.unload(name);
                report.unloaded.push(name.to_string());
            }
        }
        report
    }

    /// Loads (or keeps) the built-in plugin `name`, configured by `[plugin.NAME]`.
    async fn load_builtin(&self, name: &str) -> Result<bool, LoadError> {
        let bytes = builtin::get(name)
            .ok_or_else(|| LoadError::Read(format!("no built-in plugin {name}")))?;
        let config_json = self.config_json(name, None)?;
        let result = self
            .load_bytes(name, PluginSource::BuiltIn, bytes.to_vec(), config_json)
            .await;
        self.note_result(name, Path::new("<built-in>"), &result);
        result
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
                tracing::info!(plugin = name, source = %path.display(), "plugin loaded");
            }
            Ok(false) => {}
            Err(e) => {
                let serving = self.current().get(name).is_some();
                tracing::error!(
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
                        at_ms: state::unix_ms(),
                    },
                );
            }
        }
    }

    /// Starts the epoch ticker: no plugin code may run without it, since only the epoch
    /// deadline can stop a guest spinning in a loop.
    fn ensure_ticker(&self) {
        self.ticker
            .call_once(|| engine::spawn_epoch_ticker(&self.engine));
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
                && active.shared.settings == self.live.load().plugins.settings_for(name)
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

    /// The shared state of the plugin with this name (created empty if it never ran). The
    /// same object serves every version of the plugin, so the host may keep it (the breaker's
    /// `/hystrix.stream` and metrics read it).
    pub fn shared_state(&self, name: &str) -> Arc<SharedState> {
        self.states
            .lock()
            .expect("states lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn shared_for(&self, name: &str) -> Arc<PluginShared> {
        // A version (`NAME@VERSION`) shares the state of `NAME`.
        let state = self.shared_state(canary::base(name));
        Arc::new(PluginShared {
            name: Arc::from(name),
            settings: self.live.load().plugins.settings_for(name),
            state,
            kv: self.kv.clone(),
            metrics: self.metrics.clone(),
            outbound: self.outbound.clone(),
            outbound_guard: self.outbound_guard.clone(),
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
        tracing::info!(plugin = name, "plugin unloaded");
    }

    /// Runs the `on-request` chain of a route.
    pub async fn on_request(
        &self,
        set: &PluginSet,
        chain: &[String],
        mut request: Box<RequestState>,
    ) -> RequestChain {
        if chain.iter().any(|n| canary::base(n) == "auth") {
            for name in &self.live.load().identity_headers {
                request.parts.headers.remove(name);
            }
        }
        let mut ran = Vec::with_capacity(chain.len());
        for entry in chain {
            // A canary entry draws its version here, once: `ran` keeps the plugin that ran,
            // so the same version runs `on-response`.
            let name = canary::choose(entry, set, &self.metrics.canary);
            let Some(plugin) = set.get(name) else {
                let error = ProxyError::PluginUnavailable {
                    plugin: name.to_owned(),
                    reason: "is not loaded".into(),
                };
                let timer = request.trace.call_started();
                let name: Arc<str> = Arc::from(name);
                request
                    .trace
                    .call_finished(timer, &name, "on_request", "not_loaded");
                match self.live.load().plugins.settings_for(&name).on_failure {
                    FailurePolicy::FailClosed => return fail(request, error, ran),
                    FailurePolicy::FailOpen => {
                        self.metrics
                            .record_call(&name, "on_request", "skipped", 0.0);
                        continue;
                    }
                }
            };
            let hooks = plugin.hooks();
            if !hooks.on_request {
                // Never called (the plugin declared no `on-request`); its `on-response` runs.
                if hooks.on_response {
                    ran.push(plugin.clone());
                }
                continue;
            }
            request.body.visible = plugin.shared.settings.request_body;
            let timer = request.trace.call_started();
            let (req, result) = plugin.on_request(request).await;
            request = req;
            let outcome = match &result {
                Ok(types::Action::Continue) => "ok",
                Ok(types::Action::Respond(_)) => "respond",
                Err(failure) => failure.outcome(),
            };
            request
                .trace
                .call_finished(timer, plugin.name(), "on_request", outcome);
            request.body.visible = false;
            let failure = match result {
                Ok(types::Action::Continue) => {
                    // A plugin without `on-response` needs nothing on the way back.
                    if hooks.on_response {
                        ran.push(plugin.clone());
                    }
                    continue;
                }
                Ok(types::Action::Respond(answer)) => {
                    match plugin_response(answer, &plugin.shared.settings) {
                        Ok(response) => {
                            return RequestChain {
                                request,
                                response: Some(response),
                                error: None,
                                ran,
                            };
                        }
                        Err(reason) => PluginFailure::Error(reason),
                    }
                }
                Err(failure) => failure,
            };
            match plugin.shared.settings.on_failure {
                FailurePolicy::FailClosed => {
                    return fail(request, plugin_error(name, failure), ran);
                }
                FailurePolicy::FailOpen => self.skipped(plugin.name(), "on_request", &failure),
            }
        }
        RequestChain {
            request,
            response: None,
            error: None,
            ran,
        }
    }

    /// Runs `on-response` of the plugins that ran, in reverse order, telling them what became
    /// of the request upstream. Returns the response,
    /// the error that made it (if a plugin failed closed), and the request's trace as the
    /// plugins left it.
    pub async fn on_response(
        &self,
        ran: &[Arc<LoadedPlugin>],
        mut request: Box<RequestState>,
        response: Response<ResponseBody>,
        upstream: UpstreamOutcome,
    ) -> (Response<ResponseBody>, Option<ProxyError>, PluginTrace) {
        let (parts, body) = response.into_parts();
        // Every plugin that ran `on-request` gets its `on-response`, even once the answer has
        // become an error: plugins keep per-request resources (a bulkhead slot, a half-open
        // trial) until then. The first error is what the client gets.
        let mut failed: Option<ProxyError> = None;
        // A plugin that opted in to response bodies gets the body buffered (bounded by the
        // smallest `max_body_bytes` among them).
        let wanting = ran
            .iter()
            .filter(|p| p.shared.settings.response_body)
            .min_by_key(|p| p.shared.settings.max_body_bytes);
        let (parts, buffered, mut streaming) = match wanting {
            None => (parts, None, Some(body)),
            Some(plugin) => {
                let limit = plugin.shared.settings.max_body_bytes;
                match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
                    .await
                {
                    Ok(collected) => (parts, Some(collected.to_bytes()), None),
                    Err(e) => {
                        let error = ProxyError::PluginFailed {
                            plugin: plugin.name().to_string(),
                            reason: if e.is::<http_body_util::LengthLimitError>() {
                                format!("response body larger than max_body_bytes ({limit})")
                            } else {
                                format!("reading the response body: {e}")
                            },
                        };
                        let (parts, _) = error.to_response().into_parts();
                        failed = Some(error);
                        (parts, None, None)
                    }
                }
            }
        };
        let mut head = Box::new(ResponseState {
            parts,
            body: PluginBody::new(buffered),
            upstream_failure: upstream.failure,
            upstream_attempted: upstream.attempted,
        });
        for plugin in ran.iter().rev() {
            head.body.visible = plugin.shared.settings.response_body;
            let timer = request.trace.call_started();
            let (req, resp, result) = plugin.on_response(request, head).await;
            (request, head) = (req, resp);
            let outcome = result
                .as_ref()
                .map_or_else(PluginFailure::outcome, |()| "ok");
            request
                .trace
                .call_finished(timer, plugin.name(), "on_response", outcome);
            if let Err(failure) = result {
                match plugin.shared.settings.on_failure {
                    FailurePolicy::FailClosed if failed.is_none() => {
                        let error = plugin_error(plugin.name(), failure);
                        // The plugins still to run see the error answer.
                        head.parts = error.to_response().into_parts().0;
                        head.body = PluginBody::new(None);
                        streaming = None;
                        failed = Some(error);
                    }
                    FailurePolicy::FailClosed => {
                        tracing::warn!(
                            plugin = &**plugin.name(),
                            "on_response failed too: {failure}"
                        );
                    }
                    FailurePolicy::FailOpen => self.skipped(plugin.name(), "on_response", &failure),
                }
            }
        }
        if let Some(error) = failed {
            return (error.to_response(), Some(error), request.trace);
        }
        let body = match (head.body.bytes.take(), streaming.take()) {
            (Some(bytes), _) => {
                // The length changed, perhaps: hyper sets it from the new body.
                head.parts.headers.remove(http::header::CONTENT_LENGTH);
                head.parts.headers.remove(http::header::TRANSFER_ENCODING);
                ResponseBody::full(bytes)
            }
            (None, Some(body)) => body,
            (None, None) => ResponseBody::full(Bytes::new()),
        };
        (Response::from_parts(head.parts, body), None, request.trace)
    }

    /// A failed call of a fail-open plugin: logged, counted, and the request goes on.
    fn skipped(&self, plugin: &Arc<str>, phase: &'static str, failure: &PluginFailure) {
        tracing::warn!(
            plugin = &**plugin,
            phase,
            "plugin skipped (fail-open): {failure}"
        );
        self.metrics.record_call(plugin, phase, "skipped", 0.0);
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
    instance_mode: Option<crate::config::InstanceMode>,
    on_failure: Option<FailurePolicy>,
    #[serde(flatten)]
    stats: Option<loaded::StatsView>,
    /// The last failed load of this name (the active version, if any, keeps serving).
    last_error: Option<LoadFailure>,
    /// Requests that ran this plugin through canary entries (`auth@v2:10%`), if any names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<canary::CanaryView>,
}

fn fail(
    request: Box<RequestState>,
    error: ProxyError,
    ran: Vec<Arc<LoadedPlugin>>,
) -> RequestChain {
    RequestChain {
        request,
        response: Some(error.to_response()),
        error: Some(error),
        ran,
    }
}

fn plugin_error(name: &str, failure: PluginFailure) -> ProxyError {
    match failure {
        // Trap text (panic messages, wasm backtraces) may tell a client about the plugin's
        // internals or data: it goes to the log only.
        PluginFailure::Trap(text) => {
            tracing::warn!(plugin = name, "plugin trapped: {text}");
            ProxyError::PluginFailed {
                plugin: name.to_owned(),
                reason: "trapped (details in the gateway log)".into(),
            }
        }
        PluginFailure::Instantiate(text) => {
            tracing::warn!(plugin = name, "plugin instance could not start: {text}");
            ProxyError::PluginFailed {
                plugin: name.to_owned(),
                reason: "could not start an instance (details in the gateway log)".into(),
            }
        }
        PluginFailure::Quarantined => ProxyError::PluginUnavailable {
            plugin: name.to_owned(),
            reason: failure.to_string(),
        },
        other => ProxyError::PluginFailed {
            plugin: name.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// A response a plugin made (`action.respond`), checked: framing and hop-by-hop headers are
/// the gateway's, and its headers count against the call's caps.
fn plugin_response(
    answer: types::Response,
    settings: &crate::config::PluginSettings,
) -> Result<Response<ResponseBody>, String> {
    let mut added = sandbox::AddedHeaders::default();
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|_| (100..=599).contains(&answer.status))
        .ok_or_else(|| format!("answered with invalid status {}", answer.status))?;
    let mut response = Response::new(ResponseBody::full(Bytes::from(answer.body)));
    *response.status_mut() = status;
    for h in answer.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("answered with invalid header name `{}`", h.name))?;
        let value = HeaderValue::from_bytes(&h.value)
            .map_err(|_| format!("answered with an invalid value for header `{}`", h.name))?;
        sandbox::check_plugin_header(&name).map_err(|e| format!("answered with {e}"))?;
        added
            .admit(&name, value.len(), settings)
            .map_err(|e| format!("answered with {e}"))?;
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

/// The path of `NAME.wasm` in the plugin directory.
fn dir_entry(dir: Option<&Path>, name: &str) -> PathBuf {
    dir.unwrap_or(Path::new(".")).join(format!("{name}.wasm"))
}

/// The headers the built-in `auth` forwards claims in (`[plugin.auth] forward_claims`).
fn identity_headers(config: &Config) -> Vec<http::HeaderName> {
    let Some(claims) = config
        .plugin
        .get("auth")
        .and_then(|t| t.get("forward_claims"))
        .and_then(toml::Value::as_table)
    else {
        return Vec::new();
    };
    claims
        .values()
        .filter_map(toml::Value::as_str)
        .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        .collect()
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
