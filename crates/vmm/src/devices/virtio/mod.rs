//! Virtio devices for the guest: the split virtqueue, the virtio-mmio
//! (version 2) transport, and the block, console and net devices behind it.
//!
//! Ownership: the transport owns guest memory and the queues; a device owns
//! only its backend and its own state. When the transport hands work to a
//! device it lends both through a [`QueueContext`], so snapshots split
//! cleanly (the transport saves queues, a device saves only itself).
//!
//! Use from the VMM core:
//!
//! ```text
//! let disk = Block::new(file, read_only, b"rootfs")?;
//! let blk = Arc::new(Mutex::new(MmioTransport::new(mem.clone(), irqfd, Box::new(disk))));
//! // vCPU thread, on an MMIO exit inside the device's window:
//! blk.lock()?.read(offset, data); // or .write(offset, data)
//!
//! let console = Console::new(Box::new(socket));
//! let con = Arc::new(Mutex::new(MmioTransport::new(mem, irqfd2, Box::new(console))));
//! // Event thread: read at most console_input_capacity() bytes, then
//! let accepted = con.lock()?.console_push_input(&buf[..n])?; // == n
//!
//! let nic = Net::new(mac, Box::new(stack_port)); // stack_port: impl NetBackend
//! let net = Arc::new(Mutex::new(MmioTransport::new(mem, irqfd3, Box::new(nic))));
//! // Network stack thread, per frame for the guest:
//! match net.lock()?.net_push_frame(&frame)? {
//!     RxOutcome::NoBuffer => { /* hold it until rx_buffers_available() */ }
//!     RxOutcome::Delivered | RxOutcome::Dropped | RxOutcome::NotReady => {}
//! }
//!
//! // Snapshot (vCPUs paused), through `Persist`: transport.save()?; restore
//! // with a freshly built device:
//! // MmioTransport::restore(MmioTransportArgs { mem, interrupt, device }, &state)?
//! ```

pub(crate) mod block;
pub(crate) mod console;
pub(crate) mod mmio;
pub(crate) mod net;
pub(crate) mod queue;
#[cfg(test)]
mod testutil;

use std::any::Any;

use serde::{Deserialize, Serialize};

pub(crate) use block::{Block, BlockError, BlockState};
pub(crate) use console::{Console, ConsoleState};
pub(crate) use mmio::MmioTransportState;
pub(crate) use mmio::{MmioError, MmioTransport};
pub(crate) use net::{Net, NetBackend, NetState, RxOutcome};
pub(crate) use queue::{QueueContext, QueueError};

/// Virtio device ids (virtio 1.x, section 5).
pub(crate) mod device_type {
    /// Network device.
    pub(crate) const NET: u32 = 1;
    /// Block device.
    pub(crate) const BLOCK: u32 = 2;
    /// Console device.
    pub(crate) const CONSOLE: u32 = 3;
}

/// Bits of the device status register (virtio 1.x, section 2.1). The whole
/// table: the driver sets some bits the device never has to look at.
#[allow(dead_code)]
pub(crate) mod status {
    /// The guest found the device.
    pub(crate) const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for the device.
    pub(crate) const DRIVER: u32 = 2;
    /// The driver is set up and the device is live.
    pub(crate) const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub(crate) const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub(crate) const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub(crate) const FAILED: u32 = 0x80;
}

/// Feature bits shared by every device type (virtio 1.x, section 6).
pub(crate) mod features {
    /// Indirect descriptors; never offered.
    pub(crate) const RING_INDIRECT_DESC: u32 = 28;
    /// Used/avail event index suppression; never offered.
    pub(crate) const RING_EVENT_IDX: u32 = 29;
    /// Virtio 1.x semantics; required by the version 2 mmio transport.
    pub(crate) const VERSION_1: u32 = 32;

    /// The mask of a feature bit number.
    pub(crate) const fn bit(feature: u32) -> u64 {
        1u64 << feature
    }
}

/// Bits of the mmio InterruptStatus register.
pub(crate) mod interrupt {
    /// A used ring was updated.
    pub(crate) const VRING: u32 = 1;
    /// The configuration (or device status) changed.
    pub(crate) const CONFIG: u32 = 2;
}

/// Errors of a device's own life cycle (activation and state restore).
#[derive(Debug, thiserror::Error)]
pub(crate) enum VirtioError {
    /// The driver activated a device without a queue it must have.
    #[error("queue {index} is not ready at activation")]
    QueueNotReady {
        /// Queue index.
        index: usize,
    },
    /// The saved state belongs to another kind of device.
    #[error("saved state is for another device type")]
    StateTypeMismatch,
    /// The saved state does not fit the device it is restored into.
    #[error("saved state does not match the device: {0}")]
    StateMismatch(String),
}

/// The saved state of one device, as held in [`MmioTransportState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DeviceState {
    /// A virtio-blk device.
    Block(BlockState),
    /// A virtio-console device.
    Console(ConsoleState),
    /// A virtio-net device.
    Net(NetState),
}

/// A virtio device as seen by the transport.
///
/// All methods are called with the transport's lock held, from the vCPU
/// thread (register accesses, queue notifications) or from the thread that
/// feeds host-side input (see [`MmioTransport::with_device`]).
pub(crate) trait VirtioDevice: Send {
    /// The virtio device id ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Features the driver accepted; called once at FEATURES_OK with a
    /// subset of [`Self::avail_features`].
    fn ack_features(&mut self, features: u64);
    /// Reads device config space; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; writes to read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: the device may use the queues from now on.
    fn activate(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), VirtioError>;
    /// The driver notified queue `index`. An error means the queue itself is
    /// broken (not just one request); the transport then needs a reset.
    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext<'_>)
        -> Result<(), QueueError>;
    /// The driver reset the device: forget activation and negotiated
    /// features, keep the backend.
    fn reset(&mut self);
    /// The device's own state (queues are saved by the transport). The
    /// device's half of the transport's `Persist::save`: a trait object
    /// cannot be `Persist` itself.
    fn save_state(&self) -> DeviceState;
    /// Checks a saved state against this freshly constructed device (built
    /// around its backend as for a cold boot) and takes it over: the
    /// device's half of the transport's `Persist::restore`.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError>;
    /// For [`MmioTransport::with_device`], which needs the concrete type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Copies config bytes at `offset` into `data`; bytes past the end read 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Splits `len` bytes into consecutive (offset, length) pieces of at most
/// `chunk` bytes, for copies through a bounce buffer of that size.
pub(crate) fn chunks(len: u64, chunk: usize) -> impl Iterator<Item = (u64, usize)> {
    let step = chunk.max(1) as u64;
    (0..len.div_ceil(step)).map(move |i| {
        let offset = i * step;
        (offset, (len - offset).min(step) as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_length_exactly() {
        assert_eq!(chunks(0, 4).count(), 0);
        assert_eq!(chunks(8, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 4)]);
        assert_eq!(
            chunks(9, 4).collect::<Vec<_>>(),
            vec![(0, 4), (4, 4), (8, 1)]
        );
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let mut data = [0xffu8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
