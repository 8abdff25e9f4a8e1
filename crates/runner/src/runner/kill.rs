//! Stopping a running step's VM from another thread (cancel, output limit).
//! The step thread owns the VM handle; it publishes the VMM's pid here and
//! withdraws it before the handle is dropped, so a pid is never signalled
//! after it could have been reused.

use std::sync::{Arc, Mutex};

/// The pid of a step's VMM process while it may be killed.
#[derive(Debug, Clone, Default)]
pub struct KillSlot(Arc<Mutex<Option<u32>>>);

impl KillSlot {
    /// Publishes `pid`.
    pub fn set(&self, pid: u32) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(pid);
        }
    }

    /// Withdraws the pid (call before the VM handle is dropped).
    pub fn clear(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = None;
        }
    }

    /// SIGKILLs the VMM if one is published; returns whether one was.
    pub fn kill(&self) -> bool {
        let Ok(g) = self.0.lock() else {
            return false;
        };
        let Some(pid) = *g else {
            return false;
        };
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // The pid is our unreaped child while the lock is held (see above),
        // so it cannot have been reused by another process.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
    }
}
