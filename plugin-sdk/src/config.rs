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
