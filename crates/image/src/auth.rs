//! Registry credentials, found the way skopeo and docker find them:
//! credentials the caller passes first, then the auth file named by
//! `REGISTRY_AUTH_FILE`, then `$XDG_RUNTIME_DIR/containers/auth.json`, then
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`). Only
//! inline `auths` entries are read; credential helpers (`credsStore`,
//! `credHelpers`) are not run.
//!
//! A password is a [`Secret`]: its `Debug` prints `***` and nothing in this
//! crate formats it, so it reaches no log line and no error message.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// A string that never shows itself in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password or token.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user name and password for one registry (used for HTTP basic auth and
/// to obtain bearer tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or personal access token.
    pub password: Secret,
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `https://index.docker.io/v1/` → `docker.io`, `host:5000/path` → `host:5000`.
fn normalise_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => crate::reference::DOCKER_HUB.to_owned(),
        _ => host,
    }
}

/// The auth files to look in, in order.
fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&p).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => files.push(Path::new(&dir).join("config.json")),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                files.push(Path::new(&home).join(".docker/config.json"));
            }
        }
    }
    files
}

/// Credentials for `registry` in one auth file's JSON, if it has any.
fn from_auth_json(bytes: &[u8], registry: &str) -> Option<Credentials> {
    let file: AuthFile = serde_json::from_slice(bytes).ok()?;
    let entry = file
        .auths
        .into_iter()
        .find(|(k, _)| normalise_key(k) == registry)?
        .1;
    if let (Some(username), Some(password)) = (entry.username, entry.password) {
        return Some(Credentials {
            username,
            password: Secret::new(password),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth?.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some(Credentials {
        username: user.to_owned(),
        password: Secret::new(pass),
    })
}

/// Credentials for `registry` (`host[:port]`, as normalised by
/// [`crate::reference`]): `explicit` first, then the auth files.
pub fn lookup(registry: &str, explicit: &[(String, Credentials)]) -> Option<Credentials> {
    if let Some((_, c)) = explicit.iter().find(|(r, _)| normalise_key(r) == registry) {
        return Some(c.clone());
    }
    auth_files()
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .find_map(|bytes| from_auth_json(&bytes, registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_are_found_by_normalised_host() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNzOndpdGg6Y29sb25z"},
            "127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
        let hub = from_auth_json(json, "docker.io").unwrap();
        assert_eq!(hub.username, "user");
        assert_eq!(hub.password.expose(), "pass:with:colons");
        assert_eq!(
            from_auth_json(json, "127.0.0.1:5000").unwrap().username,
            "u"
        );
        assert!(from_auth_json(json, "ghcr.io").is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
