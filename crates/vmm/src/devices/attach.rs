//! Creates the VM's virtio devices in the fixed layout (the disks in order,
//! then the control console), wires them to the bus and the irqchip, and
//! saves/restores them as one unit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::bus::MmioBus;
use super::virtio::mmio::MmioTransportArgs;
use super::virtio::{
    Block, BlockError, Console, MmioError, MmioTransport, MmioTransportState, Net, NetBackend,
    VirtioDevice,
};
use crate::persist::Persist;
use crate::vstate::vm::{Vm, VmError};
use sbxrun_proto::control::DiskConfig;
use sbxrun_proto::layout::{virtio_irq, virtio_mmio_base, MAX_VIRTIO_DEVICES, MMIO_WINDOW};

/// Errors attaching devices.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    #[error("cannot open disk {path}")]
    OpenDisk {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {path}")]
    Disk {
        path: String,
        #[source]
        source: BlockError,
    },
    #[error("{0} disks is more than the {max} a VM can have", max = MAX_VIRTIO_DEVICES - FIXED_VIRTIO_DEVICES)]
    TooManyDisks(usize),
    #[error("interrupt for a virtio device")]
    Irq(#[from] VmError),
    #[error("MMIO layout")]
    Bus(#[from] super::bus::OverlapError),
    #[error("virtio device {index} state")]
    State {
        index: usize,
        #[source]
        source: MmioError,
    },
    #[error("snapshot has {saved} virtio devices, this VM {actual}")]
    DeviceCount { saved: usize, actual: usize },
    #[error("a device lock was poisoned")]
    Poisoned,
}

/// Saved state of every virtio device, in layout order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VirtioSetState {
    pub devices: Vec<MmioTransportState>,
}

pub(crate) use sbxrun_proto::layout::FIXED_VIRTIO_DEVICES;

/// The VM's virtio devices.
pub(crate) struct VirtioSet {
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    net: Arc<Mutex<MmioTransport>>,
    console: Arc<Mutex<MmioTransport>>,
}

/// What the guest-facing devices are connected to on the host side.
pub(crate) struct DeviceBackends {
    /// Receives what the guest writes to the control console.
    pub guest_out: Box<dyn Write + Send>,
    /// Receives the frames the guest sends on its network interface.
    pub net: Box<dyn NetBackend>,
}

fn open_disk(disk: &DiskConfig) -> Result<Block, AttachError> {
    let path = disk.path.display().to_string();
    let file: File = OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path)
        .map_err(|source| AttachError::OpenDisk {
            path: path.clone(),
            source,
        })?;
    Block::new(file, disk.read_only, disk.id.as_bytes())
        .map_err(|source| AttachError::Disk { path, source })
}

/// What the devices are built around, at cold boot and at restore.
pub(crate) struct VirtioSetArgs<'a> {
    /// The VM whose irqchip the devices interrupt.
    pub vm: &'a Vm,
    /// Guest memory.
    pub memory: &'a GuestMemoryMmap,
    /// The disks, in layout order.
    pub disks: &'a [DiskConfig],
    /// The host side of the control console and the network device.
    pub backends: DeviceBackends,
    /// The bus the devices' windows go on.
    pub bus: &'a mut MmioBus,
}

impl Persist for VirtioSet {
    type State = VirtioSetState;
    type RestoreArgs<'a> = VirtioSetArgs<'a>;
    type Error = AttachError;

    /// Saves every device; the vCPUs must be paused.
    fn save(&self) -> Result<VirtioSetState, AttachError> {
        let mut devices = Vec::with_capacity(self.transports.len());
        for (index, t) in self.transports.iter().enumerate() {
            let t = t.lock().map_err(|_| AttachError::Poisoned)?;
            devices.push(
                t.save()
                    .map_err(|source| AttachError::State { index, source })?,
            );
        }
        Ok(VirtioSetState { devices })
    }

    /// Recreates the devices around the same backends as a cold boot.
    fn restore(args: VirtioSetArgs<'_>, state: &VirtioSetState) -> Result<Self, AttachError> {
        Self::build(args, Some(state))
    }
}

impl VirtioSet {
    /// Creates and attaches fresh devices.
    pub(crate) fn new(args: VirtioSetArgs<'_>) -> Result<Self, AttachError> {
        Self::build(args, None)
    }

    fn build(args: VirtioSetArgs<'_>, state: Option<&VirtioSetState>) -> Result<Self, AttachError> {
        let VirtioSetArgs {
            vm,
            memory,
            disks,
            backends,
            bus,
        } = args;
        // The disks, the network device and the console each take a window.
        if disks.len() + FIXED_VIRTIO_DEVICES > MAX_VIRTIO_DEVICES {
            return Err(AttachError::TooManyDisks(disks.len()));
        }
        let mut devices: Vec<Box<dyn VirtioDevice>> =
            Vec::with_capacity(disks.len() + FIXED_VIRTIO_DEVICES);
        for disk in disks {
            devices.push(Box::new(open_disk(disk)?));
        }
        // Every VM has the network device, so one snapshot serves steps
        // with and without egress; without it the guest's link stays down.
        let net_index = devices.len();
        devices.push(Box::new(Net::new(crate::net::GUEST_MAC, backends.net)));
        devices.push(Box::new(Console::new(backends.guest_out)));
        if let Some(state) = state {
            if state.devices.len() != devices.len() {
                return Err(AttachError::DeviceCount {
                    saved: state.devices.len(),
                    actual: devices.len(),
                });
            }
        }

        let mut transports = Vec::with_capacity(devices.len());
        for (index, device) in devices.into_iter().enumerate() {
            let irq = vm.irq_eventfd(virtio_irq(index))?;
            let transport = match state {
                None => MmioTransport::new(memory.clone(), irq, device),
                Some(state) => {
                    let args = MmioTransportArgs {
                        mem: memory.clone(),
                        interrupt: irq,
                        device,
                    };
                    MmioTransport::restore(args, &state.devices[index])
                        .map_err(|source| AttachError::State { index, source })?
                }
            };
            let transport = Arc::new(Mutex::new(transport));
            bus.insert(virtio_mmio_base(index), MMIO_WINDOW, transport.clone())?;
            transports.push(transport);
        }
        let missing = AttachError::DeviceCount {
            saved: 0,
            actual: 0,
        };
        let net = transports.get(net_index).cloned().ok_or(missing)?;
        let console = transports.last().cloned().ok_or(AttachError::DeviceCount {
            saved: 0,
            actual: 0,
        })?;
        Ok(VirtioSet {
            transports,
            net,
            console,
        })
    }

    /// The network device's transport, for pushing frames to the guest.
    pub(crate) fn net(&self) -> Arc<Mutex<MmioTransport>> {
        self.net.clone()
    }

    /// How many virtio-mmio windows the guest must be told about.
    pub(crate) fn device_count(&self) -> usize {
        self.transports.len()
    }

    /// Starts the thread feeding runner bytes into the control console. It
    /// reads only as much as the console can take, so a guest that stops
    /// reading pushes back on the runner instead of growing our memory.
    pub(crate) fn spawn_input_pump(&self, mut guest: UnixStream) -> std::io::Result<()> {
        let console = self.console.clone();
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let capacity = match console.lock() {
                        Ok(mut t) => t.console_input_capacity().unwrap_or(0),
                        Err(_) => return,
                    };
                    if capacity == 0 {
                        // The guest has not posted receive buffers yet (still
                        // booting, or busy): wait for it without holding the lock.
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let want = capacity.min(buf.len());
                    let n = match guest.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    match console.lock() {
                        Ok(mut t) => {
                            let _ = t.console_push_input(&buf[..n]);
                        }
                        Err(_) => return,
                    }
                }
            })?;
        Ok(())
    }
}
