//! The plugin's configuration, as the gateway hands it to `init`.

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

/// Parses a duration as gateway configs write them — `"500ms"`, `"30s"`, `"10m"`, `"1h"`, or
/// `"0"` — into milliseconds. Hand-written so the SDK carries no extra dependency into every
/// plugin's Wasm.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let bad = || format!("`{text}` is not a duration like \"500ms\", \"30s\", \"10m\", \"1h\"");
    let (number, factor) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return Err(bad());
    };
    let number: u64 = number.trim().parse().map_err(|_| bad())?;
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms(" 250ms "), Ok(250));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("30").is_err());
        assert!(parse_duration_ms("1d").is_err());
        assert!(parse_duration_ms("99999999999999999h").is_err());
    }
}
