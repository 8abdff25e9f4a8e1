//! The parts of an image's config the runner uses to start a step the way
//! the image's author meant: environment, working directory, user and the
//! default command, plus whether the final tree has a `/bin/sh` (a step
//! given as a shell script needs one).

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, KindResult};

/// What an image says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries, in the image's order.
    pub env: Vec<String>,
    /// The working directory; `None` means `/`.
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; `None` means root.
    pub user: Option<String>,
    /// The entrypoint, empty when the image has none.
    pub entrypoint: Vec<String>,
    /// The default arguments (or command, without an entrypoint).
    pub cmd: Vec<String>,
    /// `os/architecture` the config declares (`linux/amd64`).
    pub platform: String,
    /// Whether `/bin/sh` resolves to a file in the final tree (following
    /// symlinks inside the image, as the guest would).
    pub has_sh: bool,
    /// `user` as numeric (uid, gid), looked up in the final tree's
    /// `/etc/passwd` and `/etc/group` for names; `None` when the image sets
    /// no user or names one the tree does not define.
    #[serde(default)]
    pub user_ids: Option<(u32, u32)>,
}

impl ImageConfig {
    /// Reads the config blob `digest`. `has_sh` is filled in once the
    /// layers are applied.
    pub(crate) fn from_json(bytes: &[u8], digest: &str) -> KindResult<ImageConfig> {
        let parsed = ImageConfiguration::from_reader(bytes).map_err(|e| ErrorKind::Malformed {
            what: "image config",
            digest: digest.to_owned(),
            detail: e.to_string(),
        })?;
        let platform = format!("{}/{}", parsed.os(), parsed.architecture());
        let mut out = ImageConfig {
            platform,
            ..ImageConfig::default()
        };
        if let Some(c) = parsed.config() {
            out.env = c.env().clone().unwrap_or_default();
            // An empty string means "not set" in Docker's configs.
            out.working_dir = c.working_dir().clone().filter(|w| !w.is_empty());
            out.user = c.user().clone().filter(|u| !u.is_empty());
            out.entrypoint = c.entrypoint().clone().unwrap_or_default();
            out.cmd = c.cmd().clone().unwrap_or_default();
        }
        Ok(out)
    }
}

/// Resolves a config `User` (`name`, `uid`, `name:group`, `uid:gid`) the
/// way Docker does: names through the image's own `/etc/passwd` and
/// `/etc/group`; a uid without a group takes its passwd entry's group, or
/// group 0 when it has no entry. `None` when a name is not defined.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Option<(u32, u32)> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // passwd: name:x:uid:gid:gecos:home:shell
    let entries = passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            f.first()?.to_owned(),
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3)?.parse::<u32>().ok()?,
        ))
    });
    let entry = match user.parse::<u32>() {
        Ok(uid) => entries.clone().find(|e| e.1 == uid).or(Some(("", uid, 0))),
        Err(_) => entries.clone().find(|e| e.0 == user),
    }?;
    let gid = match grp {
        None => entry.2,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&g)).then(|| f.get(2)?.parse::<u32>().ok())?
            })?,
        },
    };
    Some((entry.1, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_like_docker() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\napp:x:1002:\n";
        assert_eq!(resolve_user("app", passwd, group), Some((1001, 1002)));
        assert_eq!(resolve_user("app:staff", passwd, group), Some((1001, 50)));
        assert_eq!(resolve_user("1001", passwd, group), Some((1001, 1002)));
        assert_eq!(resolve_user("4242", passwd, group), Some((4242, 0)));
        assert_eq!(resolve_user("4242:7", passwd, group), Some((4242, 7)));
        assert_eq!(resolve_user("nobody", passwd, group), None);
        assert_eq!(resolve_user("app:nogroup", passwd, group), None);
    }

    #[test]
    fn docker_style_config_is_summarised() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/usr/bin","A=b"],"WorkingDir":"/app","User":"1000:1000",
                      "Entrypoint":["/entry"],"Cmd":["run","--x"],"ExposedPorts":{"80/tcp":{}}},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let c = ImageConfig::from_json(json, "sha256:x").unwrap();
        assert_eq!(c.env, ["PATH=/usr/bin", "A=b"]);
        assert_eq!(c.working_dir.as_deref(), Some("/app"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.entrypoint, ["/entry"]);
        assert_eq!(c.cmd, ["run", "--x"]);
        assert_eq!(c.platform, "linux/amd64");
    }

    #[test]
    fn empty_strings_mean_unset_and_bad_json_names_the_digest() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"WorkingDir":"","User":""},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::from_json(json, "sha256:x").unwrap();
        assert_eq!((c.working_dir, c.user), (None, None));
        let err = ImageConfig::from_json(b"{", "sha256:feed").unwrap_err();
        assert!(err.to_string().contains("sha256:feed"), "{err}");
    }
}
