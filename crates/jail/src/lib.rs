//! The jail every `__vmm` process enters before its guest runs: new mount,
//! PID, network, IPC and UTS namespaces (and a user namespace when not
//! root), an empty read-only root, no capabilities, no new privileges, an
//! unprivileged uid, rlimits, a per-VM cgroup, and a seccomp filter per
//! thread kind. A guest that escapes into the VMM finds a process that can
//! only use the descriptors it already holds.
//!
//! A leaf module: it knows nothing of KVM or the control protocol. The VMM
//! runtime calls [`enter`] before building the VM, [`Jail::lock_down`] once
//! every descriptor is open, and [`ThreadFilter::apply`] on each thread.

mod cgroup;

mod error;
mod fds;
mod fs;
mod namespaces;
mod privileges;
pub mod seccomp;
pub mod selftest;

pub use cgroup::{join_cgroup, CgroupError, CgroupLimits, VmCgroup};
pub use error::{JailError, JailStep};
pub use fds::{adopt_inherited_fd, FdError};
pub use namespaces::{enter, ChildEnd, Entered, Jail, Relay};
pub use sbxrun_proto::jail::JailConfig;
pub use seccomp::{SeccompViolation, ThreadFilter, ThreadKind};
