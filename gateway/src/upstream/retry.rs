//! Retry policy (which failures, which methods, backoff), the decision after each try, and
//! the retry budget that keeps retries from amplifying an outage. The decision is made here,
//! from typed facts about the try; `Proxy::forward` only sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

use crate::config::{RetryConfig, RetryOn};
use crate::error::{ProxyError, TimeoutPhase};

/// One service's retry rules.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    on_connect: bool,
    on_reset: bool,
    on_timeout: bool,
    statuses: Vec<u16>,
    methods: Vec<Method>,
    backoff: Duration,
    max_backoff: Duration,
    /// Largest request body kept for replay.
    pub max_replay_body_bytes: u64,
}

impl RetryPolicy {
    /// From `retries` and `[services.NAME.retry]` (typed when the file was read).
    pub fn from_config(retries: u32, config: &RetryConfig) -> Self {
        let on = |what: RetryOn| config.on.iter().any(|o| *o.get() == what);
        Self {
            retries,
            on_connect: on(RetryOn::Connect),
            on_reset: on(RetryOn::Reset),
            on_timeout: on(RetryOn::Timeout),
            statuses: config
                .on
                .iter()
                .filter_map(|o| match o.get() {
                    RetryOn::Status(status) => Some(status.as_u16()),
                    RetryOn::Connect | RetryOn::Reset | RetryOn::Timeout => None,
                })
                .collect(),
            methods: config.methods.iter().map(|m| m.get().clone()).collect(),
            backoff: config.backoff,
            max_backoff: config.max_backoff.max(config.backoff),
            max_replay_body_bytes: config.max_replay_body_bytes,
        }
    }

    /// Whether a request with this method may be retried (`retry.methods`).
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// Whether some retryable failure happens after the request was sent, so the request
    /// (and its body) must be kept to send again. Connect failures need no copy: the request
    /// comes back unsent.
    pub fn needs_replay(&self) -> bool {
        self.on_reset || self.on_timeout || !self.statuses.is_empty()
    }

    /// Whether an upstream answer with this status is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    /// Whether this failed attempt is retried.
    pub fn retries_error(&self, error: &ProxyError) -> bool {
        match error {
            ProxyError::UpstreamConnect { .. } => self.on_connect,
            ProxyError::UpstreamTimeout {
                phase: TimeoutPhase::Connect,
                ..
            } => self.on_connect,
            ProxyError::UpstreamTimeout {
                phase: TimeoutPhase::Response,
                ..
            } => self.on_timeout,
            ProxyError::UpstreamFailed { .. } => self.on_reset,
            _ => false,
        }
    }

    /// After a try: the pause before trying again, or `None` to stop and give the client
    /// what this try got. The retry budget is taken afterwards, only when this says retry.
    pub fn decide(&self, plan: &RetryPlan, report: &TryReport<'_>) -> Option<Duration> {
        if !plan.retryable || report.number > plan.retries || !report.resendable {
            return None;
        }
        let wanted = match report.result {
            TryResult::Answered(status) => self.retries_status(status),
            TryResult::Failed(error) => self.retries_error(error),
        };
        // A retry needs its backoff and a useful try to fit before the overall deadline.
        let pause = self.backoff(report.number);
        (wanted && report.time_left > pause + MIN_TRY).then_some(pause)
    }

    /// The pause before retry number `n` (1-based): exponential with full jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .backoff
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.max_backoff);
        cap.mul_f64(fastrand::f64())
    }
}

/// The least time a retry is worth starting with (after its backoff) before the deadline.
pub const MIN_TRY: Duration = Duration::from_millis(10);

/// What holds for every try of one request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPlan {
    /// Retries allowed after the first try (the route's `retries`, else the service's).
    pub retries: u32,
    /// The method may be retried and retries are on at all.
    pub retryable: bool,
}

impl RetryPlan {
    /// The plan for a request with `method` on a route that allows `retries`.
    pub fn new(policy: &RetryPolicy, retries: u32, method: &Method) -> Self {
        Self {
            retries,
            retryable: retries > 0 && policy.allows(method),
        }
    }
}

/// What one try came to.
#[derive(Debug, Clone, Copy)]
pub enum TryResult<'a> {
    /// The upstream answered with this status.
    Answered(u16),
    /// The try failed (connect, timeout, reset).
    Failed(&'a ProxyError),
}

/// One finished try, as the retry decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct TryReport<'a> {
    /// 1 for the first try.
    pub number: u32,
    /// How it went.
    pub result: TryResult<'a>,
    /// Time left before the request's overall deadline.
    pub time_left: Duration,
    /// The request can be sent again: it came back unsent, or a copy was kept.
    pub resendable: bool,
}

/// Buckets of the budget window, one per second.
const WINDOW_SECS: u64 = 10;

/// Retries allowed over the last 10 s: `percent` of the requests, plus a floor of
/// `min_per_second` per second. Counters are per-second buckets packed as
/// `second << 32 | count` in one atomic each, so recording takes no lock.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    requests: [AtomicU64; WINDOW_SECS as usize],
    retries: [AtomicU64; WINDOW_SECS as usize],
}

impl RetryBudget {
    /// A budget of `percent` % with a floor.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts a request (not a retry) at `now_s` (seconds on any monotonic clock).
    pub fn record_request(&self, now_s: u64) {
        bump(&self.requests, now_s);
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_retry(&self, now_s: u64) -> bool {
        let requests = window_sum(&self.requests, now_s);
        let retries = window_sum(&self.retries, now_s);
        let allowed = requests * self.percent / 100 + self.min_per_second * WINDOW_SECS;
        if retries >= allowed {
            return false;
        }
        bump(&self.retries, now_s);
        true
    }
}

fn bump(buckets: &[AtomicU64], now_s: u64) {
    let slot = &buckets[(now_s % WINDOW_SECS) as usize];
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let next = if current >> 32 == now_s & 0xffff_ffff {
            current + 1
        } else {
            (now_s & 0xffff_ffff) << 32 | 1
        };
        match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

fn window_sum(buckets: &[AtomicU64], now_s: u64) -> u64 {
    let now = now_s & 0xffff_ffff;
    buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .filter(|v| now.wrapping_sub(v >> 32) & 0xffff_ffff < WINDOW_SECS)
        .map(|v| v & 0xffff_ffff)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parsed;

    #[test]
    fn budget_allows_the_percentage_plus_the_floor() {
        let budget = RetryBudget::new(20, 0);
        for _ in 0..100 {
            budget.record_request(5);
        }
        let granted = (0..50).filter(|_| budget.try_retry(5)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the window has moved on: no requests, no retries.
        assert!(!budget.try_retry(15));
        let floor = RetryBudget::new(0, 2);
        assert_eq!((0..50).filter(|_| floor.try_retry(1)).count(), 20);
    }

    #[test]
    fn backoff_is_jittered_below_the_doubling_cap() {
        let config = RetryConfig {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..RetryConfig::default()
        };
        let policy = RetryPolicy::from_config(3, &config);
        for n in 1..6 {
            let cap = Duration::from_millis((10u64 << (n - 1)).min(40));
            for _ in 0..100 {
                assert!(policy.backoff(n) <= cap);
            }
        }
    }

    fn error(phase: Option<TimeoutPhase>) -> ProxyError {
        let name: std::sync::Arc<str> = "s".into();
        match phase {
            Some(phase) => ProxyError::UpstreamTimeout {
                service: name.clone(),
                instance: name,
                phase,
            },
            None => ProxyError::UpstreamConnect {
                service: name.clone(),
                instance: name,
            },
        }
    }

    fn report(number: u32, result: TryResult<'_>, left_ms: u64) -> TryReport<'_> {
        TryReport {
            number,
            result,
            time_left: Duration::from_millis(left_ms),
            resendable: true,
        }
    }

    #[test]
    fn decide_retries_what_the_policy_names_while_tries_and_time_are_left() {
        let config = RetryConfig {
            on: [
                RetryOn::Connect,
                RetryOn::Timeout,
                RetryOn::Status(http::StatusCode::SERVICE_UNAVAILABLE),
            ]
            .map(Parsed::new)
            .to_vec(),
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(20),
            ..RetryConfig::default()
        };
        let policy = RetryPolicy::from_config(2, &config);
        let plan = RetryPlan::new(&policy, 2, &Method::GET);
        let connect = error(None);
        let response_timeout = error(Some(TimeoutPhase::Response));
        // Named failures and statuses are retried, with a pause within the backoff.
        for result in [
            TryResult::Failed(&connect),
            TryResult::Failed(&response_timeout),
            TryResult::Answered(503),
        ] {
            let pause = policy.decide(&plan, &report(1, result, 1000));
            assert!(
                pause.is_some_and(|p| p <= Duration::from_millis(20)),
                "{result:?}"
            );
        }
        // Others are not.
        assert_eq!(
            policy.decide(&plan, &report(1, TryResult::Answered(500), 1000)),
            None
        );
        assert_eq!(
            policy.decide(&plan, &report(1, TryResult::Answered(200), 1000)),
            None
        );
        // Two retries: the third try's failure is final.
        assert!(
            policy
                .decide(&plan, &report(2, TryResult::Failed(&connect), 1000))
                .is_some()
        );
        assert_eq!(
            policy.decide(&plan, &report(3, TryResult::Failed(&connect), 1000)),
            None
        );
        // Less time left than a useful try needs.
        assert_eq!(
            policy.decide(&plan, &report(1, TryResult::Failed(&connect), 9)),
            None
        );
        // Nothing to send again.
        let unsendable = TryReport {
            resendable: false,
            ..report(1, TryResult::Failed(&connect), 1000)
        };
        assert_eq!(policy.decide(&plan, &unsendable), None);
        // Methods the policy does not name, and routes with retries off, never retry.
        for plan in [
            RetryPlan::new(&policy, 2, &Method::POST),
            RetryPlan::new(&policy, 0, &Method::GET),
        ] {
            assert_eq!(
                policy.decide(&plan, &report(1, TryResult::Failed(&connect), 1000)),
                None
            );
        }
    }

    #[test]
    fn a_connect_timeout_counts_as_a_connect_failure_not_a_timeout() {
        let config = RetryConfig {
            on: vec![Parsed::new(RetryOn::Connect)],
            ..RetryConfig::default()
        };
        let policy = RetryPolicy::from_config(1, &config);
        assert!(policy.retries_error(&error(Some(TimeoutPhase::Connect))));
        assert!(!policy.retries_error(&error(Some(TimeoutPhase::Response))));
    }

    #[test]
    fn defaults_retry_connect_failures_of_idempotent_methods_only() {
        let policy = RetryPolicy::from_config(1, &RetryConfig::default());
        assert!(policy.allows(&Method::GET));
        assert!(!policy.allows(&Method::POST));
        assert!(!policy.needs_replay());
        let service: std::sync::Arc<str> = "s".into();
        let connect = ProxyError::UpstreamConnect {
            service: service.clone(),
            instance: service.clone(),
        };
        let reset = ProxyError::UpstreamFailed {
            service: service.clone(),
            instance: service,
            reason: String::new(),
        };
        assert!(policy.retries_error(&connect));
        assert!(!policy.retries_error(&reset));
        assert!(!policy.retries_status(503));
    }
}
