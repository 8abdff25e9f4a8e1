//! Probes a jailed process runs against its own jail (`sbxrun
//! __jail-selftest`): each tries something a compromised VMM would want.
//! Under the seccomp filter each one traps; with the filter left off
//! (`--layers`), the namespaces, empty root and dropped privileges must
//! still make each fail.

use std::io;
use std::str::FromStr;

/// One escape attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Open a host file (`/etc/hostname`).
    OpenHostFile,
    /// Create an inet socket and connect out.
    InetSocket,
    /// Attach to another process with ptrace.
    Ptrace,
    /// Execute a program.
    Execve,
    /// Mount a filesystem.
    Mount,
    /// Become root again.
    Setuid,
    /// A syscall on no allow-list (`sysinfo`).
    UnlistedSyscall,
}

impl Probe {
    /// Every probe, in the order the tests run them.
    pub const ALL: [Probe; 7] = [
        Probe::OpenHostFile,
        Probe::InetSocket,
        Probe::Ptrace,
        Probe::Execve,
        Probe::Mount,
        Probe::Setuid,
        Probe::UnlistedSyscall,
    ];

    /// The probe's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Probe::OpenHostFile => "open-host-file",
            Probe::InetSocket => "inet-socket",
            Probe::Ptrace => "ptrace",
            Probe::Execve => "execve",
            Probe::Mount => "mount",
            Probe::Setuid => "setuid",
            Probe::UnlistedSyscall => "unlisted-syscall",
        }
    }

    /// The syscall the attempt starts with (what the filter must name).
    pub fn first_syscall(self) -> &'static str {
        match self {
            Probe::OpenHostFile => "openat",
            Probe::InetSocket => "socket",
            Probe::Ptrace => "ptrace",
            Probe::Execve => "execve",
            Probe::Mount => "mount",
            Probe::Setuid => "setuid",
            Probe::UnlistedSyscall => "sysinfo",
        }
    }

    /// Makes the attempt. `Ok` says what got through; `Err` is the refusal.
    pub fn attempt(self) -> io::Result<String> {
        // SAFETY (for the calls below): each passes NUL-terminated constants,
        // null, or pointers to live locals of the right type, as the
        // respective syscall documents; none keeps a pointer.
        match self {
            Probe::OpenHostFile => {
                // SAFETY: see above.
                let fd = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
                check(fd).map(|_| "opened /etc/hostname".into())
            }
            Probe::InetSocket => {
                // SAFETY: see above.
                let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) })?;
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 80u16.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_be_bytes([192, 0, 2, 1]).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: see above; `addr` is a sockaddr_in of the given size.
                let r = unsafe {
                    libc::connect(
                        fd,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                let result = check(r).map(|_| "connected to 192.0.2.1:80".into());
                // SAFETY: `fd` is the socket opened above.
                unsafe { libc::close(fd) };
                result.map_err(|e| {
                    io::Error::new(e.kind(), format!("socket created, but connect failed: {e}"))
                })
            }
            Probe::Ptrace => {
                // PID 1 of our namespace is this process; the relay and every
                // host process are invisible, so this is all there is to attach to.
                // SAFETY: see above.
                let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0) };
                check(r as i32).map(|_| "attached to pid 1".into())
            }
            Probe::Execve => {
                let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                // SAFETY: see above.
                let r = unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
                check(r).map(|_| "executed /bin/sh".into())
            }
            Probe::Mount => {
                // SAFETY: see above.
                let r = unsafe {
                    libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
                check(r).map(|_| "mounted a tmpfs on /".into())
            }
            Probe::Setuid => {
                // SAFETY: see above.
                let r = unsafe { libc::setuid(0) };
                check(r).map(|_| "became uid 0".into())
            }
            Probe::UnlistedSyscall => {
                // SAFETY: see above; sysinfo fills a struct we own.
                let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
                // SAFETY: see above.
                check(unsafe { libc::sysinfo(&mut info) }).map(|_| "sysinfo answered".into())
            }
        }
    }
}

fn check(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An unknown probe name.
#[derive(Debug, thiserror::Error)]
#[error("unknown probe `{0}` (one of: open-host-file, inet-socket, ptrace, execve, mount, setuid, unlisted-syscall)")]
pub struct UnknownProbe(String);

impl FromStr for Probe {
    type Err = UnknownProbe;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Probe::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProbe(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_round_trip() {
        for p in Probe::ALL {
            assert_eq!(p.name().parse::<Probe>().unwrap(), p);
        }
        assert!("reboot".parse::<Probe>().is_err());
    }
}
