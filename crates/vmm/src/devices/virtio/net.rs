//! virtio-net (device id 1): one receive and one transmit queue, a fixed
//! MAC address and a link that is always up, no offloads. Frames go to and
//! come from a [`NetBackend`], the VMM's userspace network stack.
//!
//! Every frame in either direction is preceded by a 12-byte
//! `virtio_net_hdr_v1` (VERSION_1 is always negotiated). With no checksum
//! or segmentation offload negotiated its fields carry nothing: on
//! transmit it is skipped, on receive it is all zero but `num_buffers = 1`.
//! Frames are plain Ethernet of 14 to 1514 bytes (MTU 1500).
//!
//! Guest frames are read from the transmit queue on the vCPU thread that
//! notified it and handed to [`NetBackend::transmit`]. Host frames come
//! from another thread through [`MmioTransport::net_push_frame`], which
//! copies one frame into the next posted receive chain or says there is
//! none; the backend holds such frames until
//! [`NetBackend::rx_buffers_available`] says the guest posted more.
//!
//! A receive chain that cannot take the frame (too small, or with
//! device-readable descriptors) is given back to the guest with length 0
//! and the frame is dropped ([`RxOutcome::Dropped`]): a frame is offered to
//! one chain only, so a guest posting bad buffers loses its own traffic and
//! a push never searches the ring for a buffer that fits. The Linux driver
//! counts such a buffer as a length error and posts a new one.

use std::any::Any;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::mmio::{MmioError, MmioTransport};
use super::queue::{DescriptorChain, QueueContext, QueueError};
use super::{device_type, features, read_config_bytes, DeviceState, VirtioDevice, VirtioError};

/// Size of each queue.
pub(crate) const NET_QUEUE_SIZE: u16 = 256;
/// Feature: the MAC address in config space is valid.
pub(crate) const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature: the link status in config space is valid.
pub(crate) const VIRTIO_NET_F_STATUS: u32 = 16;
/// Config status bit: the link is up.
pub(crate) const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Length of `struct virtio_net_hdr_v1`.
pub(crate) const NET_HDR_LEN: usize = 12;
/// Shortest frame: an Ethernet header.
pub(crate) const MIN_FRAME_LEN: usize = 14;
/// Longest frame: Ethernet header and a 1500-byte payload (no VLAN tag
/// room, as Linux's default MTU leaves none either).
pub(crate) const MAX_FRAME_LEN: usize = 1514;

const RECEIVEQ: usize = 0;
const TRANSMITQ: usize = 1;
const NUM_QUEUES: usize = 2;
/// mac (6 bytes), status (u16).
const CONFIG_LEN: usize = 8;
/// Offset of `num_buffers` in the header.
const HDR_NUM_BUFFERS: usize = 10;

/// The guest side of the VMM's network stack, which owns the frames.
///
/// Both methods are called with the device's transport locked, so they must
/// neither block nor call back into the transport (that would deadlock):
/// queue the frame or set a flag and let the stack's own thread act on it.
pub(crate) trait NetBackend: Send {
    /// The guest transmitted one Ethernet frame (virtio header already
    /// stripped). Called on the vCPU thread; must not block.
    fn transmit(&mut self, frame: &[u8]);
    /// The guest posted receive buffers: frames the backend held back may
    /// now fit. Must not block. Treat it as a level, not an edge: it may
    /// come before the caller that got [`RxOutcome::NoBuffer`] has stored
    /// its frame, and it comes on every receive notification.
    fn rx_buffers_available(&mut self);
}

/// What became of a frame offered to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxOutcome {
    /// The frame is in a receive buffer and the guest was interrupted.
    Delivered,
    /// No receive buffer is posted. The frame was not taken: keep it and
    /// retry after [`NetBackend::rx_buffers_available`].
    NoBuffer,
    /// The device is not live (before DRIVER_OK, after a reset, or after
    /// the driver broke the receive queue). The frame was not taken and no
    /// buffer is coming until the driver sets the device up again; a
    /// network would drop it.
    NotReady,
    /// The frame was consumed and thrown away: it was not a valid Ethernet
    /// frame for this link (see [`MIN_FRAME_LEN`], [`MAX_FRAME_LEN`]), or
    /// the receive chain it was meant for could not hold it (that chain is
    /// given back empty). Counted in [`NetCounters::rx_dropped`]; do not
    /// retry.
    Dropped,
}

/// Why a single frame or buffer was refused. None of these is a device
/// error: the frame is dropped and the queue moves on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    /// A transmit chain has device-writable buffers.
    #[error("transmit buffer has {0} device-writable bytes")]
    WritableTransmitBuffer(u32),
    /// A receive chain has device-readable buffers.
    #[error("receive buffer has {0} device-readable bytes")]
    ReadableReceiveBuffer(u32),
    /// A frame (without virtio header) is outside 14..=1514 bytes.
    #[error("frame of {0} bytes is not between {MIN_FRAME_LEN} and {MAX_FRAME_LEN} bytes")]
    FrameLength(usize),
    /// A transmit chain shorter than the virtio header.
    #[error("transmit buffer of {0} bytes has no room for the {NET_HDR_LEN}-byte header")]
    MissingHeader(u32),
    /// A receive chain too small for header and frame.
    #[error("receive buffer of {have} bytes is smaller than the {need}-byte packet")]
    ReceiveBufferTooSmall {
        /// Writable bytes of the chain.
        have: u32,
        /// Header plus frame.
        need: usize,
    },
    /// Guest memory behind a buffer could not be accessed.
    #[error(transparent)]
    Buffer(#[from] QueueError),
}

/// Saved state of a net device: what the guest saw and agreed to. Frames in
/// flight live in the backend, not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetState {
    /// The MAC address in config space.
    pub mac: [u8; 6],
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Frame counters since the device was built (they survive a driver reset
/// but not a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NetCounters {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Transmit chains dropped: malformed, wrong length, writable buffers,
    /// or unreadable memory.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Host frames dropped: wrong length, or the receive chain could not
    /// hold them.
    pub rx_dropped: u64,
}

/// A virtio network device.
pub(crate) struct Net {
    mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    acked_features: u64,
    activated: bool,
    counters: NetCounters,
    /// One frame, reused for every transmit so the hot path does not
    /// allocate.
    tx_frame: Vec<u8>,
    queue_sizes: [u16; NUM_QUEUES],
}

impl Net {
    /// A device with address `mac` whose frames go to and come from
    /// `backend`.
    pub(crate) fn new(mac: [u8; 6], backend: Box<dyn NetBackend>) -> Self {
        Self {
            mac,
            backend,
            acked_features: 0,
            activated: false,
            counters: NetCounters::default(),
            tx_frame: vec![0; MAX_FRAME_LEN],
            queue_sizes: [NET_QUEUE_SIZE; NUM_QUEUES],
        }
    }

    /// The MAC address.
    #[cfg(test)]
    pub(crate) fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Features negotiated with the driver.
    #[cfg(test)]
    pub(crate) fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Frame counters.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Copies `frame` (a bare Ethernet frame, without virtio header) into
    /// the next posted receive chain. See [`RxOutcome`] for what the caller
    /// does next; [`MmioTransport::net_push_frame`] interrupts the guest.
    pub(crate) fn push_frame(&mut self, ctx: &mut QueueContext<'_>, frame: &[u8]) -> RxOutcome {
        if !self.activated || !ctx.queue(RECEIVEQ).is_ok_and(|q| q.ready()) {
            return RxOutcome::NotReady;
        }
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()) {
            let err = NetError::FrameLength(frame.len());
            tracing::warn!(error = %err, "dropping host frame");
            self.counters.rx_dropped += 1;
            return RxOutcome::Dropped;
        }
        let chain = match ctx.pop_chain(RECEIVEQ) {
            Ok(Some(chain)) => chain,
            Ok(None) => return RxOutcome::NoBuffer,
            Err(err) => {
                self.broken(ctx, err);
                return RxOutcome::NotReady;
            }
        };
        let written = write_packet(ctx.mem(), &chain, frame);
        let used = *written.as_ref().unwrap_or(&0);
        if let Err(err) = ctx.add_used(RECEIVEQ, chain.head(), used) {
            self.broken(ctx, err);
            return RxOutcome::NotReady;
        }
        match written {
            Ok(_) => {
                self.counters.rx_frames += 1;
                RxOutcome::Delivered
            }
            Err(err) => {
                tracing::warn!(error = %err, "dropping host frame: bad receive buffer");
                self.counters.rx_dropped += 1;
                RxOutcome::Dropped
            }
        }
    }

    /// Stops touching the queues until the driver resets the device.
    fn broken(&mut self, ctx: &mut QueueContext<'_>, err: QueueError) {
        self.activated = false;
        ctx.report_broken(err);
    }

    /// Hands every complete transmit chain to the backend.
    fn transmit(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), QueueError> {
        let mem = ctx.mem();
        // Chains the driver publishes while we work come with their own
        // notification, so stopping after twice the queue size loses
        // nothing for a sane driver and bounds how long a guest that keeps
        // publishing can hold this vCPU exit. Chains the walker rejected
        // count too, or a guest could make each pop walk a ring of junk.
        let budget = 2 * u64::from(ctx.queue(TRANSMITQ)?.size());
        let mut handled = 0u64;
        while handled + ctx.rejected_chains() < budget {
            let Some(chain) = ctx.pop_chain(TRANSMITQ)? else {
                break;
            };
            handled += 1;
            match self.read_frame(mem, &chain) {
                Ok(len) => {
                    self.backend.transmit(&self.tx_frame[..len]);
                    self.counters.tx_frames += 1;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "dropping guest frame");
                    self.counters.tx_dropped += 1;
                }
            }
            ctx.add_used(TRANSMITQ, chain.head(), 0)?;
        }
        // Chains the walker refused were frames too; this context is this
        // call's alone, so its count is exactly theirs.
        self.counters.tx_dropped += ctx.rejected_chains();
        Ok(())
    }

    /// Reads the frame after the header of a transmit chain into
    /// `self.tx_frame`; returns its length.
    fn read_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
    ) -> Result<usize, NetError> {
        if chain.writable_len() > 0 {
            return Err(NetError::WritableTransmitBuffer(chain.writable_len()));
        }
        let readable = chain.readable_len() as usize;
        let Some(len) = readable.checked_sub(NET_HDR_LEN) else {
            return Err(NetError::MissingHeader(chain.readable_len()));
        };
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Err(NetError::FrameLength(len));
        }
        // The header is not read: without negotiated offloads none of its
        // fields may ask anything of the device, and the frame is complete
        // as it stands.
        chain.read_at(mem, NET_HDR_LEN as u64, &mut self.tx_frame[..len])?;
        Ok(len)
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config
    }
}

/// Writes header and `frame` into a receive chain; returns the bytes
/// written. `frame` has been checked against [`MAX_FRAME_LEN`].
fn write_packet(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    frame: &[u8],
) -> Result<u32, NetError> {
    if chain.readable_len() > 0 {
        return Err(NetError::ReadableReceiveBuffer(chain.readable_len()));
    }
    let need = NET_HDR_LEN + frame.len();
    if (chain.writable_len() as usize) < need {
        return Err(NetError::ReceiveBufferTooSmall {
            have: chain.writable_len(),
            need,
        });
    }
    let mut header = [0u8; NET_HDR_LEN];
    // Without MRG_RXBUF every packet is one buffer, and the spec requires
    // num_buffers to say so.
    header[HDR_NUM_BUFFERS..].copy_from_slice(&1u16.to_le_bytes());
    chain.write_at(mem, 0, &header)?;
    chain.write_at(mem, NET_HDR_LEN as u64, frame)?;
    // At most 12 + 1514 bytes.
    Ok(need as u32)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        features::bit(features::VERSION_1)
            | features::bit(VIRTIO_NET_F_MAC)
            | features::bit(VIRTIO_NET_F_STATUS)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR, not
        // offered; status is always read-only.
        tracing::debug!(offset, "ignored write to virtio-net config");
    }

    fn activate(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), VirtioError> {
        for index in [RECEIVEQ, TRANSMITQ] {
            if !ctx.queue(index).is_ok_and(|q| q.ready()) {
                return Err(VirtioError::QueueNotReady { index });
            }
        }
        self.activated = true;
        // A restored device may find buffers the driver posted before the
        // snapshot; the fresh backend has not heard of them.
        if ctx.has_available(RECEIVEQ).unwrap_or(false) {
            self.backend.rx_buffers_available();
        }
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), QueueError> {
        if !self.activated {
            return Ok(());
        }
        match index {
            RECEIVEQ => {
                self.backend.rx_buffers_available();
                Ok(())
            }
            TRANSMITQ => self.transmit(ctx).inspect_err(|_| {
                // The transport marks the device as needing a reset; the
                // receive side must stop using the queues as well.
                self.activated = false;
            }),
            _ => Ok(()),
        }
    }

    /// Counters are kept: they count for the device, not the driver.
    fn reset(&mut self) {
        self.activated = false;
        self.acked_features = 0;
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(NetState {
            mac: self.mac,
            acked_features: self.acked_features,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        let DeviceState::Net(state) = state else {
            return Err(VirtioError::StateTypeMismatch);
        };
        // The guest's stack and its peers' ARP caches know the old address.
        if state.mac != self.mac {
            return Err(VirtioError::StateMismatch(format!(
                "saved MAC {} differs from this device's {}",
                format_mac(&state.mac),
                format_mac(&self.mac)
            )));
        }
        if state.acked_features & !self.avail_features() != 0 {
            return Err(VirtioError::StateMismatch(format!(
                "saved features {:#x} were not offered",
                state.acked_features
            )));
        }
        self.acked_features = state.acked_features;
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Net shortcuts for the thread that runs the network stack.
impl MmioTransport {
    /// [`Net::push_frame`] through the transport, which interrupts the
    /// guest if a receive chain was used.
    pub(crate) fn net_push_frame(&mut self, frame: &[u8]) -> Result<RxOutcome, MmioError> {
        self.with_device_of(|net: &mut Net, ctx| net.push_frame(ctx, frame))
    }

    /// [`Net::counters`] through the transport.
    #[cfg(test)]
    pub(crate) fn net_counters(&mut self) -> Result<NetCounters, MmioError> {
        self.device_of::<Net>().map(|net| net.counters())
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
