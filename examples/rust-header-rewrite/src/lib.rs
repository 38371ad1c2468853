//! Sets, removes and renames headers on the way in and out.
//!
//! ```toml
//! [plugin.rust-header-rewrite]
//! request_set = { "x-gateway" = "sluice" }
//! request_remove = ["x-internal-token"]
//! request_rename = { "x-old-name" = "x-new-name" }
//! response_set = { "x-served-by" = "sluice" }
//! response_remove = ["server"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_plugin_sdk::{Action, Config, Error, Plugin, Request, ResponseHead};

/// The plugin's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRewrite {
    request_set: BTreeMap<String, String>,
    request_remove: Vec<String>,
    request_rename: BTreeMap<String, String>,
    response_set: BTreeMap<String, String>,
    response_remove: Vec<String>,
}

impl Plugin for HeaderRewrite {
    fn init(config: Config) -> Result<Self, Error> {
        config.deserialize()
    }

    fn on_request(&self, request: &Request<'_>) -> Result<Action, Error> {
        for (from, to) in &self.request_rename {
            // Every value moves, in order; bytes, not text, so nothing is lost.
            let values = request.header_all(from);
            if request.remove_header(from) {
                request.remove_header(to);
                for value in values {
                    request.append_header(to, value)?;
                }
            }
        }
        for name in &self.request_remove {
            request.remove_header(name);
        }
        for (name, value) in &self.request_set {
            request.set_header(name, value)?;
        }
        Ok(Action::Continue)
    }

    fn on_response(
        &self,
        _request: &Request<'_>,
        response: &ResponseHead<'_>,
    ) -> Result<(), Error> {
        for name in &self.response_remove {
            response.remove_header(name);
        }
        for (name, value) in &self.response_set {
            response.set_header(name, value)?;
        }
        Ok(())
    }
}

sluice_plugin_sdk::export_plugin!(HeaderRewrite);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin_sdk::testing::{TestHost, TestRequest, TestResponseHead};

    use super::*;

    #[test]
    fn rewrites_request_and_response_headers() {
        let host = TestHost::new();
        let plugin: HeaderRewrite = host
            .init(json!({
                "request_set": { "x-gateway": "sluice" },
                "request_remove": ["x-internal-token"],
                "request_rename": { "x-old": "x-new" },
                "response_set": { "x-served-by": "sluice" },
                "response_remove": ["server"],
            }))
            .unwrap();
        let req = TestRequest::get("/")
            .with_header("x-internal-token", "secret")
            .with_header("x-old", [0xff, 0x01]) // not UTF-8: moved as bytes
            .with_header("x-old", "second");
        host.on_request(&plugin, &req).unwrap();
        assert_eq!(req.header_str("x-gateway").as_deref(), Some("sluice"));
        assert_eq!(req.header("x-internal-token"), None);
        assert_eq!(req.header("x-old"), None);
        assert_eq!(req.header("x-new"), Some(vec![0xff, 0x01]));

        let resp = TestResponseHead::new(200).with_header("server", "nginx");
        host.on_response(&plugin, &req, &resp).unwrap();
        assert_eq!(resp.header("server"), None);
        assert_eq!(resp.header_str("x-served-by").as_deref(), Some("sluice"));
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let host = TestHost::new();
        let err = host
            .init::<HeaderRewrite>(json!({ "request_sett": {} }))
            .unwrap_err();
        assert!(
            err.message().contains("unknown field `request_sett`"),
            "{err}"
        );
    }
}
