//! The JSON object of one command on `/hystrix.stream`: Netflix Hystrix's `HystrixCommand`
//! format, which hystrix-dashboard reads.

use serde::Serialize;

use super::{CircuitState, CommandSnapshot, keys};

/// Latency percentiles (ms) as hystrix-dashboard reads them: keys `"0"` … `"100"`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    #[serde(rename = "0")]
    p0: u64,
    #[serde(rename = "100")]
    p100: u64,
    #[serde(rename = "25")]
    p25: u64,
    #[serde(rename = "50")]
    p50: u64,
    #[serde(rename = "75")]
    p75: u64,
    #[serde(rename = "90")]
    p90: u64,
    #[serde(rename = "95")]
    p95: u64,
    #[serde(rename = "99")]
    p99: u64,
    #[serde(rename = "99.5")]
    p99_5: u64,
}

/// Transitions since start, by the state entered (our dashboard reads them).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Transitions {
    closed: u64,
    half_open: u64,
    open: u64,
}

/// One `HystrixCommand` object, with the field names hystrix-dashboard reads (plus
/// `circuitState`, `route`, `method`, `halfOpenRequests` and `transitions`, which it ignores
/// and our dashboard uses). The fields are in byte order of their names, as the `serde_json`
/// map this replaced wrote them, so the line on the wire is unchanged (a unit test checks a
/// golden line). Fields Hystrix has and Sluice does not count are constant.
#[derive(Debug, Clone, Serialize)]
pub struct HystrixCommand<'a> {
    #[serde(rename = "circuitState")]
    circuit_state: &'static str,
    #[serde(rename = "currentConcurrentExecutionCount")]
    current_concurrent_execution_count: u64,
    #[serde(rename = "currentTime")]
    current_time: u64,
    #[serde(rename = "errorCount")]
    error_count: u64,
    #[serde(rename = "errorPercentage")]
    error_percentage: u64,
    group: &'a str,
    #[serde(rename = "halfOpenRequests")]
    half_open_requests: u64,
    #[serde(rename = "isCircuitBreakerOpen")]
    is_circuit_breaker_open: bool,
    #[serde(rename = "latencyExecute")]
    latency_execute: Percentiles,
    #[serde(rename = "latencyExecute_mean")]
    latency_execute_mean: u64,
    #[serde(rename = "latencyTotal")]
    latency_total: Percentiles,
    #[serde(rename = "latencyTotal_mean")]
    latency_total_mean: u64,
    method: &'a str,
    name: &'a str,
    #[serde(rename = "propertyValue_circuitBreakerEnabled")]
    circuit_breaker_enabled: bool,
    #[serde(rename = "propertyValue_circuitBreakerErrorThresholdPercentage")]
    circuit_breaker_error_threshold_percentage: u64,
    #[serde(rename = "propertyValue_circuitBreakerForceClosed")]
    circuit_breaker_force_closed: bool,
    #[serde(rename = "propertyValue_circuitBreakerForceOpen")]
    circuit_breaker_force_open: bool,
    #[serde(rename = "propertyValue_circuitBreakerRequestVolumeThreshold")]
    circuit_breaker_request_volume_threshold: u64,
    #[serde(rename = "propertyValue_circuitBreakerSleepWindowInMilliseconds")]
    circuit_breaker_sleep_window_in_milliseconds: u64,
    #[serde(rename = "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests")]
    execution_isolation_semaphore_max_concurrent_requests: u64,
    #[serde(rename = "propertyValue_executionIsolationStrategy")]
    execution_isolation_strategy: &'static str,
    #[serde(rename = "propertyValue_executionIsolationThreadInterruptOnTimeout")]
    execution_isolation_thread_interrupt_on_timeout: bool,
    #[serde(rename = "propertyValue_executionIsolationThreadPoolKeyOverride")]
    execution_isolation_thread_pool_key_override: Option<&'static str>,
    #[serde(rename = "propertyValue_executionIsolationThreadTimeoutInMilliseconds")]
    execution_isolation_thread_timeout_in_milliseconds: u64,
    #[serde(rename = "propertyValue_executionTimeoutInMilliseconds")]
    execution_timeout_in_milliseconds: u64,
    #[serde(rename = "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests")]
    fallback_isolation_semaphore_max_concurrent_requests: u64,
    #[serde(rename = "propertyValue_metricsRollingStatisticalWindowInMilliseconds")]
    metrics_rolling_statistical_window_in_milliseconds: u64,
    #[serde(rename = "propertyValue_requestCacheEnabled")]
    request_cache_enabled: bool,
    #[serde(rename = "propertyValue_requestLogEnabled")]
    request_log_enabled: bool,
    #[serde(rename = "reportingHosts")]
    reporting_hosts: u64,
    #[serde(rename = "requestCount")]
    request_count: u64,
    #[serde(rename = "rollingCountBadRequests")]
    rolling_count_bad_requests: u64,
    #[serde(rename = "rollingCountCollapsedRequests")]
    rolling_count_collapsed_requests: u64,
    #[serde(rename = "rollingCountEmit")]
    rolling_count_emit: u64,
    #[serde(rename = "rollingCountExceptionsThrown")]
    rolling_count_exceptions_thrown: u64,
    #[serde(rename = "rollingCountFailure")]
    rolling_count_failure: u64,
    #[serde(rename = "rollingCountFallbackEmit")]
    rolling_count_fallback_emit: u64,
    #[serde(rename = "rollingCountFallbackFailure")]
    rolling_count_fallback_failure: u64,
    #[serde(rename = "rollingCountFallbackMissing")]
    rolling_count_fallback_missing: u64,
    #[serde(rename = "rollingCountFallbackRejection")]
    rolling_count_fallback_rejection: u64,
    #[serde(rename = "rollingCountFallbackSuccess")]
    rolling_count_fallback_success: u64,
    #[serde(rename = "rollingCountResponsesFromCache")]
    rolling_count_responses_from_cache: u64,
    #[serde(rename = "rollingCountSemaphoreRejected")]
    rolling_count_semaphore_rejected: u64,
    #[serde(rename = "rollingCountShortCircuited")]
    rolling_count_short_circuited: u64,
    #[serde(rename = "rollingCountSuccess")]
    rolling_count_success: u64,
    #[serde(rename = "rollingCountThreadPoolRejected")]
    rolling_count_thread_pool_rejected: u64,
    #[serde(rename = "rollingCountTimeout")]
    rolling_count_timeout: u64,
    #[serde(rename = "rollingMaxConcurrentExecutionCount")]
    rolling_max_concurrent_execution_count: u64,
    route: &'a str,
    #[serde(rename = "threadPool")]
    thread_pool: &'a str,
    transitions: Transitions,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> HystrixCommand<'a> {
    /// The object for one command at `now_unix_ms`.
    pub fn new(s: &'a CommandSnapshot, now_unix_ms: u64) -> Self {
        let r = &s.record;
        let c = &s.counts;
        let [p0, p25, p50, p75, p90, p95, p99, p99_5, p100] = s.percentiles;
        let latency = Percentiles {
            p0,
            p100,
            p25,
            p50,
            p75,
            p90,
            p95,
            p99,
            p99_5,
        };
        let transition = |to: &str| {
            s.transitions
                .iter()
                .find(|(t, _)| *t == to)
                .map_or(0, |(_, n)| *n)
        };
        Self {
            circuit_state: s.state.as_str(),
            current_concurrent_execution_count: s.concurrent,
            current_time: now_unix_ms,
            error_count: c.errors(),
            error_percentage: c.error_percent(),
            group: &r.group,
            half_open_requests: r.half_open_requests,
            is_circuit_breaker_open: s.state != CircuitState::Closed,
            latency_execute: latency,
            latency_execute_mean: s.mean_ms,
            latency_total: latency,
            latency_total_mean: s.mean_ms,
            method: &r.method,
            name: &r.name,
            circuit_breaker_enabled: true,
            circuit_breaker_error_threshold_percentage: r.error_threshold_percent,
            circuit_breaker_force_closed: r.force_closed,
            circuit_breaker_force_open: r.force_open,
            circuit_breaker_request_volume_threshold: r.request_volume_threshold,
            circuit_breaker_sleep_window_in_milliseconds: r.sleep_window_ms,
            execution_isolation_semaphore_max_concurrent_requests: r.max_concurrent_requests,
            execution_isolation_strategy: "SEMAPHORE",
            execution_isolation_thread_interrupt_on_timeout: true,
            execution_isolation_thread_pool_key_override: None,
            execution_isolation_thread_timeout_in_milliseconds: r.timeout_ms,
            execution_timeout_in_milliseconds: r.timeout_ms,
            fallback_isolation_semaphore_max_concurrent_requests: r.max_concurrent_requests,
            metrics_rolling_statistical_window_in_milliseconds: r.rolling_window_ms,
            request_cache_enabled: false,
            request_log_enabled: false,
            reporting_hosts: 1,
            request_count: c.total(),
            rolling_count_bad_requests: 0,
            rolling_count_collapsed_requests: 0,
            rolling_count_emit: 0,
            rolling_count_exceptions_thrown: 0,
            rolling_count_failure: c.failure,
            rolling_count_fallback_emit: 0,
            rolling_count_fallback_failure: 0,
            rolling_count_fallback_missing: 0,
            rolling_count_fallback_rejection: 0,
            rolling_count_fallback_success: c.fallback,
            rolling_count_responses_from_cache: 0,
            rolling_count_semaphore_rejected: c.rejected,
            rolling_count_short_circuited: c.short_circuited,
            rolling_count_success: c.success,
            rolling_count_thread_pool_rejected: 0,
            rolling_count_timeout: c.timeout,
            rolling_max_concurrent_execution_count: s.concurrent,
            route: &r.route,
            thread_pool: &r.group,
            transitions: Transitions {
                closed: transition(keys::TO_CLOSED),
                half_open: transition(keys::TO_HALF_OPEN),
                open: transition(keys::TO_OPEN),
            },
            kind: "HystrixCommand",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hystrix::{CommandRecord, Counts};

    /// The line hystrix-dashboard parses, byte for byte: written (key order included) by the
    /// `serde_json` map this struct replaced, from the snapshot below.
    #[test]
    fn hystrix_json_matches_the_golden_line() {
        let snapshot = CommandSnapshot {
            record: CommandRecord {
                error_threshold_percent: 50,
                fallback: false,
                force_closed: true,
                force_open: false,
                group: "grp".into(),
                half_open_requests: 2,
                lease_ms: 3000,
                max_concurrent_requests: 64,
                method: "GET".into(),
                name: "api GET".into(),
                request_volume_threshold: 20,
                rolling_buckets: 10,
                rolling_window_ms: 10_000,
                route: "api".into(),
                sleep_window_ms: 5000,
                timeout_ms: 1000,
            },
            state: CircuitState::HalfOpen,
            counts: Counts {
                success: 6,
                failure: 3,
                timeout: 1,
                rejected: 2,
                short_circuited: 4,
                fallback: 5,
            },
            concurrent: 7,
            percentiles: [1, 2, 3, 5, 8, 10, 15, 20, 30],
            mean_ms: 9,
            executions: 11,
            transitions: [("open", 3), ("half_open", 2), ("closed", 1)],
        };
        let line =
            serde_json::to_string(&HystrixCommand::new(&snapshot, 1_700_000_000_000)).unwrap();
        let golden = include_str!("../../../tests/golden/hystrix-command.json");
        assert_eq!(line, golden.trim_end());
        // Keys in byte order, as a JSON map writes them: the order of the struct's fields.
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value.to_string(), line);
    }
}
