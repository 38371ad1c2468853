//! Sampling decisions.

use serde::Deserialize;

/// `sampler` (and `root_sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Follow the caller's decision; without one, `root_sampler`.
    #[default]
    ParentBased,
    /// Sample every trace.
    Always,
    /// Sample none (`keep_errors` still keeps failed requests).
    Never,
    /// Sample `ratio` of traces, decided from the trace id.
    Ratio,
}

/// Whether a trace id falls in `ratio`: the same rule as OpenTelemetry's
/// `TraceIdRatioBased` sampler (the low 8 bytes of the id, as an integer shifted right by
/// one, below `ratio * 2^63`), so every hop that uses it on the same trace agrees.
pub fn ratio_keeps(trace_id: &str, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let Some(low) = trace_id
        .get(16..32)
        .and_then(|s| u64::from_str_radix(s, 16).ok())
    else {
        return false;
    };
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_edges() {
        let id = "4bf92f3577b34da6ffffffffffffffff";
        assert!(ratio_keeps(id, 1.0));
        assert!(!ratio_keeps(id, 0.0));
        assert!(!ratio_keeps(id, 0.999));
        assert!(ratio_keeps("4bf92f3577b34da60000000000000001", 0.001));
        assert!(!ratio_keeps("short", 0.5));
    }

    #[test]
    fn ratio_holds_over_many_ids() {
        // A simple LCG gives spread-out ids; the share kept must be near the ratio.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let n = 20_000;
        let mut kept = 0;
        for _ in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = format!("{:016x}{:016x}", x.rotate_left(17), x);
            if ratio_keeps(&id, 0.25) {
                kept += 1;
            }
        }
        let share = f64::from(kept) / f64::from(n);
        assert!((share - 0.25).abs() < 0.02, "{share}");
    }
}
