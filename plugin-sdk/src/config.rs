//! The plugin's configuration, as the gateway hands it to `init`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// Configuration from `[plugin.NAME]` (and `NAME.toml` beside the plugin), as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    value: Value,
}

impl Config {
    /// Parses the JSON text the gateway sends.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::new(format!("config is not JSON: {e}")))?;
        Ok(Self { value })
    }

    /// A config from a JSON value (for tests).
    pub fn from_value(value: Value) -> Self {
        Self { value }
    }

    /// The whole configuration.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// A top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    /// A top-level string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Deserializes the whole configuration into a type, with an error naming the field.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.value).map_err(|e| Error::new(format!("invalid config: {e}")))
    }
}

/// Parses a duration in the gateway's own grammar: `"500ms"`, `"30s"`, `"1m 30s"`, `"2h 37min"`,
/// `"1.5s"`, `"1d"` or `"0"` (humantime's, which the gateway's config parser uses through
/// humantime-serde; `tests/conformance/durations.json` holds the cases both are checked with).
/// A number without a unit, a negative or an overflowing duration is an error naming the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like \"500ms\", \"30s\", \"1m 30s\": {e}"))
}

/// [`parse_duration`] in whole milliseconds, for settings kept as `u64` ms. A duration that is
/// not a whole number of milliseconds (`"1500us"`) or does not fit in a `u64` is an error.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("`{text}` is not a whole number of milliseconds"));
    }
    u64::try_from(duration.as_millis()).map_err(|_| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_duration, parse_duration_ms};

    /// The shared table: what parses here parses in the gateway's config, to the same value.
    #[test]
    fn durations_follow_the_gateway_grammar() {
        let table: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/conformance/durations.json"
        )))
        .unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() > 20);
        for case in cases {
            let input = case["input"].as_str().unwrap();
            let got = parse_duration(input);
            if case["error"] == true {
                let e = got.expect_err(input);
                assert!(e.contains(&format!("`{input}`")), "{input:?}: {e}");
            } else {
                let want = Duration::new(
                    case["secs"].as_u64().unwrap(),
                    case["nanos"].as_u64().unwrap() as u32,
                );
                assert_eq!(got, Ok(want), "{input:?}");
            }
        }
    }

    #[test]
    fn milliseconds_are_whole_and_bounded() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(
            parse_duration_ms("1500us")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(parse_duration_ms("30").is_err());
        assert!(parse_duration_ms("-1s").is_err());
        assert!(parse_duration_ms("99999999999999999h").is_err());
        // Fits a Duration, not u64 milliseconds.
        assert!(
            parse_duration_ms("18446744073709551615s")
                .unwrap_err()
                .contains("too long")
        );
    }
}
