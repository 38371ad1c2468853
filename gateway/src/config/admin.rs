//! `[admin]`: who may use the admin API (`admin_auth.rs` enforces it).

use std::path::PathBuf;

use serde::Deserialize;

use super::Problems;

/// `[admin]`: who may use the admin API.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `token = "..."`: writes and secret-bearing reads need `Authorization: Bearer TOKEN`.
    /// `SLUICE_ADMIN_TOKEN` in the environment is used when neither this nor `token_file`
    /// is set.
    pub token: Option<String>,
    /// `token_file = "/run/secrets/sluice-admin"`: the token, read from a file at start
    /// (surrounding whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// `registration_token = "..."`: a second token that may only register and deregister
    /// instances (`PUT`/`DELETE /registry/...`), for the services themselves.
    pub registration_token: Option<String>,
    /// `hosts = ["gateway.internal"]`: Host names (besides loopback ones and the admin bind
    /// address) accepted on the admin listener when no token is set.
    pub hosts: Vec<String>,
}

impl AdminConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.token.is_some() && self.token_file.is_some() {
            p.add("admin.token_file: set either token or token_file, not both".into());
        }
        for (key, value) in [
            ("token", &self.token),
            ("registration_token", &self.registration_token),
        ] {
            if value.as_ref().is_some_and(|t| t.trim().len() < 16) {
                p.add(format!(
                    "admin.{key}: must be at least 16 characters (use a random string)"
                ));
            }
        }
    }
}
