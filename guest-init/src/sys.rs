//! Safe wrappers over the few raw Linux interfaces guest-init needs that std
//! does not offer (mounting, clock, RNG, poll, wait4, reboot).
//!
//! Every guest syscall is expensive on emulated hosts, so each wrapper is
//! exactly one syscall unless its doc says otherwise.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A failed system call, named for what guest-init was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SysError {
    /// What was being done ("mount /dev/vda on /mnt/lower").
    pub what: String,
    /// The errno.
    #[source]
    pub source: io::Error,
}

/// Attaches a description to an `io::Result`.
pub trait Context<T> {
    /// Wraps the error with `what`.
    fn context(self, what: impl Into<String>) -> Result<T, SysError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl Into<String>) -> Result<T, SysError> {
        self.map_err(|source| SysError {
            what: what.into(),
            source,
        })
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Builds a C string from text guest-init itself produced (never user data
/// with possible NULs: those are validated before).
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `mount(2)`.
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (src, target, fstype, data) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// Whether file descriptor `fd` is open (one `fcntl`).
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// `dup2(2)`; the copy does not have close-on-exec.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on plain integers; the caller owns `to` afterwards.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The umask guest-init runs with and its steps inherit, set at boot so the
/// unpacker knows which mode bits `open`/`mkdir` strip without asking.
pub const UMASK: libc::mode_t = 0o022;

/// `umask(2)` to [`UMASK`].
pub fn set_umask() {
    // SAFETY: umask takes an integer and cannot fail.
    unsafe { libc::umask(UMASK) };
}

/// A directory opened only to resolve names relative to it (`O_PATH`).
pub fn open_dir(path: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `path` is a valid C string; open returns a fresh descriptor.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: open succeeded, so `fd` is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A regular file `name` under `dir`, opened for writing and never through a
/// symlink: created (`true`) with `mode` less the umask, or, when it exists,
/// emptied (`false`, one more syscall) with its mode as it was.
pub fn create_file_at(dir: &OwnedFd, name: &CStr, mode: libc::mode_t) -> io::Result<(File, bool)> {
    let base = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let open = |flags: libc::c_int| {
        // SAFETY: `dir` is an open descriptor and `name` a valid C string.
        let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
        // SAFETY: openat succeeded, so `fd` is ours.
        Ok::<_, io::Error>(unsafe { File::from_raw_fd(fd) })
    };
    match open(base | libc::O_CREAT | libc::O_EXCL) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            Ok((open(base | libc::O_TRUNC)?, false))
        }
        Err(e) => Err(e),
    }
}

/// `mkdirat(2)`; `Ok(false)` when something already has the name.
pub fn mkdir_at(dir: &OwnedFd, name: &CStr, mode: libc::mode_t) -> io::Result<bool> {
    // SAFETY: `dir` is an open descriptor and `name` a valid C string.
    match check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `symlinkat(2)`.
pub fn symlink_at(target: &CStr, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both names are valid C strings and `dir` is open.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn chown_at(dir: &OwnedFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: `dir` is an open descriptor and `name` a valid C string.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// `fchmodat(dir, name, mode, 0)`: only for names that are not symlinks.
pub fn chmod_at(dir: &OwnedFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `dir` is an open descriptor and `name` a valid C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// Grows a pipe's buffer to at least `bytes` (capped by the kernel).
pub fn set_pipe_size(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) }).map(drop)
}

/// `poll(2)`, retrying on EINTR; returns how many entries have events.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        // Round up so a sub-millisecond wait does not become a busy loop.
        Some(d) => libc::c_int::try_from(d.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX),
    };
    loop {
        // SAFETY: `fds` is a valid slice of pollfd for its whole length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        match check(n) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sets CLOCK_REALTIME to `unix_ns` nanoseconds since the epoch.
pub fn set_realtime(unix_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// Milliseconds on CLOCK_BOOTTIME (time since the kernel started).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill; the clock id is constant.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// `_IOW('R', 0x03, int[2])`
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `struct rand_pool_info` with a fixed 32-byte buffer.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 32],
}

/// Credits `seed` to the kernel RNG and forces the CRNG to reseed from it,
/// through an open `/dev/urandom` (two ioctls; needs CAP_SYS_ADMIN).
pub fn reseed_rng(urandom: &OwnedFd, seed: &[u8; 32]) -> io::Result<()> {
    let info = RandPoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: *seed,
    };
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow
    // the header; `info` holds exactly that and outlives the call.
    check(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, &info) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) }).map(drop)
}

/// Sends `sig` to every process of process group `pgid`.
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(-pgid, sig) }).map(drop)
}

/// Result of reaping a child.
pub struct Reaped {
    /// Raw wait status.
    pub status: libc::c_int,
    /// Its resource usage (including its waited-for descendants).
    pub rusage: libc::rusage,
}

/// `wait4(pid)`; `Ok(None)` when `nohang` and the child has not exited.
pub fn wait4(pid: libc::pid_t, nohang: bool) -> io::Result<Option<Reaped>> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is valid.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `status` and `rusage` are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut rusage) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((r != 0).then_some(Reaped { status, rusage }));
    }
}

/// Reaps every exited child without blocking (orphans reparented to PID 1).
pub fn reap_zombies() {
    loop {
        // SAFETY: a null status pointer is allowed.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Restores the default action for SIGPIPE (std ignores it, and an ignored
/// disposition would be inherited by every step).
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL involves no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; zero is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname to fill.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates each field within its array.
    let release = unsafe { CStr::from_ptr(u.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// Flushes filesystems and resets the machine (the VMM ends the VM on the
/// reset). Falls back to exiting, which panics the kernel, which with
/// `panic=-1` resets as well.
pub fn sync_and_reboot() -> ! {
    // SAFETY: sync and reboot take no pointers; rebooting is the intent.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}
