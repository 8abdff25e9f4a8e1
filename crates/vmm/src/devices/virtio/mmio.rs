//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): the
//! register window the guest driver programs, feature negotiation, queue
//! setup, notifications and interrupts, and the transport's snapshot.
//!
//! Queue notifications are handled synchronously on the vCPU thread that
//! wrote QueueNotify, so between two register accesses no request is ever
//! in flight; that is what makes [`MmioTransport::save`] well-defined.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue::{Queue, QueueArgs, QueueContext, QueueError, QueueState, Ring};
use super::{features, interrupt, status, DeviceState, VirtioDevice, VirtioError};
use crate::devices::BusDevice;
use crate::persist::Persist;

/// "virt" in little endian.
pub(crate) const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub(crate) const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("sbxr").
pub(crate) const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"sbxr");
/// Start of device config space in the window.
pub(crate) const MMIO_CONFIG_OFFSET: u64 = 0x100;

/// Register offsets (virtio 1.x, section 4.2.2). The whole table, as the
/// spec lays it out: shared-memory registers read as zero here.
#[allow(dead_code)]
pub(crate) mod reg {
    /// Magic value, "virt".
    pub(crate) const MAGIC: u64 = 0x000;
    /// Transport version.
    pub(crate) const VERSION: u64 = 0x004;
    /// Virtio device id.
    pub(crate) const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub(crate) const VENDOR_ID: u64 = 0x00c;
    /// 32 feature bits offered, chosen by DEVICE_FEATURES_SEL.
    pub(crate) const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 bits DEVICE_FEATURES shows.
    pub(crate) const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 feature bits accepted, chosen by DRIVER_FEATURES_SEL.
    pub(crate) const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 bits DRIVER_FEATURES sets.
    pub(crate) const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue the QUEUE_* registers refer to.
    pub(crate) const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (0: no such queue).
    pub(crate) const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub(crate) const QUEUE_NUM: u64 = 0x038;
    /// Selected queue is set up.
    pub(crate) const QUEUE_READY: u64 = 0x044;
    /// Driver kicks the queue with this index.
    pub(crate) const QUEUE_NOTIFY: u64 = 0x050;
    /// Why the interrupt was raised.
    pub(crate) const INTERRUPT_STATUS: u64 = 0x060;
    /// Driver clears these InterruptStatus bits.
    pub(crate) const INTERRUPT_ACK: u64 = 0x064;
    /// Device status; 0 resets.
    pub(crate) const STATUS: u64 = 0x070;
    /// Descriptor table address, low half.
    pub(crate) const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high half.
    pub(crate) const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low half.
    pub(crate) const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available ring address, high half.
    pub(crate) const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used ring address, low half.
    pub(crate) const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used ring address, high half.
    pub(crate) const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Shared memory region selector.
    pub(crate) const SHM_SEL: u64 = 0x0ac;
    /// Shared memory length, low half.
    pub(crate) const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory length, high half.
    pub(crate) const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory base, low half.
    pub(crate) const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory base, high half.
    pub(crate) const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Changes when config space changes.
    pub(crate) const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Features the transport never lets a device offer: the queue code
/// implements neither.
const UNSUPPORTED_FEATURES: u64 =
    features::bit(features::RING_INDIRECT_DESC) | features::bit(features::RING_EVENT_IDX);

/// Errors of saving, restoring and driving the transport from the host.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MmioError {
    /// The snapshot is of another device type than the device given.
    #[error("saved device type {saved} does not match device type {actual}")]
    DeviceTypeMismatch {
        /// Type in the snapshot.
        saved: u32,
        /// Type of the device given to restore.
        actual: u32,
    },
    /// The snapshot has another number of queues than the device.
    #[error("saved queue count {saved} does not match the device's {actual}")]
    QueueCountMismatch {
        /// Queues in the snapshot.
        saved: usize,
        /// Queues of the device.
        actual: usize,
    },
    /// A saved queue is invalid.
    #[error("invalid saved state of queue {index}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: QueueError,
    },
    /// Saved driver features include features the device does not offer.
    #[error("saved driver features {0:#x} were not offered")]
    FeaturesNotOffered(u64),
    /// The device refused its saved state.
    #[error("device state does not apply")]
    DeviceState(#[source] VirtioError),
    /// Re-activating the restored device failed.
    #[error("device activation failed")]
    Activate(#[source] VirtioError),
    /// The device behind the transport is not of the requested kind.
    #[error("device type {0} does not support this operation")]
    WrongDeviceType(u32),
}

/// Serializable state of a transport and its device. Holds no fds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MmioTransportState {
    /// Virtio device id.
    pub device_type: u32,
    /// Device status register.
    pub status: u32,
    /// DeviceFeaturesSel register.
    pub device_features_select: u32,
    /// DriverFeaturesSel register.
    pub driver_features_select: u32,
    /// Features written by the driver.
    pub driver_features: u64,
    /// QueueSel register.
    pub queue_select: u32,
    /// One state per queue of the device.
    pub queues: Vec<QueueState>,
    /// InterruptStatus register.
    pub interrupt_status: u32,
    /// ConfigGeneration register.
    pub config_generation: u32,
    /// The device's own state.
    pub device: DeviceState,
}

/// A virtio device behind a virtio-mmio register window.
///
/// The core puts it on the MMIO bus (it implements [`BusDevice`]) and shares
/// it as `Arc<Mutex<MmioTransport>>` with threads that feed host-side input;
/// those reach the concrete device through [`Self::with_device`] (or the
/// console and net shortcuts in [`super::console`] and [`super::net`]).
pub(crate) struct MmioTransport {
    mem: GuestMemoryMmap,
    interrupt: EventFd,
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    interrupt_status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// A transport in reset state. Writing 1 to `interrupt` must raise the
    /// device's interrupt (the core registers it as an irqfd).
    pub(crate) fn new(
        mem: GuestMemoryMmap,
        interrupt: EventFd,
        device: Box<dyn VirtioDevice>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max))
            .collect();
        Self {
            mem,
            interrupt,
            device,
            queues,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            interrupt_status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    /// Virtio id of the device behind the transport.
    pub(crate) fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    #[cfg(test)]
    /// Whether the driver set DRIVER_OK and the device accepted it.
    pub(crate) fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device, for operations that need no guest memory.
    #[cfg(test)]
    pub(crate) fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Runs `f` on the concrete device `D` with guest memory and queues at
    /// hand, then interrupts the guest if `f` returned buffers to it.
    /// Returns `None` if the device is not a `D`.
    pub(crate) fn with_device<D: VirtioDevice + 'static, R>(
        &mut self,
        f: impl FnOnce(&mut D, &mut QueueContext<'_>) -> R,
    ) -> Option<R> {
        let mut result = None;
        self.run_device(|device, ctx| {
            if let Some(d) = device.as_any_mut().downcast_mut::<D>() {
                result = Some(f(d, ctx));
            }
            Ok(())
        });
        result
    }

    /// [`Self::with_device`] for the device-specific shortcuts: a device
    /// of another type is [`MmioError::WrongDeviceType`].
    pub(crate) fn with_device_of<D: VirtioDevice + 'static, R>(
        &mut self,
        f: impl FnOnce(&mut D, &mut QueueContext<'_>) -> R,
    ) -> Result<R, MmioError> {
        let device_type = self.device_type();
        self.with_device(f)
            .ok_or(MmioError::WrongDeviceType(device_type))
    }

    /// The device as a `D` without touching the queues, or
    /// [`MmioError::WrongDeviceType`].
    pub(crate) fn device_of<D: VirtioDevice + 'static>(&mut self) -> Result<&mut D, MmioError> {
        let device_type = self.device_type();
        self.device
            .as_any_mut()
            .downcast_mut::<D>()
            .ok_or(MmioError::WrongDeviceType(device_type))
    }

    /// Lends memory and queues to the device for `f`, then interrupts the
    /// guest if a used ring changed, and marks the device broken if a queue
    /// turned out to be.
    fn run_device(
        &mut self,
        f: impl FnOnce(&mut dyn VirtioDevice, &mut QueueContext<'_>) -> Result<(), QueueError>,
    ) {
        let mut ctx = QueueContext::new(&self.mem, &mut self.queues);
        let result = f(self.device.as_mut(), &mut ctx);
        let used = ctx.used_updated();
        let broken = result.err().or_else(|| ctx.take_broken());
        if used {
            self.raise_interrupt(interrupt::VRING);
        }
        if let Some(err) = broken {
            self.needs_reset(&err);
        }
    }

    fn raise_interrupt(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        if let Err(err) = self.interrupt.write(1) {
            tracing::warn!(error = %err, "failed to signal virtio interrupt");
        }
    }

    fn needs_reset(&mut self, err: &dyn std::error::Error) {
        tracing::warn!(
            device = self.device.device_type(),
            error = %err,
            "virtio device needs reset"
        );
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
            self.raise_interrupt(interrupt::CONFIG);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt_status = 0;
        self.activated = false;
    }

    fn offered_features(&self) -> u64 {
        self.device.avail_features() & !UNSUPPORTED_FEATURES
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        self.status & status::DRIVER != 0
            && self.driver_features & !offered == 0
            && self.driver_features & features::bit(features::VERSION_1) != 0
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit; the driver echoes it back
        // or not, either way it stays until reset.
        let current = self.status & !status::DEVICE_NEEDS_RESET;
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & current != current {
            tracing::warn!(current, value, "driver cleared status bits without reset");
            return;
        }
        let mut added = value & !current;
        if added & status::FEATURES_OK != 0 {
            if self.features_acceptable() {
                self.device.ack_features(self.driver_features);
            } else {
                // The driver reads the status back and gives up.
                added &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 {
            added &= !status::DRIVER_OK;
            self.status |= added;
            if self.status & status::FEATURES_OK != 0 {
                self.status |= status::DRIVER_OK;
                self.activate();
            }
            return;
        }
        self.status |= added;
    }

    fn activate(&mut self) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() {
                if let Err(err) = queue.validate(&self.mem) {
                    tracing::warn!(queue = index, error = %err, "invalid queue at DRIVER_OK");
                    self.needs_reset(&err);
                    return;
                }
            }
        }
        let mut activation = Ok(());
        self.run_device(|device, ctx| {
            activation = device.activate(ctx);
            Ok(())
        });
        match activation {
            Ok(()) => self.activated = true,
            Err(err) => self.needs_reset(&err),
        }
    }

    fn notify(&mut self, index: u32) {
        if !self.activated || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let index = index as usize;
        if !self.queues.get(index).is_some_and(Queue::ready) {
            tracing::debug!(queue = index, "notify for a queue that is not ready");
            return;
        }
        self.run_device(|device, ctx| device.process_queue(index, ctx));
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// The selected queue if the driver may still configure it.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        let activated = self.activated;
        self.selected_queue().filter(|q| !q.ready() && !activated)
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let addr_half = |q: Option<&mut Queue>, ring, high: bool| {
            q.map_or(0, |q| {
                let addr = q.ring_addr(ring).0;
                if high {
                    (addr >> 32) as u32
                } else {
                    addr as u32
                }
            })
        };
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_NUM => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::QUEUE_DESC_LOW => addr_half(self.selected_queue(), Ring::Descriptors, false),
            reg::QUEUE_DESC_HIGH => addr_half(self.selected_queue(), Ring::Descriptors, true),
            reg::QUEUE_DRIVER_LOW => addr_half(self.selected_queue(), Ring::Avail, false),
            reg::QUEUE_DRIVER_HIGH => addr_half(self.selected_queue(), Ring::Avail, true),
            reg::QUEUE_DEVICE_LOW => addr_half(self.selected_queue(), Ring::Used, false),
            reg::QUEUE_DEVICE_HIGH => addr_half(self.selected_queue(), Ring::Used, true),
            // No shared memory regions: a length of all ones means absent.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(offset, "read of unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let ring_half = match offset {
            reg::QUEUE_DESC_LOW => Some((Ring::Descriptors, false)),
            reg::QUEUE_DESC_HIGH => Some((Ring::Descriptors, true)),
            reg::QUEUE_DRIVER_LOW => Some((Ring::Avail, false)),
            reg::QUEUE_DRIVER_HIGH => Some((Ring::Avail, true)),
            reg::QUEUE_DEVICE_LOW => Some((Ring::Used, false)),
            reg::QUEUE_DEVICE_HIGH => Some((Ring::Used, true)),
            _ => None,
        };
        if let Some((ring, high)) = ring_half {
            if let Some(q) = self.configurable_queue() {
                q.set_ring_addr_half(ring, high, value);
            }
            return;
        }
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES => {
                let negotiating =
                    self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                if negotiating {
                    self.driver_features = (self.driver_features & !(0xffff_ffff << shift))
                        | (u64::from(value) << shift);
                }
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    // Out-of-range sizes are kept and refused at DRIVER_OK.
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            reg::QUEUE_READY => {
                // Clearing is always allowed: the driver tears queues down
                // that way and checks the register reads back 0.
                let activated = self.activated;
                if let Some(q) = self.selected_queue() {
                    if value == 0 {
                        q.set_ready(false);
                    } else if !activated {
                        q.set_ready(true);
                    }
                }
            }
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(value),
            _ => tracing::debug!(offset, value, "write to unknown virtio-mmio register"),
        }
    }
}

/// What a transport is restored around: the same resources as a cold boot's
/// [`MmioTransport::new`].
pub(crate) struct MmioTransportArgs {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's irqfd.
    pub interrupt: EventFd,
    /// The device, freshly built around its backend; the saved device
    /// state is checked against it and applied.
    pub device: Box<dyn VirtioDevice>,
}

impl Persist for MmioTransport {
    type State = MmioTransportState;
    type RestoreArgs<'a> = MmioTransportArgs;
    type Error = MmioError;

    /// Saves the transport and device state. The caller holds the lock and
    /// the vCPUs are paused, so no request is half done: requests complete
    /// within the QueueNotify write that starts them.
    fn save(&self) -> Result<MmioTransportState, MmioError> {
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                q.save()
                    .map_err(|source| MmioError::Queue { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            queues,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            device: self.device.save_state(),
        })
    }

    /// Rebuilds a transport around a freshly constructed device (with its
    /// backend). A device that was live is activated again; a pending
    /// interrupt is raised again, since the edge that delivered it may not
    /// have survived the snapshot.
    fn restore(args: MmioTransportArgs, state: &MmioTransportState) -> Result<Self, MmioError> {
        let MmioTransportArgs {
            mem,
            interrupt,
            mut device,
        } = args;
        let actual = device.device_type();
        if state.device_type != actual {
            return Err(MmioError::DeviceTypeMismatch {
                saved: state.device_type,
                actual,
            });
        }
        let max_sizes = device.queue_max_sizes();
        if state.queues.len() != max_sizes.len() {
            return Err(MmioError::QueueCountMismatch {
                saved: state.queues.len(),
                actual: max_sizes.len(),
            });
        }
        let queues = max_sizes
            .iter()
            .zip(&state.queues)
            .enumerate()
            .map(|(index, (&max, qs))| {
                let args = QueueArgs {
                    max_size: max,
                    mem: &mem,
                };
                Queue::restore(args, qs).map_err(|source| MmioError::Queue { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        device
            .restore_state(&state.device)
            .map_err(MmioError::DeviceState)?;
        // Before FEATURES_OK the driver may have written anything; only
        // negotiated features must be ones this device offers.
        if state.status & status::FEATURES_OK != 0 {
            let offered = device.avail_features() & !UNSUPPORTED_FEATURES;
            if state.driver_features & !offered != 0 {
                return Err(MmioError::FeaturesNotOffered(state.driver_features));
            }
            device.ack_features(state.driver_features);
        }
        let mut transport = Self {
            mem,
            interrupt,
            device,
            queues,
            status: state.status,
            device_features_select: state.device_features_select,
            driver_features_select: state.driver_features_select,
            driver_features: state.driver_features,
            queue_select: state.queue_select,
            interrupt_status: state.interrupt_status,
            config_generation: state.config_generation,
            activated: false,
        };
        let live = status::DRIVER_OK | status::FEATURES_OK;
        if state.status & live == live && state.status & status::DEVICE_NEEDS_RESET == 0 {
            let mut activation = Ok(());
            transport.run_device(|device, ctx| {
                activation = device.activate(ctx);
                Ok(())
            });
            activation.map_err(MmioError::Activate)?;
            transport.activated = true;
        }
        if transport.interrupt_status != 0 {
            transport.raise_interrupt(0);
        }
        Ok(transport)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= MMIO_CONFIG_OFFSET {
            data.fill(0);
            self.device.read_config(offset - MMIO_CONFIG_OFFSET, data);
            return;
        }
        // Registers below config space are 32-bit only (virtio 4.2.2.2).
        if data.len() != 4 || offset % 4 != 0 {
            tracing::debug!(offset, len = data.len(), "bad virtio-mmio register read");
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= MMIO_CONFIG_OFFSET {
            self.device.write_config(offset - MMIO_CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => tracing::debug!(offset, "non-32-bit write of virtio-mmio register"),
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
