//! The gateway's built-in circuit breaker, with Netflix Hystrix's semantics: a rolling window
//! of outcomes per command, the circuit opens at `request_volume_threshold` requests and
//! `error_threshold_percent` errors, short-circuits for `sleep_window`, then lets exactly
//! `half_open_requests` trials through; a per-command upstream timeout and a bulkhead
//! (`max_concurrent_requests`). Every counter and the circuit itself live in the host's shared
//! state, so every pooled instance and every worker sees one circuit per command.
//!
//! The state key layout is a contract with the gateway, which reads it to serve
//! `/hystrix.stream` and the breaker metrics: see README.md and [`keys`].
//!
//! Long (~650 lines before its tests): Hystrix's state machine (closed → open → half-open),
//! the bulkhead and the rolling window are one plugin's request path, read top to bottom.

pub mod config;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::json;
use sluice_plugin_sdk::host::{self, Level};
use sluice_plugin_sdk::{
    Action, Config, Error, Plugin, Request, Response, ResponseHead, UpstreamFailure, state,
};

use crate::config::{BreakerConfig, CommandKey, Settings};

/// Shared-state keys and values (`C` is the command name): the `breaker-keys` crate, which the
/// gateway's `hystrix.rs` reads them with.
pub use breaker_keys as keys;

/// The plugin.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    /// The commands this instance has seen, by route: found with one map lookup per request
    /// (no command name built, no settings looked up again).
    routes: RefCell<HashMap<String, Rc<RouteCommands>>>,
    /// The state batch of each phase, its key buffers kept from request to request.
    batch: RefCell<state::Batch>,
    /// The ticket's text, written into the same buffer on every request.
    ticket: RefCell<String>,
}

/// A route's settings and the commands met on it, one per normalised method (or one for the
/// whole route with `command_key = "route"`). Bounded: route names come from the gateway's
/// configuration and methods are normalised, so a client cannot mint entries.
#[derive(Debug)]
struct RouteCommands {
    settings: Rc<Settings>,
    /// Indexed by [`method_slot`]; slot 0 only with `command_key = "route"`.
    commands: RefCell<[Option<Rc<Command>>; METHODS.len() + 2]>,
}

/// One command as this instance knows it.
#[derive(Debug)]
struct Command {
    /// `ROUTE METHOD` or `ROUTE`.
    name: String,
    settings: Rc<Settings>,
    /// Health counts last computed (this instance's cache).
    health: Cell<Option<Health>>,
}

/// Health counts of the rolling window, as Hystrix's `HealthCounts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// When they were computed (monotonic ms).
    pub at_ms: u64,
    /// SUCCESS + FAILURE + TIMEOUT + SEMAPHORE_REJECTED.
    pub total: u64,
    /// FAILURE + TIMEOUT + SEMAPHORE_REJECTED.
    pub errors: u64,
}

impl Health {
    /// `(int)(errors / total * 100)`, as Hystrix truncates it.
    pub fn error_percent(&self) -> u64 {
        (self.errors * 100).checked_div(self.total).unwrap_or(0)
    }

    fn trips(&self, s: &Settings) -> bool {
        self.total >= s.request_volume_threshold
            && self.error_percent() >= s.error_threshold_percent
    }
}

/// What `on_request` attached to the request for `on_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ticket<'a> {
    start_ns: u64,
    /// The lease period the request was admitted in by the bulkhead, if there is one.
    admitted: Option<u64>,
    /// A half-open trial for the open period that started at this time.
    trial: Option<u64>,
    /// The normalised method, or `*` with `command_key = "route"`.
    method: &'a str,
    route: &'a str,
}

impl<'a> Ticket<'a> {
    /// `START ADMITTED TRIAL METHOD ROUTE`, `-` for an absent number, written into `out`
    /// (emptied first; without `format!` and without allocating once `out` has grown: this
    /// runs on every request).
    fn encode_into(&self, out: &mut String) {
        out.clear();
        let mut number = itoa::Buffer::new();
        out.push_str(number.format(self.start_ns));
        for value in [self.admitted, self.trial] {
            out.push(' ');
            match value {
                Some(v) => out.push_str(number.format(v)),
                None => out.push('-'),
            }
        }
        out.push(' ');
        out.push_str(self.method);
        out.push(' ');
        out.push_str(self.route);
    }

    #[cfg(test)]
    fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    /// Reads a ticket; its method and route borrow from `bytes`.
    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(5, ' ');
        let start_ns = parts.next()?.parse().ok()?;
        let opt = |s: &str| -> Option<Option<u64>> {
            if s == "-" {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        let admitted = opt(parts.next()?)?;
        let trial = opt(parts.next()?)?;
        let method = parts.next()?;
        let route = parts.next()?;
        Some(Self {
            start_ns,
            admitted,
            trial,
            method,
            route,
        })
    }
}

/// Methods outside this list count as `OTHER`, so a client cannot mint commands.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The command a request on `route` with `method` belongs to.
pub fn command_name(settings: &Settings, route: &str, method: &str) -> String {
    match settings.command_key {
        CommandKey::Route => route.to_owned(),
        CommandKey::RouteMethod => {
            let method = normalize_method(method);
            let mut name = String::with_capacity(route.len() + 1 + method.len());
            name.push_str(route);
            name.push(' ');
            name.push_str(method);
            name
        }
    }
}

fn normalize_method(method: &str) -> &'static str {
    method_slot(method).1
}

/// Where a method's command sits in [`RouteCommands::commands`] (1 + its place in
/// [`METHODS`], the last slot for `OTHER`), and its normalised name.
fn method_slot(method: &str) -> (usize, &'static str) {
    match METHODS.iter().position(|m| *m == method) {
        Some(i) => (i + 1, METHODS[i]),
        None => (METHODS.len() + 1, "OTHER"),
    }
}

enum Circuit {
    Closed(Option<Vec<u8>>),
    Open { opened_at: u64 },
}

fn read_circuit(cmd: &str) -> Circuit {
    parse_circuit(state::get(&keys::circuit(cmd)))
}

fn parse_circuit(value: Option<Vec<u8>>) -> Circuit {
    match value {
        Some(raw) => match keys::parse_open(&raw) {
            Some(opened_at) => Circuit::Open { opened_at },
            None => Circuit::Closed(Some(raw)),
        },
        None => Circuit::Closed(None),
    }
}

/// The close time in a `closed:T` circuit value.
fn closed_at(raw: &Option<Vec<u8>>) -> u64 {
    raw.as_deref().and_then(keys::parse_closed).unwrap_or(0)
}

/// How long an `inflight` counter lives: its own period and the next, plus a margin, so it
/// outlives every request that may still give its place back.
fn inflight_ttl(lease_ms: u64) -> u64 {
    lease_ms.saturating_mul(2).saturating_add(1000)
}

fn bucket_ttl(s: &Settings) -> Option<u64> {
    Some(s.rolling_window_ms + s.bucket_ms())
}

fn count(cmd: &str, s: &Settings, now_ms: u64, kind: &str) {
    let key = keys::count(cmd, now_ms / s.bucket_ms(), kind);
    if let Err(e) = state::incr(&key, 1, bucket_ttl(s)) {
        host::log(Level::Warn, &format!("breaker: counting {key}: {e}"));
    }
}

fn transition(cmd: &str, to: &str) {
    let _ = state::incr(&keys::transitions(cmd, to), 1, None);
    let level = if to == keys::TO_OPEN {
        Level::Warn
    } else {
        Level::Info
    };
    host::log(level, &format!("breaker: circuit `{cmd}` is now {to}"));
}

/// A counter's value as stored; absent, unreadable or (transiently) negative counts as 0.
fn counter_value(value: Option<&[u8]>) -> u64 {
    value.map_or(0, keys::parse_counter)
}

/// The value read by a `get` of a batch.
fn got(result: Option<&state::OpResult>) -> Option<&[u8]> {
    match result {
        Some(state::OpResult::Get(value)) => value.as_deref(),
        _ => None,
    }
}

/// The value read by a `get` of a batch, taken out of its result.
fn take_got(result: Option<&mut state::OpResult>) -> Option<Vec<u8>> {
    match result {
        Some(state::OpResult::Get(value)) => value.take(),
        _ => None,
    }
}

/// Sums the rolling window's buckets (the current one and the `rolling_buckets - 1` before),
/// read in batches of `state::apply` (one host call for a 10-bucket window).
pub fn read_health(cmd: &str, s: &Settings, now_ms: u64) -> Health {
    let current = now_ms / s.bucket_ms();
    let kinds = [keys::SUCCESS, keys::FAILURE, keys::TIMEOUT, keys::REJECTED];
    let counters: Vec<(String, bool)> = (current.saturating_sub(s.rolling_buckets - 1)..=current)
        .flat_map(|bucket| {
            kinds
                .iter()
                .map(move |kind| (keys::count(cmd, bucket, kind), *kind != keys::SUCCESS))
        })
        .collect();
    let mut total = 0;
    let mut errors = 0;
    for chunk in counters.chunks(state::MAX_BATCH) {
        let ops: Vec<state::Op<'_>> = chunk.iter().map(|(key, _)| state::Op::Get(key)).collect();
        let results = state::apply(&ops);
        for ((_, is_error), result) in chunk.iter().zip(&results) {
            let n = counter_value(got(Some(result)));
            total += n;
            if *is_error {
                errors += n;
            }
        }
    }
    Health {
        at_ms: now_ms,
        total,
        errors,
    }
}

/// Deletes the rolling window's buckets (Hystrix resets the metrics when a circuit closes).
fn reset_window(cmd: &str, s: &Settings, now_ms: u64) {
    let current = now_ms / s.bucket_ms();
    for bucket in current.saturating_sub(s.rolling_buckets)..=current {
        for kind in keys::KINDS {
            state::delete(&keys::count(cmd, bucket, kind));
        }
    }
}

/// What the bulkhead said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Admitted in this lease period.
    Taken(u64),
    /// Full: nothing was kept.
    Full,
}

/// The circuit as read, and the bulkhead place taken in the same step.
struct Entry {
    circuit: Circuit,
    /// `None` when the bulkhead is off.
    place: Option<Place>,
}

/// Writes `cmd|C`, so the gateway knows the command and its settings (once per instance and
/// command: see [`Breaker::command`]). `method` is normalised, or `*`.
fn announce(cmd: &str, route: &str, method: &str, s: &Settings) {
    let record = keys::CommandRecord {
        name: cmd.to_owned(),
        group: s.group.as_deref().unwrap_or(route).to_owned(),
        route: route.to_owned(),
        method: method.to_owned(),
        request_volume_threshold: s.request_volume_threshold,
        error_threshold_percent: s.error_threshold_percent,
        sleep_window_ms: s.sleep_window_ms,
        rolling_window_ms: s.rolling_window_ms,
        rolling_buckets: s.rolling_buckets,
        timeout_ms: s.timeout_ms,
        max_concurrent_requests: s.max_concurrent_requests,
        lease_ms: s.lease_ms(),
        half_open_requests: s.half_open_requests,
        force_open: s.force_open,
        force_closed: s.force_closed,
        fallback: s.fallback.is_some(),
    };
    let record = serde_json::to_string(&record).expect("a command record serialises");
    state::set(&keys::command(cmd), record, None);
}

impl Breaker {
    /// The command a request on `route` belongs to, and the method to write in its ticket
    /// (normalised; `*` when the command is the whole route). `method` (its [`method_slot`])
    /// is asked for only when the route's commands are per method. A command this instance
    /// meets for the first time is announced (its `cmd|C` record written).
    fn command(
        &self,
        route: &str,
        method: impl FnOnce() -> (usize, &'static str),
    ) -> (Rc<Command>, &'static str) {
        let found = self.routes.borrow().get(route).cloned();
        let commands = found.unwrap_or_else(|| {
            let commands = Rc::new(RouteCommands {
                settings: Rc::clone(self.config.for_route(route)),
                commands: RefCell::default(),
            });
            self.routes
                .borrow_mut()
                .insert(route.to_owned(), Rc::clone(&commands));
            commands
        });
        let s = &commands.settings;
        let (slot, method) = match s.command_key {
            CommandKey::Route => (0, "*"),
            CommandKey::RouteMethod => method(),
        };
        if let Some(command) = &commands.commands.borrow()[slot] {
            return (Rc::clone(command), method);
        }
        let command = Rc::new(Command {
            name: command_name(s, route, method),
            settings: Rc::clone(s),
            health: Cell::new(None),
        });
        announce(&command.name, route, method, s);
        commands.commands.borrow_mut()[slot] = Some(Rc::clone(&command));
        (command, method)
    }

    /// The (cached) health counts of a command; recomputed when older than
    /// `health_snapshot_interval` or older than the circuit's last close.
    fn health(&self, command: &Command, now_ms: u64, closed_at: u64) -> Health {
        let s = &command.settings;
        if let Some(h) = command.health.get()
            && now_ms.saturating_sub(h.at_ms) < s.health_snapshot_interval_ms
            && h.at_ms > closed_at
        {
            return h;
        }
        let h = read_health(&command.name, s, now_ms);
        command.health.set(Some(h));
        h
    }

    /// Reads the circuit and, when the bulkhead is on, takes a place in it, in one atomic
    /// `state::apply`: an `incr` of the counter of the current lease period and a `get` of the
    /// period before (whose requests may still run); older periods have outlived their lease.
    /// One counter, however large the bulkhead. The place is taken before the circuit is
    /// looked at (so the common case, a closed circuit and room, is one host call); a request
    /// that does not go on gives it back with [`Self::give_back`].
    fn read_circuit_and_enter(&self, cmd: &str, s: &Settings, now_ms: u64) -> Result<Entry, Error> {
        if s.max_concurrent_requests == 0 {
            return Ok(Entry {
                circuit: read_circuit(cmd),
                place: None,
            });
        }
        let lease = s.lease_ms();
        let period = now_ms / lease;
        let ttl = Some(inflight_ttl(lease));
        let mut results = {
            let mut batch = self.batch.borrow_mut();
            batch.clear();
            batch.get(|key| keys::circuit_into(key, cmd));
            batch.incr(1, ttl, |key| keys::inflight_into(key, cmd, period));
            if let Some(before) = period.checked_sub(1) {
                batch.get(|key| keys::inflight_into(key, cmd, before));
            }
            batch.apply()
        };
        let circuit = parse_circuit(take_got(results.first_mut()));
        let mine = match results.get(1) {
            Some(state::OpResult::Incr(Ok(n))) => (*n).max(0) as u64,
            Some(state::OpResult::Incr(Err(e))) => return Err(e.clone()),
            _ => return Err(Error::new("breaker: state.apply returned too few results")),
        };
        let before = counter_value(got(results.get(2)));
        let place = if mine + before > s.max_concurrent_requests {
            state::incr(&keys::inflight(cmd, period), -1, ttl)?;
            Place::Full
        } else {
            Place::Taken(period)
        };
        Ok(Entry {
            circuit,
            place: Some(place),
        })
    }

    /// Gives back a place taken by [`Self::read_circuit_and_enter`] for a request that does
    /// not go on (short-circuited).
    fn give_back(&self, cmd: &str, s: &Settings, entry: &Entry) {
        if let Some(Place::Taken(period)) = entry.place {
            let lease = s.lease_ms();
            let _ = state::incr(&keys::inflight(cmd, period), -1, Some(inflight_ttl(lease)));
        }
    }

    /// Gives a bulkhead place back, unless its lease period is over (it no longer counts).
    fn leave_bulkhead(&self, cmd: &str, s: &Settings, period: u64, now_ms: u64) {
        let lease = s.lease_ms();
        if now_ms / lease <= period + 1 {
            let _ = state::incr(&keys::inflight(cmd, period), -1, Some(inflight_ttl(lease)));
        }
    }

    fn short_circuit(&self, cmd: &str, s: &Settings, now_ms: u64, retry_after_ms: u64) -> Action {
        count(cmd, s, now_ms, keys::SHORT_CIRCUITED);
        let retry_after_s = retry_after_ms.div_ceil(1000).max(1);
        if let Some(fallback) = &s.fallback {
            count(cmd, s, now_ms, keys::FALLBACK);
            return Action::Respond(fallback_response(fallback, "open"));
        }
        Action::Respond(
            Response::new(503)
                .header("content-type", "application/json")
                .header("cache-control", "no-store")
                .header("retry-after", retry_after_s.to_string())
                .header("x-sluice-breaker", "open")
                .body(
                    json!({
                        "error": "circuit_open",
                        "command": cmd,
                        "retry_after_s": retry_after_s,
                    })
                    .to_string()
                        + "\n",
                ),
        )
    }

    fn reject(&self, cmd: &str, s: &Settings, now_ms: u64) -> Action {
        count(cmd, s, now_ms, keys::REJECTED);
        if let Some(fallback) = &s.fallback {
            count(cmd, s, now_ms, keys::FALLBACK);
            return Action::Respond(fallback_response(fallback, "rejected"));
        }
        Action::Respond(
            Response::new(503)
                .header("content-type", "application/json")
                .header("cache-control", "no-store")
                .header("retry-after", "1")
                .header("x-sluice-breaker", "rejected")
                .body(
                    json!({
                        "error": "bulkhead_full",
                        "command": cmd,
                        "max_concurrent_requests": s.max_concurrent_requests,
                    })
                    .to_string()
                        + "\n",
                ),
        )
    }

    /// A half-open trial ended: the first outcome of the open period decides.
    fn end_trial(&self, command: &Command, opened_at: u64, success: bool, now_ms: u64) {
        let (cmd, s) = (command.name.as_str(), &*command.settings);
        let expected = keys::open_value(opened_at);
        if success {
            // The window is cleared before the circuit closes: once it reads closed, another
            // instance may recompute health, and must not see the failures that opened it.
            // (While it is open nobody reads the window, so clearing early is harmless.)
            reset_window(cmd, s, now_ms);
            let closed = keys::closed_value(now_ms);
            if state::compare_and_swap(
                &keys::circuit(cmd),
                Some(expected.as_bytes()),
                Some(closed.as_bytes()),
                None,
            ) {
                state::delete(&keys::trial(cmd, opened_at));
                command.health.set(None);
                transition(cmd, keys::TO_CLOSED);
            }
        } else {
            let reopened = keys::open_value(now_ms);
            if state::compare_and_swap(
                &keys::circuit(cmd),
                Some(expected.as_bytes()),
                Some(reopened.as_bytes()),
                None,
            ) {
                state::delete(&keys::trial(cmd, opened_at));
                transition(cmd, keys::TO_OPEN);
            }
        }
    }
}

fn fallback_response(fallback: &config::Fallback, why: &str) -> Response {
    let mut response = Response::new(fallback.status);
    for (name, value) in &fallback.headers {
        response = response.header(name, value);
    }
    response
        .header("x-sluice-breaker", why)
        .body(fallback.body.clone())
}

impl Plugin for Breaker {
    fn init(config: Config) -> Result<Self, Error> {
        let config = BreakerConfig::parse(config.value()).map_err(Error::new)?;
        Ok(Self {
            config,
            routes: RefCell::default(),
            batch: RefCell::default(),
            ticket: RefCell::default(),
        })
    }

    fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
        let route = request.route();
        let (command, method) = self.command(&route, || method_slot(&request.method()));
        let (cmd, s) = (command.name.as_str(), &*command.settings);
        let now_ns = host::monotonic_ns();
        let now_ms = now_ns / 1_000_000;

        if s.force_open {
            return Ok(self.short_circuit(cmd, s, now_ms, s.sleep_window_ms));
        }
        let entry = self.read_circuit_and_enter(cmd, s, now_ms)?;
        let mut trial = None;
        if !s.force_closed {
            let short = match &entry.circuit {
                Circuit::Open { opened_at, .. } => {
                    let opened_at = *opened_at;
                    let ends = opened_at.saturating_add(s.sleep_window_ms);
                    if now_ms <= ends {
                        Some(ends - now_ms + 1)
                    } else {
                        // Half-open: the first `half_open_requests` callers win.
                        let n = match state::incr(
                            &keys::trial(cmd, opened_at),
                            1,
                            Some(s.lease_ms()),
                        ) {
                            Ok(n) => n,
                            Err(e) => {
                                self.give_back(cmd, s, &entry);
                                return Err(e);
                            }
                        };
                        if n == 1 {
                            transition(cmd, keys::TO_HALF_OPEN);
                        }
                        if n > s.half_open_requests as i64 {
                            Some(1000)
                        } else {
                            trial = Some(opened_at);
                            None
                        }
                    }
                }
                Circuit::Closed(raw) => {
                    let health = self.health(&command, now_ms, closed_at(raw));
                    if !health.trips(s) {
                        None
                    } else {
                        let open = keys::open_value(now_ms);
                        if state::compare_and_swap(
                            &keys::circuit(cmd),
                            raw.as_deref(),
                            Some(open.as_bytes()),
                            None,
                        ) {
                            host::log(
                                Level::Warn,
                                &format!(
                                    "breaker: `{cmd}`: {} % errors in {} requests",
                                    health.error_percent(),
                                    health.total
                                ),
                            );
                            transition(cmd, keys::TO_OPEN);
                            Some(s.sleep_window_ms + 1)
                        } else if let Circuit::Open { opened_at, .. } = read_circuit(cmd) {
                            // Another caller changed the circuit first: follow what it did.
                            let ends = opened_at.saturating_add(s.sleep_window_ms);
                            Some(ends.saturating_sub(now_ms) + 1)
                        } else {
                            None
                        }
                    }
                }
            };
            if let Some(retry_after_ms) = short {
                self.give_back(cmd, s, &entry);
                return Ok(self.short_circuit(cmd, s, now_ms, retry_after_ms));
            }
        }

        let admitted = match entry.place {
            None => None,
            Some(Place::Taken(period)) => Some(period),
            Some(Place::Full) => {
                if let Some(opened_at) = trial {
                    self.end_trial(&command, opened_at, false, now_ms);
                }
                return Ok(self.reject(cmd, s, now_ms));
            }
        };
        if s.timeout_ms > 0 {
            request.set_upstream_timeout(std::time::Duration::from_millis(s.timeout_ms));
        }
        let mut text = self.ticket.borrow_mut();
        Ticket {
            start_ns: now_ns,
            admitted,
            trial,
            method,
            route: &route,
        }
        .encode_into(&mut text);
        request.set_plugin_data(text.as_bytes())?;
        Ok(Action::Continue)
    }

    fn on_response(&self, request: &Request<'_>, response: &ResponseHead<'_>) -> Result<(), Error> {
        let data = request.plugin_data();
        let Some(ticket) = data.as_deref().and_then(Ticket::decode) else {
            return Ok(());
        };
        let (command, _) = self.command(ticket.route, || method_slot(ticket.method));
        let (cmd, s) = (command.name.as_str(), &*command.settings);
        if !response.upstream_attempted() {
            // A later plugin answered (or the gateway refused the request): the upstream says
            // nothing about the command. Give the bulkhead place back; count nothing; a
            // half-open trial stays undecided until its lease lets another caller try.
            if let Some(period) = ticket.admitted {
                let now_ms = host::monotonic_ns() / 1_000_000;
                self.leave_bulkhead(cmd, s, period, now_ms);
            }
            return Ok(());
        }
        let kind = match response.upstream_failure() {
            Some(UpstreamFailure::TimedOut) => keys::TIMEOUT,
            Some(_) => keys::FAILURE,
            None if s.error_statuses.contains(response.status()) => keys::FAILURE,
            None => keys::SUCCESS,
        };
        let now_ns = host::monotonic_ns();
        let now_ms = now_ns / 1_000_000;
        // One atomic batch: the outcome (counted first, as Hystrix does, so a closing trial's
        // own success is cleared with the window), the bulkhead place given back (unless its
        // lease period is over: it no longer counts), the latency. A failed step fails only
        // itself. The trial's decision comes after, as others wait on it.
        let latency_us = now_ns.saturating_sub(ticket.start_ns) / 1000;
        let pbucket = now_ms / keys::PERCENTILE_BUCKET_MS;
        let index = keys::latency_index(latency_us);
        let latency_ttl = Some(keys::PERCENTILE_BUCKET_MS * (keys::PERCENTILE_BUCKETS + 1));
        let bucket = now_ms / s.bucket_ms();
        let lease = s.lease_ms();
        let results = {
            let mut batch = self.batch.borrow_mut();
            batch.clear();
            batch.incr(1, bucket_ttl(s), |key| {
                keys::count_into(key, cmd, bucket, kind)
            });
            if let Some(period) = ticket
                .admitted
                .filter(|&period| now_ms / lease <= period + 1)
            {
                batch.incr(-1, Some(inflight_ttl(lease)), |key| {
                    keys::inflight_into(key, cmd, period)
                });
            }
            batch.incr(1, latency_ttl, |key| {
                keys::latency_into(key, cmd, pbucket, index)
            });
            batch.incr(
                i64::try_from(latency_us).unwrap_or(i64::MAX),
                latency_ttl,
                |key| keys::latency_sum_into(key, cmd, pbucket),
            );
            batch.apply()
        };
        if let Some(state::OpResult::Incr(Err(e))) = results.first() {
            let key = keys::count(cmd, bucket, kind);
            host::log(Level::Warn, &format!("breaker: counting {key}: {e}"));
        }
        if let Some(opened_at) = ticket.trial {
            self.end_trial(&command, opened_at, kind == keys::SUCCESS, now_ms);
        }
        let latency_results = &results[results.len().saturating_sub(2)..];
        for result in latency_results {
            if let state::OpResult::Incr(Err(e)) = result {
                return Err(e.clone());
            }
        }
        Ok(())
    }
}

sluice_plugin_sdk::export_plugin!(Breaker);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trips_with_spaces_in_the_route() {
        let t = Ticket {
            start_ns: 42,
            admitted: Some(3),
            trial: None,
            method: "GET",
            route: "my route",
        };
        assert_eq!(t.encode(), "42 3 - GET my route");
        let encoded = t.encode();
        assert_eq!(Ticket::decode(encoded.as_bytes()), Some(t.clone()));
        let extremes = Ticket {
            start_ns: u64::MAX,
            admitted: None,
            trial: Some(0),
            method: "OTHER",
            route: "r",
        };
        let encoded = extremes.encode();
        assert_eq!(Ticket::decode(encoded.as_bytes()), Some(extremes));
        // The buffer is emptied before each ticket.
        let mut out = String::from("left over");
        t.encode_into(&mut out);
        assert_eq!(out, "42 3 - GET my route");
        assert_eq!(Ticket::decode(b"x"), None);
    }

    /// The `cmd|C` record is built from the shared struct now; its bytes are what the
    /// plugin wrote before (a `json!` object, keys sorted), which deployed gateways read.
    #[test]
    fn command_record_keeps_its_bytes() {
        use sluice_plugin_sdk::testing::{TestHost, TestRequest};
        let host = TestHost::new();
        let config =
            json!({"group": "g", "fallback": {"status": 200, "body": "x"}, "timeout": "250ms"});
        let plugin: Breaker = host.init(config).unwrap();
        let request = TestRequest::new("POST", "/x").with_route("users");
        host.on_request(&plugin, &request).unwrap();
        let written = host.state(&keys::command("users POST")).unwrap();
        let s = plugin.config.for_route("users");
        let before = json!({
            "name": "users POST",
            "group": "g",
            "route": "users",
            "method": "POST",
            "request_volume_threshold": s.request_volume_threshold,
            "error_threshold_percent": s.error_threshold_percent,
            "sleep_window_ms": s.sleep_window_ms,
            "rolling_window_ms": s.rolling_window_ms,
            "rolling_buckets": s.rolling_buckets,
            "timeout_ms": s.timeout_ms,
            "max_concurrent_requests": s.max_concurrent_requests,
            "lease_ms": s.lease_ms(),
            "half_open_requests": s.half_open_requests,
            "force_open": s.force_open,
            "force_closed": s.force_closed,
            "fallback": true,
        });
        assert_eq!(String::from_utf8(written).unwrap(), before.to_string());
    }

    #[test]
    fn error_percentage_truncates_like_hystrix() {
        let h = |total, errors| Health {
            at_ms: 0,
            total,
            errors,
        };
        assert_eq!(h(100, 49).error_percent(), 49);
        assert_eq!(h(3, 2).error_percent(), 66);
        assert_eq!(h(0, 0).error_percent(), 0);
    }
}
