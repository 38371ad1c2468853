//! A token bucket per client key, kept in the gateway's shared state so every plugin
//! instance and every worker draws from the same bucket. Over the limit: 429 with
//! `Retry-After`.
//!
//! ```toml
//! [plugin.rust-rate-limit]
//! rate_per_second = 10     # tokens added per second
//! burst = 20               # bucket size
//! key_header = "x-api-key" # optional: bucket per header value (default: per client IP)
//! ```
//!
//! A bucket is stored as `"<millitokens>:<last refill ms>"` and updated with
//! compare-and-swap, so concurrent requests never lose or double-spend a token.

use serde::Deserialize;
use sluice_plugin_sdk::{Action, Config, Error, Hooks, Plugin, Request, Response, host, state};

/// How many times a request retries a compare-and-swap lost to a concurrent request.
const CAS_ATTEMPTS: usize = 16;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    rate_per_second: u64,
    burst: u64,
    #[serde(default)]
    key_header: Option<String>,
}

/// A bucket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    millitokens: u64,
    at_ms: u64,
}

impl Bucket {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (tokens, at) = text.split_once(':')?;
        Some(Self {
            millitokens: tokens.parse().ok()?,
            at_ms: at.parse().ok()?,
        })
    }

    fn encode(self) -> String {
        format!("{}:{}", self.millitokens, self.at_ms)
    }
}

/// What the bucket decided.
enum Decision {
    Allow { remaining: u64 },
    Deny { retry_after_s: u64 },
}

impl RateLimit {
    fn key(&self, request: &Request<'_>) -> String {
        let who = match &self.key_header {
            Some(h) => request
                .header(h)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default(),
            None => request.client_addr(),
        };
        format!("bucket:{who}")
    }

    /// Refills the bucket for the time passed, then takes a token if there is one.
    fn take(&self, key: &str) -> Result<Decision, Error> {
        let full = self.burst * 1000;
        // Idle buckets expire once they would be full again anyway.
        let ttl_ms = Some(self.burst * 1000 / self.rate_per_second + 1000);
        for _ in 0..CAS_ATTEMPTS {
            let now = host::now_ms();
            let current = state::get(key);
            let bucket = current
                .as_deref()
                .and_then(Bucket::parse)
                .unwrap_or(Bucket {
                    millitokens: full,
                    at_ms: now,
                });
            let refill = now.saturating_sub(bucket.at_ms) * self.rate_per_second;
            let tokens = (bucket.millitokens + refill).min(full);
            let (next, decision) = if tokens >= 1000 {
                let next = Bucket {
                    millitokens: tokens - 1000,
                    at_ms: now,
                };
                (
                    next,
                    Decision::Allow {
                        remaining: next.millitokens / 1000,
                    },
                )
            } else {
                let missing = 1000 - tokens;
                let wait_ms = missing.div_ceil(self.rate_per_second);
                (
                    Bucket {
                        millitokens: tokens,
                        at_ms: now,
                    },
                    Decision::Deny {
                        retry_after_s: wait_ms.div_ceil(1000),
                    },
                )
            };
            if state::compare_and_swap(
                key,
                current.as_deref(),
                Some(next.encode().as_bytes()),
                ttl_ms,
            ) {
                return Ok(decision);
            }
        }
        Err(Error::new(
            "rate limiter: too much contention on one bucket",
        ))
    }
}

impl Plugin for RateLimit {
    // Only `on_request`: the gateway then makes no call on the way back.
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn init(config: Config) -> Result<Self, Error> {
        let limit: RateLimit = config.deserialize()?;
        if limit.rate_per_second == 0 || limit.burst == 0 {
            return Err(Error::new("rate_per_second and burst must be at least 1"));
        }
        Ok(limit)
    }

    fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
        match self.take(&self.key(request))? {
            Decision::Allow { remaining } => {
                request.set_header("x-ratelimit-remaining", remaining.to_string())?;
                Ok(Action::Continue)
            }
            Decision::Deny { retry_after_s } => {
                host::counter_add("rate_limited", 1);
                Ok(Action::Respond(
                    Response::new(429)
                        .header("retry-after", retry_after_s.to_string())
                        .header("content-type", "text/plain")
                        .body("rate limit exceeded\n"),
                ))
            }
        }
    }
}

sluice_plugin_sdk::export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use sluice_plugin_sdk::testing::{TestHost, TestRequest};

    use super::*;

    fn status(action: Action) -> u16 {
        match action {
            Action::Continue => 200,
            Action::Respond(r) => r.status,
        }
    }

    #[test]
    fn allows_the_burst_then_answers_429_with_retry_after() {
        let host = TestHost::new();
        let plugin: RateLimit = host
            .init(json!({ "rate_per_second": 2, "burst": 3 }))
            .unwrap();
        let req = TestRequest::get("/").with_client("10.0.0.1");
        let codes: Vec<u16> = (0..4)
            .map(|_| status(host.on_request(&plugin, &req).unwrap()))
            .collect();
        assert_eq!(codes, [200, 200, 200, 429]);
        match host.on_request(&plugin, &req).unwrap() {
            Action::Respond(r) => assert_eq!(r.header_value("retry-after"), Some(&b"1"[..])),
            Action::Continue => panic!("still limited"),
        }
        assert_eq!(host.counter("rate_limited"), 2);
    }

    #[test]
    fn the_bucket_refills_with_time() {
        let host = TestHost::new();
        let plugin: RateLimit = host
            .init(json!({ "rate_per_second": 2, "burst": 1 }))
            .unwrap();
        let req = TestRequest::get("/");
        assert_eq!(status(host.on_request(&plugin, &req).unwrap()), 200);
        assert_eq!(status(host.on_request(&plugin, &req).unwrap()), 429);
        host.advance(Duration::from_millis(499));
        assert_eq!(
            status(host.on_request(&plugin, &req).unwrap()),
            429,
            "half a token is not a token"
        );
        host.advance(Duration::from_millis(1));
        assert_eq!(status(host.on_request(&plugin, &req).unwrap()), 200);
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let host = TestHost::new();
        let plugin: RateLimit = host
            .init(json!({ "rate_per_second": 1, "burst": 1, "key_header": "x-api-key" }))
            .unwrap();
        let alice = TestRequest::get("/").with_header("x-api-key", "alice");
        let bob = TestRequest::get("/").with_header("x-api-key", "bob");
        assert_eq!(status(host.on_request(&plugin, &alice).unwrap()), 200);
        assert_eq!(status(host.on_request(&plugin, &alice).unwrap()), 429);
        assert_eq!(status(host.on_request(&plugin, &bob).unwrap()), 200);
        assert_eq!(
            alice.header_str("x-ratelimit-remaining").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn a_zero_rate_is_refused() {
        let host = TestHost::new();
        let err = host
            .init::<RateLimit>(json!({ "rate_per_second": 0, "burst": 1 }))
            .unwrap_err();
        assert_eq!(
            err.message(),
            "rate_per_second and burst must be at least 1"
        );
    }
}
