//! Entering the namespaces, and the one fork that makes the VMM PID 1 of
//! its own PID namespace.
//!
//! `unshare(CLONE_NEWPID)` only moves the caller's *future children*, so
//! the `__vmm` process forks once, while it is still single-threaded and
//! before it opens /dev/kvm (a KVM VM belongs to the address space that
//! created it). The child is the VMM; the parent stays behind as a relay
//! that waits for it and turns how it died into a report for the runner.
//! The alternative, having the runner clone the process into a new PID
//! namespace, would need a raw clone() in the multi-threaded runner, where
//! running Rust code between clone and exec is unsound.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use super::cgroup::join_cgroup;
use super::error::{os_error, JailError, JailStep};
use super::seccomp::{self, Filters, SeccompViolation};
use super::{fs, privileges};
use sbxrun_proto::jail::JailConfig;

/// What [`enter`] made of the calling process.
pub enum Entered {
    /// This process is the jailed VMM, PID 1 of the new PID namespace.
    Jailed(Jail),
    /// This process is the relay: it must only [`Relay::wait`].
    Relay(Relay),
}

/// The VMM side of the jail, between entering the namespaces and locking down.
pub struct Jail {
    started: Instant,
    user_namespace: bool,
    death_note: OwnedFd,
}

/// The relay side: waits for the VMM and says how it ended.
pub struct Relay {
    child: libc::pid_t,
    death_note: File,
}

/// How the jailed VMM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildEnd {
    /// It exited with this code (it reported for itself).
    Exited(i32),
    /// Its seccomp filter refused a system call.
    Seccomp(SeccompViolation),
    /// Another signal killed it (e.g. the cgroup's out-of-memory killer).
    Signaled(i32),
}

/// Joins the cgroup and enters fresh namespaces, then forks. Must be
/// called while the process is single-threaded.
pub fn enter(config: &JailConfig) -> Result<Entered, JailError> {
    let started = Instant::now();
    join_cgroup(&config.cgroup_procs)
        .map_err(|(path, e)| JailError::new(JailStep::Cgroup, format!("write {path}"), e))?;
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let user_namespace = uid != 0;
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if user_namespace {
        // Without root the other namespaces need the capabilities a new
        // user namespace grants (mapped to our own uid only).
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare takes plain flags and only changes this process's
    // namespace membership.
    if unsafe { libc::unshare(flags) } != 0 {
        let step = if user_namespace {
            JailStep::UserNamespace
        } else {
            JailStep::Namespaces
        };
        return Err(os_error(step, format!("unshare({flags:#x})")));
    }
    if user_namespace {
        map_ids(uid, gid)?;
    }
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error(JailStep::Fork, "create the death-note pipe"));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the caller guarantees this process is single-threaded, so the
    // child's copy of every lock and allocator is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(os_error(JailStep::Fork, "fork")),
        0 => {
            drop(read_end);
            // The relay is outside our PID namespace; if the runner kills
            // it, the VMM must not outlive it.
            privileges::die_with_parent()
                .map_err(|e| JailError::new(JailStep::Fork, "PR_SET_PDEATHSIG", e))?;
            Ok(Entered::Jailed(Jail {
                started,
                user_namespace,
                death_note: write_end,
            }))
        }
        child => {
            drop(write_end);
            // The relay needs nothing but wait() and the control socket.
            let _ = privileges::drop_all(user_namespace);
            Ok(Entered::Relay(Relay {
                child,
                death_note: File::from(read_end),
            }))
        }
    }
}

fn map_ids(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), JailError> {
    let write = |path: &str, text: String| {
        File::options()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| JailError::new(JailStep::UserNamespace, format!("write {path}"), e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))
}

impl Jail {
    /// Everything but seccomp, once every descriptor the VMM will ever use
    /// is open: empty root, rlimits, credentials, capabilities,
    /// no_new_privs, the SIGSYS reporter. Returns the compiled filters for
    /// the threads to apply.
    pub fn lock_down(self) -> Result<Filters, JailError> {
        let filters = seccomp::compile()?;
        fs::pivot_to_empty_root()?;
        privileges::set_rlimits()?;
        privileges::drop_all(self.user_namespace)?;
        // Changing credentials cleared the parent-death signal.
        privileges::die_with_parent()
            .map_err(|e| JailError::new(JailStep::Credentials, "PR_SET_PDEATHSIG", e))?;
        seccomp::install_reporter(self.death_note)?;
        Ok(filters)
    }

    /// When [`enter`] started, for the setup time the VMM reports.
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Relay {
    /// Waits for the VMM to end.
    pub fn wait(mut self) -> ChildEnd {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; `child` is our child.
            let r = unsafe { libc::waitpid(self.child, &mut status, 0) };
            if r == self.child {
                break;
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return ChildEnd::Signaled(libc::SIGKILL);
            }
        }
        let mut note = [0u8; seccomp::DEATH_NOTE_LEN];
        if self.death_note.read_exact(&mut note).is_ok() {
            return ChildEnd::Seccomp(SeccompViolation::decode(note));
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            if signal == libc::SIGSYS {
                return ChildEnd::Seccomp(SeccompViolation::unknown());
            }
            return ChildEnd::Signaled(signal);
        }
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    }
}
