//! Which step of entering the jail failed, and why, in words an operator
//! can act on.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// The steps of entering the jail, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JailStep {
    Cgroup,
    UserNamespace,
    Namespaces,
    Fork,
    RootFilesystem,
    Rlimits,
    Capabilities,
    Credentials,
    NoNewPrivileges,
    SignalHandler,
    Seccomp,
}

impl fmt::Display for JailStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JailStep::Cgroup => "join the VM's cgroup",
            JailStep::UserNamespace => "enter a user namespace",
            JailStep::Namespaces => "enter new mount/PID/network/IPC/UTS namespaces",
            JailStep::Fork => "fork into the new PID namespace",
            JailStep::RootFilesystem => "pivot_root into an empty read-only root",
            JailStep::Rlimits => "set resource limits",
            JailStep::Capabilities => "drop capabilities",
            JailStep::Credentials => "switch to an unprivileged user",
            JailStep::NoNewPrivileges => "set no_new_privs",
            JailStep::SignalHandler => "install the SIGSYS reporter",
            JailStep::Seccomp => "install the seccomp filter",
        })
    }
}

/// A jail step failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step}: {detail}{}", hint(.source))]
pub struct JailError {
    pub step: JailStep,
    /// What was being done, e.g. `mount tmpfs on /tmp`.
    pub detail: String,
    #[source]
    pub source: io::Error,
}

impl JailError {
    pub(crate) fn new(step: JailStep, detail: impl Into<String>, source: io::Error) -> Self {
        JailError {
            step,
            detail: detail.into(),
            source,
        }
    }

    /// `detail` followed by the OS error and a hint, for reports that do
    /// not print the source chain.
    pub fn reason(&self) -> String {
        format!("{}: {}{}", self.detail, self.source, hint(&self.source))
    }
}

/// Shorthand for the last OS error of a failed call.
pub(crate) fn os_error(step: JailStep, detail: impl Into<String>) -> JailError {
    JailError::new(step, detail, io::Error::last_os_error())
}

fn hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (missing privilege: run as root, or allow unprivileged user namespaces; \
             `--no-jail` runs without the jail for debugging)"
        }
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            " (the kernel lacks this feature; `--no-jail` runs without the jail for debugging)"
        }
        _ => "",
    }
}
