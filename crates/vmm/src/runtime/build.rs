//! A runnable VM from the runner's config: by cold boot (load the kernel,
//! set up the boot vCPU) or by restore (map the snapshot's memory, restore
//! every [`Persist`] piece from its state). Every host file the VM needs is
//! opened here, before any guest code runs, so the process can be jailed
//! without a filesystem afterwards.

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::error::RuntimeError;
use super::snapshot::SnapshotState;
use crate::boot::{self, cmdline};
use crate::devices::attach::{DeviceBackends, VirtioSet, VirtioSetArgs};
use crate::devices::bus::MmioBus;
use crate::devices::legacy::serial::{ConsoleTranscript, SerialArgs, SerialConsole};
use crate::netwire::{DeviceBackend, NetInbox};
use crate::persist::Persist;
use crate::vstate::memory::{create_guest_memory, map_snapshot};
use crate::vstate::persist::VcpuArgs;
use crate::vstate::vcpu::{ExitHandler, Vcpu};
use crate::vstate::vm::Vm;
use sbxrun_proto::control::{SnapshotFiles, VmConfig};
use sbxrun_proto::layout::*;
use sbxrun_proto::snapshot_file as snapshot;

/// Port I/O and MMIO as seen from the vCPU thread.
pub(super) struct Platform {
    pub serial: SerialConsole,
    pub bus: MmioBus,
}

impl ExitHandler for Platform {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match port.checked_sub(SERIAL_PORT_BASE) {
            Some(offset) if offset < SERIAL_PORT_LEN && data.len() == 1 => {
                data[0] = self.serial.read(offset as u8)
            }
            // i8042 status: nothing to read, ready for commands.
            _ if port == I8042_COMMAND_PORT => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match port.checked_sub(SERIAL_PORT_BASE) {
            Some(offset) if offset < SERIAL_PORT_LEN && data.len() == 1 => {
                self.serial.write(offset as u8, data[0]);
                false
            }
            _ => port == I8042_COMMAND_PORT && data.first() == Some(&I8042_RESET_COMMAND),
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.bus.read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.bus.write(addr, data);
    }
}

/// A VM ready to run.
pub(super) struct Built {
    pub vm: Vm,
    pub memory: GuestMemoryMmap,
    pub vcpu: Vcpu,
    pub platform: Platform,
    pub virtio: VirtioSet,
    pub transcript: Arc<Mutex<ConsoleTranscript>>,
    pub cmdline: String,
}

/// The host side of everything the guest can see, opened from the config
/// the same way for both ways of building.
struct HostSide<'a> {
    config: &'a VmConfig,
    guest: &'a UnixStream,
    inbox: &'a NetInbox,
    /// Opened first of all, so it exists even when the build fails.
    console_log: Option<Box<dyn Write + Send>>,
    transcript: Arc<Mutex<ConsoleTranscript>>,
}

impl HostSide<'_> {
    fn serial(&mut self, vm: &Vm) -> Result<SerialArgs, RuntimeError> {
        Ok(SerialArgs {
            irq: vm.irq_eventfd(SERIAL_IRQ)?,
            log: self.console_log.take(),
            transcript: self.transcript.clone(),
        })
    }

    fn devices<'b>(
        &self,
        vm: &'b Vm,
        memory: &'b GuestMemoryMmap,
        bus: &'b mut MmioBus,
    ) -> Result<VirtioSetArgs<'b>, RuntimeError>
    where
        Self: 'b,
    {
        Ok(VirtioSetArgs {
            vm,
            memory,
            disks: &self.config.disks,
            backends: DeviceBackends {
                guest_out: Box::new(self.guest.try_clone().map_err(RuntimeError::Thread)?),
                net: Box::new(DeviceBackend::new(self.inbox.clone())),
            },
            bus,
        })
    }
}

fn open_console_log(config: &VmConfig) -> Result<Option<Box<dyn Write + Send>>, RuntimeError> {
    let Some(path) = &config.console_log else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| RuntimeError::Open {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Some(Box::new(LineWriter::new(file))))
}

/// Builds the VM the config asks for: restored from `config.restore`'s
/// files, or booted cold.
pub(super) fn build(
    config: &VmConfig,
    guest: &UnixStream,
    inbox: &NetInbox,
) -> Result<Built, RuntimeError> {
    let host = HostSide {
        config,
        guest,
        inbox,
        console_log: open_console_log(config)?,
        transcript: Arc::new(Mutex::new(ConsoleTranscript::default())),
    };
    match &config.restore {
        None => cold_boot(host),
        Some(files) => restore(host, files),
    }
}

fn cold_boot(mut host: HostSide<'_>) -> Result<Built, RuntimeError> {
    let config = host.config;
    let memory = create_guest_memory(config.memory_mib)?;
    let vm = Vm::new(&memory)?;
    let serial = SerialConsole::new(host.serial(&vm)?);
    let mut bus = MmioBus::default();
    let virtio = VirtioSet::new(host.devices(&vm, &memory, &mut bus)?)?;
    let cmdline = cmdline::for_config(config);
    debug_assert!(cmdline.matches("virtio_mmio.device=").count() == virtio.device_count());
    let entry = boot::load_pvh(&memory, &config.kernel, &config.initramfs, &cmdline)?;
    let vcpu = Vcpu::new(&vm, 0, config.vcpus.max(1), config.flavour)?;
    vcpu.configure_pvh_boot(entry.0)?;
    Ok(Built {
        vm,
        memory,
        vcpu,
        platform: Platform { serial, bus },
        virtio,
        transcript: host.transcript,
        cmdline,
    })
}

fn restore(mut host: HostSide<'_>, files: &SnapshotFiles) -> Result<Built, RuntimeError> {
    let config = host.config;
    let vcpus = config.vcpus.max(1);
    let state: SnapshotState =
        snapshot::read_file(&files.state).map_err(|source| RuntimeError::StateFile {
            path: files.state.display().to_string(),
            source,
        })?;
    if state.memory_mib != config.memory_mib
        || state.disk_count != config.disks.len()
        || state.vcpus.len() != usize::from(vcpus)
    {
        return Err(RuntimeError::ShapeMismatch(format!(
            "snapshot has {} MiB, {} disks, {} vCPUs",
            state.memory_mib,
            state.disk_count,
            state.vcpus.len()
        )));
    }
    let mem_file = File::open(&files.memory).map_err(|source| RuntimeError::Open {
        path: files.memory.display().to_string(),
        source,
    })?;
    let memory = map_snapshot(mem_file, config.memory_mib)?;
    let vm = Vm::restore(&memory, &state.vm)?;
    let serial = SerialConsole::restore(host.serial(&vm)?, &state.serial)?;
    let mut bus = MmioBus::default();
    let virtio = VirtioSet::restore(host.devices(&vm, &memory, &mut bus)?, &state.virtio)?;
    let vcpu_args = VcpuArgs {
        vm: &vm,
        index: 0,
        count: vcpus,
        flavour: config.flavour,
    };
    let vcpu = Vcpu::restore(vcpu_args, &state.vcpus[0])?;
    Ok(Built {
        vm,
        memory,
        vcpu,
        platform: Platform { serial, bus },
        virtio,
        transcript: host.transcript,
        cmdline: state.cmdline,
    })
}
