//! A step's effective settings: the step's own value, else the job's
//! `defaults`, else the built-in default. The runner reads only these.

use std::path::{Path, PathBuf};

use super::cache::CacheSetting;
use super::egress::{Egress, OnViolation};
use super::model::{Job, Step, User};
use super::units::{ByteSize, Duration};

/// Built-in timeout per attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::secs(600);
const MI: u64 = 1024 * 1024;

/// The root image a step boots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// The built-in image (`default`).
    Name(String),
    /// A directory or ext4 file, resolved against the manifest's directory.
    Path(PathBuf),
    /// A container image: a registry reference (`python:3.12`,
    /// `127.0.0.1:5000/grader:2024`, `docker://…`) or an `oci:`,
    /// `oci-archive:` or `docker-archive:` source whose path has been made
    /// absolute against the manifest's directory.
    Container(String),
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Name(n) | ImageRef::Container(n) => f.write_str(n),
            ImageRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl ImageRef {
    /// What `image:` means, read the way `docs/manifest.md` documents:
    /// `default` is the built-in image; a transport prefix (`docker://`,
    /// `oci:`, `oci-archive:`, `docker-archive:`) says what follows; a
    /// string that starts like a path (`/`, `./`, `../`) or names something
    /// that exists next to the manifest is a path; anything else is a
    /// registry reference, normalised as Docker does.
    pub fn classify(image: &str, manifest_dir: &Path) -> ImageRef {
        if image == "default" {
            return ImageRef::Name(image.to_owned());
        }
        for transport in ["oci-archive", "oci", "docker-archive"] {
            if let Some(rest) = image
                .strip_prefix(transport)
                .and_then(|r| r.strip_prefix(':'))
            {
                let (path, tail) = match rest.split_once(':') {
                    Some((p, t)) => (p, Some(t)),
                    None => (rest, None),
                };
                if path.is_empty() {
                    // Left for the parser to name as an error.
                    return ImageRef::Container(image.to_owned());
                }
                let mut absolute = format!("{transport}:{}", manifest_dir.join(path).display());
                if let Some(tail) = tail {
                    absolute.push(':');
                    absolute.push_str(tail);
                }
                return ImageRef::Container(absolute);
            }
        }
        if image.starts_with("docker://") {
            return ImageRef::Container(image.to_owned());
        }
        let looks_like_path = image.starts_with('/')
            || image.starts_with("./")
            || image.starts_with("../")
            || image == "."
            || image == "..";
        if looks_like_path || manifest_dir.join(image).exists() {
            // Without `.` components, so messages name `/jobs/rootfs`,
            // not `/jobs/./rootfs`.
            return ImageRef::Path(manifest_dir.join(image).components().collect());
        }
        ImageRef::Container(image.to_owned())
    }
}

/// Everything about how one step runs, with all defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Root image.
    pub image: ImageRef,
    /// Time limit per attempt.
    pub timeout: Duration,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory.
    pub memory: ByteSize,
    /// Writable disk in the guest.
    pub disk: ByteSize,
    /// Network policy.
    pub egress: Egress,
    /// What an egress denial does to a step that passed.
    pub on_violation: OnViolation,
    /// The user the step runs as.
    pub user: User,
    /// Whether the step or the defaults chose `user` (otherwise a
    /// container image's own user applies).
    pub user_given: bool,
    /// Retries after a failed attempt.
    pub retries: u32,
    /// Most processes.
    pub pids: u32,
    /// Most open files per process.
    pub open_files: u32,
    /// Stdout+stderr kept.
    pub output: ByteSize,
    /// Largest file written.
    pub file_size: ByteSize,
    /// CPU time per attempt, when limited.
    pub cpu_time: Option<Duration>,
    /// Memory of the step's processes, when limited.
    pub memory_limit: Option<ByteSize>,
    /// The step's cache setting; `None` leaves it to the default rule.
    pub cache: Option<CacheSetting>,
}

impl Job {
    /// The effective settings of `step`.
    pub fn settings(&self, step: &Step) -> Settings {
        let d = &self.defaults;
        let image = step
            .image
            .as_ref()
            .or(d.image.as_ref())
            .map_or("default", |s| s.as_str());
        let image = ImageRef::classify(image, &self.source.dir);
        let res = |f: fn(&super::model::Resources) -> Option<u64>| {
            step.resources
                .as_ref()
                .and_then(f)
                .or_else(|| d.resources.as_ref().and_then(f))
        };
        let lim = |f: fn(&super::model::Limits) -> Option<u64>| {
            step.limits
                .as_ref()
                .and_then(f)
                .or_else(|| d.limits.as_ref().and_then(f))
        };
        let small = |v: Option<u64>, default: u32| {
            v.map_or(default, |v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        Settings {
            image,
            timeout: step
                .timeout
                .as_ref()
                .or(d.timeout.as_ref())
                .map_or(DEFAULT_TIMEOUT, |t| t.value),
            vcpus: small(res(|r| r.vcpus.as_ref().map(|v| u64::from(v.value))), 1),
            memory: ByteSize(res(|r| r.memory.as_ref().map(|v| v.value.0)).unwrap_or(512 * MI)),
            disk: ByteSize(res(|r| r.disk.as_ref().map(|v| v.value.0)).unwrap_or(1024 * MI)),
            egress: step
                .egress
                .as_ref()
                .and_then(|e| e.policy.clone())
                .or_else(|| d.egress.as_ref().and_then(|e| e.policy.clone()))
                .unwrap_or_default(),
            on_violation: step
                .egress
                .as_ref()
                .and_then(|e| e.on_violation)
                .or_else(|| d.egress.as_ref().and_then(|e| e.on_violation))
                .unwrap_or_default(),
            user: step.user.or(d.user).unwrap_or_default(),
            user_given: step.user.or(d.user).is_some(),
            retries: step
                .retries
                .as_ref()
                .or(d.retries.as_ref())
                .map_or(0, |r| r.value),
            pids: small(lim(|l| l.pids.as_ref().map(|v| u64::from(v.value))), 1024),
            open_files: small(
                lim(|l| l.open_files.as_ref().map(|v| u64::from(v.value))),
                1024,
            ),
            output: ByteSize(lim(|l| l.output.as_ref().map(|v| v.value.0)).unwrap_or(10 * MI)),
            file_size: ByteSize(
                lim(|l| l.file_size.as_ref().map(|v| v.value.0)).unwrap_or(1024 * MI),
            ),
            cpu_time: step
                .limits
                .as_ref()
                .and_then(|l| l.cpu_time.as_ref())
                .or_else(|| d.limits.as_ref().and_then(|l| l.cpu_time.as_ref()))
                .map(|t| t.value),
            memory_limit: lim(|l| l.memory.as_ref().map(|v| v.value.0)).map(ByteSize),
            cache: step.cache.as_ref().or(d.cache.as_ref()).map(|c| c.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_strings_are_read_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootdir")).unwrap();
        let d = dir.path();
        let container = |s: &str| ImageRef::Container(s.to_owned());
        assert_eq!(
            ImageRef::classify("default", d),
            ImageRef::Name("default".into())
        );
        assert_eq!(
            ImageRef::classify("python:3.12", d),
            container("python:3.12")
        );
        assert_eq!(
            ImageRef::classify("127.0.0.1:5000/team/img:1", d),
            container("127.0.0.1:5000/team/img:1")
        );
        assert_eq!(
            ImageRef::classify("docker://busybox", d),
            container("docker://busybox")
        );
        // A name that exists next to the manifest is a path, as is
        // anything that starts like one.
        assert_eq!(
            ImageRef::classify("rootdir", d),
            ImageRef::Path(d.join("rootdir"))
        );
        assert_eq!(
            ImageRef::classify("./x.ext4", d),
            ImageRef::Path(d.join("x.ext4"))
        );
        assert_eq!(
            ImageRef::classify("/abs/x.ext4", d),
            ImageRef::Path("/abs/x.ext4".into())
        );
        // Local sources get absolute paths, keeping their tag.
        assert_eq!(
            ImageRef::classify("oci:layouts/py:3.11", d),
            container(&format!("oci:{}:3.11", d.join("layouts/py").display()))
        );
        assert_eq!(
            ImageRef::classify("docker-archive:/srv/img.tar", d),
            container("docker-archive:/srv/img.tar")
        );
    }
}
