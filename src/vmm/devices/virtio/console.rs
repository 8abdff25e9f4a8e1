//! virtio-console (device id 3) with a single port and no multiport
//! feature: queue 0 carries host input to the guest, queue 1 guest output
//! to the host.
//!
//! Guest output is written straight to the host writer when the guest
//! notifies queue 1. Host input goes into the guest's posted receive
//! buffers; what does not fit waits in a bounded pending buffer until the
//! guest posts more (notify on queue 0). The feeding thread asks
//! [`Console::input_capacity`] before reading more, which is the
//! back-pressure that keeps the pending buffer bounded.

use std::any::Any;
use std::collections::VecDeque;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::mmio::{MmioError, MmioTransport};
use super::queue::{QueueContext, QueueError};
use super::{
    chunks, device_type, features, read_config_bytes, DeviceState, VirtioDevice, VirtioError,
};

/// Size of each queue.
pub const CONSOLE_QUEUE_SIZE: u16 = 256;
/// Default bound of the pending input buffer.
pub const DEFAULT_PENDING_CAPACITY: usize = 64 * 1024;

const RECEIVEQ: usize = 0;
const TRANSMITQ: usize = 1;
/// cols, rows, max_nr_ports, emerg_wr: all zero without the features.
const CONFIG_LEN: usize = 12;
const CHUNK: usize = 4096;

/// Errors of the console device.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A receive chain has device-readable buffers.
    #[error("receive buffer has {0} device-readable bytes")]
    ReadableReceiveBuffer(u32),
    /// A transmit chain has device-writable buffers.
    #[error("transmit buffer has {0} device-writable bytes")]
    WritableTransmitBuffer(u32),
    /// Saved pending input exceeds this console's bound.
    #[error("saved pending input of {len} bytes exceeds the capacity of {cap}")]
    PendingTooLarge {
        /// Saved bytes.
        len: usize,
        /// This console's bound.
        cap: usize,
    },
}

/// Saved state of a console: input accepted from the host but not yet
/// delivered to the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Pending host input, oldest first.
    pub pending: Vec<u8>,
}

/// A single-port virtio console.
pub struct Console {
    output: Box<dyn Write + Send>,
    pending: VecDeque<u8>,
    pending_cap: usize,
    activated: bool,
    acked_features: u64,
    output_error: Option<io::Error>,
    dropped_output: u64,
    queue_sizes: [u16; 2],
}

impl Console {
    /// A console writing guest output to `output`, holding at most
    /// [`DEFAULT_PENDING_CAPACITY`] bytes of undelivered input.
    pub fn new(output: Box<dyn Write + Send>) -> Self {
        Self::with_pending_capacity(output, DEFAULT_PENDING_CAPACITY)
    }

    /// Like [`Self::new`] with another bound on pending input.
    pub fn with_pending_capacity(output: Box<dyn Write + Send>, pending_cap: usize) -> Self {
        Self {
            output,
            pending: VecDeque::new(),
            pending_cap,
            activated: false,
            acked_features: 0,
            output_error: None,
            dropped_output: 0,
            queue_sizes: [CONSOLE_QUEUE_SIZE; 2],
        }
    }

    /// How many more bytes [`Self::push_input`] will accept right now.
    pub fn input_capacity(&self) -> usize {
        self.pending_cap.saturating_sub(self.pending.len())
    }

    /// Bytes accepted but not yet delivered.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The last error writing guest output to the host, if any.
    pub fn output_error(&self) -> Option<&io::Error> {
        self.output_error.as_ref()
    }

    /// Guest output bytes dropped because the host writer failed.
    pub fn dropped_output_bytes(&self) -> u64 {
        self.dropped_output
    }

    /// Hands host input to the guest: delivers what fits in posted receive
    /// buffers and keeps the rest pending, up to the bound. Returns how many
    /// bytes of `input` were accepted; the caller keeps the others. An empty
    /// `input` just retries pending bytes.
    pub fn push_input(&mut self, ctx: &mut QueueContext<'_>, input: &[u8]) -> usize {
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

    /// Moves pending input into posted receive buffers; returns the bytes
    /// delivered.
    fn flush_pending(&mut self, ctx: &mut QueueContext<'_>) -> usize {
        if !self.activated || !ctx.queue(RECEIVEQ).is_ok_and(|q| q.ready()) {
            return 0;
        }
        let mem = ctx.mem();
        let mut delivered = 0;
        // This runs on the input thread with the transport locked; a guest
        // that keeps publishing buffers must not keep it here. Twice the
        // queue size is more than a well-behaved guest can have posted.
        let budget = ctx.queue(RECEIVEQ).map_or(0, |q| 2 * usize::from(q.size()));
        for _ in 0..budget {
            if self.pending.is_empty() {
                break;
            }
            let chain = match ctx.pop_chain(RECEIVEQ) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(err) => {
                    // Stop touching the queue until the driver resets us.
                    self.activated = false;
                    ctx.report_broken(err);
                    break;
                }
            };
            let mut used = 0;
            if chain.readable_len() > 0 {
                let err = ConsoleError::ReadableReceiveBuffer(chain.readable_len());
                tracing::warn!(error = %err, "rejecting console receive buffer");
            } else {
                let n = self.pending.len().min(chain.writable_len() as usize);
                match chain.write_at(mem, 0, &self.pending.make_contiguous()[..n]) {
                    Ok(()) => {
                        self.pending.drain(..n);
                        delivered += n;
                        used = n as u32;
                    }
                    Err(err) => tracing::warn!(error = %err, "console receive buffer write failed"),
                }
            }
            if let Err(err) = ctx.add_used(RECEIVEQ, chain.head(), used) {
                self.activated = false;
                ctx.report_broken(err);
                break;
            }
        }
        delivered
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
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        features::bit(features::VERSION_1)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[0u8; CONFIG_LEN], offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, not offered.
        tracing::debug!(offset, "ignored write to virtio-console config");
    }

    fn activate(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), VirtioError> {
        for index in [RECEIVEQ, TRANSMITQ] {
            if !ctx.queue(index).is_ok_and(|q| q.ready()) {
                return Err(VirtioError::QueueNotReady { index });
            }
        }
        self.activated = true;
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
            _ => Ok(()),
        }
    }

    /// Pending input is kept: it was accepted from the host, and the next
    /// driver gets it.
    fn reset(&mut self) {
        self.activated = false;
        self.acked_features = 0;
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Console(ConsoleState {
            pending: self.pending.iter().copied().collect(),
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
    pub fn console_push_input(&mut self, input: &[u8]) -> Result<usize, MmioError> {
        let device_type = self.device_type();
        self.with_device(|console: &mut Console, ctx| console.push_input(ctx, input))
            .ok_or(MmioError::WrongDeviceType(device_type))
    }

    /// [`Console::input_capacity`] through the transport.
    pub fn console_input_capacity(&mut self) -> Result<usize, MmioError> {
        let device_type = self.device_type();
        self.device_mut()
            .as_any_mut()
            .downcast_mut::<Console>()
            .map(|console| console.input_capacity())
            .ok_or(MmioError::WrongDeviceType(device_type))
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
