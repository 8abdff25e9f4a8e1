//! Seccomp filters, one per thread kind, compiled with seccompiler from the
//! allow-lists in [`rules`]. A refused syscall traps (SIGSYS); the
//! [`trap`] handler leaves a note for the relay naming the syscall and the
//! thread, then ends the process. The handler cannot be replaced:
//! `rt_sigaction` is on no list.

mod names;
mod rules;
mod trap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::error::{JailError, JailStep};

pub use names::syscall_name;
pub use rules::{allowed_syscalls, kvm_ioctls};
pub use trap::{install_reporter, SeccompViolation, DEATH_NOTE_LEN};

/// The kinds of VMM thread; each gets its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread and the device threads it starts (control reader,
    /// console input): talk to the runner, save the VM, never enter the guest.
    Vmm,
    /// A vCPU thread: KVM_RUN and the device emulation of its exits.
    Vcpu,
    /// The network thread: parses the guest's (hostile) frames and moves
    /// bytes between them and the upstream sockets the broker opened. It
    /// never touches KVM, files or snapshots, and starts no threads.
    Net,
}

impl ThreadKind {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Net => "net",
        }
    }

    fn code(self) -> u32 {
        match self {
            ThreadKind::Vmm => 1,
            ThreadKind::Vcpu => 2,
            ThreadKind::Net => 3,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            // Device threads started under the VMM filter inherit it
            // without marking themselves.
            0 | 1 => Some(ThreadKind::Vmm),
            2 => Some(ThreadKind::Vcpu),
            3 => Some(ThreadKind::Net),
            _ => None,
        }
    }
}

/// The compiled filters of every thread kind.
pub struct Filters {
    pub vmm: ThreadFilter,
    pub vcpu: ThreadFilter,
    pub net: ThreadFilter,
}

/// The BPF programs one thread kind installs, in order.
pub struct ThreadFilter {
    kind: ThreadKind,
    programs: Vec<BpfProgram>,
}

impl ThreadFilter {
    /// Installs the filter on the calling thread (and every thread it
    /// starts later). Needs no_new_privs, which [`super::Jail::lock_down`] set.
    pub fn apply(&self) -> Result<(), JailError> {
        trap::mark_thread(self.kind);
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(|e| {
                JailError::new(
                    JailStep::Seccomp,
                    format!("{} filter", self.kind.name()),
                    std::io::Error::other(e.to_string()),
                )
            })?;
        }
        Ok(())
    }

    /// Which thread kind this filter is for.
    pub fn kind(&self) -> ThreadKind {
        self.kind
    }
}

/// What a refused syscall gets: a trap, or with `SBXRUN_SECCOMP_LOG=1`
/// (for maintaining the allow-lists; see docs/security.md) an audit log
/// line and nothing else. The runner's environment is trusted; the guest
/// cannot reach it.
fn mismatch_action() -> SeccompAction {
    if std::env::var_os("SBXRUN_SECCOMP_LOG").is_some() {
        eprintln!(
            "sbxrun: WARNING: SBXRUN_SECCOMP_LOG is set: the VMM's seccomp filter only logs \
             refused syscalls (to the kernel audit log) instead of killing the VMM"
        );
        SeccompAction::Log
    } else {
        SeccompAction::Trap
    }
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn compile_error(kind: ThreadKind, e: seccompiler::BackendError) -> JailError {
    JailError::new(
        JailStep::Seccomp,
        format!("compile the {} filter", kind.name()),
        std::io::Error::other(e.to_string()),
    )
}

/// Compiles one thread kind's filter.
pub fn compile_kind(kind: ThreadKind) -> Result<ThreadFilter, JailError> {
    let mut programs = Vec::new();
    // glibc starts threads with clone3, whose flags live in memory a filter
    // cannot inspect. Answering ENOSYS makes it fall back to clone, whose
    // flags the allow-list checks. A separate filter because one
    // seccompiler filter has a single match action; stacked filters take
    // the strictest answer, so this ENOSYS wins over the allow-list.
    let no_clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(|e| compile_error(kind, e))?;
    programs.push(BpfProgram::try_from(no_clone3).map_err(|e| compile_error(kind, e))?);
    let allow = SeccompFilter::new(
        rules::rules(kind).map_err(|e| compile_error(kind, e))?,
        mismatch_action(),
        SeccompAction::Allow,
        arch(),
    )
    .map_err(|e| compile_error(kind, e))?;
    programs.push(BpfProgram::try_from(allow).map_err(|e| compile_error(kind, e))?);
    Ok(ThreadFilter { kind, programs })
}

/// Compiles every filter (before the jail closes, so a bad rule fails setup).
pub fn compile() -> Result<Filters, JailError> {
    Ok(Filters {
        vmm: compile_kind(ThreadKind::Vmm)?,
        vcpu: compile_kind(ThreadKind::Vcpu)?,
        net: compile_kind(ThreadKind::Net)?,
    })
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod net_tests;
