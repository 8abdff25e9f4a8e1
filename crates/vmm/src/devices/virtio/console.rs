//! virtio-console (device id 3) with the multiport feature and exactly one
//! generic port, id 0: the guest sees a plain character device
//! (`/dev/vportNp0`, N the virtio device index), not a tty, so its writes
//! reach us in buffers of up to 32 KiB instead of the tty layer's small
//! pieces.
//!
//! Queues: 0 and 1 carry port 0's data (host to guest, guest to host),
//! 2 and 3 carry control messages (host to guest, guest to host). The
//! handshake the guest driver expects: it says DEVICE_READY, we announce
//! PORT_ADD for port 0, it answers PORT_READY, we send the port's name and
//! PORT_OPEN (the host end is connected). We never send CONSOLE_PORT, so
//! the port stays generic. The guest's own PORT_OPEN says whether a process
//! has the port open; host input is only delivered while it does, since the
//! driver drops data that arrives on a closed port.
//!
//! Guest output is written straight to the host writer when the guest
//! notifies queue 1. Host input goes into the guest's posted receive
//! buffers; what does not fit waits in a bounded pending buffer until the
//! guest posts more (notify on queue 0). The feeding thread asks
//! [`Console::input_capacity`] before reading more, which is the
//! back-pressure that keeps the pending buffer bounded.
//!
//! A driver that does not accept the multiport feature gets the old single
//! console port on queues 0 and 1, connected from the start.

use std::any::Any;
use std::collections::VecDeque;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::mmio::{MmioError, MmioTransport};
use super::queue::{DescriptorChain, QueueContext, QueueError};
use super::{
    chunks, device_type, features, read_config_bytes, DeviceState, VirtioDevice, VirtioError,
};

/// Size of each queue.
pub(crate) const CONSOLE_QUEUE_SIZE: u16 = 256;
/// Default bound of the pending input buffer.
pub(crate) const DEFAULT_PENDING_CAPACITY: usize = 64 * 1024;
/// Name announced for the port (`/sys/class/virtio-ports/vportNp0/name`), which is how the guest finds it.
pub(crate) const PORT_NAME: &[u8] = b"sbxrun.control";

const RECEIVEQ: usize = 0;
const TRANSMITQ: usize = 1;
const CONTROL_RECEIVEQ: usize = 2;
const CONTROL_TRANSMITQ: usize = 3;
const NUM_QUEUES: usize = 4;
/// VIRTIO_CONSOLE_F_MULTIPORT.
const F_MULTIPORT: u32 = 1;
/// The only port.
const PORT_ID: u32 = 0;
/// cols, rows (u16 each), max_nr_ports, emerg_wr (u32 each).
const CONFIG_LEN: usize = 12;
const CONFIG_MAX_NR_PORTS: usize = 4;
/// The guest driver's biggest transmit buffer.
const CHUNK: usize = 32 * 1024;
/// Size of a control message header: id (u32), event (u16), value (u16).
const CONTROL_LEN: usize = 8;

/// Control message events (virtio 1.x, section 5.3.6.2). The whole table,
/// as the spec numbers it: some events are ones this device never sends.
#[allow(dead_code)]
pub(crate) mod event {
    /// Driver: the device is set up (value 1) or failed (value 0).
    pub(crate) const DEVICE_READY: u16 = 0;
    /// Device: a port exists.
    pub(crate) const PORT_ADD: u16 = 1;
    /// Device: a port went away.
    pub(crate) const PORT_REMOVE: u16 = 2;
    /// Driver: a port is set up (value 1) or failed (value 0).
    pub(crate) const PORT_READY: u16 = 3;
    /// Device: a port is a console; never sent here.
    pub(crate) const CONSOLE_PORT: u16 = 4;
    /// Device: a console port's size.
    pub(crate) const RESIZE: u16 = 5;
    /// Both: the sender's end of a port is open (1) or closed (0).
    pub(crate) const PORT_OPEN: u16 = 6;
    /// Device: a port's name follows the header.
    pub(crate) const PORT_NAME: u16 = 7;
}

/// Errors of the console device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// A receive chain has device-readable buffers.
    #[error("receive buffer has {0} device-readable bytes")]
    ReadableReceiveBuffer(u32),
    /// A transmit chain has device-writable buffers.
    #[error("transmit buffer has {0} device-writable bytes")]
    WritableTransmitBuffer(u32),
    /// A receive buffer is too small for the message it should carry.
    #[error("receive buffer of {have} bytes is smaller than the {need}-byte message")]
    ReceiveBufferTooSmall {
        /// Writable bytes of the buffer.
        have: u32,
        /// Size of the message.
        need: usize,
    },
    /// A control message from the guest is not exactly one header long.
    #[error("control message of {0} bytes (want {CONTROL_LEN})")]
    ControlLength(u32),
    /// A control message names a port that does not exist.
    #[error("control event {event} for unknown port {id}")]
    UnknownPort {
        /// Event number.
        event: u16,
        /// Port id given.
        id: u32,
    },
    /// A control message with a value its event does not allow.
    #[error("control event {event} with invalid value {value}")]
    ControlValue {
        /// Event number.
        event: u16,
        /// Value given.
        value: u16,
    },
    /// A control message that is out of order or not for the device.
    #[error("unexpected control event {event} (value {value})")]
    UnexpectedControl {
        /// Event number.
        event: u16,
        /// Value given.
        value: u16,
    },
    /// Guest memory behind a buffer could not be accessed.
    #[error(transparent)]
    Buffer(#[from] QueueError),
    /// Saved pending input exceeds this console's bound.
    #[error("saved pending input of {len} bytes exceeds the capacity of {cap}")]
    PendingTooLarge {
        /// Saved bytes.
        len: usize,
        /// This console's bound.
        cap: usize,
    },
}

/// Where the multiport handshake for port 0 stands. Each flag records a
/// step that happened; what to send next follows from them, so a restored
/// device carries on exactly where the saved one stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ControlState {
    /// The driver said DEVICE_READY (value 1).
    pub device_ready: bool,
    /// PORT_ADD for port 0 reached the driver.
    pub port_added: bool,
    /// The driver said PORT_READY (value 1) for port 0.
    pub port_ready: bool,
    /// PORT_NAME reached the driver.
    pub name_sent: bool,
    /// PORT_OPEN (host connected) reached the driver since its last
    /// PORT_READY.
    pub host_open_sent: bool,
    /// A guest process has port 0 open (its last PORT_OPEN said 1).
    pub guest_connected: bool,
}

/// Saved state of a console: input accepted from the host but not yet
/// delivered to the guest, and the control handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsoleState {
    /// Pending host input, oldest first.
    pub pending: Vec<u8>,
    /// Multiport handshake state.
    #[serde(default)]
    pub control: ControlState,
}

/// One control message: header fields and what follows the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ControlMsg {
    id: u32,
    event: u16,
    value: u16,
    payload: &'static [u8],
}

impl ControlMsg {
    fn port(event: u16, value: u16) -> Self {
        Self {
            id: PORT_ID,
            event,
            value,
            payload: &[],
        }
    }

    fn len(&self) -> usize {
        CONTROL_LEN + self.payload.len()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.event.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(self.payload);
        out
    }

    fn decode(raw: &[u8; CONTROL_LEN]) -> Self {
        Self {
            id: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            event: u16::from_le_bytes([raw[4], raw[5]]),
            value: u16::from_le_bytes([raw[6], raw[7]]),
            payload: &[],
        }
    }
}

/// A virtio console with one generic port.
pub(crate) struct Console {
    output: Box<dyn Write + Send>,
    pending: VecDeque<u8>,
    pending_cap: usize,
    activated: bool,
    acked_features: u64,
    control: ControlState,
    output_error: Option<io::Error>,
    dropped_output: u64,
    queue_sizes: [u16; NUM_QUEUES],
}

impl Console {
    /// A console writing guest output to `output`, holding at most
    /// [`DEFAULT_PENDING_CAPACITY`] bytes of undelivered input.
    pub(crate) fn new(output: Box<dyn Write + Send>) -> Self {
        Self::with_pending_capacity(output, DEFAULT_PENDING_CAPACITY)
    }

    /// Like [`Self::new`] with another bound on pending input.
    pub(crate) fn with_pending_capacity(output: Box<dyn Write + Send>, pending_cap: usize) -> Self {
        Self {
            output,
            pending: VecDeque::new(),
            pending_cap,
            activated: false,
            acked_features: 0,
            control: ControlState::default(),
            output_error: None,
            dropped_output: 0,
            queue_sizes: [CONSOLE_QUEUE_SIZE; NUM_QUEUES],
        }
    }

    /// How many more bytes [`Self::push_input`] will accept right now.
    pub(crate) fn input_capacity(&self) -> usize {
        self.pending_cap.saturating_sub(self.pending.len())
    }

    /// Bytes accepted but not yet delivered.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The last error writing guest output to the host, if any.
    #[cfg(test)]
    pub(crate) fn output_error(&self) -> Option<&io::Error> {
        self.output_error.as_ref()
    }

    /// Guest output bytes dropped because the host writer failed.
    #[cfg(test)]
    pub(crate) fn dropped_output_bytes(&self) -> u64 {
        self.dropped_output
    }

    /// Where the control handshake stands.
    #[cfg(test)]
    pub(crate) fn control_state(&self) -> ControlState {
        self.control
    }

    /// Hands host input to the guest: delivers what fits in posted receive
    /// buffers and keeps the rest pending, up to the bound. Returns how many
    /// bytes of `input` were accepted; the caller keeps the others. An empty
    /// `input` just retries pending bytes.
    pub(crate) fn push_input(&mut self, ctx: &mut QueueContext<'_>, input: &[u8]) -> usize {
        let mut accepted = 0;
        loop {
            let take = self.input_capacity().min(input.len() - accepted);
            self.pending.extend(&input[accepted..accepted + take]);
            accepted += take;
            let delivered = self.flush_pending(ctx);
            if accepted == input.len() || delivered == 0 {
                return accepted;
            }
        }
    }

    fn multiport(&self) -> bool {
        self.acked_features & features::bit(F_MULTIPORT) != 0
    }

    /// Whether host input may go to the guest now. The driver throws away
    /// data for a generic port nobody has open; the legacy console port is
    /// always open.
    fn guest_listening(&self) -> bool {
        !self.multiport() || self.control.guest_connected
    }

    /// Stops touching the queues until the driver resets the device.
    fn broken(&mut self, ctx: &mut QueueContext<'_>, err: QueueError) {
        self.activated = false;
        ctx.report_broken(err);
    }

    /// Moves pending input into posted receive buffers; returns the bytes
    /// delivered.
    fn flush_pending(&mut self, ctx: &mut QueueContext<'_>) -> usize {
        if !self.guest_listening() {
            return 0;
        }
        let mem = ctx.mem();
        let before = self.pending.len();
        self.fill_buffers(
            ctx,
            RECEIVEQ,
            |c| !c.pending.is_empty(),
            |c, chain| c.deliver_pending(mem, chain),
        );
        before - self.pending.len()
    }

    /// Copies pending input into one receive chain; returns the bytes
    /// written.
    fn deliver_pending(&mut self, mem: &GuestMemoryMmap, chain: &DescriptorChain) -> u32 {
        if chain.readable_len() > 0 {
            let err = ConsoleError::ReadableReceiveBuffer(chain.readable_len());
            tracing::warn!(error = %err, "rejecting console receive buffer");
            return 0;
        }
        let n = self.pending.len().min(chain.writable_len() as usize);
        match chain.write_at(mem, 0, &self.pending.make_contiguous()[..n]) {
            Ok(()) => {
                self.pending.drain(..n);
                n as u32
            }
            Err(err) => {
                tracing::warn!(error = %err, "console receive buffer write failed");
                0
            }
        }
    }

    /// Gives the driver's posted buffers of queue `index` back filled, while
    /// `more` says there is something to send; `fill` writes one chain and
    /// returns the bytes used.
    fn fill_buffers(
        &mut self,
        ctx: &mut QueueContext<'_>,
        index: usize,
        more: impl Fn(&Self) -> bool,
        mut fill: impl FnMut(&mut Self, &DescriptorChain) -> u32,
    ) {
        if !self.activated || !ctx.queue(index).is_ok_and(|q| q.ready()) {
            return;
        }
        // This may run on the input thread with the transport locked; a
        // guest that keeps publishing buffers must not keep it here. Twice
        // the queue size is more than a well-behaved guest can have posted.
        let budget = ctx.queue(index).map_or(0, |q| 2 * usize::from(q.size()));
        for _ in 0..budget {
            if !more(self) {
                break;
            }
            let chain = match ctx.pop_chain(index) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(err) => {
                    self.broken(ctx, err);
                    break;
                }
            };
            let used = fill(self, &chain);
            if let Err(err) = ctx.add_used(index, chain.head(), used) {
                self.broken(ctx, err);
                break;
            }
        }
    }

    fn transmit(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), QueueError> {
        let mem = ctx.mem();
        let mut buf = vec![0u8; CHUNK];
        while let Some(chain) = ctx.pop_chain(TRANSMITQ)? {
            if chain.writable_len() > 0 {
                let err = ConsoleError::WritableTransmitBuffer(chain.writable_len());
                tracing::warn!(error = %err, "rejecting console transmit buffer");
                ctx.add_used(TRANSMITQ, chain.head(), 0)?;
                continue;
            }
            for (done, n) in chunks(u64::from(chain.readable_len()), CHUNK) {
                chain.read_at(mem, done, &mut buf[..n])?;
                self.write_output(&buf[..n]);
            }
            ctx.add_used(TRANSMITQ, chain.head(), 0)?;
        }
        if let Err(err) = self.output.flush() {
            self.output_error = Some(err);
        }
        Ok(())
    }

    /// A broken host writer must not stall the guest: the bytes are
    /// dropped and the error kept for whoever asks.
    fn write_output(&mut self, bytes: &[u8]) {
        if let Err(err) = self.output.write_all(bytes) {
            if self.output_error.is_none() {
                tracing::warn!(error = %err, "console output failed; dropping guest output");
            }
            self.output_error = Some(err);
            self.dropped_output += bytes.len() as u64;
        }
    }

    /// Reads the driver's control messages and applies the valid ones.
    /// Each chain is handled within this call (the driver spins until it
    /// gets its buffer back).
    fn control_transmit(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), QueueError> {
        let mem = ctx.mem();
        while let Some(chain) = ctx.pop_chain(CONTROL_TRANSMITQ)? {
            match read_control(mem, &chain) {
                Ok(msg) => {
                    if let Err(err) = self.apply_control(msg) {
                        tracing::warn!(error = %err, "ignoring console control message");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "rejecting console control buffer"),
            }
            ctx.add_used(CONTROL_TRANSMITQ, chain.head(), 0)?;
        }
        Ok(())
    }

    /// One control message from the driver; an error leaves the state as
    /// it was.
    fn apply_control(&mut self, msg: ControlMsg) -> Result<(), ConsoleError> {
        let ControlMsg {
            id, event, value, ..
        } = msg;
        let c = &mut self.control;
        match event {
            // The driver sends VIRTIO_CONSOLE_BAD_ID here; the id is moot.
            event::DEVICE_READY => match value {
                1 => c.device_ready = true,
                0 => {
                    tracing::warn!("guest console driver failed to set up");
                    c.device_ready = false;
                }
                _ => return Err(ConsoleError::ControlValue { event, value }),
            },
            event::PORT_READY | event::PORT_OPEN if id != PORT_ID => {
                return Err(ConsoleError::UnknownPort { event, id });
            }
            event::PORT_READY if !c.port_added => {
                return Err(ConsoleError::UnexpectedControl { event, value });
            }
            event::PORT_READY => match value {
                // Also sent again by a driver that woke up and lost the
                // host's connection state: tell it again.
                1 => {
                    c.port_ready = true;
                    c.host_open_sent = false;
                }
                0 => {
                    tracing::warn!("guest console driver failed to add port 0");
                    c.port_ready = false;
                    c.guest_connected = false;
                }
                _ => return Err(ConsoleError::ControlValue { event, value }),
            },
            event::PORT_OPEN if !c.port_ready => {
                return Err(ConsoleError::UnexpectedControl { event, value });
            }
            event::PORT_OPEN => match value {
                0 | 1 => c.guest_connected = value == 1,
                _ => return Err(ConsoleError::ControlValue { event, value }),
            },
            _ => return Err(ConsoleError::UnexpectedControl { event, value }),
        }
        Ok(())
    }

    /// The next message the driver should get, from the handshake state.
    fn next_control(&self) -> Option<ControlMsg> {
        let c = &self.control;
        if c.device_ready && !c.port_added {
            Some(ControlMsg::port(event::PORT_ADD, 1))
        } else if c.port_ready && !c.name_sent {
            Some(ControlMsg {
                payload: PORT_NAME,
                ..ControlMsg::port(event::PORT_NAME, 1)
            })
        } else if c.port_ready && !c.host_open_sent {
            Some(ControlMsg::port(event::PORT_OPEN, 1))
        } else {
            None
        }
    }

    fn mark_sent(&mut self, msg: &ControlMsg) {
        let c = &mut self.control;
        match msg.event {
            event::PORT_ADD => c.port_added = true,
            event::PORT_NAME => c.name_sent = true,
            event::PORT_OPEN => c.host_open_sent = true,
            _ => {}
        }
    }

    /// Sends what the handshake needs next into the driver's control
    /// receive buffers, as far as there are buffers.
    fn control_receive(&mut self, ctx: &mut QueueContext<'_>) {
        let mem = ctx.mem();
        self.fill_buffers(
            ctx,
            CONTROL_RECEIVEQ,
            |c| c.next_control().is_some(),
            |c, chain| {
                let Some(msg) = c.next_control() else {
                    return 0;
                };
                match write_control(mem, chain, &msg) {
                    Ok(()) => {
                        c.mark_sent(&msg);
                        msg.len() as u32
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "rejecting console control receive buffer");
                        0
                    }
                }
            },
        );
    }
}

/// The control message in a driver chain, which must be exactly one
/// device-readable header.
fn read_control(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
) -> Result<ControlMsg, ConsoleError> {
    if chain.writable_len() > 0 {
        return Err(ConsoleError::WritableTransmitBuffer(chain.writable_len()));
    }
    if chain.readable_len() as usize != CONTROL_LEN {
        return Err(ConsoleError::ControlLength(chain.readable_len()));
    }
    let mut raw = [0u8; CONTROL_LEN];
    chain.read_at(mem, 0, &mut raw)?;
    Ok(ControlMsg::decode(&raw))
}

/// Writes `msg` into a driver-posted control receive buffer.
fn write_control(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    msg: &ControlMsg,
) -> Result<(), ConsoleError> {
    if chain.readable_len() > 0 {
        return Err(ConsoleError::ReadableReceiveBuffer(chain.readable_len()));
    }
    if (chain.writable_len() as usize) < msg.len() {
        return Err(ConsoleError::ReceiveBufferTooSmall {
            have: chain.writable_len(),
            need: msg.len(),
        });
    }
    chain.write_at(mem, 0, &msg.encode())?;
    Ok(())
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        features::bit(features::VERSION_1) | features::bit(F_MULTIPORT)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[CONFIG_MAX_NR_PORTS..CONFIG_MAX_NR_PORTS + 4].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, not offered.
        tracing::debug!(offset, "ignored write to virtio-console config");
    }

    fn activate(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), VirtioError> {
        let needed: &[usize] = if self.multiport() {
            &[RECEIVEQ, TRANSMITQ, CONTROL_RECEIVEQ, CONTROL_TRANSMITQ]
        } else {
            &[RECEIVEQ, TRANSMITQ]
        };
        for &index in needed {
            if !ctx.queue(index).is_ok_and(|q| q.ready()) {
                return Err(VirtioError::QueueNotReady { index });
            }
        }
        self.activated = true;
        // Only a restored device has anything to say here: a handshake
        // step that was due when it was saved.
        if self.multiport() {
            self.control_receive(ctx);
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
                self.flush_pending(ctx);
                Ok(())
            }
            TRANSMITQ => self.transmit(ctx),
            CONTROL_RECEIVEQ if self.multiport() => {
                self.control_receive(ctx);
                Ok(())
            }
            CONTROL_TRANSMITQ if self.multiport() => {
                self.control_transmit(ctx)?;
                self.control_receive(ctx);
                self.flush_pending(ctx);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Pending input is kept: it was accepted from the host, and the next
    /// driver gets it. The handshake starts over with the next driver.
    fn reset(&mut self) {
        self.activated = false;
        self.acked_features = 0;
        self.control = ControlState::default();
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Console(ConsoleState {
            pending: self.pending.iter().copied().collect(),
            control: self.control,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        let DeviceState::Console(state) = state else {
            return Err(VirtioError::StateTypeMismatch);
        };
        if state.pending.len() > self.pending_cap {
            let err = ConsoleError::PendingTooLarge {
                len: state.pending.len(),
                cap: self.pending_cap,
            };
            return Err(VirtioError::StateMismatch(err.to_string()));
        }
        self.pending = state.pending.iter().copied().collect();
        self.control = state.control;
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Console shortcuts for the thread that feeds host input.
impl MmioTransport {
    /// [`Console::push_input`] through the transport, which interrupts the
    /// guest if anything was delivered.
    pub(crate) fn console_push_input(&mut self, input: &[u8]) -> Result<usize, MmioError> {
        self.with_device_of(|console: &mut Console, ctx| console.push_input(ctx, input))
    }

    /// [`Console::input_capacity`] through the transport.
    pub(crate) fn console_input_capacity(&mut self) -> Result<usize, MmioError> {
        self.device_of::<Console>()
            .map(|console| console.input_capacity())
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
