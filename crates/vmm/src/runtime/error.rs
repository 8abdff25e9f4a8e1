//! Why a VMM process could not build, run or snapshot its VM.

use std::time::Duration;

use sbxrun_jail::JailError;
use sbxrun_proto::snapshot_file::SnapshotFileError;

use crate::boot::BootError;
use crate::devices::attach::AttachError;
use crate::devices::legacy::serial::SerialRestoreError;
use crate::vstate::memory::MemoryError;
use crate::vstate::persist::PersistError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;

/// Why the VM could not be built, restored or snapshotted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("KVM VM")]
    Vm(#[from] VmError),
    #[error("vCPU")]
    Vcpu(#[from] VcpuError),
    #[error("KVM state")]
    Persist(#[source] PersistError),
    #[error("boot")]
    Boot(#[from] BootError),
    #[error("devices")]
    Devices(#[from] AttachError),
    #[error("snapshot state file {path}")]
    StateFile {
        path: String,
        #[source]
        source: SnapshotFileError,
    },
    #[error("snapshot was taken of a different VM shape: {0}")]
    ShapeMismatch(String),
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control channel")]
    Control(#[from] sbxrun_proto::control::FrameError),
    #[error("the runner closed the control channel before sending a VM config")]
    NoConfig,
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("serial console")]
    Serial(#[from] SerialRestoreError),
    #[error("the vCPU did not pause within {0:?}")]
    PauseTimeout(Duration),
    #[error("a snapshot was requested, but the VM was not started with `snapshot_to` files")]
    NoSnapshotFiles,
    #[error("jail")]
    Jail(#[from] JailError),
}

/// Restoring the VM or a vCPU creates it first; a failure there reads as
/// the same failure at cold boot.
impl From<PersistError> for RuntimeError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::Vm(e) => RuntimeError::Vm(e),
            PersistError::Vcpu(e) => RuntimeError::Vcpu(e),
            e => RuntimeError::Persist(e),
        }
    }
}
