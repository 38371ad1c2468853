//! The built-in breaker plugin's shared-state layout: the one copy of a contract that crosses
//! the WebAssembly boundary. The plugin (`plugins/breaker`, built for wasm32-wasip2) writes
//! these keys and values through the host's shared state; the gateway (`gateway/src/hystrix.rs`,
//! native) reads them to serve `/hystrix.stream`, the dashboard and the breaker metrics. Both
//! build every key and parse every value with the functions below, so they cannot drift.
//!
//! `C` below is the command name (`ROUTE METHOD`, or `ROUTE` with `command_key = "route"`).
//! The formats are stable: a gateway reads the state a plugin of the same version wrote, and
//! the layout is documented in `plugins/breaker/README.md`.

/// Outcome kinds counted per bucket of the rolling window.
pub const KINDS: [&str; 7] = [
    SUCCESS,
    FAILURE,
    TIMEOUT,
    REJECTED,
    SHORT_CIRCUITED,
    FALLBACK,
    BAD_REQUEST,
];
/// Executed, and the upstream's answer is not an error.
pub const SUCCESS: &str = "success";
/// Executed; an error status, or a connection failure.
pub const FAILURE: &str = "failure";
/// Executed; the upstream did not answer within `timeout` (504).
pub const TIMEOUT: &str = "timeout";
/// Rejected by the bulkhead (Hystrix SEMAPHORE_REJECTED).
pub const REJECTED: &str = "rejected";
/// Short-circuited by the open circuit.
pub const SHORT_CIRCUITED: &str = "short_circuited";
/// Answered with the configured fallback.
pub const FALLBACK: &str = "fallback";
/// Reserved (Hystrix BAD_REQUEST); never written today.
pub const BAD_REQUEST: &str = "bad_request";

/// The circuit entered `open` (a `transitions|C|TO` suffix).
pub const TO_OPEN: &str = "open";
/// The circuit entered `half_open`.
pub const TO_HALF_OPEN: &str = "half_open";
/// The circuit entered `closed`.
pub const TO_CLOSED: &str = "closed";
/// Every `transitions|C|TO` suffix, in the order the gateway reports them.
pub const TRANSITIONS: [&str; 3] = [TO_OPEN, TO_HALF_OPEN, TO_CLOSED];

/// The prefix of every `cmd|C` key: how the gateway finds the commands.
pub const COMMAND_PREFIX: &str = "cmd|";

/// A piece of a key or value.
enum Part<'a> {
    Str(&'a str),
    Num(u64),
}
use Part::{Num, Str};

/// Appends the parts to `out`. The breaker builds its per-request keys inside the sandbox,
/// where `format!`'s machinery (dynamic dispatch, a growing buffer) was a visible share of the
/// plugin's own time (perf map of the breaker, 2026-11-27); `itoa` writes the numbers. The
/// `*_into` functions write into a buffer the caller keeps, so a key costs no allocation
/// (the breaker's request path); the others return a new `String`.
fn write(out: &mut String, parts: &[Part<'_>]) {
    for part in parts {
        match part {
            Str(s) => out.push_str(s),
            Num(n) => out.push_str(itoa::Buffer::new().format(*n)),
        }
    }
}

/// The parts as one `String`, allocated once.
fn key(parts: &[Part<'_>]) -> String {
    let capacity = parts
        .iter()
        .map(|part| match part {
            Str(s) => s.len(),
            Num(_) => 20,
        })
        .sum();
    let mut out = String::with_capacity(capacity);
    write(&mut out, parts);
    out
}

/// Defines `NAME(args) -> String` and `NAME_into(out, args)` (appends) from one list of
/// parts, so the two cannot drift.
macro_rules! key_fn {
    ($(#[$doc:meta])* $name:ident, $into:ident ($($arg:ident: $ty:ty),*) => [$($part:expr),* $(,)?]) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> String {
            key(&[$($part),*])
        }

        #[doc = concat!("[`", stringify!($name), "`], appended to `out` (no allocation when `out` has room).")]
        pub fn $into(out: &mut String, $($arg: $ty),*) {
            write(out, &[$($part),*]);
        }
    };
}

key_fn!(
    /// `cmd|C`: the JSON [`CommandRecord`] describing the command and its settings (no TTL).
    command, command_into(c: &str) => [Str(COMMAND_PREFIX), Str(c)]
);

key_fn!(
    /// `circuit|C`: [`open_value`] or [`closed_value`]; absent = closed, never opened.
    circuit, circuit_into(c: &str) => [Str("circuit|"), Str(c)]
);

key_fn!(
    /// `trial|C|T`: counter of trials granted for the open period that started at T (TTL: the
    /// lease). Present = half-open.
    trial, trial_into(c: &str, opened_at: u64) => [Str("trial|"), Str(c), Str("|"), Num(opened_at)]
);

key_fn!(
    /// `n|C|B|KIND`: outcomes in bucket B (= monotonic ms / bucket ms); TTL window + bucket.
    count, count_into(c: &str, bucket: u64, kind: &str) => [
        Str("n|"),
        Str(c),
        Str("|"),
        Num(bucket),
        Str("|"),
        Str(kind),
    ]
);

key_fn!(
    /// `lat|C|P|I`: executions in percentile bucket P (= monotonic ms /
    /// [`PERCENTILE_BUCKET_MS`]) whose latency fell in histogram bucket I (see
    /// [`LATENCY_BOUNDS_MS`]); TTL 70 s.
    latency, latency_into(c: &str, pbucket: u64, index: usize) => [
        Str("lat|"),
        Str(c),
        Str("|"),
        Num(pbucket),
        Str("|"),
        Num(index as u64),
    ]
);

key_fn!(
    /// `latsum|C|P`: sum of the latencies in µs of percentile bucket P; TTL 70 s.
    latency_sum, latency_sum_into(c: &str, pbucket: u64) => [Str("latsum|"), Str(c), Str("|"), Num(pbucket)]
);

key_fn!(
    /// `inflight|C|L`: requests admitted by the bulkhead in lease period L (= monotonic ms /
    /// the command's lease) and not finished yet; TTL two leases and a margin. A request
    /// counts in its own period and the next one, so one that never reports back stops
    /// counting after one to two leases.
    inflight, inflight_into(c: &str, period: u64) => [Str("inflight|"), Str(c), Str("|"), Num(period)]
);

key_fn!(
    /// `transitions|C|TO`: transitions into `TO` (one of [`TRANSITIONS`]; no TTL).
    transitions, transitions_into(c: &str, to: &str) => [Str("transitions|"), Str(c), Str("|"), Str(to)]
);

/// The value of `circuit|C` when the circuit opened at `at` (monotonic ms): `open:T`.
pub fn open_value(at: u64) -> String {
    key(&[Str("open:"), Num(at)])
}

/// The value of `circuit|C` when the circuit closed at `at` (monotonic ms): `closed:T`.
pub fn closed_value(at: u64) -> String {
    key(&[Str("closed:"), Num(at)])
}

/// When the circuit opened, if `value` (of `circuit|C`) says it is open.
pub fn parse_open(value: &[u8]) -> Option<u64> {
    timestamp(value, b"open:")
}

/// When the circuit closed, if `value` (of `circuit|C`) says it is closed.
pub fn parse_closed(value: &[u8]) -> Option<u64> {
    timestamp(value, b"closed:")
}

fn timestamp(value: &[u8], prefix: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.strip_prefix(prefix)?)
        .ok()?
        .parse()
        .ok()
}

/// A counter's value as the host's `incr` writes it (decimal `i64`); unreadable or
/// (transiently) negative counts as 0.
pub fn parse_counter(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |n| n.max(0).unsigned_abs())
}

/// Upper bounds (inclusive, ms) of the latency histogram; the last bucket is unbounded.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 100, 200, 500, 1000, 2000, 5000,
];
/// Length of one percentile bucket (Hystrix: 60 s in 6 buckets).
pub const PERCENTILE_BUCKET_MS: u64 = 10_000;
/// Percentile buckets in the window.
pub const PERCENTILE_BUCKETS: u64 = 6;

/// The histogram bucket (the `I` of `lat|C|P|I`) of a latency in µs: the first bound it does
/// not exceed, or `LATENCY_BOUNDS_MS.len()` above the last.
pub fn latency_index(latency_us: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&b| latency_us <= b * 1000)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The `cmd|C` record: what the plugin announces about a command. Its fields are in
/// alphabetical order so the JSON is byte-for-byte what earlier plugin versions wrote (a
/// `serde_json` object, whose keys are sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CommandRecord {
    /// Hystrix's `circuitBreakerErrorThresholdPercentage`.
    pub error_threshold_percent: u64,
    /// Whether a fallback response is configured (absent from records of older plugins).
    #[cfg_attr(feature = "serde", serde(default))]
    pub fallback: bool,
    /// The circuit is held closed.
    pub force_closed: bool,
    /// The circuit is held open.
    pub force_open: bool,
    /// Hystrix group (the route unless configured).
    pub group: String,
    /// Trials let through when the sleep window ends.
    pub half_open_requests: u64,
    /// The bulkhead's lease period (its `inflight` counters are per period); absent from
    /// records of older plugin versions.
    #[cfg_attr(feature = "serde", serde(default))]
    pub lease_ms: u64,
    /// The bulkhead's size.
    pub max_concurrent_requests: u64,
    /// The method (`*` when the command is the whole route).
    pub method: String,
    /// Command name (`ROUTE METHOD`, or `ROUTE`).
    pub name: String,
    /// Hystrix's `circuitBreakerRequestVolumeThreshold`.
    pub request_volume_threshold: u64,
    /// Buckets of the rolling window.
    pub rolling_buckets: u64,
    /// Length of the rolling window.
    pub rolling_window_ms: u64,
    /// The route.
    pub route: String,
    /// How long an open circuit short-circuits before trials.
    pub sleep_window_ms: u64,
    /// The per-command upstream timeout (0: none).
    pub timeout_ms: u64,
}

impl CommandRecord {
    /// Length of one bucket of the rolling window, if the record describes a usable window
    /// (at least one bucket of at least 1 ms).
    pub fn bucket_ms(&self) -> Option<u64> {
        (self.rolling_buckets > 0 && self.rolling_window_ms >= self.rolling_buckets)
            .then(|| self.rolling_window_ms / self.rolling_buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is a contract with state written by deployed plugins: these strings must not
    /// change.
    #[test]
    fn keys_keep_their_format() {
        assert_eq!(command("api GET"), "cmd|api GET");
        assert_eq!(circuit("api GET"), "circuit|api GET");
        assert_eq!(trial("api GET", 42), "trial|api GET|42");
        assert_eq!(count("api GET", 7, FAILURE), "n|api GET|7|failure");
        assert_eq!(latency("api", 3, 16), "lat|api|3|16");
        assert_eq!(latency_sum("api", 3), "latsum|api|3");
        assert_eq!(inflight("api", 9), "inflight|api|9");
        assert_eq!(
            transitions("api", TO_HALF_OPEN),
            "transitions|api|half_open"
        );
        assert_eq!(open_value(5), "open:5");
        assert_eq!(closed_value(6), "closed:6");
        // Numbers at both ends of their range, written in full.
        assert_eq!(open_value(0), "open:0");
        assert_eq!(
            count("a", u64::MAX, SUCCESS),
            format!("n|a|{}|success", u64::MAX)
        );
    }

    /// The `_into` forms append the same key to what the buffer holds.
    #[test]
    fn keys_written_into_a_buffer_are_the_same_keys() {
        let mut out = String::from("x");
        count_into(&mut out, "api GET", 7, FAILURE);
        assert_eq!(out, format!("x{}", count("api GET", 7, FAILURE)));
        type Writer = fn(&mut String);
        let cases: [(Writer, String); 7] = [
            (|o| command_into(o, "c"), command("c")),
            (|o| circuit_into(o, "c"), circuit("c")),
            (|o| trial_into(o, "c", 42), trial("c", 42)),
            (|o| latency_into(o, "c", 3, 16), latency("c", 3, 16)),
            (
                |o| latency_sum_into(o, "c", u64::MAX),
                latency_sum("c", u64::MAX),
            ),
            (|o| inflight_into(o, "c", 0), inflight("c", 0)),
            (
                |o| transitions_into(o, "c", TO_OPEN),
                transitions("c", TO_OPEN),
            ),
        ];
        for (write, expected) in cases {
            let mut out = String::new();
            write(&mut out);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn circuit_values_round_trip_and_refuse_garbage() {
        assert_eq!(parse_open(open_value(123).as_bytes()), Some(123));
        assert_eq!(parse_closed(closed_value(9).as_bytes()), Some(9));
        assert_eq!(parse_open(closed_value(9).as_bytes()), None);
        assert_eq!(parse_closed(open_value(9).as_bytes()), None);
        for bad in [
            &b"open:"[..],
            b"open:-1",
            b"open:1x",
            b"open: 1",
            b"OPEN:1",
            b"\xff",
        ] {
            assert_eq!(parse_open(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn counters_read_as_the_host_writes_them() {
        assert_eq!(parse_counter(b"17"), 17);
        assert_eq!(parse_counter(b"-3"), 0);
        assert_eq!(parse_counter(b"x"), 0);
        assert_eq!(parse_counter(b"99999999999999999999"), 0);
        assert_eq!(parse_counter(b"\xff"), 0);
        assert_eq!(
            parse_counter(i64::MAX.to_string().as_bytes()),
            i64::MAX as u64
        );
    }

    #[test]
    fn latencies_fall_in_inclusive_buckets() {
        assert_eq!(latency_index(0), 0);
        assert_eq!(latency_index(1000), 0);
        assert_eq!(latency_index(1001), 1);
        assert_eq!(latency_index(5_000_000), LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(latency_index(5_000_001), LATENCY_BOUNDS_MS.len());
    }

    #[test]
    fn unusable_windows_have_no_bucket() {
        let mut r = CommandRecord {
            error_threshold_percent: 50,
            fallback: false,
            force_closed: false,
            force_open: false,
            group: "g".into(),
            half_open_requests: 1,
            lease_ms: 0,
            max_concurrent_requests: 1,
            method: "*".into(),
            name: "api".into(),
            request_volume_threshold: 20,
            rolling_buckets: 10,
            rolling_window_ms: 10_000,
            route: "api".into(),
            sleep_window_ms: 5000,
            timeout_ms: 1000,
        };
        assert_eq!(r.bucket_ms(), Some(1000));
        r.rolling_buckets = 0;
        assert_eq!(r.bucket_ms(), None);
        r.rolling_buckets = 20;
        r.rolling_window_ms = 10;
        assert_eq!(r.bucket_ms(), None);
    }
}
