//! The runner <-> VMM control protocol: what the runner asks of a `__vmm`
//! process and what that process reports back.
//!
//! Pure data, so the runner side (`pool`) can use it without touching KVM.
//! Frames are `u32 LE length` + JSON. Both ends are our own processes, but
//! the VMM runs next to an untrusted guest, so the runner still caps what it
//! reads.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest control frame either side accepts.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;

/// Descriptor numbers of the channels a `__vmm` child inherits: the
/// control stream (these messages).
pub const CHILD_CONTROL_FD: i32 = 3;
/// The guest's control-console byte stream, relayed by the runner.
pub const CHILD_GUEST_FD: i32 = 4;
/// The egress broker channel (seqpacket, carries descriptors).
pub const CHILD_NET_FD: i32 = 5;

/// Which host-side compatibility mode the VMM boots the guest in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmFlavour {
    /// VT-x / AMD-V: the guest runs natively, no workarounds.
    Hardware,
    /// kvm-pvm software nested virtualization: the guest kernel needs the
    /// compatibility boot parameters and CPUID masks.
    Pvm,
}

impl KvmFlavour {
    /// Name used in reports and `doctor`.
    pub fn label(self) -> &'static str {
        match self {
            KvmFlavour::Hardware => "hardware (VT-x/AMD-V)",
            KvmFlavour::Pvm => "kvm-pvm (software nested virtualization)",
        }
    }
}

/// kvm-pvm is in use when its module is loaded and the CPU offers no
/// hardware virtualization (a host with VT-x would load kvm_intel instead).
/// `SBXRUN_KVM_FLAVOUR=hardware|pvm` overrides the guess.
pub fn detect_flavour(pvm_module_loaded: bool, cpuinfo: &str) -> KvmFlavour {
    match std::env::var("SBXRUN_KVM_FLAVOUR").as_deref() {
        Ok("pvm") => return KvmFlavour::Pvm,
        Ok("hardware") => return KvmFlavour::Hardware,
        _ => {}
    }
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if pvm_module_loaded && !hw_virt {
        KvmFlavour::Pvm
    } else {
        KvmFlavour::Hardware
    }
}

/// One virtio-blk disk, in the order the guest sees them (vda, vdb, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub id: String,
}

/// Everything the VMM needs to build a VM. Sent as the first control frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub flavour: KvmFlavour,
    pub disks: Vec<DiskConfig>,
    /// Extra kernel command line, appended after the VMM's own parameters.
    pub extra_cmdline: String,
    /// Where the guest's serial console goes; `None` discards it.
    pub console_log: Option<PathBuf>,
    /// Restore this snapshot instead of booting the kernel.
    #[serde(default)]
    pub restore: Option<SnapshotFiles>,
    /// Files the VMM creates at start (before its jail closes) for a later
    /// [`VmmRequest::Snapshot`] to write into.
    #[serde(default)]
    pub snapshot_to: Option<SnapshotFiles>,
    /// How the VMM process is jailed.
    #[serde(default)]
    pub jail: crate::jail::JailConfig,
}

/// The two files of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFiles {
    /// Versioned, checksummed vCPU, VM and device state.
    pub state: PathBuf,
    /// Guest RAM image, mapped copy-on-write on restore.
    pub memory: PathBuf,
}

/// Runner -> VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VmmRequest {
    /// Stop the VM now and exit.
    Shutdown,
    /// Pause the VM, write its snapshot into the files named by
    /// [`VmConfig::snapshot_to`] (opened at start), and exit.
    Snapshot,
}

/// VMM -> runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VmmEvent {
    /// The VM is built and its vCPU is running.
    Started {
        /// Time spent by the VMM between process start and the first vCPU entry.
        setup_us: u64,
        /// Whether the VMM runs jailed (false only with `--no-jail`).
        #[serde(default)]
        jailed: bool,
        /// Part of `setup_us` spent entering the jail.
        #[serde(default)]
        jail_us: u64,
    },
    /// The snapshot was written; the process exits right after sending this.
    Snapshotted {
        /// Time to stop the vCPU and collect its state.
        pause_us: u64,
        /// Time to write state and memory.
        save_us: u64,
        /// Bytes of guest memory actually written (zero pages are holes).
        memory_bytes: u64,
    },
    /// The VM is gone; the process exits right after sending this.
    Exited { exit: VmExit },
}

/// Why a VM stopped. Everything but `GuestReset` is a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VmExit {
    /// The guest asked for a reset (guest-init's normal way to end a VM).
    GuestReset,
    /// The guest kernel panicked; `line` is the panic message from the console.
    GuestPanic { line: String },
    /// The vCPU triple-faulted without a prior reset request.
    TripleFault,
    /// KVM could not emulate an instruction; `insn` is hex of the bytes at `rip`.
    EmulationFailure { rip: u64, insn: String },
    /// Any other KVM internal error.
    InternalError { suberror: u32 },
    /// KVM refused to enter the guest.
    FailEntry { reason: u64 },
    /// The VMM itself failed (setup, device, host I/O).
    HostError { message: String },
    /// The VMM could not enter its jail; `step` says which part failed.
    JailFailed { step: String, reason: String },
    /// The jailed VMM made a system call its seccomp filter refuses: a bug
    /// in the allow-list, or a guest that took over the VMM.
    SeccompViolation { syscall: String, thread: String },
    /// A signal killed the VMM (e.g. the cgroup's out-of-memory killer).
    VmmKilled { signal: i32 },
}

impl VmExit {
    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            VmExit::GuestReset => "guest reset".to_string(),
            VmExit::GuestPanic { line } => format!("guest kernel panic: {line}"),
            VmExit::TripleFault => "guest triple fault".to_string(),
            VmExit::EmulationFailure { rip, insn } => {
                format!("KVM emulation failure at rip {rip:#x} (instruction bytes {insn})")
            }
            VmExit::InternalError { suberror } => {
                format!("KVM internal error (suberror {suberror})")
            }
            VmExit::FailEntry { reason } => format!("KVM entry failure (reason {reason:#x})"),
            VmExit::HostError { message } => format!("VMM error: {message}"),
            VmExit::JailFailed { step, reason } => {
                format!("the VMM could not {step}: {reason}")
            }
            VmExit::SeccompViolation { syscall, thread } => format!(
                "the VMM was killed by its seccomp filter: syscall `{syscall}` on a {thread} thread"
            ),
            VmExit::VmmKilled { signal } => format!(
                "the VMM was killed by signal {signal}{}",
                if *signal == libc::SIGKILL {
                    " (out of memory in its cgroup, or killed from outside)"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Errors of the control channel framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control channel I/O")]
    Io(#[from] io::Error),
    #[error("control frame of {0} bytes exceeds the {MAX_CONTROL_FRAME} byte limit")]
    TooLarge(usize),
    #[error("malformed control frame")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_CONTROL_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let sent = VmmEvent::Exited {
            exit: VmExit::EmulationFailure {
                rip: 0xffff_ffff_8100_0000,
                insn: "0f01ca".into(),
            },
        };
        write_frame(&mut buf, &sent).unwrap();
        let got: Option<VmmEvent> = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(got, Some(sent));
    }

    #[test]
    fn read_frame_rejects_oversized_length_before_allocating() {
        let mut buf = (u32::MAX).to_le_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<VmmEvent>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u32::MAX as usize));
    }

    #[test]
    fn read_frame_reports_truncated_body_as_io_error() {
        let mut buf = 10u32.to_le_bytes().to_vec();
        buf.extend_from_slice(b"{\"ty");
        assert!(matches!(
            read_frame::<VmmEvent>(&mut buf.as_slice()),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn read_frame_returns_none_on_clean_eof() {
        assert!(read_frame::<VmmEvent>(&mut [].as_slice())
            .unwrap()
            .is_none());
    }

    #[test]
    fn read_frame_rejects_garbage_json() {
        let mut buf = 3u32.to_le_bytes().to_vec();
        buf.extend_from_slice(b"\xff\x00x");
        assert!(matches!(
            read_frame::<VmmEvent>(&mut buf.as_slice()),
            Err(FrameError::Malformed(_))
        ));
    }
}
