//! A loaded plugin: its pre-instantiated component, its pool of ready instances (or, per
//! request, the fresh instance held from `on-request` to `on-response`), the limits every call
//! runs under, and its health (failures, quarantine).
//!
//! Long (~780 lines) on purpose: the call path of one plugin (checkout, arm limits, call,
//! classify, hold or give back, quarantine) is read top to bottom in one place; splitting it
//! would scatter one request's call across files.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{types, v0_1, v0_2};
use super::held::Held;
use super::host::{HostState, PluginShared, RequestState, ResponseState};
use super::metrics::{OUTCOMES, PluginCallMetrics};
use super::ticker::{self, EPOCH_TICK};
use crate::settings::InstanceMode;

/// The world of the current contract, the one `sluice plugin new` and the SDK target.
pub const WORLD: &str = "sluice:plugin/plugin@0.2.0";

/// The contract versions the gateway serves, newest first.
pub const CONTRACTS: [Contract; 2] = [Contract::V0_2, Contract::V0_1];

/// The version of the plugin contract a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Contract {
    /// `sluice:plugin/plugin@0.1.0` (frozen in `wit/0.1.0/plugin.wit`).
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `sluice:plugin/plugin@0.2.0` (`wit/plugin.wit`).
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    /// `0.1.0` or `0.2.0`.
    pub fn version(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }

    /// The world's full name.
    pub fn world(self) -> &'static str {
        match self {
            Self::V0_1 => "sluice:plugin/plugin@0.1.0",
            Self::V0_2 => WORLD,
        }
    }
}

/// A pre-instantiated component of either contract version.
pub enum PluginPre {
    /// Built for 0.1.0.
    V0_1(v0_1::PluginPre<HostState>),
    /// Built for 0.2.0.
    V0_2(v0_2::PluginPre<HostState>),
}

impl PluginPre {
    /// The contract version the component targets.
    pub fn contract(&self) -> Contract {
        match self {
            Self::V0_1(_) => Contract::V0_1,
            Self::V0_2(_) => Contract::V0_2,
        }
    }

    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Self::V0_1(pre) => pre.engine(),
            Self::V0_2(pre) => pre.engine(),
        }
    }
}

/// The hooks a plugin implements (0.2.0 `init` returns them; a 0.1.0 plugin has both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hooks {
    /// It implements `on-request`.
    pub on_request: bool,
    /// It implements `on-response`.
    pub on_response: bool,
}

impl Hooks {
    /// Both hooks.
    pub const ALL: Self = Self {
        on_request: true,
        on_response: true,
    };

    fn from_wit(hooks: types::Hooks) -> Self {
        Self {
            on_request: hooks.contains(types::Hooks::ON_REQUEST),
            on_response: hooks.contains(types::Hooks::ON_RESPONSE),
        }
    }
}

/// An instantiated component of either contract version.
enum Bound {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

/// Longest quarantine, however often a plugin keeps failing.
const MAX_QUARANTINE: Duration = Duration::from_secs(300);

/// Where a plugin came from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "path")]
pub enum PluginSource {
    /// Embedded in the gateway binary.
    BuiltIn,
    /// A file in the plugin directory.
    File(PathBuf),
}

/// Why a plugin call did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginFailure {
    /// The plugin returned an error.
    #[error("returned an error: {0}")]
    Error(String),
    /// The guest trapped (panic, unreachable, out of memory...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The CPU deadline passed (epoch interruption).
    #[error("used more than its CPU time limit ({0:?})")]
    CpuTimeout(Duration),
    /// The wall-clock limit passed (including time in host calls).
    #[error("did not finish within its time limit ({0:?})")]
    Timeout(Duration),
    /// `init` refused the configuration.
    #[error("rejected its configuration: {0}")]
    ConfigRejected(String),
    /// The plugin is quarantined after repeated failures.
    #[error("is quarantined after repeated failures")]
    Quarantined,
    /// A fresh instance could not be set up.
    #[error("could not start an instance: {0}")]
    Instantiate(String),
}

impl PluginFailure {
    /// The `outcome` label in metrics.
    pub fn outcome(&self) -> &'static str {
        OUTCOMES[self.outcome_index()]
    }

    /// The index of [`Self::outcome`] in [`OUTCOMES`].
    fn outcome_index(&self) -> usize {
        match self {
            Self::Error(_) | Self::ConfigRejected(_) => 1,
            Self::Trap(_) | Self::Instantiate(_) => 2,
            Self::CpuTimeout(_) | Self::Timeout(_) => 3,
            Self::Quarantined => 4,
        }
    }
}

/// A ready instance.
struct Instance {
    store: Store<HostState>,
    plugin: Bound,
    uses: u64,
}

/// Counters shown on the admin API.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    failures: AtomicU64,
    nanos: AtomicU64,
    consecutive_failures: AtomicU32,
    quarantines: AtomicU32,
    /// Monotonic ns until which the plugin is quarantined; 0 = not.
    quarantined_until: AtomicU64,
}

/// What the admin API shows of a plugin's activity.
#[derive(Debug, Serialize)]
pub struct StatsView {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Total time in calls, in milliseconds.
    pub time_spent_ms: f64,
    /// Seconds of quarantine left, if quarantined.
    pub quarantined_for_s: Option<f64>,
    /// Instances ready in the pool.
    pub idle_instances: usize,
}

/// A plugin ready to serve.
pub struct LoadedPlugin {
    /// Shared with every instance: name, settings, state, kv, metrics.
    pub shared: Arc<PluginShared>,
    /// Where it came from.
    pub source: PluginSource,
    /// SHA-256 of the component bytes.
    pub digest: String,
    /// The configuration handed to `init`, as JSON.
    pub config_json: String,
    pre: PluginPre,
    /// What the first instance's `init` declared (until then: both).
    hooks: std::sync::OnceLock<Hooks>,
    pool: Mutex<Vec<Instance>>,
    stats: PluginStats,
    call_metrics: PluginCallMetrics,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.shared.name)
            .field("digest", &self.digest)
            .finish()
    }
}

/// The three exports.
#[derive(Clone, Copy)]
enum Phase {
    Init,
    OnRequest,
    OnResponse,
}

impl Phase {
    /// The index of this phase in [`PHASES`].
    fn index(self) -> usize {
        match self {
            Self::Init => 0,
            Self::OnRequest => 1,
            Self::OnResponse => 2,
        }
    }
}

impl LoadedPlugin {
    /// Wraps a pre-instantiated component. Call [`LoadedPlugin::activate`] before serving.
    pub fn new(
        shared: Arc<PluginShared>,
        source: PluginSource,
        digest: String,
        config_json: String,
        pre: PluginPre,
    ) -> Self {
        let call_metrics = shared.metrics.for_plugin(&shared.name);
        Self {
            shared,
            source,
            digest,
            config_json,
            pre,
            hooks: std::sync::OnceLock::new(),
            pool: Mutex::new(Vec::new()),
            stats: PluginStats::default(),
            call_metrics,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The contract version the plugin targets.
    pub fn contract(&self) -> Contract {
        self.pre.contract()
    }

    /// The hooks the plugin implements: the gateway calls no other.
    pub fn hooks(&self) -> Hooks {
        self.hooks.get().copied().unwrap_or(Hooks::ALL)
    }

    /// Sets up a first instance, which runs `init` with the config: a plugin whose config is
    /// rejected never serves. The instance is kept for the first request.
    pub async fn activate(&self) -> Result<(), PluginFailure> {
        let instance = self.instantiate().await?;
        self.give_back(instance);
        Ok(())
    }

    /// Runs `on-request`. Always gives the request back (also on failure, for fail-open).
    pub async fn on_request(
        &self,
        request: Box<RequestState>,
    ) -> (Box<RequestState>, Result<types::Action, PluginFailure>) {
        let started = Instant::now();
        let ready = match self.checkout(started, None) {
            Ok(Checkout::Ready(instance, call_started)) => Ok((instance, call_started)),
            Ok(Checkout::New(setup)) => setup.await,
            Err(e) => Err(e),
        };
        let (mut instance, call_started) = match ready {
            Ok(i) => i,
            Err(e) => {
                return (
                    request,
                    self.finish(Phase::OnRequest, started, None, Err(e)),
                );
            }
        };
        let timeout = self.shared.settings.timeout;
        prepare_call(
            &mut instance.store,
            self.shared.settings.cpu_timeout,
            call_started,
        );
        let borrowed = instance.store.data_mut().lend_request(request);
        let outcome = match &instance.plugin {
            Bound::V0_2(p) => {
                let call = std::pin::pin!(p.call_on_request(&mut instance.store, borrowed));
                within(timeout, call_started, call).await
            }
            Bound::V0_1(p) => {
                let call = std::pin::pin!(p.call_on_request(&mut instance.store, borrowed));
                within(timeout, call_started, call)
                    .await
                    .map(|r| r.map(|r| r.map(super::compat::action)))
            }
        };
        let mut request = instance.store.data_mut().take_request();
        let result = self
            .outcome(outcome, timeout)
            .and_then(|r| r.map_err(PluginFailure::Error));
        let instance = self.hold_for_response(&mut request, instance, &result);
        (
            request,
            self.finish(Phase::OnRequest, started, instance, result),
        )
    }

    /// `instance = "per-request"`: the fresh instance that ran `on-request` runs the same
    /// request's `on-response` too, so guest state lives exactly one request. It is kept in
    /// the request when the request goes on (the plugin continued and has an `on-response`)
    /// and the runtime holds fewer than `max_held_instances`; otherwise it is handed back
    /// (and dropped, as every per-request instance after its call).
    fn hold_for_response(
        &self,
        request: &mut RequestState,
        instance: Instance,
        result: &Result<types::Action, PluginFailure>,
    ) -> Option<Instance> {
        let keep = self.shared.settings.instance == InstanceMode::PerRequest
            && matches!(result, Ok(types::Action::Continue))
            && self.hooks().on_response;
        if !keep {
            return Some(instance);
        }
        match self.shared.held_slots.try_hold() {
            Some(slot) => {
                let owner = Arc::as_ptr(&self.shared) as usize;
                request.held.push(Held::new(owner, instance, slot));
                None
            }
            None => {
                self.call_metrics.held_fallback();
                Some(instance)
            }
        }
    }

    /// The instance this plugin's `on-request` kept in the request, if any; its slot is
    /// freed (it is now an instance in a call like any other).
    fn take_held(&self, request: &mut RequestState) -> Option<Instance> {
        // The last one: a plugin named twice on a route runs `on-response` in reverse order.
        // (Were only the first entry's instance held, past the cap, the second entry's
        // `on-response` would run on it and the first's on a fresh one.)
        let owner = Arc::as_ptr(&self.shared) as usize;
        let at = request.held.iter().rposition(|h| h.owner() == owner)?;
        request.held.remove(at).into_instance::<Instance>()
    }

    /// Runs `on-response`, on the instance this plugin's `on-request` held in the request if
    /// there is one. Always gives the request and response back.
    pub async fn on_response(
        &self,
        mut request: Box<RequestState>,
        response: Box<ResponseState>,
    ) -> (
        Box<RequestState>,
        Box<ResponseState>,
        Result<(), PluginFailure>,
    ) {
        let started = Instant::now();
        let held = self.take_held(&mut request);
        let ready = match self.checkout(started, held) {
            Ok(Checkout::Ready(instance, call_started)) => Ok((instance, call_started)),
            Ok(Checkout::New(setup)) => setup.await,
            Err(e) => Err(e),
        };
        let (mut instance, call_started) = match ready {
            Ok(i) => i,
            Err(e) => {
                return (
                    request,
                    response,
                    self.finish(Phase::OnResponse, started, None, Err(e)),
                );
            }
        };
        let timeout = self.shared.settings.timeout;
        prepare_call(
            &mut instance.store,
            self.shared.settings.cpu_timeout,
            call_started,
        );
        let data = instance.store.data_mut();
        let req = data.lend_request(request);
        let resp = data.lend_response(response);
        let outcome = match &instance.plugin {
            Bound::V0_2(p) => {
                let call = std::pin::pin!(p.call_on_response(&mut instance.store, req, resp));
                within(timeout, call_started, call).await
            }
            Bound::V0_1(p) => {
                let call = std::pin::pin!(p.call_on_response(&mut instance.store, req, resp));
                within(timeout, call_started, call).await
            }
        };
        let data = instance.store.data_mut();
        let request = data.take_request();
        let response = data.take_response();
        let result = self
            .outcome(outcome, timeout)
            .and_then(|r| r.map_err(PluginFailure::Error));
        (
            request,
            response,
            self.finish(Phase::OnResponse, started, Some(instance), result),
        )
    }

    /// A ready instance: the one held for this request, from the pool, or new. Fails while
    /// quarantined (a held instance is then dropped). With it, when the call it serves
    /// starts: `now` (the caller's clock reading) for a held or pooled instance, the end of
    /// set-up for a new one (its `init` does not count against the call's limits).
    /// One clock reading fewer per call: at ~35 ns each they were the largest host-side item
    /// of a pooled call's profile (docs/benchmarks.md, "The fixed cost of a plugin call").
    ///
    /// Not an `async fn`, and the rare set-up boxed: the future of a call is carried (and
    /// copied: rustc keeps an awaited future both as the callee's result and as the awaited
    /// value, so sizes double per level) by every future that awaits it, up to the request's
    /// plugin path. Set-up inline (instantiation and `init`) and the held instance kept as a
    /// future's argument more than doubled `on-request`'s future and the gateway's plugin
    /// steps, copied on every request (docs/benchmarks.md, "The plugin path through the
    /// gateway").
    fn checkout(
        &self,
        now: Instant,
        held: Option<Instance>,
    ) -> Result<Checkout<'_>, PluginFailure> {
        if self.quarantined() {
            return Err(PluginFailure::Quarantined);
        }
        if let Some(instance) = held {
            return Ok(Checkout::Ready(instance, now));
        }
        Ok(match self.take_pooled() {
            Some(i) => Checkout::Ready(i, now),
            None => Checkout::New(Box::pin(async {
                Ok((self.instantiate().await?, Instant::now()))
            })),
        })
    }

    fn outcome<T>(
        &self,
        outcome: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<T, PluginFailure> {
        match outcome {
            Err(_elapsed) => Err(PluginFailure::Timeout(timeout)),
            Ok(Err(e)) => Err(classify_trap(&e, self.shared.settings.cpu_timeout)),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// Returns a healthy instance to the pool (a trapped or timed-out one is dropped: a
    /// component that trapped cannot be re-entered), and records the call.
    fn finish<T>(
        &self,
        phase: Phase,
        started: Instant,
        instance: Option<Instance>,
        result: Result<T, PluginFailure>,
    ) -> Result<T, PluginFailure> {
        if let Some(mut instance) = instance {
            // A plugin that returned an error is healthy; traps and timeouts are not.
            if matches!(&result, Ok(_) | Err(PluginFailure::Error(_))) {
                // `max_uses` counts requests: the response phase of a request is not a new use.
                if matches!(phase, Phase::OnRequest) {
                    instance.uses += 1;
                }
                self.give_back(instance);
            }
        }
        self.record(phase, &result, started.elapsed());
        result
    }

    fn record<T>(&self, phase: Phase, result: &Result<T, PluginFailure>, elapsed: Duration) {
        let outcome = result
            .as_ref()
            .map_or_else(PluginFailure::outcome_index, |_| 0);
        self.call_metrics
            .record(phase.index(), outcome, elapsed.as_secs_f64());
        if matches!(result, Err(PluginFailure::Quarantined)) {
            return;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(_) => {
                // Written only when set: a store on every call would pull the cache line to
                // this worker on every request, away from the other workers calling the plugin.
                if self.stats.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.stats.consecutive_failures.store(0, Ordering::Relaxed);
                }
                if self.stats.quarantines.load(Ordering::Relaxed) != 0 {
                    self.stats.quarantines.store(0, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let failures = self
                    .stats
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                let threshold = self.shared.settings.quarantine_after;
                if threshold > 0 && failures >= threshold {
                    self.stats.consecutive_failures.store(0, Ordering::Relaxed);
                    let n = self.stats.quarantines.fetch_add(1, Ordering::Relaxed);
                    let period = self
                        .shared
                        .settings
                        .quarantine_for
                        .saturating_mul(1u32 << n.min(16))
                        .min(MAX_QUARANTINE);
                    self.stats.quarantined_until.store(
                        self.shared.clock.monotonic_ns() + period.as_nanos() as u64,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(target: crate::LOG_TARGET,
                        plugin = &*self.shared.name,
                        failures,
                        "plugin quarantined for {period:?} after repeated failures (last: {e})"
                    );
                }
            }
        }
    }

    fn quarantined(&self) -> bool {
        let until = self.stats.quarantined_until.load(Ordering::Relaxed);
        until != 0 && self.shared.clock.monotonic_ns() < until
    }

    fn take_pooled(&self) -> Option<Instance> {
        if self.shared.settings.instance == InstanceMode::PerRequest {
            return None;
        }
        self.pool.lock().expect("plugin pool lock").pop()
    }

    fn give_back(&self, instance: Instance) {
        let settings = &self.shared.settings;
        let worn_out = instance.uses >= settings.max_uses
            // Memory only grows; an instance that grew past half its cap is replaced
            // before it runs out.
            || instance.store.data().limiter.current() > settings.max_memory_bytes / 2;
        if settings.instance == InstanceMode::PerRequest || worn_out {
            return;
        }
        let mut pool = self.pool.lock().expect("plugin pool lock");
        if pool.len() < settings.max_idle_instances {
            pool.push(instance);
        }
    }

    /// A new instance with `init` already run.
    async fn instantiate(&self) -> Result<Instance, PluginFailure> {
        let started = Instant::now();
        let result = self.instantiate_inner().await;
        let outcome = result
            .as_ref()
            .map_or_else(PluginFailure::outcome_index, |_| 0);
        self.call_metrics.record(
            Phase::Init.index(),
            outcome,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    async fn instantiate_inner(&self) -> Result<Instance, PluginFailure> {
        let settings = &self.shared.settings;
        let mut store = Store::new(self.pre.engine(), HostState::new(self.shared.clone()));
        store.limiter(|s| &mut s.limiter);
        arm_cpu_deadline(&mut store, settings.cpu_timeout);
        prepare_call(&mut store, settings.cpu_timeout, Instant::now());
        let setup = async {
            match &self.pre {
                PluginPre::V0_2(pre) => {
                    let plugin = pre.instantiate_async(&mut store).await?;
                    let init = plugin.call_init(&mut store, &self.config_json).await?;
                    Ok::<_, wasmtime::Error>((Bound::V0_2(plugin), init.map(Hooks::from_wit)))
                }
                PluginPre::V0_1(pre) => {
                    let plugin = pre.instantiate_async(&mut store).await?;
                    let init = plugin.call_init(&mut store, &self.config_json).await?;
                    Ok((Bound::V0_1(plugin), init.map(|()| Hooks::ALL)))
                }
            }
        };
        let outcome = {
            let setup = std::pin::pin!(setup);
            tokio::time::timeout(settings.timeout, resumed_with_ticker(setup)).await
        };
        match outcome {
            Err(_) => Err(PluginFailure::Timeout(settings.timeout)),
            Ok(Err(e)) => Err(match classify_trap(&e, settings.cpu_timeout) {
                PluginFailure::Trap(m) => PluginFailure::Instantiate(m),
                other => other,
            }),
            Ok(Ok((_, Err(rejected)))) => Err(PluginFailure::ConfigRejected(rejected)),
            Ok(Ok((plugin, Ok(hooks)))) => {
                // The first instance's answer is the plugin's; later instances run the same
                // `init` on the same config.
                let _ = self.hooks.set(hooks);
                Ok(Instance {
                    store,
                    plugin,
                    uses: 0,
                })
            }
        }
    }

    /// The admin view of its activity.
    pub fn stats(&self) -> StatsView {
        let until = self.stats.quarantined_until.load(Ordering::Relaxed);
        let now = self.shared.clock.monotonic_ns();
        StatsView {
            calls: self.stats.calls.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            time_spent_ms: self.stats.nanos.load(Ordering::Relaxed) as f64 / 1e6,
            quarantined_for_s: (until > now).then(|| (until - now) as f64 / 1e9),
            idle_instances: self.pool.lock().expect("plugin pool lock").len(),
        }
    }
}

/// Runs a guest call under its wall-clock limit (counted from `started`). Most calls never
/// suspend (no async host call, no epoch yield): they finish on their first poll, and only a
/// call that does suspend pays for a timer. The call comes pinned where the caller made it:
/// taken by value, it would be moved in here and again to be pinned.
async fn within<F: Future>(
    limit: Duration,
    started: Instant,
    mut call: Pin<&mut F>,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Ok(output),
        // Boxed: the timer (~200 bytes) would otherwise sit in every call's future.
        Poll::Pending => {
            Box::pin(tokio::time::timeout_at(
                started + limit,
                resumed_with_ticker(call),
            ))
            .await
        }
    }
}

/// Polls a suspended guest call (or set-up), waking the epoch ticker before each resumption:
/// the ticker may have gone to sleep while the call waited (e.g. on outbound HTTP), and the
/// guest code that runs next must still meet its CPU deadline.
fn resumed_with_ticker<F: Future>(mut call: Pin<&mut F>) -> impl Future<Output = F::Output> {
    std::future::poll_fn(move |cx| {
        ticker::note_call();
        call.as_mut().poll(cx)
    })
}

/// Arms the limits of one call starting at `started`: resets the CPU accounting and sets the
/// epoch deadline.
fn prepare_call(store: &mut Store<HostState>, cpu_timeout: Duration, started: Instant) {
    let data = store.data_mut();
    data.host_time = Duration::ZERO;
    data.call_started = started;
    data.yielded_ns.store(0, Ordering::Relaxed);
    store.set_epoch_deadline(ticks(cpu_timeout).min(YIELD_EVERY_TICKS));
    ticker::note_call();
}

/// A call still running after this many epoch ticks yields to its worker's event loop, then
/// goes on: a plugin spinning until its CPU deadline must not stall the other requests of
/// the worker (each worker is a single-threaded event loop).
const YIELD_EVERY_TICKS: u64 = 1;

/// Installs, once per store, what happens when a call reaches its epoch deadline: past the
/// CPU deadline it traps; before, it yields to the event loop and goes on. The CPU deadline
/// counts only time in wasm: time in async host calls and time spent yielded are given back.
fn arm_cpu_deadline(store: &mut Store<HostState>, cpu_timeout: Duration) {
    store.epoch_deadline_callback(move |ctx| {
        let data = ctx.data();
        let yielded = Duration::from_nanos(data.yielded_ns.load(Ordering::Relaxed));
        let cpu = data
            .call_started
            .elapsed()
            .saturating_sub(data.host_time)
            .saturating_sub(yielded);
        if cpu >= cpu_timeout {
            return Ok(UpdateDeadline::Interrupt);
        }
        if cpu >= EPOCH_TICK {
            ticker::note_long_call();
        }
        let next = ticks(cpu_timeout - cpu).min(YIELD_EVERY_TICKS);
        let yielded_ns = data.yielded_ns.clone();
        // tokio's yield_now lets the worker poll its I/O driver before the call resumes, so
        // requests waiting on sockets get their turn.
        Ok(UpdateDeadline::YieldCustom(
            next,
            Box::pin(async move {
                let started = Instant::now();
                tokio::task::yield_now().await;
                yielded_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }),
        ))
    });
}

fn ticks(d: Duration) -> u64 {
    (d.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64
}

fn classify_trap(e: &wasmtime::Error, cpu_timeout: Duration) -> PluginFailure {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFailure::CpuTimeout(cpu_timeout),
        Some(trap) => PluginFailure::Trap(trap.to_string()),
        None => PluginFailure::Trap(format!("{e:#}")),
    }
}

/// What [`LoadedPlugin::checkout`] found: a ready instance and when its call starts, or the
/// set-up of a new one (boxed, see there).
enum Checkout<'a> {
    Ready(Instance, Instant),
    New(Setup<'a>),
}

/// Setting up a new instance: the instance and when its call starts (after `init`).
type Setup<'a> =
    Pin<Box<dyn Future<Output = Result<(Instance, Instant), PluginFailure>> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a call returns, without making the call.
    fn future_size_of<F: Future, A>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every future that awaits a plugin call carries the call's future (the chain's, the
    /// gateway's plugin steps, which are boxed per request): an instance's set-up, a held
    /// instance kept as an argument and a timer inline made `on-request`'s future 1.9 KB in a
    /// test build (0.8 KB since); they are boxed or kept out of the future now.
    #[test]
    fn the_call_futures_stay_small() {
        let on_request =
            future_size_of(|(p, r): (&'static LoadedPlugin, Box<RequestState>)| p.on_request(r));
        type Out = (&'static LoadedPlugin, Box<RequestState>, Box<ResponseState>);
        let on_response = future_size_of(|(p, r, s): Out| p.on_response(r, s));
        assert!(
            on_request <= 1536,
            "on_request's future is {on_request} bytes"
        );
        assert!(
            on_response <= 1536,
            "on_response's future is {on_response} bytes"
        );
    }
}
