//! Instance health: passive ejection after consecutive failures (with a growing back-off and a
//! cap on the share of a service that may be out), and optional active checks spoken over the
//! service's own transport (TLS, HTTP/1.1, h2, h2c).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Service};
use crate::body::RequestBody;
use crate::config::{ActiveHealthConfig, PassiveHealthConfig};

/// The health of one instance.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_failures: AtomicU32,
    /// Monotonic ns until which the instance is ejected (0 = not ejected).
    ejected_until: AtomicU64,
    /// Ejections so far (the back-off doubles with each).
    ejections: AtomicU32,
    /// Failing its active checks.
    probe_down: AtomicBool,
    probe_streak: AtomicU32,
}

/// What `/admin/services` and `/registry/services` show of an instance's health.
#[derive(Debug, Serialize)]
pub struct HealthView {
    /// Takes traffic now.
    pub available: bool,
    /// Remaining ejection, if ejected.
    pub ejected_for_ms: Option<u64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Times ejected.
    pub ejections: u32,
    /// Failing active checks.
    pub failing_checks: bool,
}

impl EndpointHealth {
    /// Whether it takes traffic at `now` (ns).
    pub fn available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
            && !self.probe_down.load(Ordering::Relaxed)
    }

    fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// A view at `now`.
    pub fn view(&self, now: u64, live: bool) -> HealthView {
        let until = self.ejected_until.load(Ordering::Relaxed);
        HealthView {
            available: live && self.available(now),
            ejected_for_ms: (until > now).then(|| (until - now) / 1_000_000),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            failing_checks: self.probe_down.load(Ordering::Relaxed),
        }
    }
}

impl Service {
    /// Records how an attempt on `endpoint` went for passive health: a success resets its
    /// failure streak; a failure (connect, reset, timeout, 5xx) may eject it.
    pub fn record_attempt(&self, endpoint: &Endpoint, failed: bool, now: u64) {
        let health = &endpoint.health;
        if !failed {
            if health.consecutive_failures.load(Ordering::Relaxed) != 0 {
                health.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let PassiveHealthConfig {
            consecutive_failures: threshold,
            ejection_time,
            max_ejection_time,
            max_ejected_percent,
        } = self.passive;
        let failures = health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || failures < threshold || health.ejected(now) {
            return;
        }
        // One ejection decision at a time per service, so two workers cannot both pass the
        // cap on different instances.
        let _deciding = self.ejecting.lock().expect("ejection lock");
        if health.ejected(now) {
            return;
        }
        let set = self.endpoints();
        let total = set.endpoints.len();
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.health.ejected(now))
            .count();
        // Out for any reason: ejected, expired, failing active checks.
        let out = set.endpoints.iter().filter(|e| !e.available(now)).count();
        // Never take out more than the configured share, and never the last available one.
        if (ejected + 1) * 100 > total * max_ejected_percent as usize || out + 1 >= total {
            return;
        }
        let n = health.ejections.fetch_add(1, Ordering::Relaxed);
        let period = ejection_time
            .saturating_mul(1u32 << n.min(16))
            .min(max_ejection_time);
        health
            .ejected_until
            .store(now + period.as_nanos() as u64, Ordering::Relaxed);
        health.consecutive_failures.store(0, Ordering::Relaxed);
        self.metrics.ejections.inc();
        tracing::warn!(
            service = &*self.name,
            instance = &*endpoint.address,
            failures,
            ejected_for_ms = period.as_millis() as u64,
            "instance ejected after consecutive failures"
        );
    }
}

/// Runs the active checks of a service until shutdown: every `interval`, one GET per instance,
/// spoken the way the service's traffic is (see [`probe`]).
pub fn spawn_active_checks(
    service: Arc<Service>,
    config: ActiveHealthConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let set = service.endpoints();
            let (name, config) = (&service.name, &config);
            let probes = set.endpoints.iter().map(|e| async move {
                let healthy = match probe(e, config).await {
                    Ok(()) => true,
                    Err(why) => {
                        tracing::debug!(
                            service = &**name,
                            instance = &*e.address,
                            "health check failed: {why}"
                        );
                        false
                    }
                };
                apply_probe(name, e, healthy, config);
            });
            futures_util::future::join_all(probes).await;
        }
    })
}

/// One check of an instance: `GET path` with the instance's address as `Host`, on a new
/// connection made by the instance's pool, so over TLS (the service's CA, server name,
/// client certificate and ALPN) and HTTP/1.1, h2 or h2c exactly as requests are sent to it.
/// Healthy when the answer is 2xx within `timeout` (connect included) and, for a gRPC server
/// (which answers 200 to everything, the outcome in `grpc-status`), carries no
/// `grpc-status` other than 0 in its head.
async fn probe(endpoint: &Endpoint, config: &ActiveHealthConfig) -> Result<(), String> {
    let request = http::Request::get(http::Uri::from(config.path.get().clone()))
        .header(http::header::HOST, endpoint.host_header.clone())
        .header(http::header::USER_AGENT, "sluice-health-check")
        .body(RequestBody::full(bytes::Bytes::new()))
        .map_err(|e| format!("bad request: {e}"))?;
    let response = tokio::time::timeout(
        config.timeout,
        endpoint.pool.send_unpooled(request, config.timeout),
    )
    .await
    .map_err(|_| format!("no answer within {:?}", config.timeout))?
    .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    match response.headers().get("grpc-status") {
        Some(code) if code != "0" => Err(format!(
            "answered grpc-status {}",
            String::from_utf8_lossy(code.as_bytes())
        )),
        _ => Ok(()),
    }
}

fn apply_probe(service: &str, endpoint: &Endpoint, healthy: bool, config: &ActiveHealthConfig) {
    let health = &endpoint.health;
    let down = health.probe_down.load(Ordering::Relaxed);
    // Already in the state this probe says: the streak towards a change starts over.
    if healthy != down {
        health.probe_streak.store(0, Ordering::Relaxed);
        return;
    }
    let streak = health.probe_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let needed = if down {
        config.healthy_threshold
    } else {
        config.unhealthy_threshold
    };
    if streak >= needed {
        health.probe_down.store(!down, Ordering::Relaxed);
        health.probe_streak.store(0, Ordering::Relaxed);
        tracing::warn!(
            service,
            instance = &*endpoint.address,
            healthy,
            "active health check changed the instance's state"
        );
    }
}
