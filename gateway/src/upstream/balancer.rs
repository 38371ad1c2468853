//! Choosing an instance: weighted round robin, weighted random, least outstanding requests
//! (power of two choices) and a consistent-hash ring. Each strategy skips instances that are
//! not available (expired, ejected, failing active checks) and, on a retry, the ones already
//! tried when another is available.
//!
//! The per-set tables (round-robin schedule, cumulative weights, hash ring) are built once
//! when a service's instances change, so a pick is a few array reads and one atomic add.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use http::header::COOKIE;

use super::Endpoint;
use crate::config::BalancerKind;
/// `hash_on` is typed in the config (`config/services.rs`); the balancer reads it.
pub use crate::config::HashOn;

impl HashOn {
    /// The key of a request, if it carries one.
    pub fn key<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        match self {
            Self::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            // The `cookie` crate splits the header (RFC 6265: `;`-separated pairs, whitespace
            // around names and values trimmed); a header that is not UTF-8 carries no key.
            Self::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|v| {
                let text = std::str::from_utf8(v.as_bytes()).ok()?;
                cookie::Cookie::split_parse(text)
                    .flatten()
                    .find(|c| c.name_raw() == Some(name.as_str()))?
                    .value_raw()
                    .map(str::as_bytes)
            }),
        }
    }
}

/// Virtual nodes per unit of weight on the hash ring: enough for an even spread with a
/// handful of instances, small enough to rebuild quickly.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// The largest ring (points) and round-robin cycle (slots) built: weights are scaled down
/// past these, so a service with many heavy instances cannot make a rebuild slow or big.
const MAX_RING_POINTS: u64 = 1 << 16;
const MAX_SCHEDULE: u64 = 1 << 13;

/// The lookup tables of one set of instances.
#[derive(Debug, Default)]
pub struct Tables {
    /// Smooth weighted round-robin order (indices), one cycle long.
    schedule: Vec<u32>,
    /// Running sum of weights, for weighted random.
    cumulative: Vec<u64>,
    /// `(point, index)` sorted by point.
    ring: Vec<(u64, u32)>,
}

impl Tables {
    /// Builds the tables for `endpoints` (only what `kind` needs).
    pub fn build(kind: BalancerKind, endpoints: &[std::sync::Arc<Endpoint>]) -> Self {
        let mut tables = Self::default();
        if endpoints.is_empty() {
            return tables;
        }
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.max(1)))
            .collect();
        // Round robin is also the fallback of `hash` for requests without a key.
        if matches!(kind, BalancerKind::RoundRobin | BalancerKind::Hash) {
            tables.schedule = smooth_weighted_schedule(&weights);
        }
        if matches!(kind, BalancerKind::Random | BalancerKind::LeastRequest) {
            let mut sum = 0;
            tables.cumulative = weights
                .iter()
                .map(|w| {
                    sum += w;
                    sum
                })
                .collect();
        }
        if kind == BalancerKind::Hash {
            let total: u64 = weights.iter().sum::<u64>() * RING_POINTS_PER_WEIGHT;
            let per_weight = if total > MAX_RING_POINTS {
                (RING_POINTS_PER_WEIGHT * MAX_RING_POINTS / total).max(1)
            } else {
                RING_POINTS_PER_WEIGHT
            };
            for (i, (e, w)) in endpoints.iter().zip(&weights).enumerate() {
                // Points depend on the instance's id only, so adding or removing one instance
                // moves only the keys that land on its points.
                let base = hash_bytes(e.id.as_bytes());
                for v in 0..per_weight * w {
                    tables
                        .ring
                        .push((mix(base ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i as u32));
                }
            }
            tables.ring.sort_unstable();
        }
        tables
    }
}

/// The order of nginx's smooth weighted round robin over one cycle (sum of weights, after
/// dividing by their gcd): heavier instances are spread out rather than bunched.
fn smooth_weighted_schedule(weights: &[u64]) -> Vec<u32> {
    let gcd = weights.iter().copied().fold(0, gcd).max(1);
    let sum: u64 = weights.iter().map(|w| w / gcd).sum();
    // Past MAX_SCHEDULE slots, weights are scaled down (each keeps at least one slot).
    let scale = |w: u64| {
        let w = w / gcd;
        if sum > MAX_SCHEDULE {
            (w * MAX_SCHEDULE / sum).max(1)
        } else {
            w
        }
    };
    let weights: Vec<i64> = weights.iter().map(|&w| scale(w) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .expect("non-empty");
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// FNV-1a followed by the murmur3 finaliser. Hand-written because the ring must hash the same
/// way in every gateway process (std's hasher is randomly keyed per process) and a
/// cryptographic hash would be wasted work on the request path.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The murmur3 64-bit finaliser: spreads every input bit over the output.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What a pick may not return.
pub struct Exclude<'a> {
    /// Indices already tried by this request.
    pub tried: &'a [u32],
    /// Monotonic now, in ns (availability is time-dependent).
    pub now: u64,
}

/// Picks an available instance; `None` when none is.
pub fn pick(
    kind: BalancerKind,
    endpoints: &[std::sync::Arc<Endpoint>],
    tables: &Tables,
    counter: &AtomicUsize,
    key: Option<&[u8]>,
    exclude: &Exclude<'_>,
) -> Option<u32> {
    let fresh =
        |i: u32| !exclude.tried.contains(&i) && endpoints[i as usize].available(exclude.now);
    // Each strategy first looks among instances this request has not tried; if all were
    // tried, an available one may be used again (a retry on a one-instance service).
    // A retry does not advance the shared round-robin position: otherwise a failing
    // instance would shift the rotation and receive every next first attempt.
    let start = |n: usize| {
        if exclude.tried.is_empty() {
            counter.fetch_add(1, Ordering::Relaxed)
        } else {
            fastrand::usize(0..n)
        }
    };
    let choose = |ok: &dyn Fn(u32) -> bool| match (kind, key) {
        (BalancerKind::Hash, Some(key)) => by_ring(tables, key, ok),
        (BalancerKind::RoundRobin | BalancerKind::Hash, _) => by_schedule(tables, &start, ok),
        (BalancerKind::Random, _) => by_weight(tables, ok),
        (BalancerKind::LeastRequest, _) => least_of_two(endpoints, tables, ok),
    };
    choose(&fresh).or_else(|| {
        if exclude.tried.is_empty() {
            None
        } else {
            choose(&|i| endpoints[i as usize].available(exclude.now))
        }
    })
}

fn by_schedule(
    tables: &Tables,
    start: &dyn Fn(usize) -> usize,
    ok: &dyn Fn(u32) -> bool,
) -> Option<u32> {
    let n = tables.schedule.len();
    if n == 0 {
        return None;
    }
    let start = start(n);
    (0..n)
        .map(|k| tables.schedule[(start + k) % n])
        .find(|&i| ok(i))
}

fn by_weight(tables: &Tables, ok: &dyn Fn(u32) -> bool) -> Option<u32> {
    let total = *tables.cumulative.last()?;
    // A few weighted draws; then any available one, from a random start.
    for _ in 0..4 {
        let point = fastrand::u64(0..total);
        let i = tables.cumulative.partition_point(|&c| c <= point) as u32;
        if ok(i) {
            return Some(i);
        }
    }
    let n = tables.cumulative.len();
    let start = fastrand::usize(0..n);
    (0..n).map(|k| ((start + k) % n) as u32).find(|&i| ok(i))
}

fn least_of_two(
    endpoints: &[std::sync::Arc<Endpoint>],
    tables: &Tables,
    ok: &dyn Fn(u32) -> bool,
) -> Option<u32> {
    let first = by_weight(tables, ok)?;
    // A second, different one (by_weight falls back to a scan, so one is found if any).
    let Some(second) = by_weight(tables, &|i| i != first && ok(i)) else {
        return Some(first);
    };
    // Compare outstanding / weight without dividing.
    let load = |i: u32, other: u32| {
        let e = &endpoints[i as usize];
        e.outstanding.load(Ordering::Relaxed) as u64 * u64::from(endpoints[other as usize].weight)
    };
    Some(if load(second, first) < load(first, second) {
        second
    } else {
        first
    })
}

fn by_ring(tables: &Tables, key: &[u8], ok: &dyn Fn(u32) -> bool) -> Option<u32> {
    let n = tables.ring.len();
    if n == 0 {
        return None;
    }
    let point = hash_bytes(key);
    let start = tables.ring.partition_point(|&(p, _)| p < point);
    (0..n)
        .map(|k| tables.ring[(start + k) % n].1)
        .find(|&i| ok(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FromText;

    #[test]
    fn smooth_schedule_spreads_the_heavy_instance() {
        assert_eq!(
            smooth_weighted_schedule(&[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_weighted_schedule(&[2, 2]), vec![0, 1]);
    }

    fn endpoints(outstanding: &[usize]) -> Vec<std::sync::Arc<Endpoint>> {
        outstanding
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let spec = super::super::EndpointSpec {
                    id: format!("e{i}").into(),
                    address: format!("127.0.0.1:{}", 1000 + i).into(),
                    weight: 1,
                    metadata: Default::default(),
                    source: super::super::Source::Static,
                    expires_at: 0,
                };
                let e = std::sync::Arc::new(Endpoint::new(&spec, 1).unwrap());
                e.outstanding.store(n, Ordering::Relaxed);
                e
            })
            .collect()
    }

    #[test]
    fn least_request_picks_the_less_loaded_of_two() {
        let set = endpoints(&[3, 0]);
        let tables = Tables::build(BalancerKind::LeastRequest, &set);
        let counter = AtomicUsize::new(0);
        let exclude = Exclude { tried: &[], now: 0 };
        for _ in 0..100 {
            let picked = pick(
                BalancerKind::LeastRequest,
                &set,
                &tables,
                &counter,
                None,
                &exclude,
            );
            assert_eq!(picked, Some(1));
        }
    }

    #[test]
    fn picks_skip_tried_instances_while_another_is_available() {
        let set = endpoints(&[0, 0, 0]);
        let counter = AtomicUsize::new(0);
        for kind in [
            BalancerKind::RoundRobin,
            BalancerKind::Random,
            BalancerKind::LeastRequest,
        ] {
            let tables = Tables::build(kind, &set);
            let exclude = Exclude {
                tried: &[0, 2],
                now: 0,
            };
            for _ in 0..50 {
                assert_eq!(pick(kind, &set, &tables, &counter, None, &exclude), Some(1));
            }
            // All tried: an available one is used again rather than none.
            let all = Exclude {
                tried: &[0, 1, 2],
                now: 0,
            };
            assert!(pick(kind, &set, &tables, &counter, None, &all).is_some());
        }
    }

    #[test]
    fn hash_on_parses_and_reads_keys() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.insert(COOKIE, "a=1; session=s3cr3t; b=2".parse().unwrap());
        let h = HashOn::from_text("header:x-user").unwrap();
        assert_eq!(h.key(&headers), Some(&b"alice"[..]));
        let c = HashOn::from_text("cookie:session").unwrap();
        assert_eq!(c.key(&headers), Some(&b"s3cr3t"[..]));
        assert!(
            HashOn::from_text("cookie:none")
                .unwrap()
                .key(&headers)
                .is_none()
        );
        // Several headers, odd spacing, pairs without `=` and a name that is another's prefix.
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "junk; sess=no".parse().unwrap());
        headers.append(COOKIE, " session = v1 ;session=v2".parse().unwrap());
        assert_eq!(c.key(&headers), Some(&b"v1"[..]));
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "session=".parse().unwrap());
        assert_eq!(c.key(&headers), Some(&b""[..]));
        headers.insert(
            COOKIE,
            http::HeaderValue::from_bytes(b"session=\xff").unwrap(),
        );
        assert_eq!(c.key(&headers), None, "not UTF-8: no key");
    }
}
