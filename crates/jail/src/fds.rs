//! Taking ownership of the descriptors the runner hands to a `__vmm` child.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Errors adopting inherited descriptors.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("descriptor {0} was not inherited from the runner")]
    NotOpen(RawFd),
}

/// Takes ownership of descriptor `fd`, which the parent placed there.
pub fn adopt_inherited_fd(fd: RawFd) -> Result<OwnedFd, FdError> {
    // SAFETY: F_GETFD only inspects the descriptor table; any integer is a
    // valid argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(FdError::NotOpen(fd));
    }
    // SAFETY: `fd` is open (checked above) and nothing else in this process
    // owns it: the runner placed it at this number for us alone, and it is
    // adopted exactly once, at process start.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `fd` is open and owned by `owned`; setting FD_CLOEXEC keeps it
    // from leaking into anything this process might execute.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    Ok(owned)
}
