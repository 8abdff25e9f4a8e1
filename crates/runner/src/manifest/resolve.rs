//! A step's effective settings: the step's own value, else the job's
//! `defaults`, else the built-in default. The runner reads only these.

use std::path::PathBuf;

use super::egress::{Egress, OnViolation};
use super::model::{Job, Step, User};
use super::units::{ByteSize, Duration};

/// Built-in timeout per attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::secs(600);
const MI: u64 = 1024 * 1024;

/// The root image a step boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A named image from the image store (`default`).
    Name(String),
    /// A directory or ext4 file, resolved against the manifest's directory.
    Path(PathBuf),
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
        let image = if image.contains('/') || image.starts_with('.') {
            ImageRef::Path(self.source.dir.join(image))
        } else {
            ImageRef::Name(image.to_owned())
        };
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
        }
    }
}
