//! The SIGSYS reporter: when a filter traps, the handler writes an 8-byte
//! note (syscall number, thread kind) into a pipe whose other end the relay
//! holds, then exits. The relay, outside the jail, turns the note into the
//! report the runner shows. Choosing SECCOMP_RET_TRAP over KILL_PROCESS is
//! what makes the syscall number available (`si_syscall`); the process
//! still dies, the handler only writes first.

use std::cell::Cell;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::{syscall_name, ThreadKind};
use crate::error::{os_error, JailError, JailStep};

/// Size of the note the handler leaves.
pub const DEATH_NOTE_LEN: usize = 8;

/// Exit code of a process the handler ended (as a shell reports SIGSYS).
const EXIT_AFTER_TRAP: i32 = 128 + libc::SIGSYS;

/// Offset of `si_syscall` in x86_64's siginfo_t: three ints, padding to 8,
/// then the `_sigsys` union member `{ void *call_addr; int syscall; ... }`.
const SI_SYSCALL_OFFSET: usize = 24;

static DEATH_NOTE_FD: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    // Const-initialized and without a destructor, so reading it from the
    // signal handler is a plain TLS load.
    static THREAD_KIND: Cell<u32> = const { Cell::new(0) };
}

/// A system call a filter refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompViolation {
    /// The syscall number, when the handler got to report it.
    pub syscall: Option<i64>,
    /// The kind of thread that made it.
    pub thread: Option<ThreadKind>,
}

impl SeccompViolation {
    pub(crate) fn decode(note: [u8; DEATH_NOTE_LEN]) -> Self {
        let nr = i32::from_le_bytes([note[0], note[1], note[2], note[3]]);
        let kind = u32::from_le_bytes([note[4], note[5], note[6], note[7]]);
        SeccompViolation {
            syscall: (nr >= 0).then_some(i64::from(nr)),
            thread: ThreadKind::from_code(kind),
        }
    }

    pub(crate) fn unknown() -> Self {
        SeccompViolation {
            syscall: None,
            thread: None,
        }
    }

    /// The syscall's name, e.g. `openat`, or its number when unnamed.
    pub fn syscall_name(&self) -> String {
        match self.syscall {
            Some(nr) => syscall_name(nr)
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{nr}")),
            // The kernel bypasses a handler while SIGSYS is blocked (glibc
            // blocks every signal around thread creation, for one): the
            // process then dies of the bare signal and leaves no note.
            None => "unidentified (made while signals were blocked)".into(),
        }
    }
}

/// Marks the calling thread's kind for the report.
pub(crate) fn mark_thread(kind: ThreadKind) {
    THREAD_KIND.with(|k| k.set(kind.code()));
}

/// Installs the SIGSYS handler writing to `death_note`.
pub fn install_reporter(death_note: OwnedFd) -> Result<(), JailError> {
    // Kept open until the process exits: the handler may need it any time.
    DEATH_NOTE_FD.store(death_note.into_raw_fd(), Ordering::Release);
    // SAFETY: a zeroed sigaction is valid; we fill in a handler with the
    // SA_SIGINFO signature and an empty mask before passing it by pointer.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(os_error(JailStep::SignalHandler, "sigaction(SIGSYS)"));
        }
    }
    Ok(())
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO
        // handlers; for a seccomp SIGSYS its `_sigsys` member is filled in,
        // and the read is unaligned-safe.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let kind = THREAD_KIND.try_with(Cell::get).unwrap_or(0);
    let mut note = [0u8; DEATH_NOTE_LEN];
    note[..4].copy_from_slice(&nr.to_le_bytes());
    note[4..].copy_from_slice(&kind.to_le_bytes());
    let fd = DEATH_NOTE_FD.load(Ordering::Acquire);
    // SAFETY: write and _exit are async-signal-safe; `note` is a live
    // buffer of the given length; a bad fd only makes write fail.
    unsafe {
        libc::write(fd, note.as_ptr().cast(), note.len());
        libc::_exit(EXIT_AFTER_TRAP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn death_note_decodes_syscall_and_thread() {
        let mut note = [0u8; DEATH_NOTE_LEN];
        note[..4].copy_from_slice(&257i32.to_le_bytes());
        note[4..].copy_from_slice(&2u32.to_le_bytes());
        let v = SeccompViolation::decode(note);
        assert_eq!(v.syscall, Some(257));
        assert_eq!(v.thread, Some(ThreadKind::Vcpu));
        assert_eq!(v.syscall_name(), "openat");
    }

    #[test]
    fn death_note_with_garbage_thread_is_still_reported() {
        let mut note = [0xffu8; DEATH_NOTE_LEN];
        note[..4].copy_from_slice(&9999i32.to_le_bytes());
        let v = SeccompViolation::decode(note);
        assert_eq!(v.thread, None);
        assert_eq!(v.syscall_name(), "#9999");
    }
}
