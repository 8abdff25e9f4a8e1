//! Booting a VM of a given shape from scratch: the slow path the snapshot
//! pool exists to avoid, and the way every snapshot starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_init::proto::Ready;

use super::session;
use super::vm::{VmHandle, VmHandleError};
use crate::host::KvmFlavour;
use sbxrun_jail::JailConfig;
use sbxrun_proto::control::{DiskConfig, SnapshotFiles, VmConfig};

/// What a VM is made of. Two VMs of one shape are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmShape {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub image: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub flavour: KvmFlavour,
    /// Size of each artifact disk (vdb inputs, vdc outputs). Part of the
    /// shape because the guest sees the disk geometry at boot.
    pub artifact_disk_bytes: u64,
    /// Jail the VMM processes (the default). Off only for debugging
    /// (`--no-jail`), which warns loudly. Not part of the snapshot key: a
    /// snapshot serves jailed and unjailed VMs alike.
    pub jail: bool,
}

/// Default size of the artifact disks: sparse, so unused space costs nothing.
pub const DEFAULT_ARTIFACT_DISK_BYTES: u64 = 1 << 30;

/// The two per-step disks: inputs packed by the host, outputs by the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDisks {
    pub input: PathBuf,
    pub output: PathBuf,
}

impl StepDisks {
    /// Creates both as empty sparse files of `size` bytes in `dir`.
    pub fn create_in(dir: &std::path::Path, size: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let disks = StepDisks {
            input: dir.join("input.disk"),
            output: dir.join("output.disk"),
        };
        for path in [&disks.input, &disks.output] {
            let f = std::fs::File::create(path)?;
            f.set_len(size)?;
        }
        Ok(disks)
    }
}

impl VmShape {
    /// A jailed shape of the default guest assets (`make assets`) on this
    /// host's KVM: what tests and benchmarks run.
    pub fn from_default_assets(
        memory_mib: u32,
        vcpus: u8,
    ) -> Result<Self, crate::assets::MissingAsset> {
        use crate::assets::{require, Asset};
        Ok(VmShape {
            kernel: require(Asset::Kernel, None)?,
            initramfs: require(Asset::Initramfs, None)?,
            image: require(Asset::Image, None)?,
            memory_mib,
            vcpus,
            flavour: crate::host::probe_kvm().flavour,
            artifact_disk_bytes: DEFAULT_ARTIFACT_DISK_BYTES,
            jail: true,
        })
    }

    /// How long a cold boot may take before it counts as hung. Guest kernel
    /// code is emulated on kvm-pvm hosts, which makes booting ~100x slower.
    pub fn boot_timeout(&self) -> Duration {
        match self.flavour {
            KvmFlavour::Hardware => Duration::from_secs(30),
            KvmFlavour::Pvm => Duration::from_secs(180),
        }
    }

    /// The VMM configuration for this shape.
    pub fn vm_config(&self, disks: &StepDisks, console_log: Option<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            flavour: self.flavour,
            disks: vec![
                DiskConfig {
                    path: self.image.clone(),
                    read_only: true,
                    id: "sbxrun-root".into(),
                },
                DiskConfig {
                    path: disks.input.clone(),
                    read_only: true,
                    id: "sbxrun-input".into(),
                },
                DiskConfig {
                    path: disks.output.clone(),
                    read_only: false,
                    id: "sbxrun-output".into(),
                },
            ],
            extra_cmdline: String::new(),
            console_log,
            restore: None,
            snapshot_to: None,
            jail: JailConfig {
                enabled: self.jail,
                ..JailConfig::default()
            },
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

/// Boots a VM of `shape` and waits for guest-init. `snapshot_to` names
/// the files a later snapshot request writes (the VMM creates them at
/// start, before its jail closes).
pub fn boot_cold(
    shape: &VmShape,
    disks: &StepDisks,
    extra_cmdline: &str,
    console_log: Option<PathBuf>,
    snapshot_to: Option<SnapshotFiles>,
) -> Result<BootedVm, VmHandleError> {
    let started = Instant::now();
    let timeout = shape.boot_timeout();
    let mut config = shape.vm_config(disks, console_log);
    config.extra_cmdline = extra_cmdline.to_string();
    config.snapshot_to = snapshot_to;
    let mut vm = VmHandle::spawn(&config, timeout)?;
    let ready = session::wait_ready(&mut vm, timeout.saturating_sub(started.elapsed()))?;
    Ok(BootedVm {
        vm,
        ready,
        boot_time: started.elapsed(),
    })
}
