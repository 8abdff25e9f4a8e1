//! Booting a VM of a given shape from scratch: the slow path the snapshot
//! pool exists to avoid, and the way every snapshot starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_init::proto::Ready;

use super::session;
use super::vm::{VmHandle, VmHandleError};
use crate::host::KvmFlavour;
use crate::vmm::api::{DiskConfig, VmConfig};

/// What a VM is made of. Two VMs of one shape are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmShape {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub image: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub flavour: KvmFlavour,
}

impl VmShape {
    /// How long a cold boot may take before it counts as hung. Guest kernel
    /// code is emulated on kvm-pvm hosts, which makes booting ~100x slower.
    pub fn boot_timeout(&self) -> Duration {
        match self.flavour {
            KvmFlavour::Hardware => Duration::from_secs(30),
            KvmFlavour::Pvm => Duration::from_secs(180),
        }
    }

    /// The VMM configuration for this shape.
    pub fn vm_config(&self, console_log: Option<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            flavour: self.flavour,
            disks: vec![DiskConfig {
                path: self.image.clone(),
                read_only: true,
                id: "sbxrun-root".into(),
            }],
            extra_cmdline: String::new(),
            console_log,
            restore: None,
        }
    }
}

/// A freshly booted VM whose guest-init is waiting for requests.
pub struct BootedVm {
    pub vm: VmHandle,
    pub ready: Ready,
    /// Host-measured time from spawn to guest-init's Ready.
    pub boot_time: Duration,
}

/// Boots a VM of `shape` and waits for guest-init.
pub fn boot_cold(shape: &VmShape, console_log: Option<PathBuf>) -> Result<BootedVm, VmHandleError> {
    let started = Instant::now();
    let timeout = shape.boot_timeout();
    let mut vm = VmHandle::spawn(&shape.vm_config(console_log), timeout)?;
    let ready = session::wait_ready(&mut vm, timeout.saturating_sub(started.elapsed()))?;
    Ok(BootedVm {
        vm,
        ready,
        boot_time: started.elapsed(),
    })
}
