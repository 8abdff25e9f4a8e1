//! Starting the step's process with the fewest guest syscalls: a
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` child (vfork semantics, no
//! page-table copy) that sets itself up and execs. Everything it needs is
//! prepared beforehand so the child never allocates; a failure before exec is
//! written into memory shared with the parent, so no error pipe is needed.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Everything the child needs, as C strings ready for the syscalls.
pub struct SpawnSpec {
    /// Paths tried with `execve` in order (the `PATH` search).
    pub candidates: Vec<CString>,
    /// Argument vector.
    pub argv: Vec<CString>,
    /// Complete environment, `NAME=value`.
    pub envp: Vec<CString>,
    /// Directory the child chroots into.
    pub root: CString,
    /// Working directory inside the root.
    pub cwd: CString,
    /// `(uid, gid)` to switch to; `None` stays root.
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
    /// `(resource, soft, hard)` limits.
    pub rlimits: Vec<(libc::c_int, u64, u64)>,
    /// Descriptors that become 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// A file (relative to `cwd`) that replaces stdin, opened after the
    /// switch to the step's user so that its permissions apply.
    pub stdin_file: Option<CString>,
    /// An open `cgroup.procs` of the cgroup the child joins first, so that
    /// everything after (the exec's memory included) is charged to it.
    pub cgroup_procs: Option<RawFd>,
}

/// Steps of the child's setup, for error messages.
const STAGES: [&str; 11] = [
    "",
    "setsid",
    "dup2",
    "chroot",
    "chdir to cwd",
    "setrlimit",
    "setgroups",
    "setgid/setuid",
    "execve",
    "join the step's cgroup",
    "open the stdin file",
];
const STAGE_EXEC: u32 = 8;
const STAGE_CGROUP: u32 = 9;
const STAGE_STDIN: u32 = 10;

/// Why the child did not reach `exec`.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No candidate path exists.
    #[error("command not found: {0}")]
    NotFound(String),
    /// The stdin file could not be opened as the step's user.
    #[error("cannot open the stdin file {path:?}: {source}")]
    Stdin {
        /// The path, relative to the working directory.
        path: String,
        /// Its errno.
        #[source]
        source: io::Error,
    },
    /// A setup step or exec failed.
    #[error("{stage} failed: {source}")]
    Failed {
        /// Which step.
        stage: &'static str,
        /// Its errno.
        #[source]
        source: io::Error,
    },
    /// `clone` itself failed.
    #[error("clone failed: {0}")]
    Clone(#[source] io::Error),
}

/// A started child.
pub struct Child {
    /// Its pid, which is also its process group and session id.
    pub pid: libc::pid_t,
    /// Readable when it exits.
    pub pidfd: OwnedFd,
}

/// State shared between parent and the `CLONE_VM` child.
struct Shared<'a> {
    spec: &'a SpawnSpec,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    fail_stage: u32,
    fail_errno: i32,
}

const CHILD_STACK: usize = 64 * 1024;

fn nul_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs in the child, on its own stack, sharing memory with the suspended
/// parent. Only raw syscalls; no allocation, no locks.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` the parent passed; the parent is
    // suspended (CLONE_VFORK) until we exec or exit, so we have exclusive
    // access to it.
    let sh = unsafe { &mut *arg.cast::<Shared<'_>>() };
    let stage = child_setup(sh);
    sh.fail_stage = stage;
    sh.fail_errno = errno();
    // SAFETY: _exit ends only this child and runs no atexit handlers that
    // could touch the parent's state.
    unsafe { libc::_exit(127) }
}

/// Returns the failing stage; returns only on failure.
fn child_setup(sh: &mut Shared<'_>) -> u32 {
    let spec = sh.spec;
    // SAFETY: every call takes integers or pointers to C strings/arrays
    // owned by `spec`/`sh`, which the parent keeps alive; errno is this
    // thread's own.
    unsafe {
        if let Some(fd) = spec.cgroup_procs {
            // "0" moves the writer itself, before the exec gives it the
            // memory that is to be charged to the step.
            if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                return STAGE_CGROUP;
            }
        }
        if libc::setsid() < 0 {
            return 1;
        }
        for (target, fd) in spec.stdio.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                return 2;
            }
        }
        if libc::chroot(spec.root.as_ptr()) < 0 {
            return 3;
        }
        if libc::chdir(spec.cwd.as_ptr()) < 0 {
            return 4;
        }
        for &(res, soft, hard) in &spec.rlimits {
            let rl = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(res as _, &rl) < 0 {
                return 5;
            }
        }
        if let Some((uid, gid)) = spec.ids {
            if libc::setgroups(1, &gid) < 0 {
                return 6;
            }
            if libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                return 7;
            }
        }
        if let Some(path) = &spec.stdin_file {
            // Non-blocking so that a FIFO without a writer cannot hang the
            // (suspended) parent here; cleared again for the step's reads.
            let flags = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK;
            let fd = libc::open(path.as_ptr(), flags);
            if fd < 0
                || libc::fcntl(fd, libc::F_SETFL, 0) < 0
                || libc::dup2(fd, 0) < 0
                || libc::close(fd) < 0
            {
                return STAGE_STDIN;
            }
        }
        // Like execvp: keep going on "not there", remember other failures
        // (EACCES) because they explain better why nothing ran.
        let mut worst = libc::ENOENT;
        for path in &spec.candidates {
            libc::execve(path.as_ptr(), sh.argv.as_ptr(), sh.envp.as_ptr());
            let e = errno();
            if e != libc::ENOENT && e != libc::ENOTDIR {
                worst = e;
            }
        }
        *libc::__errno_location() = worst;
    }
    STAGE_EXEC
}

/// Starts the child described by `spec`.
pub fn spawn(spec: &SpawnSpec) -> Result<Child, SpawnError> {
    let mut shared = Shared {
        spec,
        argv: nul_terminated(&spec.argv),
        envp: nul_terminated(&spec.envp),
        fail_stage: 0,
        fail_errno: 0,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down; keep the top 16-byte aligned as the ABI wants.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: `child_main` only touches `shared` (valid until we return, and
    // we are suspended while the child uses it) and the fresh stack above;
    // CLONE_PIDFD writes the pidfd to `pidfd`, a valid c_int.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            flags,
            (&mut shared as *mut Shared<'_>).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(SpawnError::Clone(io::Error::last_os_error()));
    }
    // SAFETY: clone succeeded with CLONE_PIDFD, so `pidfd` is a fresh
    // descriptor that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The vfork child has exec'd or exited by now. Volatile: the compiler
    // cannot see that the child wrote these fields.
    // SAFETY: plain reads of fields of a live local.
    let (stage, err) = unsafe {
        (
            std::ptr::read_volatile(&shared.fail_stage),
            std::ptr::read_volatile(&shared.fail_errno),
        )
    };
    drop(stack);
    if stage == 0 {
        return Ok(Child { pid, pidfd });
    }
    // The child has already _exit()ed; reap it so it is not a zombie.
    let _ = crate::sys::wait4(pid, false);
    if stage == STAGE_EXEC && err == libc::ENOENT {
        let name = spec
            .argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(SpawnError::NotFound(name));
    }
    if stage == STAGE_STDIN {
        let path = spec
            .stdin_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        return Err(SpawnError::Stdin {
            path: path.unwrap_or_default(),
            source: io::Error::from_raw_os_error(err),
        });
    }
    let stage = STAGES.get(stage as usize).copied().unwrap_or("setup");
    Err(SpawnError::Failed {
        stage,
        source: io::Error::from_raw_os_error(err),
    })
}
