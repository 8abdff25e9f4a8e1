//! The allow-lists: every syscall a jailed VMM thread may make, with who
//! needs it. Found by tracing the VMM (strace -f) across cold boot, restore,
//! a run, a snapshot and shutdown; see docs/security.md. Anything else
//! traps and kills the VMM.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_list,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// Syscalls the VMM and vCPU threads both make, unconditionally. The
/// network thread has a list of its own ([`NET`]).
const COMMON: &[(i64, &str)] = &[
    (libc::SYS_read, "eventfds"),
    (libc::SYS_write, "console log, irqfds, the SIGSYS note"),
    (
        libc::SYS_sendto,
        "frames to the runner, guest bytes out (UnixStream writes)",
    ),
    (
        libc::SYS_recvfrom,
        "runner requests, guest bytes in (UnixStream reads)",
    ),
    (libc::SYS_gettid, "glibc at thread start"),
    (
        libc::SYS_sched_getaffinity,
        "glibc at thread start (stack bounds)",
    ),
    (libc::SYS_close, "dropping cloned channel handles"),
    (libc::SYS_futex, "mutexes, channels, thread parking"),
    (libc::SYS_munmap, "allocator"),
    (libc::SYS_madvise, "allocator returning memory"),
    (libc::SYS_brk, "allocator"),
    (libc::SYS_mremap, "allocator growing large buffers"),
    (
        libc::SYS_rt_sigprocmask,
        "glibc around thread start and exit",
    ),
    (
        libc::SYS_rt_sigreturn,
        "returning from the vCPU kick handler",
    ),
    (
        libc::SYS_sigaltstack,
        "Rust's stack-overflow guard at thread start/exit",
    ),
    (libc::SYS_sched_yield, "spin-then-park in locks"),
    (
        libc::SYS_clock_gettime,
        "Instant::now when the vDSO falls back",
    ),
    (libc::SYS_clock_nanosleep, "console input back-off sleep"),
    (libc::SYS_nanosleep, "console input back-off sleep"),
    (libc::SYS_getrandom, "HashMap seeds on a thread's first map"),
    (libc::SYS_exit, "thread exit"),
    (
        libc::SYS_exit_group,
        "process exit, and the SIGSYS reporter",
    ),
    (
        libc::SYS_fcntl,
        "F_GETFD: std's debug check when a descriptor is dropped; \
         F_DUPFD_CLOEXEC (VMM threads): cloning the control socket handle",
    ),
];

/// Only the VMM kind (main, control reader, console input).
const VMM_ONLY: &[(i64, &str)] = &[
    (libc::SYS_fsync, "snapshot files reaching the disk"),
    (libc::SYS_ftruncate, "sizing the snapshot memory file"),
    (libc::SYS_pwrite64, "writing snapshot memory pages"),
    (
        libc::SYS_lseek,
        "rewinding the pre-opened snapshot state file",
    ),
    (libc::SYS_fstat, "File::metadata on open snapshot files"),
    (libc::SYS_statx, "File::metadata on open snapshot files"),
    (libc::SYS_getpid, "pthread_kill of the vCPU (glibc)"),
    (libc::SYS_tgkill, "kicking the vCPU out of KVM_RUN"),
    (libc::SYS_set_robust_list, "glibc in a new thread"),
    (libc::SYS_rseq, "glibc in a new thread"),
    (
        libc::SYS_mmap,
        "allocator and thread stacks (never executable)",
    ),
    (
        libc::SYS_mprotect,
        "thread stack guard pages (never executable)",
    ),
    (
        libc::SYS_clone,
        "starting the control and console threads (threads only)",
    ),
    (
        libc::SYS_clone3,
        "glibc's first try at a thread; the filter stacked before this one answers ENOSYS \
         (a trap here would outrank that answer)",
    ),
    (
        libc::SYS_prctl,
        "naming the device threads (PR_SET_NAME only)",
    ),
    (
        libc::SYS_ioctl,
        "KVM state for a snapshot (listed requests only)",
    ),
    (
        libc::SYS_poll,
        "the network thread waiting for frames and sockets",
    ),
    (libc::SYS_ppoll, "the network thread waiting (glibc's poll)"),
    (
        libc::SYS_recvmsg,
        "broker replies and the sockets attached to them",
    ),
    (libc::SYS_sendmsg, "broker requests"),
    (
        libc::SYS_shutdown,
        "half-closing a guest connection's upstream socket",
    ),
];

/// Only vCPU threads.
const VCPU_ONLY: &[(i64, &str)] = &[
    (libc::SYS_pread64, "virtio-blk reads"),
    (libc::SYS_pwrite64, "virtio-blk writes"),
    (libc::SYS_preadv, "virtio-blk reads"),
    (libc::SYS_pwritev, "virtio-blk writes"),
    (libc::SYS_fsync, "virtio-blk flush"),
    (libc::SYS_fdatasync, "virtio-blk flush"),
    (libc::SYS_mmap, "allocator (never executable)"),
    (libc::SYS_mprotect, "allocator (never executable)"),
    (
        libc::SYS_ioctl,
        "KVM_RUN and vCPU state (listed requests only)",
    ),
];

/// The network thread, whole: it is started before the VMM thread's filter
/// (so it inherits none) and applies this one before it reads a frame.
/// Found by reading `net/` (see `run_net_thread`) and checked by running
/// the egress tests with it. Nothing to open, map executable, snapshot,
/// signal or start; no KVM.
const NET: &[(i64, &str)] = &[
    (
        libc::SYS_poll,
        "waiting for the inbox eventfd and upstream sockets",
    ),
    (libc::SYS_ppoll, "waiting (glibc's poll on some builds)"),
    (libc::SYS_read, "draining the inbox eventfd"),
    (
        libc::SYS_write,
        "raising the virtio-net irqfd; log lines; the SIGSYS note",
    ),
    (libc::SYS_recvfrom, "reading an upstream TcpStream"),
    (libc::SYS_sendto, "writing an upstream TcpStream"),
    (
        libc::SYS_sendmsg,
        "requests and egress events to the broker",
    ),
    (
        libc::SYS_shutdown,
        "half-closing a guest connection's upstream socket",
    ),
    (libc::SYS_close, "dropping upstream sockets"),
    (libc::SYS_futex, "the inbox channel, the transport's mutex"),
    (libc::SYS_sched_yield, "spin-then-park in the channel"),
    (
        libc::SYS_clock_gettime,
        "Instant::now when the vDSO falls back",
    ),
    (
        libc::SYS_getrandom,
        "HashMap seeds on the thread's first map",
    ),
    (libc::SYS_brk, "allocator"),
    (
        libc::SYS_mmap,
        "allocator: this thread's arena (never executable)",
    ),
    (
        libc::SYS_mprotect,
        "allocator: growing this thread's arena (never executable)",
    ),
    (libc::SYS_munmap, "allocator"),
    (libc::SYS_mremap, "allocator growing large buffers"),
    (libc::SYS_madvise, "allocator returning memory"),
    (
        libc::SYS_fcntl,
        "F_GETFD: std's debug check when a descriptor is dropped",
    ),
    (libc::SYS_rt_sigprocmask, "glibc at thread exit"),
    (
        libc::SYS_sigaltstack,
        "Rust's stack-overflow guard at thread exit",
    ),
    (
        libc::SYS_rt_sigreturn,
        "returning from a process-wide signal's handler that landed here",
    ),
    (libc::SYS_exit, "thread exit"),
    (libc::SYS_exit_group, "the SIGSYS reporter"),
];

const KVMIO: u64 = 0xae;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, nr, std::mem::size_of::<T>())
}

/// The KVM ioctls a thread kind may issue, with who needs each. Setting
/// state (restore) happens before the jail closes, so only reads remain.
pub fn kvm_ioctls(kind: ThreadKind) -> &'static [(u64, &'static str)] {
    const VMM: &[(u64, &str)] = &[
        (
            iowr::<kvm_irqchip>(0x62),
            "KVM_GET_IRQCHIP: PIC and IOAPIC state for a snapshot",
        ),
        (
            ior::<kvm_pit_state2>(0x9f),
            "KVM_GET_PIT2: PIT state for a snapshot",
        ),
        (
            ior::<kvm_clock_data>(0x7c),
            "KVM_GET_CLOCK: kvmclock for a snapshot",
        ),
    ];
    const VCPU: &[(u64, &str)] = &[
        (io(0x80), "KVM_RUN: running the guest"),
        (
            ior::<kvm_regs>(0x81),
            "KVM_GET_REGS: rip of a failed exit; snapshot",
        ),
        (ior::<kvm_sregs>(0x83), "KVM_GET_SREGS: snapshot"),
        (ior::<kvm_xsave>(0xa4), "KVM_GET_XSAVE: snapshot"),
        (ior::<kvm_xcrs>(0xa6), "KVM_GET_XCRS: snapshot"),
        (ior::<kvm_debugregs>(0xa1), "KVM_GET_DEBUGREGS: snapshot"),
        (ior::<kvm_lapic_state>(0x8e), "KVM_GET_LAPIC: snapshot"),
        (ior::<kvm_mp_state>(0x98), "KVM_GET_MP_STATE: snapshot"),
        (
            ior::<kvm_vcpu_events>(0x9f),
            "KVM_GET_VCPU_EVENTS: snapshot",
        ),
        (iowr::<kvm_msrs>(0x88), "KVM_GET_MSRS: snapshot"),
        (io(0xa3), "KVM_GET_TSC_KHZ: TSC frequency for a snapshot"),
        (
            iowr::<kvm_msr_list>(0x02),
            "KVM_GET_MSR_INDEX_LIST: which MSRs to snapshot",
        ),
    ];
    match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Net => &[],
    }
}

/// Every syscall number a thread kind may make.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    let list: Vec<&(i64, &str)> = match kind {
        ThreadKind::Vmm => COMMON.iter().chain(VMM_ONLY).collect(),
        ThreadKind::Vcpu => COMMON.iter().chain(VCPU_ONLY).collect(),
        ThreadKind::Net => NET.iter().collect(),
    };
    list.into_iter().map(|(nr, _)| *nr).collect()
}

/// A check on the low 32 bits of argument `arg`: every argument we check
/// is a C `int` (or fits in one), whose upper register half is undefined.
fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn one(c: SeccompCondition) -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![SeccompRule::new(vec![c])?])
}

/// The seccompiler rule map: unconditional entries, and argument checks
/// where the syscall alone would allow too much.
pub(super) fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut map = BTreeMap::new();
    for nr in allowed_syscalls(kind) {
        let rules = match nr {
            libc::SYS_ioctl => kvm_ioctls(kind)
                .iter()
                .map(|(request, _)| SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, *request)?]))
                .collect::<Result<Vec<_>, _>>()?,
            // No executable mappings: an attacker cannot load new code.
            libc::SYS_mmap | libc::SYS_mprotect => {
                one(cond(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?)?
            }
            // Threads only, never a new process.
            libc::SYS_clone => one(cond(
                0,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?)?,
            libc::SYS_prctl => one(cond(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?)?,
            libc::SYS_fcntl => {
                let mut commands = vec![SeccompRule::new(vec![cond(
                    1,
                    SeccompCmpOp::Eq,
                    libc::F_GETFD as u64,
                )?])?];
                if kind == ThreadKind::Vmm {
                    commands.push(SeccompRule::new(vec![cond(
                        1,
                        SeccompCmpOp::Eq,
                        libc::F_DUPFD_CLOEXEC as u64,
                    )?])?);
                }
                commands
            }
            _ => vec![],
        };
        map.insert(nr, rules);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_abi() {
        // Values from linux/kvm.h as the kernel computes them.
        assert_eq!(io(0x80), 0xae80); // KVM_RUN
        assert_eq!(ior::<kvm_regs>(0x81), 0x8090_ae81); // KVM_GET_REGS
        assert_eq!(ior::<kvm_sregs>(0x83), 0x8138_ae83); // KVM_GET_SREGS
        assert_eq!(iowr::<kvm_msrs>(0x88), 0xc008_ae88); // KVM_GET_MSRS
        assert_eq!(iowr::<kvm_irqchip>(0x62), 0xc208_ae62); // KVM_GET_IRQCHIP
    }

    #[test]
    fn vcpu_filter_cannot_open_files_spawn_or_use_sockets() {
        let allowed = allowed_syscalls(ThreadKind::Vcpu);
        for forbidden in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_ptrace,
            libc::SYS_rt_sigaction,
        ] {
            assert!(
                !allowed.contains(&forbidden),
                "vcpu allows syscall {forbidden}"
            );
        }
    }

    #[test]
    fn vmm_filter_cannot_open_files_exec_or_replace_the_sigsys_handler() {
        let allowed = allowed_syscalls(ThreadKind::Vmm);
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_rt_sigaction,
            libc::SYS_seccomp,
        ] {
            assert!(
                !allowed.contains(&forbidden),
                "vmm allows syscall {forbidden}"
            );
        }
    }

    #[test]
    fn net_filter_has_no_files_snapshots_kvm_threads_or_signals() {
        let allowed = allowed_syscalls(ThreadKind::Net);
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ioctl,
            libc::SYS_ftruncate,
            libc::SYS_pwrite64,
            libc::SYS_fsync,
            libc::SYS_lseek,
            libc::SYS_recvmsg,
            libc::SYS_tgkill,
            libc::SYS_prctl,
            libc::SYS_rt_sigaction,
            libc::SYS_seccomp,
        ] {
            assert!(
                !allowed.contains(&forbidden),
                "net allows syscall {forbidden}"
            );
        }
        assert!(kvm_ioctls(ThreadKind::Net).is_empty());
    }

    #[test]
    fn net_filter_allows_nothing_the_vmm_filter_it_replaces_did_not() {
        let vmm = allowed_syscalls(ThreadKind::Vmm);
        for nr in allowed_syscalls(ThreadKind::Net) {
            assert!(
                vmm.contains(&nr),
                "net allows syscall {nr} beyond the vmm list"
            );
        }
    }

    #[test]
    fn net_filter_compiles() {
        assert!(super::super::compile_kind(ThreadKind::Net).is_ok());
    }

    #[test]
    fn both_filters_compile() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            assert!(super::super::compile_kind(kind).is_ok(), "{kind:?}");
        }
    }
}
